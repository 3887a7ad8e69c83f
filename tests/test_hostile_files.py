"""The hostile-file corpus (``tests/helpers/hostile_files.py``) through every command and the Python API.

The class of problem, not one case: bombs by header and by pixels, truncations at several offsets,
wrong extensions, 0 bytes, non-images, FIFOs, broken links and link loops must each be skipped and
counted (never a traceback, never an abort); 16-bit, float, EXIF-rotated, CMYK, palette+alpha and
animated files must embed exactly like the 8-bit PNG of the picture they show (never a silent wrong
answer). ``train``, ``index``, ``embed``, ``evaluate``, ``query`` and ``triplets`` run here as root,
in-process, and again as ``nobody`` (``tests/helpers/unprivileged.py``), for whom the chmod 000 file
and folder of the corpus are unreadable too (root reads them, so as root they are good images).
"""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hostile_files import write_corpus
from PIL import Image
from unprivileged import run_cli, shared_dir, writable_dir

from deeprank import cli
from deeprank.data import IMAGE_EXTENSIONS, ImageTooLarge, UnreadableImage, open_image
from deeprank.embedding import embed_images
from deeprank.errors import DeeprankError
from deeprank.evaluation import evaluate_folder
from deeprank.index import Index
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import resolve_model, save_checkpoint
from deeprank.serve import create_app
from deeprank.serve.uploads import DEFAULT_FORMATS

# What the listing itself skips (the walk finds them); the others are skipped when decoded.
LISTING_REASONS = ("loop", "broken symbolic link", "not a regular file", "not readable")
TRAIN_QUICK = ["--max-steps", "2", "--preset", "small", "--batch-size", "8", "--no-progress"]
EVALUATE_QUICK = ["--num-triplets", "50", "--crops", "5"]


@pytest.fixture(scope="module")
def hostile():
    """``(base, corpus, checkpoint)``: the corpus and an untrained grey model, readable by every user."""
    base = shared_dir("deeprank-hostile-")
    corpus = write_corpus(base / "corpus", np.random.default_rng(0))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(base / "model", MultiScaleNet("small", in_channels=1))
    for path in checkpoint.iterdir():  # atomic writes leave 0600 files
        path.chmod(0o644)
    try:
        yield base, corpus, checkpoint
    finally:
        for folder, _, _ in os.walk(base):
            os.chmod(folder, 0o755)
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def built(hostile):
    """The corpus indexed through the API once, for the checks that only read it."""
    _, corpus, checkpoint = hostile
    with pytest.warns(RuntimeWarning, match="skipping") as record:  # the listing's skips are said
        index = Index.build(checkpoint, corpus.root, progress=False)
    assert len(record) == sum(is_listing_skip(r) for r in corpus.bad.values())
    return index


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def is_listing_skip(reason: str) -> bool:
    return any(fragment in reason for fragment in LISTING_REASONS)


def assert_reported(err: str, bad: dict[Path, str]) -> None:
    """Every bad entry named on stderr with its reason, and nothing else reported as skipped."""
    assert "Traceback" not in err
    for path, fragment in bad.items():
        lines = [line for line in err.splitlines() if f"{path}:" in line]
        assert lines, f"{path} is not reported"
        assert any(fragment in line for line in lines), (path, fragment, lines)
    named = {line.split(": ")[0].strip() for line in err.splitlines() if line.startswith("  /")}
    assert named <= {str(p) for p in bad}, named - {str(p) for p in bad}


def rows_by_path(paths, embeddings) -> dict[str, np.ndarray]:
    return {str(p): embeddings[i] for i, p in enumerate(paths)}


def assert_pairs_embed_alike(corpus, rows: dict[str, np.ndarray]) -> None:
    for hostile_file, reference in corpus.pairs.items():
        np.testing.assert_allclose(
            rows[str(hostile_file)], rows[str(reference)], atol=1e-6, err_msg=hostile_file.name
        )


# ------------------------------------------------------------------ the commands, as root


def test_index_and_embed_skip_count_and_embed_right(capsys, hostile, tmp_path):
    _, corpus, checkpoint = hostile
    bad, good = corpus.expected_bad(privileged=True), corpus.expected_good(privileged=True)
    code, out, err = run(
        capsys, "index", "-m", checkpoint, corpus.root, "-o", tmp_path / "idx", "--no-progress"
    )
    assert code == 0, err
    assert f"skipped {len(bad)} unreadable file(s):" in err and f"indexed {len(good)} images" in out
    assert_reported(err, bad)
    index = Index.load(tmp_path / "idx")
    assert sorted(index.paths) == sorted(str(p) for p in good)
    assert_pairs_embed_alike(corpus, rows_by_path(index.paths, index.embeddings))

    code, out, err = run(
        capsys, "embed", "-m", checkpoint, corpus.root, "-o", tmp_path / "emb", "--no-progress"
    )
    assert code == 0, err
    assert f"skipped {len(bad)} unreadable file(s):" in err and f"embedded {len(good)} images" in out
    meta = json.loads((tmp_path / "emb" / "metadata.json").read_text())
    exported = rows_by_path(meta["paths"], np.load(tmp_path / "emb" / "embeddings.npy"))
    expected = rows_by_path(index.paths, index.embeddings)
    assert exported.keys() == expected.keys()
    for path, row in exported.items():
        np.testing.assert_allclose(row, expected[path], atol=1e-6)


def test_evaluate_counts_every_skip(capsys, hostile, tmp_path):
    _, corpus, checkpoint = hostile
    bad, good = corpus.expected_bad(privileged=True), corpus.expected_good(privileged=True)
    argv = ["evaluate", "-m", checkpoint, corpus.root, "-o", tmp_path / "eval", "--no-progress"]
    code, out, err = run(capsys, *argv, *EVALUATE_QUICK)
    assert code == 0 and "Traceback" not in err, err
    info = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert f"- skipped: {len(bad)}" in out and f"- images: {len(good)}" in out, (out, info)


def test_query_refuses_each_bad_file_in_one_line_and_answers_the_others_right(capsys, hostile, tmp_path):
    _, corpus, checkpoint = hostile
    assert (
        run(capsys, "index", "-m", checkpoint, corpus.root, "-o", tmp_path / "idx", "--no-progress")[0] == 0
    )
    for path in corpus.bad:
        if path.is_dir():
            continue  # a folder (the link loop) queries with its images, not as one image
        code, out, err = run(capsys, "query", tmp_path / "idx", path, "-k", "3")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("deeprank: error: "), (path, err)
        assert str(path) in lines[0] and "Traceback" not in err and out == ""
    pairs = list(corpus.pairs.items())
    queries = [p for pair in pairs for p in pair]
    code, out, err = run(capsys, "query", tmp_path / "idx", *queries, "-k", "4", "--json")
    assert code == 0, err
    answers = {Path(a["query"]): a["hits"] for a in json.loads(out)}
    for hostile_file, reference in pairs:
        got, want = answers[hostile_file], answers[reference]
        assert {h["id"] for h in got[:2]} == {h["id"] for h in want[:2]}, hostile_file.name
        np.testing.assert_allclose([h["distance"] for h in got], [h["distance"] for h in want], atol=1e-5)


def test_triplets_and_training_on_them_skip_and_count(capsys, hostile, tmp_path):
    _, corpus, _ = hostile
    bad = corpus.expected_bad(privileged=True)
    listing_bad = {p: r for p, r in bad.items() if is_listing_skip(r)}
    out_csv = tmp_path / "triplets.csv"
    code, out, err = run(capsys, "triplets", corpus.root, "-o", out_csv)
    assert code == 0 and "Traceback" not in err, err
    for path, fragment in listing_bad.items():  # the walk's skips are said; files are not decoded here
        assert any(str(path) in line and fragment in line for line in err.splitlines()), path
    with open(out_csv, newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    named = {os.path.normpath(tmp_path / p) for row in rows for p in row}
    assert named and not named & {str(p) for p in listing_bad}
    code, out, err = run(capsys, "train", out_csv, "-o", tmp_path / "model", *TRAIN_QUICK)
    assert code == 0 and "Traceback" not in err, err
    _assert_training_counted(err, tmp_path / "model", bad)


def test_training_on_the_corpus_skips_and_counts(capsys, hostile, tmp_path):
    _, corpus, _ = hostile
    bad = corpus.expected_bad(privileged=True)
    code, out, err = run(capsys, "train", corpus.root, "-o", tmp_path / "model", *TRAIN_QUICK)
    assert code == 0 and "Traceback" not in err, err
    skipped = _assert_training_counted(err, tmp_path / "model", bad)
    listing_bad = {str(p) for p, r in bad.items() if is_listing_skip(r)}
    assert listing_bad <= skipped  # the walk's skips are counted even if training never samples them


def _assert_training_counted(err: str, model_dir: Path, bad: dict[Path, str]) -> set[str]:
    """The warned paths are bad ones, and the count printed and recorded is theirs."""
    warned = {
        os.path.normpath(line.removeprefix("deeprank: warning: skipping ").split(": ")[0])
        for line in err.splitlines()
        if line.startswith("deeprank: warning: skipping ")
    }
    assert warned <= {str(p) for p in bad}, warned - {str(p) for p in bad}
    count = json.loads((model_dir / "config.json").read_text())["progress"]["skipped"]
    assert count == len(warned) and (f"skipped {count} unreadable image(s)" in err) == (count > 0)
    return warned


# ------------------------------------------------------------------ the Python API


def test_index_build_records_every_skip_with_its_reason(hostile, built):
    _, corpus, _ = hostile
    bad = corpus.expected_bad(privileged=True)
    skipped = dict(built.skipped)
    assert skipped.keys() == {str(p) for p in bad}
    for path, fragment in bad.items():
        assert fragment in skipped[str(path)], (path, skipped[str(path)])
    assert sorted(built.paths) == sorted(str(p) for p in corpus.expected_good(privileged=True))


def test_embed_images_skips_each_unreadable_file_and_keeps_the_rest(hostile):
    _, corpus, checkpoint = hostile
    model, _ = resolve_model(checkpoint)
    files = sorted(p for p in corpus.bad if p.suffix.lower() in IMAGE_EXTENSIONS) + sorted(corpus.pairs)
    result = embed_images(model, files, batch_size=7)
    skipped = dict(result.skipped)
    assert skipped.keys() == {str(p) for p in files if p in corpus.bad}
    assert [files[i] for i in result.kept] == sorted(corpus.pairs)
    assert result.embeddings.shape == (len(corpus.pairs), model.embedding_dim)
    for path in files:
        if path in corpus.bad:
            with pytest.raises(DeeprankError, match="cannot read image"):
                embed_images(model, [path], skip_unreadable=False)


def test_index_search_refuses_bad_files_and_answers_pairs_alike(hostile, built):
    _, corpus, _ = hostile
    for path in corpus.bad:
        if not path.is_dir():
            with pytest.raises(DeeprankError, match="cannot read image"):
                built.search(path, k=3)
    for hostile_file, reference in corpus.pairs.items():
        got, want = built.search(hostile_file, k=5), built.search(reference, k=5)
        np.testing.assert_allclose(got.distances, want.distances, atol=1e-5)


def test_bombs_are_image_too_large_errors_named_by_file(hostile):
    _, corpus, _ = hostile
    for path, fragment in corpus.bad.items():
        if "over the limit" in fragment:
            with pytest.raises(ImageTooLarge, match=str(path.name)):
                open_image(path, 1)
        elif not path.is_dir():
            with pytest.raises(UnreadableImage):
                open_image(path, 1)


@pytest.mark.parametrize(
    ("mode", "shape"), [("RGB", (37, 53, 3)), ("RGBA", (37, 53, 4)), ("RGB", (3, 40, 3))]
)
def test_index_search_with_an_hwc_array_is_the_search_with_the_pil_image(built, mode, shape):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8), mode)
    if shape[0] in (1, 3):  # [3, W, 3]: channels first or last? Refused, with the layouts accepted
        with pytest.raises(ValueError, match="accepted layouts"):
            built.search(np.asarray(image), k=3)
        return
    as_array = built.search(np.asarray(image), k=len(built))  # [H, W, C] uint8: one image, not H
    as_pil = built.search(image, k=len(built))
    assert as_array.distances.shape == (1, len(built))
    assert as_array.ids == as_pil.ids
    np.testing.assert_array_equal(as_array.distances, as_pil.distances)


def test_a_grey_hw_array_is_refused_not_taken_as_vectors(built):
    grey = np.zeros((40, built.dim), np.uint8)  # [H, W] with W == dim: still not vectors (uint8)
    with pytest.raises(ValueError, match="cannot search with an array"):
        built.search(grey, k=3)


def test_evaluate_folder_records_the_skips(hostile, tmp_path):
    _, corpus, checkpoint = hostile
    with pytest.warns(RuntimeWarning, match="skipping"):
        paths = evaluate_folder(checkpoint, corpus.root, tmp_path, num_triplets=50, crops=5, progress=False)
    results = json.loads(next(p for p in paths if p.name == "results.json").read_text())
    text = json.dumps(results)
    assert f'"skipped": {len(corpus.expected_bad(privileged=True))}' in text, text[:400]


def test_server_uploads_of_the_corpus(hostile, built):
    _, corpus, _ = hostile
    with TestClient(create_app(built)) as client:
        for path in corpus.bad:
            if path.is_file() and not path.is_symlink() and path.stat().st_size:
                r = client.post("/search", files={"image": (path.name, path.read_bytes())}, data={"k": 3})
                assert r.status_code in (413, 415, 422), (path.name, r.status_code, r.text)
                assert isinstance(r.json()["detail"], str)
        for hostile_file, reference in corpus.pairs.items():
            with Image.open(hostile_file) as opened:
                if opened.format not in DEFAULT_FORMATS:  # PGM: not a format uploads accept
                    r = client.post(
                        "/search", files={"image": (hostile_file.name, hostile_file.read_bytes())}
                    )
                    assert r.status_code == 415, (hostile_file.name, r.text)
                    continue
            answers = [
                client.post("/search", files={"image": (p.name, p.read_bytes())}, data={"k": 4})
                for p in (hostile_file, reference)
            ]
            assert [a.status_code for a in answers] == [200, 200], hostile_file.name
            got, want = (a.json()["hits"] for a in answers)
            np.testing.assert_allclose(
                [h["distance"] for h in got],
                [h["distance"] for h in want],
                atol=1e-5,
                err_msg=hostile_file.name,
            )
        assert client.get("/health").status_code == 200


# ------------------------------------------------------------------ as an unprivileged user


def test_every_command_as_nobody_skips_the_locked_file_and_folder_too(hostile):
    base, corpus, checkpoint = hostile
    bad, good = corpus.expected_bad(privileged=False), corpus.expected_good(privileged=False)
    out = writable_dir(base, "nobody")
    locked_file = next(p for p in corpus.bad_unprivileged if not p.is_dir())
    locked_folder = str(corpus.root / "locked")
    model, root = ["-m", checkpoint], corpus.root
    calls = {
        "index": ["index", *model, root, "-o", out / "idx", "--no-progress"],
        "embed": ["embed", *model, root, "-o", out / "emb", "--no-progress"],
        "evaluate": ["evaluate", *model, root, "-o", out / "eval", "--no-progress", *EVALUATE_QUICK],
        "triplets": ["triplets", root, "-o", out / "t.csv"],
        "query locked": ["query", out / "idx", locked_file],
        "query pair": ["query", out / "idx", next(iter(corpus.pairs)), "-k", "2"],
        "train": ["train", root, "-o", out / "model", *TRAIN_QUICK],
    }
    results = dict(zip(calls, run_cli(list(calls.values()), home=out), strict=True))
    for r in results.values():
        assert r["traceback"] is None and "Traceback" not in r["stderr"], r
    for name, verb in (("index", "indexed"), ("embed", "embedded")):
        r = results[name]
        assert r["code"] == 0, r["stderr"]
        assert f"skipped {len(bad)} unreadable file(s):" in r["stderr"], r["stderr"]
        assert f"{verb} {len(good)} images" in r["stdout"]
        assert_reported(r["stderr"], bad)
    evaluate = results["evaluate"]
    assert evaluate["code"] == 0 and f"- skipped: {len(bad)}" in evaluate["stdout"], evaluate["stderr"]
    assert results["triplets"]["code"] == 0 and locked_folder in results["triplets"]["stderr"]
    refused = results["query locked"]
    assert refused["code"] == 2 and refused["stderr"].count("\n") == 1, refused["stderr"]
    assert "Permission denied" in refused["stderr"] and str(locked_file) in refused["stderr"]
    assert results["query pair"]["code"] == 0, results["query pair"]["stderr"]
    train = results["train"]
    assert train["code"] == 0 and locked_folder in train["stderr"], train["stderr"]
