"""Extreme sizes and counts: one-pixel-wide images, thousands of masks, large photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import batched_nms

import tasks.instances as instances
from composer.allocator import trim_heap
from composer.amg_utils import box_nms
from composer.automatic import AutomaticMaskGenerator
from composer.embedding import EmbeddingCache
from composer.io import visualize
from composer.io.visualize import overlay, write_detections
from composer.predictor import SamPredictor
from composer.sam import build_sam
from composer.structures import Detections, Masks
from tasks.base import TaskContext


@pytest.fixture(scope="module")
def tiny_sam() -> SamPredictor:
    torch.manual_seed(0)
    return SamPredictor(build_sam("vit_tiny_test"))


def _masks(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, h, w) bool: rectangles (some at the borders), noise, an empty mask, a ring."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((n, h, w), bool)
    for k in range(n):
        kind = k % 4
        if kind == 0:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            dense[k, y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        elif kind == 1:
            dense[k] = rng.random((h, w)) < 0.3
        elif kind == 3:
            dense[k] = True
            dense[k, h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = False
    return dense


def _reference_overlay(image: np.ndarray, dense: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The drawing as it was done on whole (N, H, W) masks."""
    import cv2

    out = image.astype(np.float32).copy()
    colors = visualize.palette(len(dense)).astype(np.float32)
    order = np.argsort(-dense.reshape(len(dense), -1).sum(1))
    for i in order:
        m = dense[i]
        out[m] = out[m] * (1 - alpha) + colors[i] * alpha
    out_u8 = out.clip(0, 255).astype(np.uint8)
    for i in order:
        contours, _ = cv2.findContours(dense[i].astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out_u8, contours, -1, tuple(int(c) for c in colors[i]), 1)
    return out_u8


# --------------------------------------------------------------------------- NMS
def test_nms_suppresses_copies_of_zero_width_boxes() -> None:
    # inclusive boxes of one-column / one-row / empty masks: IoU 0/0, never suppressed before
    boxes = torch.tensor([[3, 0, 3, 6], [3, 0, 3, 6], [0, 2, 9, 2], [0, 2, 9, 2], [0, 0, 0, 0],
                          [0, 0, 0, 0], [5, 0, 5, 6]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    assert box_nms(boxes, scores, 0.7).tolist() == [0, 2, 4, 6]
    assert len(box_nms(boxes, scores, 1.0)) == 7  # a threshold of 1 still keeps everything


def test_nms_keeps_official_result_for_boxes_with_area() -> None:
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 50, (200, 2))
    boxes = torch.as_tensor(np.concatenate([xy, xy + rng.integers(1, 30, (200, 2))], 1))
    scores = torch.as_tensor(rng.random(200), dtype=torch.float32)
    official = batched_nms(boxes.float(), scores, torch.zeros(200), iou_threshold=0.7)
    assert box_nms(boxes, scores, 0.7).tolist() == official.tolist()


@pytest.mark.parametrize("size", [(7, 1), (1, 7), (1, 1)])
def test_amg_on_a_one_pixel_wide_image_returns_no_duplicates(tiny_sam, size) -> None:
    image = np.random.default_rng(1).integers(0, 255, (*size, 3), dtype=np.uint8)
    dets = AutomaticMaskGenerator(tiny_sam, points_per_side=8, pred_iou_thresh=0.0,
                                  stability_score_thresh=0.0).generate(image)
    # 192 candidates of at most 2**7 distinct masks: 180 copies of the same few were kept
    counts = [bytes(r["counts"]) for r in dets.masks.rles]
    assert len(dets) >= 1
    assert len(counts) == len(set(counts))


# --------------------------------------------------------------------------- writers
def test_overlay_of_rle_masks_never_decodes_all_at_once(monkeypatch) -> None:
    dense = _masks(12, 23, 31)
    image = np.random.default_rng(2).integers(0, 255, (23, 31, 3), dtype=np.uint8)
    masks = Masks.from_dense(dense)
    expected = _reference_overlay(image, dense)

    def refuse(self):
        raise AssertionError("overlay decoded (N, H, W) masks")

    monkeypatch.setattr(Masks, "to_dense", refuse)
    np.testing.assert_array_equal(overlay(image, masks), expected)
    np.testing.assert_array_equal(overlay(image, dense), expected)


def test_overlay_rejects_masks_of_another_size() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        overlay(np.zeros((5, 7, 3), np.uint8), Masks.empty((7, 5)))


def test_write_detections_writes_mask_pngs_one_at_a_time(monkeypatch, tmp_path) -> None:
    dense = _masks(9, 6, 11, seed=3)
    image = np.zeros((6, 11, 3), np.uint8)
    dets = Detections.from_masks(Masks.from_dense(dense), scores=np.linspace(1, 0, 9))
    calls = {"area": 0}
    area = Masks.area.fget

    def counting_area(self):
        calls["area"] += 1
        return area(self)

    monkeypatch.setattr(Masks, "to_dense", lambda self: pytest.fail("to_dense called"))
    monkeypatch.setattr(Masks, "area", property(counting_area))
    written = write_detections(dets, image, tmp_path, stem="s")
    assert len(written["masks"]) == 9
    for k, path in enumerate(written["masks"]):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), dense[k].astype(np.uint8) * 255)
    assert calls["area"] <= 2  # once for the overlay, once for the json (was once per mask)


# --------------------------------------------------------------------------- predict batches
def test_predict_decodes_a_large_image_in_smaller_batches(tiny_sam, monkeypatch) -> None:
    """predict upsampled a whole batch of 64 prompts to the image's size at once (6000 x 4000:
    18 GB of logits); a batch's full-size logits are now capped (PREDICT_CHUNK_BYTES), and
    the instances task, which calls predict, gets the cap too."""
    from composer.segmenters import base

    image = np.random.default_rng(4).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 30, (9, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 25, (9, 2))], 1).astype(np.float32)

    def detector(img, image_id=None):
        return Detections(boxes, np.linspace(0.9, 0.5, 9), np.ones(9, np.int64))

    cfg = instances.InstanceConfig(max_dets=9, zoom_small="off")
    whole = instances.InstanceTask(tiny_sam, detector, cfg)(TaskContext(image, 1, EmbeddingCache()))
    sizes: list[int] = []
    decode = tiny_sam.decode

    def recording(emb, prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return decode(emb, prompts, *args, **kwargs)

    monkeypatch.setattr(base, "PREDICT_CHUNK_BYTES", 4 * 40 * 60 * 4)  # four single-mask prompts
    monkeypatch.setattr(tiny_sam, "decode", recording)
    grouped = instances.InstanceTask(tiny_sam, detector, cfg)(TaskContext(image, 1, EmbeddingCache()))
    # the boxes, then the refinement pass with their masks as prompts
    assert sizes[:3] == [4, 4, 1] and max(sizes) == 4
    assert [r["counts"] for r in grouped.masks.rles] == [r["counts"] for r in whole.masks.rles]
    # decoder batches of 4 and 1 instead of 9: float rounding may differ in the last bit
    np.testing.assert_allclose(grouped.extras["predicted_iou"], whole.extras["predicted_iou"],
                               atol=1e-6)
    np.testing.assert_array_equal(grouped.boxes, whole.boxes)


def test_trim_heap_runs_on_large_crops_and_changes_no_result(tiny_sam, monkeypatch) -> None:
    """The generator trims the heap after each chunk of a crop of >= TRIM_PIXELS pixels (a
    6000 x 4000 photo pinned 6 GB without it); the masks are the same with it."""
    import sys

    from composer import allocator, automatic

    if sys.platform.startswith("linux"):
        assert allocator._glibc() is not None  # glibc's malloc_trim is found here
    image = np.random.default_rng(7).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    plain = AutomaticMaskGenerator(tiny_sam, points_per_side=4, pred_iou_thresh=0.0,
                                   stability_score_thresh=0.0).generate(image)
    calls: list[int] = []
    monkeypatch.setattr(automatic, "TRIM_PIXELS", 1)
    monkeypatch.setattr(automatic, "trim_heap", lambda: (calls.append(1), trim_heap())[1])
    trimmed = AutomaticMaskGenerator(tiny_sam, points_per_side=4, pred_iou_thresh=0.0,
                                     stability_score_thresh=0.0).generate(image)
    assert calls
    assert [r["counts"] for r in trimmed.masks.rles] == [r["counts"] for r in plain.masks.rles]
