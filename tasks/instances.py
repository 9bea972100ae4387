"""Instance segmentation from detector boxes (SAM paper §7.3, Appendix D.4).

A detector proposes boxes; every box of an image prompts the segmenter in ONE batched
``predict`` call on the image's shared embedding (``context.cache``), so the encoder runs once
per image however many objects there are. Optionally one refinement pass feeds each box's most
confident mask back as ``mask_input`` together with the same box (the paper's extra pass).
The result keeps the detector's labels and scores; the segmenter's predicted IoU is kept in
``extras["predicted_iou"]``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from composer.amg_utils import encode_rles_transposed
from composer.embedding import EmbeddingCache
from composer.segmenters.base import as_flag, best_per_prompt
from composer.structures import Detections, Masks

from .base import TaskContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceConfig:
    """Settings of box-prompted instance segmentation.

    Attributes:
        score_threshold: detections scoring below this are not segmented.
        max_dets: segment at most this many detections per image (highest scores first;
            COCO evaluates 100).
        refine: one extra pass with the most confident mask's low-res logits as
            ``mask_input`` and the same box (paper App. D.4).
        multimask: three masks per box, keeping the one with the highest score (predicted IoU,
            plus the boundary contrast under the segmenter's ``mask_rank``)
            (False: SAM's single unambiguous output, the usual choice for boxes).
        min_box_size: boxes thinner than this (pixels, after clipping to the image) are dropped.
        zoom_small: boxes whose longer side is below this fraction of the image's longer side
            are segmented again in a crop around them, embedded on its own. A segmenter with
            coarse masks (composer_tiny's 64 x 64) draws a small object with a few mask pixels
            on the whole image; in the crop it fills the model's input. Costs one encoder run
            per small box (cached per crop; two with flip TTA, whose mirrored crop is not
            cached). ``"auto"`` (default): the segmenter's
            ``box_zoom`` (composer_tiny: 0.35), else off; ``"off"`` or 0: off.
        zoom_context: the crop's side in multiples of the box's longer side.
        zoom_min_crop: smallest crop side in pixels (capped by the image).

    Raises:
        TypeError: ``refine`` or ``multimask`` is not a bool (``"no"`` is truthy).
        ValueError: a number out of its range.
    """

    score_threshold: float = 0.0
    max_dets: int = 100
    refine: bool = False
    multimask: bool = False
    min_box_size: float = 1.0
    zoom_small: float | str = "auto"
    zoom_context: float = 3.0
    zoom_min_crop: int = 64

    def __post_init__(self) -> None:
        for flag in ("refine", "multimask"):
            # predict refuses them too, but on every image, naming its own keywords
            object.__setattr__(self, flag, as_flag(flag, getattr(self, flag)))
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if isinstance(self.max_dets, bool) or not float(self.max_dets).is_integer() or self.max_dets < 1:
            # a fraction (1.5) was accepted here and failed as "slice indices must be integers"
            raise ValueError(f"max_dets must be an integer >= 1, got {self.max_dets}")
        if self.min_box_size < 0:
            raise ValueError(f"min_box_size must be >= 0, got {self.min_box_size}")
        if isinstance(self.zoom_small, str):
            if self.zoom_small not in ("auto", "off"):
                raise ValueError(f"zoom_small must be 'auto', 'off' or a fraction, got {self.zoom_small!r}")
        elif not 0.0 <= float(self.zoom_small) <= 1.0:
            raise ValueError(f"zoom_small must be in [0, 1], got {self.zoom_small}")
        if not self.zoom_context >= 1.0:
            raise ValueError(f"zoom_context must be >= 1, got {self.zoom_context}")
        if self.zoom_min_crop < 8:
            raise ValueError(f"zoom_min_crop must be >= 8 pixels, got {self.zoom_min_crop}")


def call_detector(detector: Any, image: np.ndarray, image_id: Hashable | None) -> Detections:
    """Run ``detector`` on ``image``, passing ``image_id`` when the detector accepts it."""
    try:
        params = inspect.signature(detector).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_id = "image_id" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    dets = detector(image, image_id=image_id) if takes_id else detector(image)
    if not isinstance(dets, Detections):
        raise TypeError(f"detector returned {type(dets).__name__}, expected Detections")
    return dets


class InstanceTask:
    """Detector boxes -> instance masks.

    Args:
        segmenter: any ``PromptableSegmenter`` (SAM, MobileSAM, the project's default ...).
        detector: a :class:`composer.models.detectors.Detector` (``__call__(image, image_id)``
            -> Detections with boxes, scores, labels).
        config: settings (default :class:`InstanceConfig`).

    Call with a :class:`TaskContext` (its cache is used) or an image.
    """

    def __init__(self, segmenter: Any, detector: Any, config: InstanceConfig | None = None) -> None:
        self.segmenter = segmenter
        self.detector = detector
        self.config = InstanceConfig() if config is None else config
        if not isinstance(self.config, InstanceConfig):
            raise TypeError(f"config must be an InstanceConfig, got {type(self.config).__name__}")
        if not callable(detector):
            raise TypeError(f"detector must be callable, got {type(detector).__name__}")

    @property
    def model_id(self) -> str:
        return f"{self.segmenter.model_id}+{getattr(self.detector, 'model_id', type(self.detector).__name__)}"

    def __call__(self, context: TaskContext | Any) -> Detections:
        """Instance masks of ``context.image``.

        Returns:
            Detections sorted by detector score: ``boxes`` (N, 4) float32 XYXY detector boxes
            in original-image pixels (clipped to the image), ``scores`` = detector scores,
            ``labels`` = detector category ids, ``masks`` (RLE, image size), extras
            ``predicted_iou`` (N,) and ``mask_box`` (N, 4) (the mask's tight box); meta has
            ``image_id``, ``model_id``, ``detector``, ``class_names``, ``refined``. With no
            detections: empty Detections and ``meta["message"]``.
        """
        context = _as_context(context)
        dets = call_detector(self.detector, context.image, context.image_id)
        return self.segment(context, dets)

    def segment(self, context: TaskContext, dets: Detections) -> Detections:
        """Segment given detections (boxes in original-image pixels) of ``context.image``.

        Detections are filtered by ``score_threshold``, ``min_box_size`` and ``max_dets``;
        then all boxes are decoded in one call on the cached embedding, and the small ones
        (``zoom_small``) once more each in a crop of their own; ``meta["zoomed"]`` counts the
        masks that came from a crop (a crop that decodes an empty mask leaves the whole
        image's).
        """
        cfg = self.config
        h, w = context.image_size
        detector_id = dets.meta.get("model_id", getattr(self.detector, "model_id", None))
        class_names = dets.meta.get("class_names", getattr(self.detector, "class_names", {}))
        meta: dict[str, Any] = {
            "image_id": context.image_id,
            "model_id": self.segmenter.model_id,
            "detector": detector_id,
            "class_names": dict(class_names),
            "refined": cfg.refine,
            "image_size": (h, w),
            "zoom_small": self.zoom_fraction,
            "zoomed": 0,
        }
        found = len(dets)
        dets = _select(dets, cfg, (h, w))
        if len(dets) == 0:
            reason = dets.meta.get("message") or f"the detector {detector_id} found no boxes"
            if found and not dets.meta.get("message"):  # boxes there were, none passed the filters
                reason = (
                    f"none of the detector {detector_id}'s {found} boxes has a score >= "
                    f"{cfg.score_threshold:g} and a finite box at least {cfg.min_box_size:g} px "
                    "wide and high inside the image"
                )
            msg = f"image {context.image_id!r}: {reason}; nothing to segment"
            logger.info(msg)
            return _empty((h, w), meta, msg)

        emb = context.cache.get(context.image, self.segmenter)
        out = self._decode(emb, dets.boxes)
        masks, ious = out.masks, out.extras["predicted_iou"].astype(np.float32)
        mask_box = out.boxes.astype(np.float32)
        small = _small_boxes(dets.boxes, (h, w), self.zoom_fraction)
        if small.size and masks is not None:
            rles, ious = list(masks.rles), ious.copy()
            zoomed = 0
            for i in small:
                win = zoom_window(dets.boxes[i], (h, w), cfg.zoom_context, cfg.zoom_min_crop)
                if win == (0, 0, w, h):
                    continue  # the crop is the whole image: the mask is the one above
                crop_emb = context.cache.get(context.image, self.segmenter, crop_box=win)
                x0, y0, x1, y1 = win
                box = (dets.boxes[i : i + 1] - [x0, y0, x0, y0]).clip(0, [x1 - x0, y1 - y0] * 2)
                local = self._decode(crop_emb, box)
                if len(local) == 0 or local.masks is None or not local.masks.area[0]:
                    continue  # nothing decoded in the crop: keep the whole image's mask
                crop = local.masks.to_dense()[0]  # (y1 - y0, x1 - x0)
                rles[i] = encode_rles_transposed(crop.T[None], win, (h, w))[0]
                ious[i] = float(local.extras["predicted_iou"][0])
                zoomed += 1
            if zoomed:
                masks = Masks._trusted(rles, (h, w))  # encoded here
                mask_box = masks.boxes().astype(np.float32)
            meta["zoomed"] = zoomed
        extras = {"predicted_iou": ious, "mask_box": mask_box}
        return Detections(dets.boxes, dets.scores, dets.labels, masks, extras, meta)

    @property
    def zoom_fraction(self) -> float:
        """The resolved ``zoom_small`` (0: off)."""
        return resolve_zoom_small(self.segmenter, self.config.zoom_small)

    def _decode(self, emb: Any, boxes: np.ndarray) -> Detections:
        """The most confident mask of each box (after the refinement pass), in box order."""
        cfg = self.config
        first = best_per_prompt(
            self.segmenter.predict(
                emb, boxes=boxes, multimask=cfg.multimask, keep_low_res=cfg.refine
            )
        )
        out = first
        if cfg.refine:
            logits = first.extras["low_res_logits"][:, None].astype(np.float32)
            out = best_per_prompt(
                self.segmenter.predict(
                    emb, boxes=boxes, mask_input=logits, multimask=False, keep_low_res=False
                )
            )
        return out[np.argsort(out.extras["prompt_index"], kind="stable")]


def resolve_zoom_small(segmenter: Any, zoom_small: float | str) -> float:
    """The fraction ``zoom_small`` ("auto", "off" or a fraction) means for ``segmenter``: "auto"
    is its ``box_zoom`` (0 when it has none), "off" is 0."""
    if zoom_small == "auto":
        return float(getattr(segmenter, "box_zoom", None) or 0.0)
    return 0.0 if zoom_small == "off" else float(zoom_small)


class ScoredByPredictedIoU:
    """An instance task on ground-truth boxes, made fit for COCO AP.

    Ground-truth boxes all score 1, which leaves AP's ranking of the masks to the order of the
    annotations; and the prompts' own boxes would give box AP 1. This wrapper scores each mask
    by the segmenter's predicted IoU and boxes it by the mask itself, so mask AP ranks the
    masks by the model's confidence and box AP measures the masks' extent. ``sam-composer eval
    instances --boxes gt`` and ``recipes/instances_coco.py --boxes gt`` both use it.

    Args:
        task: an :class:`InstanceTask` (any detector; meant for ground-truth boxes).
    """

    def __init__(self, task: InstanceTask) -> None:
        self.task = task
        self.segmenter = task.segmenter
        self.config = task.config
        self.model_id = task.model_id

    def __call__(self, context: TaskContext | Any) -> Detections:
        dets = self.task(context)
        if len(dets):
            dets.scores = dets.extras["predicted_iou"].astype(np.float32)
            dets.boxes = dets.extras["mask_box"]
        return dets


def _small_boxes(boxes: np.ndarray, image_size: tuple[int, int], fraction: float) -> np.ndarray:
    """Indices of boxes whose longer side is below ``fraction`` of the image's longer side."""
    if fraction <= 0 or len(boxes) == 0:
        return np.zeros(0, np.int64)
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return np.flatnonzero(side < fraction * max(image_size)).astype(np.int64)


def zoom_window(
    box: np.ndarray, image_size: tuple[int, int], context: float = 3.0, min_crop: int = 64
) -> tuple[int, int, int, int]:
    """Integer XYXY square (x1, y1 exclusive) centred on ``box``, ``context`` x its longer
    side (at least ``min_crop``), shifted to lie inside the image and capped by its sides."""
    h, w = int(image_size[0]), int(image_size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(context * max(x1 - x0, y1 - y0), float(min_crop))
    out = []
    for lo, hi, length in ((x0, x1, w), (y0, y1, h)):
        n = int(round(min(side, length)))
        a = int(round((lo + hi) / 2 - n / 2))
        a = min(max(a, 0), length - n)
        out += [a, a + n]
    return out[0], out[2], out[1], out[3]


def _select(dets: Detections, cfg: InstanceConfig, image_size: tuple[int, int]) -> Detections:
    """Detections worth segmenting, clipped to the image and sorted by score."""
    if len(dets) == 0:
        return dets
    h, w = image_size
    n = len(dets)
    scores = np.ones(n, np.float32) if dets.scores is None else dets.scores
    labels = np.ones(n, np.int64) if dets.labels is None else dets.labels
    boxes = dets.boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    dets = Detections(boxes, scores, labels, meta=dets.meta)
    big = ((boxes[:, 2] - boxes[:, 0]) >= cfg.min_box_size) & (
        (boxes[:, 3] - boxes[:, 1]) >= cfg.min_box_size
    )
    keep = (scores >= cfg.score_threshold) & big & np.isfinite(boxes).all(1)
    return dets[keep].sort_by_score()[: int(cfg.max_dets)]


def _empty(image_size: tuple[int, int], meta: dict[str, Any], message: str) -> Detections:
    out = Detections.empty(image_size)
    out.labels = np.zeros(0, np.int64)
    out.extras = {
        "predicted_iou": np.zeros(0, np.float32),
        "mask_box": np.zeros((0, 4), np.float32),
    }
    out.meta.update(meta, message=message)
    return out


def _as_context(context: TaskContext | Any) -> TaskContext:
    if isinstance(context, TaskContext):
        return context
    from composer.io.image import load_image

    return TaskContext(load_image(context), None, EmbeddingCache())
