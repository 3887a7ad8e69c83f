"""Decoding in worker processes: the same batches, embeddings and skipped files as in-process."""

import numpy as np
import pytest
import torch

from deeprank.data.images import image_tensor
from deeprank.embedding import embed_folder, embed_images, list_folder
from deeprank.embedding.loader import decode_source, default_workers, image_batches, resolve_workers
from deeprank.errors import DeeprankError

BAD_NAMES = {"0000_broken.png", "zz_empty.jpg", "5_truncated.png"}


def reference_decode(files, size, channels):
    """Per file, independently of the loader: pixels or the reason the decode path gives."""
    out = []
    for f in files:
        try:
            out.append((image_tensor(f, size, channels), None))
        except ValueError as exc:
            out.append((None, exc.reason))
    return out


@pytest.mark.parametrize("batch_size", [1, 7, 46, 100])
def test_batches_cut_and_decoded_as_in_process(mixed_folder, batch_size):
    files = list_folder(mixed_folder)
    assert len(files) == 46
    want = reference_decode(files, 28, 1)
    runs = {w: list(image_batches(files, 28, 1, batch_size=batch_size, workers=w)) for w in (0, 2)}
    for batches in runs.values():
        assert [b.start for b in batches] == list(range(0, 46, batch_size))
        assert sum(b.size for b in batches) == 46
        for b in batches:
            for j in range(b.size):
                pixels, reason = want[b.start + j]
                if pixels is None:
                    assert (str(files[b.start + j]), reason) in b.skipped
                else:
                    assert torch.equal(b.pixels[b.kept.index(j)], pixels)
    for a, b in zip(runs[0], runs[2], strict=True):
        assert (a.start, a.size, a.kept, a.skipped) == (b.start, b.size, b.kept, b.skipped)
        assert torch.equal(a.pixels, b.pixels)


@pytest.mark.parametrize("batch_size", [5, 16])
def test_embeddings_identical_with_workers(grey_model, mixed_folder, batch_size):
    files = list_folder(mixed_folder)
    serial = embed_images(grey_model, files, batch_size=batch_size, workers=0)
    parallel = embed_images(grey_model, files, batch_size=batch_size, workers=2)
    np.testing.assert_array_equal(parallel.embeddings, serial.embeddings)
    np.testing.assert_array_equal(parallel.kept, serial.kept)
    assert parallel.skipped == serial.skipped
    assert {files[i].name for i in set(range(46)) - set(serial.kept.tolist())} == BAD_NAMES
    assert [s for s, _ in serial.skipped] == [str(f) for f in files if f.name in BAD_NAMES]
    assert serial.embeddings.shape == (43, 16)


def test_embed_folder_default_workers_matches_in_process(grey_model, mixed_folder):
    # 46 files in batches of 8: more than one batch, so the default starts worker processes.
    assert resolve_workers(None, 46, 8) == default_workers() >= 1
    auto = embed_folder(grey_model, mixed_folder, batch_size=8)
    serial = embed_folder(grey_model, mixed_folder, batch_size=8, workers=0)
    np.testing.assert_array_equal(auto[0], serial[0])
    assert auto[1] == serial[1] and auto[2] == serial[2]


def test_strict_mode_names_the_first_unreadable_file_with_workers(grey_model, mixed_folder):
    files = list_folder(mixed_folder)
    first_bad = next(f for f in files if f.name in BAD_NAMES)
    with pytest.raises(DeeprankError, match=first_bad.name):
        embed_images(grey_model, files, batch_size=4, workers=2, skip_unreadable=False)


def test_no_sources_and_worker_argument_checks(grey_model):
    res = embed_images(grey_model, [], workers=2)
    assert res.embeddings.shape == (0, 16) and res.kept.shape == (0,) and res.skipped == []
    assert resolve_workers(None, 10, 256) == 0  # one batch: decoding in-process is cheaper
    assert resolve_workers(3, 10, 256) == 3
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="workers must be an int >= 0"):
            resolve_workers(bad, 10, 4)


def test_decode_source_reports_reason(tmp_path):
    pixels, reason = decode_source(tmp_path / "missing.png", 28, 1)
    assert pixels is None and reason == "file not found"
    (tmp_path / "x.png").write_bytes(b"junk")
    pixels, reason = decode_source(tmp_path / "x.png", 28, 3)
    assert pixels is None and "not an image" in reason
