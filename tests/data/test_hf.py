"""Hugging Face datasets on disk (deeprank.data.hf): save_to_disk folders, Arrow and Parquet files."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from containers import COLORS, png_bytes

from deeprank.data.hf import open_hf
from deeprank.data.images import UnreadableImage, image_tensor
from deeprank.data.records import RecordStore


def _rows(count=9):
    return [png_bytes(COLORS[i % 3]) for i in range(count)], [i % 3 for i in range(count)]


def test_a_saved_dataset_with_an_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")
    images, labels = _rows()
    for i, data in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(data)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["red", "green", "blue"])}
    )
    ds = datasets.Dataset.from_dict(
        {"img": [str(tmp_path / f"{i}.png") for i in range(9)], "label": labels}, features=features
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    records = open_hf(str(tmp_path / "saved"), image_column="img")
    assert len(records) == 9 and records.labels.tolist() == labels
    store = RecordStore(records, 12, 3)
    assert torch.equal(store.get(4), image_tensor(tmp_path / "4.png", 12, 3))  # the one decode path


def test_parquet_with_image_structs_and_string_labels(tmp_path):
    images, labels = _rows()
    table = pa.table(
        {
            "image": [{"bytes": b, "path": None} for b in images],
            "kind": [["red", "green", "blue"][c] for c in labels],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    records = open_hf(str(tmp_path / "train.parquet"), label_column="kind")
    assert records.classes == ["blue", "green", "red"] and len(records) == 9
    assert RecordStore(records, 8, 1).get(0).shape == (1, 8, 8)


def test_arrow_file_with_raw_bytes_and_bad_rows(tmp_path):
    images, labels = _rows(6)
    images[2] = b"not an image"
    labels[5] = None
    table = pa.table({"image": images, "label": labels})
    with pa.ipc.new_stream(tmp_path / "d.arrow", table.schema) as writer:
        writer.write_table(table)
    with pytest.warns(RuntimeWarning, match="no label"):
        records = open_hf(str(tmp_path / "d.arrow"))
    assert len(records) == 5 and records.skipped == [("d.arrow[5]", "no label")]
    store = RecordStore(records, 8, 3)
    with pytest.raises(UnreadableImage, match=r"d.arrow\[2\]"):
        store.get(2)
    assert 2 in store.bad and store.get(1).shape == (3, 8, 8)


def test_clear_errors_name_the_column_and_the_path(tmp_path):
    images, labels = _rows(3)
    pq.write_table(pa.table({"picture": images, "label": labels}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="--image-column 'image'.*picture"):
        open_hf(str(tmp_path / "x.parquet"))
    with pytest.raises(ValueError, match="--label-column 'y'"):
        open_hf(str(tmp_path / "x.parquet"), image_column="picture", label_column="y")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        open_hf("someone/some-dataset")
