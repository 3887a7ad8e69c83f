"""Reports: the markdown table formats each kind of value; results.json holds the rows and info."""

import json

import pytest

from deeprank import evaluation as ev


def test_results_table_files(tmp_path):
    rows = [
        {"method": "a", "similarity_precision": 0.5, "score@30": 12.0, "dim": 4},
        {"method": "b", "similarity_precision": 0.75, "score@30": -3.0, "dim": 8},
    ]
    json_path, md_path = ev.write_results(rows, tmp_path, info={"data": "x"})
    md = md_path.read_text()
    assert md.startswith("# deeprank evaluation\n\n- data: x\n")
    assert "| method | similarity_precision | score@30 | dim |" in md
    assert "| b | 75.0% | -3 | 8 |" in md
    payload = json.loads(json_path.read_text())
    assert payload == {"info": {"data": "x"}, "results": rows}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]  # no temp files


def test_cells_by_kind_of_value():
    rows = [
        {
            "method": "m",
            "mean_average_precision_at_r": 0.12345,
            "crop_recall@1": 1.0,
            "embed_ms_per_image": 0.01234,
            "note": None,
        }
    ]
    md = ev.results_markdown(rows, title="T")
    assert md.startswith("## T\n\n")
    assert "| m | 12.3% | 100.0% | 0.0123 | None |" in md
    with pytest.raises(ValueError, match="no result rows"):
        ev.results_markdown([])
