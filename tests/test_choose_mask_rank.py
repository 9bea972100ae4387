"""recipes/choose_mask_rank.py: the first click's masks with their contrasts, and the weight choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _modules import load_file, load_recipe

from composer.refine import ContrastRank

# the same fake segmenter (three fixed masks and scores) as the first-click-slots test
_slots = load_file(Path(__file__).with_name("test_first_click_slots.py"), "_slots_for_rank")
ThreeMasks, H, W = _slots.ThreeMasks, _slots.H, _slots.W


class Item(_slots.Item):
    """The slots test's item with a coloured object on a dark background."""

    def load_image(self) -> np.ndarray:
        image = np.full((H, W, 3), 30, np.uint8)
        image[self.gt_mask] = (250, 200, 10)
        return image


def test_contrast_lifts_the_object_mask_over_an_overrated_part() -> None:
    mod = load_recipe("choose_mask_rank")
    gt, masks = _slots.square_half_corner()
    seg = ThreeMasks(masks, [0.3, 0.9, 0.5])
    ranks = [ContrastRank(band=4.0, ref_size=50), ContrastRank(band=4.0, ref_size=50, bins=16)]
    rows = mod.first_click_contrasts(seg, [Item("a", gt)], ranks)
    assert rows.shape == (1, 12)
    np.testing.assert_allclose(rows[0, :3], [0.3, 0.9, 0.5], atol=1e-6)
    np.testing.assert_allclose(rows[0, 3:6], [1.0, 0.5, 25 / 400])
    image = Item("a", gt).load_image()
    np.testing.assert_allclose(rows[0, 6:9], ranks[0].contrasts(image, seg.masks), atol=1e-6)
    assert rows[0, 6] == pytest.approx(1.0) and rows[0, 7] < 0.8  # the object's edge is all colour
    # predicted IoU alone picks the half (contrast .47); with weight 2 the whole square wins
    assert mod.top1(rows, mod.ranked(rows, 0, 0.0)) == pytest.approx(0.5)
    assert mod.top1(rows, mod.ranked(rows, 0, 2.0)) == pytest.approx(1.0)
    data = {"bsds_heldout": rows, "coco_tune": rows}
    w, best = mod.choose_weight(data, ["bsds_heldout", "coco_tune"], 0)
    assert best == pytest.approx(1.0) and 1.0 < w <= 2.0  # the smallest weight that gets there
    assert mod.choose_weight(data, ["bsds_heldout"], 0, weights=(0.0,)) == (0.0, pytest.approx(0.5))
