"""recipes/choose_click_centrality.py: click centrality of the first click's masks, and the choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _modules import load_file, load_recipe

from composer.refine import ContrastRank

# the fake segmenter (three fixed masks and scores) of the first-click-slots test
_slots = load_file(Path(__file__).with_name("test_first_click_slots.py"), "_slots_for_centrality")
ThreeMasks, H, W = _slots.ThreeMasks, _slots.H, _slots.W


def test_centrality_is_the_click_depth_over_the_mask_depth() -> None:
    mod = load_recipe("choose_click_centrality")
    m = np.zeros((9, 11), bool)
    m[1:8, 1:8] = True  # 7x7: depth 4 at the centre, 1 on the edge
    assert mod.click_centrality(m, 4, 4) == pytest.approx(1.0)
    assert mod.click_centrality(m, 1, 4) == pytest.approx(0.25)
    assert mod.click_centrality(m, 9, 4) == 0.0  # outside the mask
    full = np.ones((5, 5), bool)  # the image border is the boundary
    assert mod.click_centrality(full, 0, 0) == pytest.approx(1 / 3)


def test_centrality_lifts_the_whole_object_over_a_part_the_click_sits_at_the_edge_of() -> None:
    mod = load_recipe("choose_click_centrality")
    gt, masks = _slots.square_half_corner()
    seg = ThreeMasks(masks, [0.3, 0.85, 0.5])
    rows = mod.first_click_features(seg, [_slots.Item("a", gt)], ContrastRank(band=4.0, ref_size=50))
    assert rows.shape == (1, 12)
    np.testing.assert_allclose(rows[0, :6], [0.3, 0.85, 0.5, 1.0, 0.5, 25 / 400], atol=1e-6)
    # the protocol clicks (19, 19): the square's deepest pixel, the half's right edge, off the corner
    np.testing.assert_allclose(rows[0, 9:12], [1.0, 0.2, 0.0])
    assert mod.top1(rows, mod.ranked(rows, 0.0, 0.0)) == pytest.approx(0.5)
    assert mod.top1(rows, mod.ranked(rows, 0.0, 1.0)) == pytest.approx(1.0)
    data = {"bsds_heldout": rows, "coco_tune": rows}
    wc, wk, best = mod.choose_weights(data, ["bsds_heldout", "coco_tune"])
    assert best == pytest.approx(1.0)
    assert (wc, wk) == (0.0, 0.75)  # the smallest pair that gets there: 0.3 + 0.75 > 0.85 + 0.15
