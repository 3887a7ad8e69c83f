"""The Ray engine on a local Ray instance (2 CPUs): the vectors of the local engine, the same skipped
files, and a killed run resumed to the same result."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from deeprank import Index
from deeprank.cli import main
from deeprank.embedding.sharded_run import embed_to_shards
from deeprank.embedding.shards import read_shard_set

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray instance for the module; its address lets subprocess drivers join it.

    Ray puts the driver's working folder on its workers' ``sys.path``: started from the repository
    root, workers would import the source tree's ``deeprank`` (no compiled ``_C`` unless built in
    place) rather than the installed one, so the instance starts from an empty folder.
    """
    started = not ray.is_initialized()
    if started:
        here = os.getcwd()
        os.chdir(tmp_path_factory.mktemp("ray-cwd"))
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        finally:
            os.chdir(here)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, grey_checkpoint, mixed_folder):
    out = tmp_path_factory.mktemp("local") / "run"
    embed_to_shards(grey_checkpoint, mixed_folder, out, shard_size=10, batch_size=4, progress=False)
    return read_shard_set(out)


def vectors_of(shard_set):
    return np.concatenate([np.load(p) for p in shard_set.arrays])


def ids_of(shard_set):
    return [i for m in shard_set.metas for i in m["ids"]]


def test_cli_ray_run_equals_the_local_engine(
    cluster, grey_checkpoint, mixed_folder, local_run, tmp_path, capsys
):
    out = tmp_path / "ray"
    argv = ["embed", "-m", str(grey_checkpoint), str(mixed_folder), "-o", str(out), "--engine", "ray"]
    argv += ["--address", cluster, "--shard-size", "10", "--batch-size", "4", "--no-progress"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "embedded 43 images (dimension 16) in 5 shards (5 shards written, 0 already done)" in captured.out
    assert "skipped 3 unreadable file(s)" in captured.err
    got = read_shard_set(out)
    # Float32 rounding may differ with the batch a row is embedded in; nothing else may.
    np.testing.assert_allclose(vectors_of(got), vectors_of(local_run), atol=1e-5, rtol=0)
    assert ids_of(got) == ids_of(local_run)
    assert [m["paths"] for m in got.metas] == [m["paths"] for m in local_run.metas]
    assert got.skipped == local_run.skipped and len(got.skipped) == 3
    index = Index.load(out)
    assert index.ids == ids_of(local_run) and index.skipped == local_run.skipped
    assert main(argv) == 0 and "0 shards written, 5 already done" in capsys.readouterr().out


KILLED_DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import deeprank.embedding.sharded_run as sharded_run
    import deeprank.embedding.shards as shards
    real = shards.write_json_atomic

    def write_then_die(path, *args, **kwargs):
        if path.name == "shard-00002.json":  # the driver dies between shard 2's array and its mark
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kwargs)

    shards.write_json_atomic = write_then_die
    sharded_run.embed_to_shards(sys.argv[1], sys.argv[2], sys.argv[3], engine="ray", address=sys.argv[4],
                           shard_size=10, batch_size=4, progress=False)
    """
)


def test_killed_ray_run_resumed_gives_the_same_result(
    cluster, grey_checkpoint, mixed_folder, local_run, tmp_path
):
    out = tmp_path / "killed"
    args = [sys.executable, "-c", KILLED_DRIVER, str(grey_checkpoint), str(mixed_folder), str(out), cluster]
    # From tmp_path: the child's sys.path starts with its working folder (see ``cluster``).
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]
    res = embed_to_shards(
        grey_checkpoint, mixed_folder, out, engine="ray", shard_size=10, batch_size=4, progress=False
    )
    assert (res.written, res.resumed, res.embedded) == (3, 2, 43) and res.skipped == local_run.skipped
    got = read_shard_set(out)
    np.testing.assert_allclose(vectors_of(got), vectors_of(local_run), atol=1e-5, rtol=0)
    assert ids_of(got) == ids_of(local_run) and got.skipped == local_run.skipped
