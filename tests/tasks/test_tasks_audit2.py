"""Semantic audit of the task adapters and the automatic generator: coordinate frames, empty
results that keep the shape of full ones, and the shared embedding cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from _toy_segmenter import ToySegmenter, toy_scene

from composer.automatic import AutomaticMaskGenerator
from composer.embedding import EmbeddingCache, ImageEmbedding
from composer.io.image import load_image
from composer.segmenters.base import MaskLogits, PromptableSegmenter
from composer.structures import Detections, Masks
from tasks.base import TaskContext
from tasks.text_to_mask import TextConfig, TextToMaskTask


class BoxSegmenter(PromptableSegmenter):
    """Masks that are the prompt's box (or a disc of 3 low-res pixels around its first point),
    drawn in a 64 x 64 low-res frame over a 256-px padded square; it records every prompt."""

    model_id = "box-exact"
    mask_threshold = 0.0
    low_res_size = (64, 64)
    pad = 256

    def __init__(self) -> None:
        self.prompts: list[Any] = []

    def embed(self, image: Any) -> ImageEmbedding:
        arr = load_image(image)
        h, w = arr.shape[:2]
        s = self.pad / max(h, w)
        size = (int(h * s + 0.5), int(w * s + 0.5))
        return ImageEmbedding(torch.zeros(1, 1, 4, 4), (h, w), size, self.pad, self.model_id)

    def decode(self, embedding: ImageEmbedding, prompts: Any, multimask: bool = True) -> MaskLogits:
        self.prompts.append(prompts)
        oh, ow = embedding.original_size
        ih, iw = embedding.input_size
        k = self.pad / self.low_res_size[0]
        sx, sy = iw / ow / k, ih / oh / k
        yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
        n = len(prompts.boxes) if prompts.boxes is not None else len(prompts.points)
        m = 3 if multimask else 1
        out = []
        for i in range(n):
            if prompts.boxes is not None:
                x0, y0, x1, y1 = (float(v) for v in prompts.boxes[i])
                d = torch.minimum(
                    torch.minimum(xx - x0 * sx, x1 * sx - xx),
                    torch.minimum(yy - y0 * sy, y1 * sy - yy),
                )
            else:
                px, py = (float(v) for v in prompts.points[i, 0])
                d = 3.0 - torch.sqrt((xx - px * sx) ** 2 + (yy - py * sy) ** 2)
            out.append(torch.stack([4.0 * d] * m))
        return MaskLogits(torch.stack(out).float(), torch.full((n, m), 0.9))


class FixedDetector:
    model_id = "fixed"
    class_names = {1: "cat", 2: "dog", 3: "zebra"}

    def __call__(self, image: Any, image_id: Any = None) -> Detections:
        return Detections(
            np.array([[8, 10, 44, 40], [56, 10, 84, 38]], np.float32),
            np.array([0.9, 0.8], np.float32),
            np.array([1, 2]),
            meta={"model_id": self.model_id, "class_names": self.class_names},
        )


class MeanColourClip:
    """A stand-in CLIP: crops embed as their mean colour (plus a constant), text as red."""

    model_id = "mean-colour"

    def encode_images(self, crops: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        return np.stack([np.r_[c.reshape(-1, 3).mean(0) / 255.0, 1.0] for c in crops]).astype(
            np.float32
        )

    def encode_text(self, prompts: list[str], templates: Any) -> np.ndarray:
        return np.array([[1.0, 0.0, 0.0, 0.1]], np.float32)


def _matcher() -> Any:
    from composer.models.text import TextMatcher

    return TextMatcher(FixedDetector.class_names, encoder=None)


# ------------------------------------------------------------------ text-to-mask empties
def test_text_detector_empty_results_have_the_fields_of_found_ones() -> None:
    """An empty answer (no class matches the prompt, or none of its boxes was detected) has
    the labels, extras and model/class-name meta of a found one, so the answers to several
    prompts concatenate (``Detections.concatenate`` refuses differing extras keys)."""
    seg = BoxSegmenter()
    task = TextToMaskTask(
        seg, TextConfig(zoom_small="off"), detector=FixedDetector(), matcher=_matcher()
    )
    ctx = TaskContext(toy_scene(), 3, EmbeddingCache())
    found = task(ctx, "cat")
    no_match = task(ctx, "the moon")
    not_seen = task(ctx, "zebra")  # a class of the detector that it did not find here
    assert len(found) == 1 and len(no_match) == 0 and len(not_seen) == 0
    for empty in (no_match, not_seen):
        assert set(empty.extras) == set(found.extras)
        assert empty.labels is not None and empty.labels.dtype == np.int64
        assert empty.extras["mask_box"].shape == (0, 4)
        assert empty.meta["class_names"] == found.meta["class_names"]
        assert empty.meta["detector"] == found.meta["detector"] == "fixed"
        assert empty.meta["model_id"] == found.meta["model_id"]
        assert "message" in empty.meta
    both = Detections.concatenate([found, no_match, not_seen])
    assert len(both) == 1 and both.labels.tolist() == [1]


def test_text_clip_empty_result_has_the_fields_of_a_found_one() -> None:
    cfg = dict(strategy="clip", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    seg = ToySegmenter()
    ctx = TaskContext(toy_scene(), 5, EmbeddingCache())
    found = TextToMaskTask(seg, TextConfig(**cfg), clip=MeanColourClip())(ctx, "red")
    none = TextToMaskTask(seg, TextConfig(**cfg, min_text_score=10.0), clip=MeanColourClip())(
        ctx, "red"
    )
    assert len(found) > 0 and len(none) == 0 and "message" in none.meta
    assert set(none.extras) == set(found.extras) == {"text_score", "predicted_iou", "refined"}
    assert found.labels is None and none.labels is None  # open vocabulary: no class ids
    assert none.meta["model_id"] == found.meta["model_id"]
    assert len(Detections.concatenate([found, none])) == len(found)
    assert ctx.cache.encoder_calls == 1


# ------------------------------------------------------------------ text-to-mask refinement
def test_text_clip_refinement_clicks_the_most_interior_pixel_index() -> None:
    """Point prompts are pixel indices (SAM adds the half pixel; the click simulator gives
    indices): the refinement's click is the most interior pixel itself, not its corner."""
    image = np.zeros((40, 48, 3), np.uint8)
    image[10:15, 20:25] = (255, 0, 0)  # a 5 x 5 red square: its most interior pixel is (22, 12)

    class SquareProposals(BoxSegmenter):
        def decode(self, embedding, prompts, multimask=True):  # type: ignore[override]
            if prompts.boxes is None:  # the generator's grid: every point gives the square
                n = len(prompts.points)
                square = prompts.__class__(
                    boxes=np.tile(np.array([[20, 10, 25, 15]], np.float32), (n, 1))
                )
                return super().decode(embedding, square, multimask)
            return super().decode(embedding, prompts, multimask)

    seg = SquareProposals()
    cfg = TextConfig(
        strategy="clip", points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        refine=True,
    )
    out = TextToMaskTask(seg, cfg, clip=MeanColourClip())(
        TaskContext(image, 1, EmbeddingCache()), "red"
    )
    assert len(out) >= 1 and out.extras["refined"][0]
    refine_prompts = seg.prompts[-1]
    assert refine_prompts.points is not None and refine_prompts.boxes is not None
    np.testing.assert_array_equal(refine_prompts.points[0, 0], [22.0, 12.0])


# ------------------------------------------------------------------ automatic generator empties
def test_amg_empty_result_keeps_the_low_res_frame() -> None:
    """No surviving mask: ``low_res_logits`` is (0, h, w) in the segmenter's low-res frame,
    so an empty result concatenates with a non-empty one."""
    seg = ToySegmenter()
    image = toy_scene()
    base = dict(points_per_side=4, stability_score_thresh=0.0, keep_low_res_logits=True)
    found = AutomaticMaskGenerator(seg, pred_iou_thresh=0.0, **base).generate(image)
    none = AutomaticMaskGenerator(seg, pred_iou_thresh=0.99, **base).generate(image)
    assert len(found) > 0 and len(none) == 0
    assert found.extras["low_res_logits"].shape[1:] == (32, 32)
    assert none.extras["low_res_logits"].shape == (0, 32, 32)
    assert none.extras["low_res_logits"].dtype == np.float32
    both = Detections.concatenate([found, none])
    assert both.extras["low_res_logits"].shape == found.extras["low_res_logits"].shape


# ------------------------------------------------------------------ checks that hold already
def test_zoomed_masks_are_pasted_back_at_the_crop_offset_near_the_border() -> None:
    """A small box at the bottom-right corner of a wide image: its crop is shifted to lie in
    the image, and the crop's mask lands where the box is in the full image."""
    from tasks.instances import InstanceConfig, InstanceTask

    boxes = np.array([[280, 75, 296, 88], [2, 2, 14, 12], [100, 30, 200, 80]], np.float32)

    class Boxes:
        model_id = "boxes"

        def __call__(self, image: Any, image_id: Any = None) -> Detections:
            return Detections(boxes, np.array([0.9, 0.8, 0.7]), np.array([1, 1, 1]))

    cache = EmbeddingCache()
    out = InstanceTask(BoxSegmenter(), Boxes(), InstanceConfig(zoom_small=0.2))(
        TaskContext(np.zeros((90, 300, 3), np.uint8), 1, cache)
    )
    assert out.meta["zoomed"] == 2 and cache.encoder_calls == 3  # the image + two crops
    np.testing.assert_allclose(out.extras["mask_box"], boxes)
    np.testing.assert_allclose(Masks.boxes(out.masks), boxes)  # type: ignore[arg-type]


def test_max_side_keeps_points_crop_boxes_and_masks_in_full_image_pixels() -> None:
    """``max_side`` with crop layers: the same prompts (full-image pixels) and crop boxes as a
    full-resolution run, and each mask within a pixel or two of the full-resolution one."""
    seg = BoxSegmenter()
    image = np.zeros((300, 450, 3), np.uint8)
    cfg = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
               box_nms_thresh=1.0, crop_nms_thresh=1.0, crop_n_layers=1)
    full = AutomaticMaskGenerator(seg, **cfg).generate(image)
    cache = EmbeddingCache()
    scaled = AutomaticMaskGenerator(seg, cache=cache, max_side=150, **cfg).generate(image)
    assert scaled.masks.image_size == (300, 450) and len(scaled) > 0
    # the crops of the full image are embedded, each once
    assert cache.encoder_calls == 5
    key = {tuple(p) + tuple(c) for p, c in zip(full.extras["point_coords"],
                                               full.extras["crop_box"], strict=True)}
    for p, c in zip(scaled.extras["point_coords"], scaled.extras["crop_box"], strict=True):
        assert tuple(p) + tuple(c) in key
    for m, p in zip(scaled.masks.to_dense(), scaled.extras["point_coords"], strict=True):
        ys, xs = np.nonzero(m)
        assert abs(xs.mean() + 0.5 - p[0]) < 2 and abs(ys.mean() + 0.5 - p[1]) < 2
