"""Zoom-in sessions keep earlier crops' embeddings for undo without the crops' pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from composer import load_segmenter
from composer.embedding import ImageEmbedding
from composer.interactive import ClickSession, ZoomIn, _LeanFrame
from composer.io.image import load_image

pytestmark = pytest.mark.data

# positive clicks that walk over the object, each moving the crop (recompute_iou=1: any new
# box is a new crop), then negative ones
CLICKS = [((0.5, 0.5), 1), ((0.3, 0.4), 1), ((0.7, 0.6), 1), ((0.45, 0.25), 1),
          ((0.1, 0.1), 0), ((0.9, 0.9), 0)]


def _pixels_held(s: ClickSession) -> list[ImageEmbedding]:
    """Crop embeddings in the undo history that still hold their pixels, apart from the
    current frame (which the session holds anyway)."""
    out: dict[int, ImageEmbedding] = {}
    for frame, _, _ in s._history:
        if isinstance(frame, ImageEmbedding) and frame.crop_box is not None \
                and "image" in frame.extras and frame is not s.frame:
            out[id(frame)] = frame
    return list(out.values())


def test_history_drops_crop_pixels_and_undo_restores_them_exactly(grabcut_dir) -> None:
    image = load_image(grabcut_dir / "data_GT" / "106024.jpg")
    h, w = image.shape[:2]
    seg = load_segmenter("composer_tiny")
    s = ClickSession(seg, image, zoom_in=ZoomIn(min_crop=64, recompute_iou=1.0))
    frames, predictions, logits = [], [], []
    for (fx, fy), label in CLICKS:
        s.click((fx * w, fy * h), label)
        frames.append(s.frame)
        predictions.append(s.prediction.copy())
        logits.append(s.prev_logits.copy())
        assert _pixels_held(s) == []
    assert s.encoder_calls >= 3  # the crop moved
    assert sum(isinstance(f, _LeanFrame) for f, _, _ in s._history) >= 2
    # undo back to the first click: every frame, prediction and mask prompt comes back
    for k in range(len(CLICKS) - 2, -1, -1):
        now = s.undo()
        assert np.array_equal(now, predictions[k])
        assert np.array_equal(s.prev_logits, logits[k])
        old = frames[k]
        assert s.frame.crop_box == old.crop_box
        assert torch.equal(s.frame.features, old.features)
        assert set(s.frame.extras) == set(old.extras)
        for key, value in old.extras.items():
            assert torch.equal(s.frame.extras[key], value), key
        if k >= 1:
            # the click after the undone one predicts as the first time round
            masks_again, _ = s.click((CLICKS[k + 1][0][0] * w, CLICKS[k + 1][0][1] * h),
                                     CLICKS[k + 1][1])
            assert np.array_equal(s.prediction, predictions[k + 1])
            s.undo()
