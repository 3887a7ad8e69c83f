"""Training on hf:PATH and WebDataset shards: the labelled_data opener, skipped samples, validation."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from containers import COLORS, png_bytes, samples, write_shard

from deeprank import cli
from deeprank.training import train
from deeprank.training.logbook import read_log
from deeprank.training.sources import spec_kind


def test_spec_kinds():
    assert spec_kind("hf:some/folder") == "records" and spec_kind("shards/a-*.tar") == "records"
    assert spec_kind(None) == "fashion-mnist"
    with pytest.raises(FileNotFoundError, match="hf:PATH or .tar shards"):
        spec_kind("/no/such/folder")


def test_training_on_shards_skips_and_counts_unreadable_samples(small, tmp_path):
    shard = write_shard(tmp_path / "d.tar", samples(18) + [("zz.png", b"garbage"), ("zz.cls", b"0")])
    config = small(data=str(shard), image_size=16, max_steps=20, val_every=10, val_fraction=0.2)
    with pytest.warns(RuntimeWarning, match="zz.png"):
        out = train(config, progress=False)
    info = json.loads((out / "config.json").read_text())
    assert info["data"]["kind"] == "webdataset" and info["data"]["images"] == 19
    assert info["data"]["held_out"] == 4 and info["progress"]["skipped"] == 1
    assert [r["step"] for r in read_log(out) if r["event"] == "val"] == [10, 20]
    assert np.isfinite(info["progress"]["loss"])


def test_cli_train_on_a_parquet_file_with_named_columns(capsys, tmp_path):
    images = [png_bytes(COLORS[i % 3]) for i in range(12)]
    table = pa.table({"pic": [{"bytes": b, "path": None} for b in images], "cat": [i % 3 for i in range(12)]})
    pq.write_table(table, tmp_path / "d.parquet")
    argv = ["train", f"hf:{tmp_path / 'd.parquet'}", "--image-column", "pic", "--label-column", "cat",
            "-o", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4", "--image-size", "16",
            "--device", "cpu", "--no-progress", "--checkpoint-every", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["data"]["kind"] == "hf" and info["data"]["images"] == 12
    capsys.readouterr()
    argv[argv.index("-o") + 1] = str(tmp_path / "run2")
    assert cli.main([*argv[:2], "--image-column", "nope", *argv[4:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image-column 'nope'" in err[0]
