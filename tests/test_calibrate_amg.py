"""recipes/calibrate_amg.py: the threshold-pair scoring (filter, box NMS, pooled P/R/F1)."""

from __future__ import annotations

import numpy as np
from _modules import load_recipe


def _recipe():
    return load_recipe("calibrate_amg")


def test_score_pairs_counts_precision_recall_after_filters_and_nms() -> None:
    cal = _recipe()
    # 3 candidates, 2 regions: a good mask of region 0 (low score), its near-duplicate box with a
    # higher score but a poor mask, and a mask matching nothing.
    item = {
        "pred_iou": np.array([0.35, 0.9, 0.5], np.float32),
        "stability": np.array([0.75, 0.95, 0.8], np.float32),
        "boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]], np.float32),
        "iou": np.array([[0.9, 0.0], [0.3, 0.0], [0.0, 0.2]], np.float32),
    }
    rows = {(r["pred_iou_thresh"], r["stability_score_thresh"]): r for r in cal.score_pairs([item])}
    everything = rows[(0.0, 0.0)]  # NMS keeps the higher-scored duplicate (poor) + the third
    assert everything["masks_per_image"] == 2
    assert everything["precision"] == 0.0 and everything["recall"] == 0.0
    strict = rows[(0.88, 0.95)]  # only the poor duplicate passes
    assert strict["masks_per_image"] == 1 and strict["f1"] == 0.0
    low = rows[(0.3, 0.7)]  # same filters pass all three: still NMS to two
    assert low["masks_per_image"] == 2
    # Without the duplicate, the good mask survives: precision 1/2, recall 1/2.
    item2 = {k: v[[0, 2]] for k, v in item.items()}
    row = {(r["pred_iou_thresh"], r["stability_score_thresh"]): r for r in cal.score_pairs([item2])}
    assert row[(0.3, 0.7)]["precision"] == 0.5 and row[(0.3, 0.7)]["recall"] == 0.5
    assert abs(row[(0.3, 0.7)]["f1"] - 0.5) < 1e-9
    assert row[(0.4, 0.7)]["masks_per_image"] == 1  # the good mask (0.35) is filtered out
