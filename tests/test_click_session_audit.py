"""ClickSession as an annotation tool's back end: many clicks, undo, memory, aliasing."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from composer.embedding import ImageEmbedding
from composer.interactive import ClickSession, ZoomIn
from composer.structures import Detections, Masks

H, W = 600, 800
LOW = 16


def _embedding(h: int, w: int, crop_box=None) -> ImageEmbedding:
    s = 64 / max(h, w)
    return ImageEmbedding(
        torch.zeros(1, 1, 1, 1), (h, w), (round(h * s), round(w * s)), 64, "fake-many", crop_box
    )


class ManyMasks:
    """Segmenter double: every predict answers another mask (a disk whose radius follows the
    number of clicks, or salt-and-pepper noise on every fifth call), so each click's
    prediction differs; ``multimask`` gives three masks with the largest scored best."""

    model_id = "fake-many"

    def __init__(self) -> None:
        self.n = 0

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        h, w = np.asarray(image).shape[:2]
        return _embedding(h, w)

    def predict(self, emb, points=None, labels=None, boxes=None, mask_input=None, multimask=True):
        self.n += 1
        h, w = emb.original_size
        yy, xx = np.mgrid[:h, :w]
        x, y = np.asarray(points).reshape(-1, 2)[-1]
        if self.n % 5 == 0:
            one = np.random.default_rng(self.n).random((h, w)) < 0.5
        else:
            one = (yy - y) ** 2 + (xx - x) ** 2 <= (10 + 3 * self.n) ** 2
        m = 3 if multimask else 1
        dense = np.stack([one] + [one & (xx < x - 5 * i) for i in range(1, m)])
        scores = np.linspace(0.9, 0.5, m).astype(np.float32)
        low = np.random.default_rng(self.n).normal(size=(m, LOW, LOW)).astype(np.float32)
        return Detections.from_masks(
            Masks.from_dense(dense), scores, extras={"low_res_logits": low}
        )


def _clicks(n: int) -> list[tuple[tuple[float, float], int]]:
    rng = np.random.default_rng(0)
    return [
        ((float(rng.uniform(0, W)), float(rng.uniform(0, H))), int(k % 3 != 1)) for k in range(n)
    ]


@pytest.mark.parametrize("zoom", [None, ZoomIn(min_crop=64)])
def test_undo_after_many_clicks_restores_every_prediction_exactly(zoom) -> None:
    s = ClickSession(ManyMasks(), np.zeros((H, W, 3), np.uint8), zoom_in=zoom)
    seen = []
    for xy, label in _clicks(12):
        s.click(xy, label, multimask=len(seen) % 4 == 0)  # multimask switched on and off
        seen.append((s.prediction.copy(), s.prev_logits.copy(), s.frame))
    for k in range(len(seen) - 1, 0, -1):
        mask = s.undo()
        assert mask.dtype == bool and mask.shape == (H, W)
        assert np.array_equal(mask, seen[k - 1][0]) and mask is not s.prediction
        assert np.array_equal(s.prev_logits, seen[k - 1][1]) and s.frame is seen[k - 1][2]
    assert s.undo() is None and s.points == []


def test_history_does_not_keep_a_dense_mask_per_click() -> None:
    s = ClickSession(ManyMasks(), np.zeros((H, W, 3), np.uint8))
    clicks = _clicks(21)
    s.click(*clicks[0])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for xy, label in clicks[1:]:
            s.click(xy, label)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # dense, 20 clicks held 20 x 480 kB (9.6 MB); disks are a few hundred bytes of RLE and
    # noise is kept as packed bits (60 kB)
    assert grown < 2 * H * W, grown


def test_the_session_keeps_its_own_copy_of_the_prediction() -> None:
    s = ClickSession(ManyMasks(), np.zeros((H, W, 3), np.uint8))
    masks, _ = s.click((400, 300), 1)  # multimask: three masks, three logit maps
    assert s.prediction.base is None and s.prev_logits.base is None  # no view of all three
    kept = s.prediction.copy()
    masks[:] = False  # the caller paints on what it got
    assert np.array_equal(s.prediction, kept)
    s.click((100, 100), 0)
    back = s.undo()
    assert np.array_equal(back, kept)
    back[:] = False  # so is what undo gave back
    assert np.array_equal(s.prediction, kept)


def test_odd_clicks_are_refused_or_taken_as_they_come() -> None:
    s = ClickSession(ManyMasks(), np.zeros((H, W, 3), np.uint8), zoom_in=ZoomIn(min_crop=64))
    for bad in [(np.nan, 3), (3, np.inf), (-1, 3), (W, 3), (3, H)]:
        with pytest.raises(ValueError, match="outside"):
            s.click(bad, 1)
    assert s.points == [] and s._history == []
    s.click((5, 5), 0)  # a negative click first
    s.click((5, 5), 0)  # the same pixel twice
    s.click((W - 0.5, H - 0.5), 1)
    assert len(s.points) == 3 and s.prediction.shape == (H, W)
    assert s.undo() is not None and len(s.points) == 2
