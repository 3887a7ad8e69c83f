"""The class test: a corpus of hostile files (tests/helpers/hostile_files.py) through every command
and the Python API. Never a traceback, never a silent wrong answer, every skip counted.

The commands run as ``nobody`` (tests/helpers/unprivileged.py), so chmod 000 files and folders are
unreadable as they are for users; the Python API runs in this process (as root here, which reads
them: the expectations follow who reads). "No silent wrong answer" is checked by pairs: each 16-bit,
float, EXIF-rotated, CMYK, palette+alpha, animated or misnamed file must embed exactly like an
8-bit PNG of the picture it shows, and the model must tell different pictures apart.
"""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_files import write_corpus
from PIL import Image
from unprivileged import is_root, run_cli, shared_dir, writable_dir

from deeprank.embedding import embed_images
from deeprank.errors import DeeprankError
from deeprank.evaluation import evaluate_folder
from deeprank.index import Index
from deeprank.models import MultiScaleNet
from deeprank.models.checkpoint import save_checkpoint

PRIVILEGED = is_root()  # who runs this process (the commands always run unprivileged)


@pytest.fixture(scope="module")
def setup():
    base = shared_dir("deeprank-hostile-")
    corpus = write_corpus(base / "collection", np.random.default_rng(20240613))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(base / "model", MultiScaleNet("small", in_channels=3))
    for folder, _, files in os.walk(checkpoint):  # written 0600 by the atomic writes: let nobody read
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    yield corpus, checkpoint, writable_dir(base, "home")
    for entry in corpus.bad_unprivileged:
        os.chmod(entry, 0o755)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def index(setup):
    corpus, checkpoint, _ = setup
    with pytest.warns(RuntimeWarning, match="skipping"):  # the folder-level skips are warned about
        return Index.build(checkpoint, corpus.root, progress=False)


def _listing_level(bad: dict[Path, str]) -> dict[Path, str]:
    """The entries that are skipped while listing (links, special files, folders), not decoded."""
    return {p: r for p, r in bad.items() if p.is_symlink() or p.is_dir() or not p.is_file()}


def _decoded_bad(bad: dict[Path, str]) -> dict[Path, str]:
    listing = _listing_level(bad)
    return {p: r for p, r in bad.items() if p not in listing}


# ------------------------------------------------------------------ the Python API


def test_index_build_skips_and_records_exactly_the_bad_files(setup, index):
    corpus = setup[0]
    expected = corpus.expected_bad(PRIVILEGED)
    skipped = {Path(p): reason for p, reason in index.skipped}
    assert set(skipped) == set(expected)
    for path, fragment in expected.items():
        assert fragment in skipped[path], (path, skipped[path])
    assert sorted(Path(p) for p in index.paths) == corpus.expected_good(PRIVILEGED)
    assert len(index) + len(expected) > len(corpus.good)


def test_no_silent_wrong_answer_every_odd_file_embeds_as_the_picture_it_shows(setup, index):
    corpus = setup[0]
    ids = {Path(p): i for i, p in zip(index.ids, index.paths, strict=True)}
    vectors = {path: index.vector(ids[path]) for path in ids}
    for hostile, reference in corpus.pairs.items():
        np.testing.assert_allclose(vectors[hostile], vectors[reference], atol=1e-5, err_msg=str(hostile))
    pictures = {Path(r).read_bytes(): vectors[r] for r in corpus.pairs.values()}  # distinct references
    distinct = list(pictures.values())
    assert len(distinct) >= 8
    gaps = [np.abs(a - b).max() for j, a in enumerate(distinct) for b in distinct[j + 1 :]]
    assert min(gaps) > 1e-4  # the model tells the pictures apart: equal vectors above are no accident


def test_searching_with_a_bad_file_is_one_clear_error(setup, index):
    corpus = setup[0]
    for path, fragment in _decoded_bad(corpus.expected_bad(PRIVILEGED)).items():
        with pytest.raises(DeeprankError, match=re.escape(str(path))) as exc:
            index.search(path, k=3)
        assert fragment in str(exc.value)
    for path in ("self.png", "gone.png", "fifo.png"):
        with pytest.raises(DeeprankError, match=re.escape(path)):
            index.search(corpus.root / "hostile" / path, k=3)


def test_searching_with_odd_files_pil_images_and_arrays_agrees(setup, index):
    corpus = setup[0]
    for hostile, reference in corpus.pairs.items():
        found = index.search(hostile, k=4)
        expected = index.search(reference, k=4)
        np.testing.assert_allclose(found.distances, expected.distances, atol=1e-5)
        with Image.open(reference) as image:
            pixels = np.asarray(image.convert("RGB"))
            from_pil = index.search(image, k=4)
        from_array = index.search(pixels, k=4)  # [H, W, 3] uint8: one image, not H grey ones
        assert len(from_array) == 1 and from_array.ids == from_pil.ids == expected.ids


def test_embed_images_records_every_unreadable_file(setup):
    corpus, checkpoint, _ = setup
    from deeprank.models.checkpoint import resolve_model

    model, _ = resolve_model(checkpoint)
    bad = _decoded_bad(corpus.expected_bad(PRIVILEGED))
    sources = [*corpus.expected_good(PRIVILEGED), *bad]
    result = embed_images(model, sources)
    assert {Path(p) for p, _ in result.skipped} == set(bad)
    assert result.kept.tolist() == list(range(len(sources) - len(bad)))
    assert result.embeddings.shape[0] == len(sources) - len(bad)


def test_evaluate_folder_counts_every_skip(setup, tmp_path):
    corpus, checkpoint, _ = setup
    with pytest.warns(RuntimeWarning):
        evaluate_folder(checkpoint, corpus.root, tmp_path, k=5, num_triplets=50, crops=5, progress=False)
    info = json.loads((tmp_path / "results.json").read_text())["info"]
    assert info["skipped"] == len(corpus.expected_bad(PRIVILEGED))
    assert info["images"] == len(corpus.expected_good(PRIVILEGED))


# ------------------------------------------------------------------ every command, unprivileged


@pytest.fixture(scope="module")
def commands(setup):
    """Every command over the corpus, run once as nobody; results by name."""
    corpus, checkpoint, home = setup
    root, hostile = corpus.root, corpus.root / "hostile"
    bad_queries = [p for p in _decoded_bad(corpus.expected_bad(False))]
    calls = {
        "index": ["index", "-m", checkpoint, root, "-o", home / "idx", "--no-progress"],
        "embed": ["embed", "-m", checkpoint, root, "-o", home / "emb", "--no-progress"],
        "evaluate": [
            "evaluate", "-m", checkpoint, root, "-o", home / "ev", "-k", "5", "--num-triplets", "50",
            "--crops", "5", "--no-progress",
        ],
        "triplets": ["triplets", root, "-o", home / "triplets.csv"],
        "train": [
            "train", root, "-o", home / "trained", "--max-steps", "2", "--batch-size", "4",
            "--checkpoint-every", "0", "--no-progress",
        ],
        "query good": ["query", home / "idx", root / "alpha" / "0.png", "-k", "3"],
        "query folder": ["query", home / "idx", hostile, "-k", "3"],
        **{f"query {p.name}": ["query", home / "idx", p, "-k", "3"] for p in bad_queries},
    }  # fmt: skip
    results = run_cli(list(calls.values()), home=home)
    return dict(zip(calls, results, strict=True)), corpus


def _assert_no_traceback(result):
    assert result["traceback"] is None, result["traceback"]
    assert "Traceback" not in result["stderr"], result["stderr"]


def _one_line_error(result) -> str:
    _assert_no_traceback(result)
    assert result["code"] == 2, result
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deeprank: error: "), result["stderr"]
    return lines[0]


@pytest.mark.parametrize("name", ["index", "embed"])
def test_index_and_embed_skip_and_count_every_bad_file(commands, name):
    results, corpus = commands
    result = results[name]
    _assert_no_traceback(result)
    assert result["code"] == 0, result["stderr"]
    bad, good = corpus.expected_bad(False), corpus.expected_good(False)
    assert f"skipped {len(bad)} unreadable file(s):" in result["stderr"]
    verb = "indexed" if name == "index" else "embedded"
    assert f"{verb} {len(good)} images" in result["stdout"]


def test_evaluate_skips_and_counts_every_bad_file(commands):
    results, corpus = commands
    result = results["evaluate"]
    _assert_no_traceback(result)
    assert result["code"] == 0, result["stderr"]
    assert f"- skipped: {len(corpus.expected_bad(False))}\n" in result["stdout"]
    assert f"- images: {len(corpus.expected_good(False))}\n" in result["stdout"]


def test_triplets_reports_what_it_cannot_list(commands):
    results, corpus = commands
    result = results["triplets"]
    _assert_no_traceback(result)
    assert result["code"] == 0, result["stderr"]
    warned = [
        line for line in result["stderr"].splitlines() if line.startswith("deeprank: warning: skipping")
    ]
    assert len(warned) == len(_listing_level(corpus.expected_bad(False)))


def test_train_skips_only_bad_files_and_counts_them(commands):
    results, corpus = commands
    result = results["train"]
    _assert_no_traceback(result)
    assert result["code"] == 0 and "checkpoint: " in result["stdout"], result["stderr"]
    bad = corpus.expected_bad(False)
    warned = re.findall(r"^deeprank: warning: skipping (.+?): ", result["stderr"], flags=re.M)
    assert warned and all(Path(p) in bad for p in warned), warned  # never a good image
    count = int(re.search(r"^skipped (\d+) unreadable image\(s\)$", result["stderr"], flags=re.M).group(1))
    assert len(_listing_level(bad)) <= count == len(set(warned)) <= len(bad)


def test_query_answers_good_files_and_refuses_bad_ones_in_one_line(commands):
    results, corpus = commands
    good = results["query good"]
    _assert_no_traceback(good)
    assert good["code"] == 0 and good["stdout"].count("\n") == 4, good
    for path, fragment in _decoded_bad(corpus.expected_bad(False)).items():
        line = _one_line_error(results[f"query {path.name}"])
        assert str(path) in line and fragment in line, line
    folder = results["query folder"]  # warned about what it cannot list, then refused at a bad file
    _assert_no_traceback(folder)
    *warnings, last = folder["stderr"].strip().splitlines()
    assert folder["code"] == 2 and last.startswith("deeprank: error: cannot read image ")
    assert len(warnings) == len(_listing_level(corpus.expected_bad(False))) - 1  # locked/ is not below
    assert all(w.startswith("deeprank: warning: skipping ") for w in warnings)
