"""Triplet CSV files: header or none, relative paths, bad rows."""

import pytest

from deeprank.data import read_triplet_csv


def test_triplet_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text(
        "anchor,positive,negative\nq.jpg,p.jpg,n.jpg\n\n/abs/q.jpg,p2.jpg,n2.jpg\n"
    )
    rows = read_triplet_csv(tmp_path / "h.csv")
    assert rows[0] == (tmp_path / "q.jpg", tmp_path / "p.jpg", tmp_path / "n.jpg")
    assert str(rows[1][0]) == "/abs/q.jpg"
    (tmp_path / "reordered.csv").write_text("negative,Query,positive\nn.jpg,q.jpg,p.jpg\n")
    assert read_triplet_csv(tmp_path / "reordered.csv")[0] == rows[0]
    (tmp_path / "plain.csv").write_text("q.jpg,p.jpg,n.jpg\n")
    assert read_triplet_csv(tmp_path / "plain.csv") == rows[:1]
    (tmp_path / "bad.csv").write_text("q.jpg,p.jpg,n.jpg\nq.jpg,p.jpg\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        read_triplet_csv(tmp_path / "bad.csv")
