"""recipes/first_click_slots.py: the first click's three masks, and the per-slot calibration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from _modules import load_recipe

from composer.embedding import ImageEmbedding
from composer.structures import Detections, Masks

H, W = 40, 50


def _load():
    return load_recipe("first_click_slots")


@dataclass
class Item:
    image_id: str
    gt_mask: np.ndarray
    ignore: None = None

    def load_image(self) -> np.ndarray:
        return np.zeros((H, W, 3), np.uint8)


class ThreeMasks:
    """Always the same three masks (the whole square, its left half, a corner) and scores."""

    model_id = "three"

    def __init__(self, masks: np.ndarray, scores: list[float]) -> None:
        self.masks, self.scores = masks, np.asarray(scores, np.float32)

    def embed(self, image):
        return ImageEmbedding(torch.zeros(1, 1, 1, 1), (H, W), (H, W), W, self.model_id)

    def predict(self, emb, points=None, labels=None, boxes=None, mask_input=None, multimask=True):
        return Detections.from_masks(Masks.from_dense(self.masks), self.scores)


def square_half_corner() -> tuple[np.ndarray, np.ndarray]:
    """The ground truth (a square) and ThreeMasks' masks: the square, its left half, a corner."""
    gt = np.zeros((H, W), bool)
    gt[10:30, 10:30] = True
    half = gt.copy()
    half[:, 20:] = False
    corner = np.zeros_like(gt)
    corner[10:15, 10:15] = True
    return gt, np.stack([gt, half, corner])


def test_first_clicks_record_every_slot() -> None:
    mod = _load()
    gt, masks = square_half_corner()
    seg = ThreeMasks(masks, [0.2, 0.9, 0.5])
    rows = mod.first_clicks(seg, [Item("a", gt), Item("b", gt)])
    assert rows.shape == (2, 11)
    np.testing.assert_allclose(rows[0, :3], [0.2, 0.9, 0.5], atol=1e-6)
    np.testing.assert_allclose(rows[0, 3:6], [1.0, 0.5, 25 / 400])
    np.testing.assert_allclose(rows[0, 6:9], [400 / 2000, 200 / 2000, 25 / 2000])
    assert rows[0, 9] == pytest.approx(400 / 2000) and list(rows[:, 10]) == [0, 1]
    # The model ranks the half first: top-1 0.5, the oracle 1.0.
    assert mod.top1(rows, rows[:, :3]) == pytest.approx(0.5)


def test_calibration_reranks_an_underrated_slot() -> None:
    mod = _load()
    rng = np.random.default_rng(0)

    def fake(n: int) -> np.ndarray:
        iou = np.stack([rng.uniform(0.7, 0.9, n), rng.uniform(0.3, 0.5, n), rng.uniform(0.4, 0.6, n)], 1)
        pred = iou - np.array([0.4, 0.0, 0.0]) + rng.normal(0, 0.01, (n, 3))  # slot 0 underrated
        return np.concatenate([pred, iou, np.zeros((n, 5))], 1)

    data = {"bsds_heldout": fake(40), "coco_tune": fake(30), "other": fake(20)}
    coef = mod.fit_calibration(data, ["bsds_heldout", "coco_tune"])
    assert coef.shape == (3, 2)
    assert coef[0, 0] == pytest.approx(0.4, abs=0.05) and coef[0, 1] == pytest.approx(1.0, abs=0.1)
    a = data["other"]
    assert mod.top1(a, a[:, :3]) < 0.65
    assert mod.top1(a, mod.calibrated(a, coef)) == pytest.approx(a[:, 3:6].max(1).mean())


def test_per_set_arrays_saves_loads_and_recomputes(tmp_path) -> None:
    mod = _load()
    calls = []

    def compute(name: str) -> np.ndarray:
        calls.append(name)
        return np.full((2, 3), len(calls), np.float64)

    first = mod.per_set_arrays(tmp_path, ["a", "b"], False, compute)
    assert calls == ["a", "b"] and (tmp_path / "a.npy").is_file()
    again = mod.per_set_arrays(tmp_path, ["a", "b"], False, compute)  # loaded, not computed
    assert calls == ["a", "b"] and all(np.array_equal(first[k], again[k]) for k in first)
    fresh = mod.per_set_arrays(tmp_path, ["b"], True, compute)
    assert calls == ["a", "b", "b"] and fresh["b"][0, 0] == 3


def test_whole_held_out_sets(bsds_dir, coco_dir) -> None:
    """``bsds200`` is the whole BSDS500 test split and ``coco40`` the held-out COCO half
    (``coco_subset_split("holdout")``), of which ``bsds20`` / ``coco20`` are the first images."""
    from composer.training.data import coco_subset_split

    mod = _load()
    bsds200, coco40 = mod.dataset("bsds200"), mod.dataset("coco40")
    assert len(bsds200) == 200 and len(coco40) == 40
    assert {item.image_id for item in coco40} == set(coco_subset_split("holdout"))
    assert [i.image_id for i in mod.dataset("coco20")] == [i.image_id for i in coco40[:20]]
    assert [i.image_id for i in mod.dataset("bsds20")] == [i.image_id for i in bsds200[:20]]
