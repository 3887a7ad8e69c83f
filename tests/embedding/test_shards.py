"""Sharded embedding runs with the local engine: the files written, skipped files, resuming after a kill."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from deeprank.embedding import embed_folder
from deeprank.embedding.sharded_run import embed_to_shards
from deeprank.embedding.shards import is_shard_set, read_shard_set
from deeprank.errors import DeeprankError
from deeprank.io import sha256_file
from deeprank.models import MultiScaleNet


def snapshot(folder):
    """Every file of a run folder with its bytes (hidden temporaries included)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def run_vectors(folder):
    shard_set = read_shard_set(folder)
    return np.concatenate([np.load(p) for p in shard_set.arrays]), [
        i for m in shard_set.metas for i in m["ids"]
    ]


def test_run_writes_checked_shards_equal_to_embed_folder(grey_model, mixed_folder, tmp_path):
    out = tmp_path / "run"
    res = embed_to_shards(grey_model, mixed_folder, out, shard_size=10, batch_size=4, progress=False)
    assert (res.shards, res.written, res.resumed, res.embedded) == (5, 5, 0, 43)
    assert is_shard_set(out) and not is_shard_set(mixed_folder)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["count"] == 46 and manifest["embedded"] == 43
    assert manifest["skipped"] == 3 and manifest["model"]["config_hash"] is not None
    emb, files, skipped = embed_folder(grey_model, mixed_folder.resolve(), batch_size=4, workers=0)
    vectors, ids = run_vectors(out)
    np.testing.assert_allclose(vectors, emb, atol=1e-6)
    assert ids == [f.relative_to(mixed_folder.resolve()).as_posix() for f in files]
    assert res.skipped == skipped and len(skipped) == 3
    for i in range(5):
        meta = json.loads((out / f"shard-{i:05d}.json").read_text())
        assert meta["first"] == 10 * i and meta["files"] == (10 if i < 4 else 6)
        assert meta["embeddings"]["sha256"] == sha256_file(out / f"shard-{i:05d}.npy")
        assert len(meta["ids"]) + len(meta["skipped"]) == meta["files"]


def test_rerun_skips_finished_shards_and_redoes_broken_ones(grey_model, mixed_folder, tmp_path):
    out = tmp_path / "run"
    embed_to_shards(grey_model, mixed_folder, out, shard_size=10, progress=False)
    done = snapshot(out)
    again = embed_to_shards(grey_model, mixed_folder, out, shard_size=10, progress=False)
    assert (again.written, again.resumed, again.embedded) == (0, 5, 43)
    assert {k: v for k, v in snapshot(out).items() if k != "manifest.json"} == {
        k: v for k, v in done.items() if k != "manifest.json"
    }
    # A kill between a shard's array and its mark, and a truncated array: both shards are redone.
    (out / "shard-00001.json").unlink()
    npy = out / "shard-00003.npy"
    npy.write_bytes(npy.read_bytes()[:-8])
    fixed = embed_to_shards(grey_model, mixed_folder, out, shard_size=10, progress=False)
    assert (fixed.written, fixed.resumed) == (2, 3)
    assert {k: v for k, v in snapshot(out).items() if k != "manifest.json"} == {
        k: v for k, v in done.items() if k != "manifest.json"
    }


def test_a_different_run_is_refused(grey_model, mixed_folder, tmp_path):
    out = tmp_path / "run"
    embed_to_shards(grey_model, mixed_folder, out, shard_size=10, progress=False)
    with pytest.raises(DeeprankError, match="differs in shard_size"):
        embed_to_shards(grey_model, mixed_folder, out, shard_size=7, progress=False)
    other = MultiScaleNet(in_channels=1, embedding_dim=16, single_scale=True).eval()
    with pytest.raises(DeeprankError, match="differs in model"):
        embed_to_shards(other, mixed_folder, out, shard_size=10, progress=False)
    grown = tmp_path / "grown"
    shutil.copytree(mixed_folder, grown)
    embed_to_shards(grey_model, grown, tmp_path / "run2", shard_size=10, progress=False)
    Image.new("L", (9, 9)).save(grown / "Bag" / "new.png")
    with pytest.raises(DeeprankError, match="differs in count, files_sha256"):
        embed_to_shards(grey_model, grown, tmp_path / "run2", shard_size=10, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DeeprankError, match="not an embedding run"):
        embed_to_shards(grey_model, mixed_folder, tmp_path / "busy", progress=False)


def test_arguments_are_checked(grey_model, mixed_folder, tmp_path):
    with pytest.raises(ValueError, match="engine must be one of local, ray"):
        embed_to_shards(grey_model, mixed_folder, tmp_path / "a", engine="spark")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="shard_size must be a positive int"):
            embed_to_shards(grey_model, mixed_folder, tmp_path / "a", shard_size=bad)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        embed_to_shards(grey_model, tmp_path / "nothing", tmp_path / "a")


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import deeprank.embedding.sharded_run as sharded_run
    import deeprank.embedding.shards as shards
    real = shards.write_json_atomic

    def write_then_die(path, *args, **kwargs):
        if path.name == "shard-00002.json":  # shard 2's array is written, its mark not yet
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kwargs)

    shards.write_json_atomic = write_then_die
    sharded_run.embed_to_shards(sys.argv[1], sys.argv[2], sys.argv[3], shard_size=10, batch_size=4,
                           workers=int(sys.argv[4]), progress=False)
    """
)


def test_killed_run_resumed_gives_the_same_result(grey_checkpoint, mixed_folder, tmp_path):
    whole = tmp_path / "whole"
    embed_to_shards(grey_checkpoint, mixed_folder, whole, shard_size=10, batch_size=4, progress=False)
    out = tmp_path / "killed"
    args = [sys.executable, "-c", KILLED_RUN, str(grey_checkpoint), str(mixed_folder), str(out), "2"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert sorted(p.name for p in out.glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]
    assert (out / "shard-00002.npy").exists()
    with pytest.raises(DeeprankError, match="unfinished embedding run: 3 of 5"):
        read_shard_set(out)
    (out / ".shard-00003.npy.abc123.tmp").write_bytes(b"half")  # what a kill inside a write leaves
    res = embed_to_shards(grey_checkpoint, mixed_folder, out, shard_size=10, batch_size=4, progress=False)
    assert (res.written, res.resumed) == (3, 2)
    assert not list(out.glob(".*.tmp"))
    a, ids_a = run_vectors(whole)
    b, ids_b = run_vectors(out)
    np.testing.assert_array_equal(a, b)
    assert ids_a == ids_b and read_shard_set(out).skipped == read_shard_set(whole).skipped


def test_ray_and_pyarrow_are_imported_only_when_used():
    code = (
        "import sys, deeprank, deeprank.embedding.ray_engine, deeprank.embedding.parquet, deeprank.cli\n"
        "deeprank.cli.build_parser()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'pyarrow', 'pandas', 'duckdb'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_query_and_serve_open_a_run(grey_checkpoint, mixed_folder, tmp_path, capsys):
    from deeprank.cli import main

    out = tmp_path / "run"
    embed_to_shards(grey_checkpoint, mixed_folder, out, shard_size=10, progress=False)
    image = sorted((mixed_folder / "Coat").glob("*.png"))[0]
    assert main(["query", str(out), str(image), "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["hits"]
    assert hits[0]["id"] == image.relative_to(mixed_folder).as_posix() and hits[0]["distance"] < 1e-5
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from deeprank.serve.app import create_app

    with TestClient(create_app(out)) as client:
        r = client.post("/search", data={"id": hits[0]["id"], "k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["hits"][0]["id"] == hits[0]["id"]
