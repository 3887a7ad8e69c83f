"""WebDataset shards (deeprank.data.webdataset): samples listed from headers, read at their offsets."""

import pytest
import torch
from containers import COLORS, png_bytes, samples, write_shard
from hostile_files import png_header, png_pixel_bomb

from deeprank.data.images import UnreadableImage, image_tensor
from deeprank.data.records import RecordStore
from deeprank.data.webdataset import open_shards


def test_samples_decode_like_the_same_files(tmp_path):
    shard = write_shard(tmp_path / "train-000.tar", samples(6))
    records = open_shards(str(shard))
    assert records.names[0] == "train-000.tar/000000.png" and len(records) == 6
    assert records.labels.tolist() == [0, 1, 2, 0, 1, 2] and records.classes == ["0", "1", "2"]
    (tmp_path / "a.png").write_bytes(png_bytes(COLORS[1]))
    store = RecordStore(records, 12, 3)
    assert torch.equal(store.get(1), image_tensor(tmp_path / "a.png", 12, 3))  # the one decode path


def test_a_glob_reads_several_shards(tmp_path):
    write_shard(tmp_path / "s-0.tar", samples(4))
    write_shard(tmp_path / "s-1.tar", samples(5, start=4))
    records = open_shards(str(tmp_path / "s-*.tar"))
    assert len(records) == 9 and records.description["shards"] == 2
    with pytest.raises(FileNotFoundError, match="no WebDataset shards"):
        open_shards(str(tmp_path / "none-*.tar"))


def test_hostile_members_are_skipped_and_counted(tmp_path):
    members = samples(6) + [
        ("bomb.png", png_pixel_bomb()),
        ("bomb.cls", b"0"),
        ("claims.png", png_header()),  # a 30000 x 30000 header and no pixels
        ("claims.cls", b"1"),
        ("text.png", b"not an image at all"),
        ("text.cls", b"2"),
        ("nolabel.png", png_bytes(COLORS[0])),
        ("badlabel.png", png_bytes(COLORS[0])),
        ("badlabel.cls", b"\xff\xfe"),
    ]
    shard = write_shard(tmp_path / "h.tar", members)
    with pytest.warns(RuntimeWarning):
        records = open_shards(str(shard))
    assert sorted(name for name, _ in records.skipped) == ["h.tar/badlabel", "h.tar/nolabel"]
    store = RecordStore(records, 12, 3)
    bad = []
    for i in range(len(records)):
        try:
            store.get(i)
        except UnreadableImage as err:
            bad.append(err.path)
    assert sorted(bad) == ["h.tar/bomb.png", "h.tar/claims.png", "h.tar/text.png"]


@pytest.mark.parametrize("fraction", [0.2, 0.35, 0.5, 0.65, 0.8])
def test_a_truncated_shard_keeps_the_samples_before_the_cut(tmp_path, fraction):
    shard = write_shard(tmp_path / "t.tar", samples(8))
    data = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    end = len(data.rstrip(b"\0"))  # the last member's data; zero end blocks after it
    # Cuts on a header boundary (tarfile stops quietly there) and inside a header or member data.
    cut.write_bytes(data[: int(end * fraction) // 512 * 512 + 100 * (fraction > 0.5)])
    with pytest.warns(RuntimeWarning):
        records = open_shards(str(cut))
    assert 0 < len(records) < 8
    store = RecordStore(records, 12, 3)
    assert all(store.get(i).shape == (3, 12, 12) for i in range(len(records)))  # all listed are whole
    assert any("cut short" in reason for _, reason in records.skipped)


def test_not_a_tar_is_one_clear_error(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"\x1f\x8b compressed or garbage")
    with pytest.raises(ValueError, match="not an uncompressed tar"):
        open_shards(str(tmp_path / "x.tar"))
