"""PNG figures: the rank heat-map puts triplets in the right cells; result grids have the right layout."""

import numpy as np
import pytest
from PIL import Image

from deeprank.evaluation.plots import rank_heatmap, result_grid, to_pil


def test_heatmap_places_counts_above_or_below_the_diagonal(tmp_path):
    # All triplets with the negative ranked far after the positive: only the upper-left area is coloured.
    rp = np.ones(100, dtype=int)
    rn = np.full(100, 100)
    path = rank_heatmap(rp, rn, tmp_path / "h.png", bins=10, cell=10, max_rank=100)
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    left, top = 70, 40  # plot origin in rank_heatmap's layout
    upper_left = img[top + 5, left + 5]  # x = low positive rank, y = high negative rank
    lower_right = img[top + 95, left + 95]
    assert tuple(lower_right) == (245, 245, 245)  # empty cell
    assert tuple(upper_left) == (253, 231, 37)  # the fullest cell takes the top colour of the ramp


def test_heatmap_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="equal length"):
        rank_heatmap([1, 2], [1], tmp_path / "h.png")


def test_result_grid_layout_and_frames(tmp_path):
    q = [np.zeros((28, 28), np.uint8), np.full((1, 28, 28), 0.5, np.float32)]
    res = [[np.full((28, 28, 3), 255, np.uint8)] * 3, [np.zeros((3, 28, 28))] * 3]
    ok = np.array([[True, False, True], [False, False, True]])
    path = result_grid(q, res, np.arange(6).reshape(2, 3) / 10, tmp_path / "g.png", correct=ok, cell=40)
    img = Image.open(path)
    assert img.size == (6 + 4 * 46 + 6, 6 + 2 * (40 + 16 + 6))
    px = np.asarray(img.convert("RGB")).astype(int)
    x_first, x_second = 6 + 46 + 6, 6 + 2 * 46 + 6  # result columns 1 and 2 of row 1
    assert tuple(px[6 + 20, x_first - 2]) == (40, 160, 60)  # green frame: correct
    assert tuple(px[6 + 20, x_second - 2]) == (210, 40, 40)  # red frame: wrong
    with pytest.raises(ValueError, match="as many"):
        result_grid(q, res[:1], np.zeros((2, 3)), tmp_path / "x.png")


def test_to_pil_layouts(tmp_path):
    assert to_pil(np.zeros((3, 5, 7))).size == (7, 5)
    assert to_pil(np.zeros((5, 7, 3), np.uint8)).size == (7, 5)
    Image.new("L", (4, 6)).save(tmp_path / "a.png")
    assert to_pil(tmp_path / "a.png").mode == "RGB"
