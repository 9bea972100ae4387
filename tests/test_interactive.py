"""Click sessions and zoom-in: crop geometry, mask prompts across frames, the protocol with zoom."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from composer.embedding import ImageEmbedding
from composer.evaluation.points import PointEvaluator, simulate_clicks
from composer.interactive import (
    OUTSIDE_LOGIT,
    ClickSession,
    ZoomIn,
    box_iou,
    reframe_logits,
    zoom_box,
)
from composer.segmenters.base import upsample_logits
from composer.structures import Detections, Masks

H, W = 120, 160
LOW = 32


def disk(cy: float, cx: float, r: float, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def embedding(h: int, w: int, pad: int = 64, crop_box=None) -> ImageEmbedding:
    s = pad / max(h, w)
    return ImageEmbedding(
        torch.zeros(1, 1, 1, 1), (h, w), (round(h * s), round(w * s)), pad, "fake-crop", crop_box
    )


class CropOracle:
    """Segmenter double that knows the object in image pixels and answers in whatever frame
    (whole image or crop) it is asked; it records every call."""

    model_id = "fake-crop"

    def __init__(self, gt: np.ndarray) -> None:
        self.gt = gt
        self.calls: list[dict] = []
        self.embedded: list[tuple[int, int]] = []

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        h, w = np.asarray(image).shape[:2]
        self.embedded.append((h, w))
        return embedding(h, w)

    def predict(self, emb, points=None, labels=None, boxes=None, mask_input=None, multimask=True):
        emb.check_model(self.model_id)
        x0, y0 = (0, 0) if emb.crop_box is None else emb.crop_box[:2]
        h, w = emb.original_size
        local = self.gt[y0 : y0 + h, x0 : x0 + w]
        self.calls.append({"points": np.asarray(points).reshape(-1, 2), "crop": emb.crop_box,
                           "mask_input": mask_input})
        masks = Masks.from_dense(local[None])
        low = np.zeros((1, LOW, LOW), np.float32)
        return Detections.from_masks(masks, np.ones(1, np.float32), extras={"low_res_logits": low})


def test_zoom_box_expands_keeps_points_and_stays_inside() -> None:
    m = np.zeros((H, W), bool)
    m[40:60, 50:90] = True  # 40 x 20 box, centre (70, 50)
    box = zoom_box(m, np.array([[60, 50]]), (H, W), expansion=1.5, min_crop=10)
    assert box.tolist() == [40, 35, 100, 65]  # 60 x 30, same centre
    # A point outside the mask widens the box; the minimum side applies; the image bounds hold.
    box = zoom_box(m, np.array([[150, 55]]), (H, W), expansion=1.0, min_crop=50)
    assert box[0] == 50 and box[2] == 151 and box[3] - box[1] == 50
    box = zoom_box(None, np.array([[2, 3]]), (H, W), expansion=1.4, min_crop=40)
    assert box.tolist() == [0, 0, 40, 40]
    box = zoom_box(m, np.array([[60, 50]]), (H, W), expansion=10.0, min_crop=10)
    assert box.tolist() == [0, 0, W, H]
    with pytest.raises(ValueError):
        zoom_box(m, np.zeros((0, 2)), (H, W))
    assert box_iou(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        ZoomIn(skip_clicks=0)
    with pytest.raises(ValueError):
        ZoomIn(expansion=0.5)


def test_reframe_logits_moves_a_mask_between_frames() -> None:
    full = embedding(H, W)
    gt = disk(60, 70, 25)
    # Uniform background stays background in the same frame.
    low = reframe_logits(np.full((LOW, LOW), -10.0, np.float32), full, full)
    assert low.shape == (LOW, LOW) and (low < 0).all()
    # Logits of the disk in the whole image's frame: the disk sampled on its low-res grid.
    s = full.pad_size / LOW
    yy, xx = np.mgrid[:LOW, :LOW]
    cy, cx = (yy + 0.5) * s * (H / full.input_size[0]), (xx + 0.5) * s * (W / full.input_size[1])
    logits_a = np.where((cy - 60) ** 2 + (cx - 70) ** 2 <= 25**2, 10.0, -10.0).astype(np.float32)
    logits_a[(cy >= H) | (cx >= W)] = -10.0
    crop = embedding(60, 80, crop_box=(40, 30, 120, 90))
    logits_b = reframe_logits(logits_a, full, crop)
    up = upsample_logits(torch.from_numpy(logits_b)[None, None], crop)[0, 0].numpy() > 0
    want = gt[30:90, 40:120]
    inter, union = (up & want).sum(), (up | want).sum()
    assert inter / union > 0.9
    # And back to the whole image: outside the crop there is no evidence (OUTSIDE_LOGIT).
    back = reframe_logits(logits_b, crop, full)
    back_up = upsample_logits(torch.from_numpy(back)[None, None], full)[0, 0].numpy()
    assert (back_up[:, :30] < 0).all() and back_up[:, :30].min() == pytest.approx(OUTSIDE_LOGIT)
    assert ((back_up > 0) & gt).sum() / ((back_up > 0) | gt).sum() > 0.8
    with pytest.raises(ValueError):
        reframe_logits(np.zeros((1, LOW, LOW)), full, crop)


def test_click_session_zooms_after_the_first_click_and_pastes_back() -> None:
    gt = disk(60, 100, 15)
    seg = CropOracle(gt)
    image = np.zeros((H, W, 3), np.uint8)
    s = ClickSession(seg, image, zoom_in=ZoomIn(skip_clicks=1, expansion=1.4, min_crop=20))
    masks, scores = s.click((100, 60), 1)
    assert seg.calls[-1]["crop"] is None and s.encoder_calls == 0 and s.crop_box is None
    assert masks.shape == (1, H, W) and np.array_equal(masks[0], gt)
    masks, _ = s.click((101, 61), 1)
    # Second click: predicted in a crop around the disk (31 px tight -> ~43 px), pasted back.
    assert s.encoder_calls == 1 and seg.embedded[-1] == (s.crop_box[3] - s.crop_box[1], s.crop_box[2] - s.crop_box[0])
    x0, y0, x1, y1 = s.crop_box
    assert 40 <= x1 - x0 <= 46 and x0 <= 85 and x1 >= 116
    assert np.array_equal(masks[0], gt)
    # Points go to the segmenter in crop pixels, the mask prompt in the crop's frame.
    assert np.allclose(seg.calls[-1]["points"][0], [100 - x0, 60 - y0])
    assert seg.calls[-1]["mask_input"].shape == (1, 1, LOW, LOW)
    # A click near the same box keeps the crop (no new encoder call).
    s.click((99, 59), 0)
    assert s.encoder_calls == 1
    # A far negative click widens the crop to reach it; once the crop moves on, older clicks
    # outside it are left out of its prompt (a crop-sized segmenter may reject them).
    s.click((5, 5), 0)
    assert s.encoder_calls == 2 and s.crop_box[0] == 0 and s.crop_box[1] == 0
    s.click((100, 60), 1)
    x0, y0, x1, y1 = s.crop_box
    assert s.encoder_calls == 3 and x0 > 5
    sent = seg.calls[-1]["points"]
    assert len(sent) == 4 and (sent >= 0).all() and (sent[:, 0] < x1 - x0).all()
    with pytest.raises(ValueError, match="outside"):
        s.click((W + 5, 10), 1)
    with pytest.raises(ValueError, match="label"):
        s.click((10, 10), 2)
    with pytest.raises(ValueError, match="image"):
        ClickSession(seg, None, embedding=embedding(H, W), zoom_in=ZoomIn())


def test_undo_restores_the_session_before_the_click_and_reset_starts_afresh() -> None:
    gt = disk(60, 100, 15)
    seg = CropOracle(gt)
    s = ClickSession(seg, np.zeros((H, W, 3), np.uint8), zoom_in=ZoomIn(skip_clicks=1, min_crop=20))
    with pytest.raises(ValueError, match="no click to undo"):
        s.undo()
    s.click((100, 60), 1)
    first = (s.prediction.copy(), s.prev_logits.copy(), s.frame)
    s.click((5, 5), 0)  # a far click: a new crop
    assert s.crop_box is not None and len(s.points) == 2
    now = s.undo()
    assert np.array_equal(now, first[0]) and np.array_equal(s.prev_logits, first[1])
    assert s.frame is first[2] and s.crop_box is None and len(s.points) == 1 and s.labels == [1]
    # the next click predicts as if the undone one never happened: the first click's mask
    # prompt, both clicks' prompt in the crop chosen from the first prediction
    s.click((101, 61), 1)
    assert len(seg.calls[-1]["points"]) == 2 and seg.calls[-1]["mask_input"] is not None
    assert s.undo() is not None and s.undo() is None and s.points == [] and s.prediction is None
    # reset: no clicks, no mask prompt, the whole image again, no new encoder run after it
    s.click((100, 60), 1)
    s.click((5, 5), 0)
    calls = s.encoder_calls
    s.reset()
    assert (s.points, s.labels, s.prediction, s.prev_logits, s.crop_box) == ([], [], None, None, None)
    s.click((100, 60), 1)
    assert seg.calls[-1]["mask_input"] is None and seg.calls[-1]["crop"] is None
    assert s.encoder_calls == calls
    with pytest.raises(ValueError, match="no click to undo"):
        s.reset() or s.undo()


def test_simulate_clicks_with_zoom_reaches_the_object_and_counts_encoder_calls() -> None:
    gt = disk(60, 100, 15)
    image = np.zeros((H, W, 3), np.uint8)
    seg = CropOracle(gt)
    emb = seg.embed(image)
    ev = PointEvaluator(max_clicks=3, zoom_in=ZoomIn(min_crop=20))
    tr = ev.run_clicks(seg, emb, gt, None, image_id="a", image=image)
    assert tr.ious[0] == 1.0 and tr.meta["encoder_calls"] == 0  # oracle: done after one click
    with pytest.raises(ValueError, match="image"):
        simulate_clicks(seg, emb, gt, zoom_in=ZoomIn())
