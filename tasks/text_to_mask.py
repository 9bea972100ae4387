"""Text-to-mask: masks of the object a free-text prompt names (SAM paper §7.5, substituted).

The paper's text-prompted SAM was retrained with CLIP embeddings and never released (App. D.5),
so this adapter composes released parts instead, with two strategies:

- ``"detector"`` (closed vocabulary): the prompt is matched to the detector's class names
  (:class:`composer.models.text.TextMatcher`: names, synonyms, a MiniLM sentence encoder), and
  the boxes of that class are segmented by :class:`tasks.instances.InstanceTask`.
- ``"clip"`` (open vocabulary): automatic-mask-generator proposals are scored by CLIP: each
  mask's crop (box expanded, square, pixels outside the mask dimmed toward grey) against the
  prompt's template-ensembled text embedding; the best masks are returned and, optionally, the
  best one is refined with a point prompt at its most interior pixel.

Per image, the detector output and the proposals with their CLIP crop embeddings are kept in a
small LRU, so many prompts on one image cost one encoder pass, one detector call and one
proposal pass in all.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from composer.embedding import image_hash
from composer.structures import Detections, Masks

from .base import TaskContext
from .instances import InstanceConfig, InstanceTask, _as_context, call_detector

logger = logging.getLogger(__name__)

STRATEGIES = ("detector", "clip")


@dataclass(frozen=True)
class TextConfig:
    """Settings of text-to-mask.

    Attributes:
        strategy: "detector" (closed vocabulary) or "clip" (open vocabulary).
        max_masks: return at most this many masks (detector: boxes of the class; clip: the
            best-scoring proposals).
        score_threshold: detector strategy: minimum detector score.
        match_threshold: detector strategy: minimum sentence-encoder similarity of a match.
        refine: detector: the box refinement pass (App. D.4); clip: a point refinement of the
            best mask.
        zoom_small: detector: small boxes segmented again in a crop
            (:attr:`tasks.instances.InstanceConfig.zoom_small`; "auto": the segmenter's
            ``box_zoom``).
        points_per_side: clip: proposal grid.
        pred_iou_thresh, stability_score_thresh: clip: proposal quality filters (None:
            the segmenter's recommended ``amg_thresholds`` when it has them, e.g.
            composer_tiny's 0.2 / 0.7, else 0.7 / 0.8).
        max_proposals: clip: score at most this many proposals (highest predicted IoU first).
        crop_expand: clip: crop side = this x the mask box's longer side.
        background_dim: clip: 0 keeps pixels outside the mask, 1 replaces them with grey.
        min_text_score: clip: return only masks whose cosine similarity reaches this.
        templates: clip: prompt-ensembling templates (None: composer.models.clip defaults).
        clip_batch: clip: crops per CLIP forward pass.
        cache_images: images whose detections / proposals are kept for further prompts.
    """

    strategy: str = "detector"
    max_masks: int = 100
    score_threshold: float = 0.3
    match_threshold: float = 0.5
    refine: bool = False
    zoom_small: float | str = "auto"
    points_per_side: int = 16
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    max_proposals: int = 64
    crop_expand: float = 1.5
    background_dim: float = 0.5
    min_text_score: float = -1.0
    templates: tuple[str, ...] | None = None
    clip_batch: int = 32
    cache_images: int = 4

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.max_masks < 1 or self.max_proposals < 1 or self.points_per_side < 1:
            raise ValueError("max_masks, max_proposals and points_per_side must be >= 1")
        if not self.crop_expand >= 1.0:  # NaN too
            raise ValueError(f"crop_expand must be >= 1, got {self.crop_expand}")
        if not 0.0 <= self.background_dim <= 1.0:
            raise ValueError(f"background_dim must be in [0, 1], got {self.background_dim}")
        if self.clip_batch < 1 or self.cache_images < 0:
            raise ValueError("clip_batch must be >= 1 and cache_images >= 0")


class TextToMaskTask:
    """Masks of the object named by a text prompt.

    Args:
        segmenter: any ``PromptableSegmenter``.
        config: settings (default :class:`TextConfig`, the detector strategy).
        detector: detector strategy: a ``Detector`` (default: ``load_detector()``, SSD).
        clip: clip strategy: a :class:`composer.models.clip.ClipModel` (required).
        matcher: detector strategy: a :class:`composer.models.text.TextMatcher` (default:
            one over the detector's class names with the MiniLM encoder when installed).

    Call ``task(context, prompt)`` (or put the prompt in ``context.meta["prompt"]``).
    """

    def __init__(
        self,
        segmenter: Any,
        config: TextConfig | None = None,
        *,
        detector: Any = None,
        clip: Any = None,
        matcher: Any = None,
    ) -> None:
        self.segmenter = segmenter
        self.config = TextConfig() if config is None else config
        if not isinstance(self.config, TextConfig):
            raise TypeError(f"config must be a TextConfig, got {type(self.config).__name__}")
        cfg = self.config
        self.detector = self.matcher = self.clip = None
        self._instances: InstanceTask | None = None
        if cfg.strategy == "detector":
            if detector is None:
                from composer.models.detectors import load_detector

                detector = load_detector(score_threshold=min(cfg.score_threshold, 0.3))
            self.detector = detector
            if matcher is None:
                from composer.models.text import TextMatcher

                matcher = TextMatcher(detector.class_names, threshold=cfg.match_threshold)
            self.matcher = matcher
            self._instances = InstanceTask(
                segmenter,
                detector,
                InstanceConfig(
                    score_threshold=cfg.score_threshold, max_dets=cfg.max_masks,
                    refine=cfg.refine, zoom_small=cfg.zoom_small,
                ),
            )
        else:
            if clip is None:
                raise ValueError(
                    "the clip strategy needs a ClipModel: clip=ClipModel.load(arch, weights)"
                )
            self.clip = clip
        self._per_image: OrderedDict[str, Any] = OrderedDict()
        self._text_cache: dict[str, np.ndarray] = {}

    @property
    def model_id(self) -> str:
        other = self.detector if self.config.strategy == "detector" else self.clip
        return f"{self.segmenter.model_id}+{getattr(other, 'model_id', type(other).__name__)}"

    def __call__(self, context: TaskContext | Any, prompt: str | None = None) -> Detections:
        """Masks of ``prompt`` in ``context.image``.

        Returns:
            Detections sorted by score. Detector strategy: as :class:`InstanceTask` (labels =
            the matched class, scores = detector scores) plus ``extras["text_score"]`` (the
            match score). Clip strategy: mask boxes, ``scores`` = ``extras["text_score"]``
            (cosine similarity of crop and prompt), ``predicted_iou``, ``refined``. ``meta`` has
            ``prompt``, ``strategy`` and, when nothing is returned, ``message``.

        Raises:
            ValueError: no prompt, or an empty one.
        """
        context = _as_context(context)
        if prompt is None:
            prompt = context.meta.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"a non-empty text prompt is required, got {prompt!r}")
        if self.config.strategy == "detector":
            out = self._by_detector(context, prompt)
        else:
            out = self._by_clip(context, prompt)
        out.meta.update(prompt=prompt, strategy=self.config.strategy, image_id=context.image_id)
        if "message" in out.meta and len(out) == 0:
            logger.info("%s", out.meta["message"])
        return out

    # ------------------------------------------------------------------ detector strategy
    def _by_detector(self, context: TaskContext, prompt: str) -> Detections:
        assert self.matcher is not None and self._instances is not None
        match = self.matcher.match(prompt)
        h, w = context.image_size
        if match is None:
            n = len(self.matcher.class_names)
            return self._empty(
                (h, w), f"prompt {prompt!r} matches none of the detector's {n} classes"
            )
        dets = self._cached(
            context, "det", lambda: call_detector(self.detector, context.image, context.image_id)
        )
        if len(dets) and dets.labels is not None:
            dets = dets[dets.labels == match.class_id]
        else:
            dets = dets[np.zeros(len(dets), bool)]
        if len(dets) == 0:
            out = self._empty(
                (h, w),
                f"no {match.name!r} detected for prompt {prompt!r} (image {context.image_id!r})",
            )
        else:
            out = self._instances.segment(context, dets)
            if len(out) == 0:
                out.meta["message"] = (
                    f"no {match.name!r} above score {self.config.score_threshold} "
                    f"for prompt {prompt!r}"
                )
        out.extras["text_score"] = np.full(len(out), match.score, np.float32)
        out.meta.update(
            matched_class=match.name, matched_id=match.class_id, match_method=match.method
        )
        return out

    # ------------------------------------------------------------------ clip strategy
    def _by_clip(self, context: TaskContext, prompt: str) -> Detections:
        cfg = self.config
        h, w = context.image_size
        props, crop_emb = self._cached(context, "clip", lambda: self._proposals(context))
        if len(props) == 0:
            return self._empty((h, w), f"no mask proposals in image {context.image_id!r}")
        text = self._text_cache.get(prompt)
        if text is None:
            from composer.models.clip import DEFAULT_TEMPLATES

            templates = cfg.templates if cfg.templates is not None else DEFAULT_TEMPLATES
            assert self.clip is not None
            text = self._text_cache.setdefault(
                prompt, self.clip.encode_text([prompt], templates)[0]
            )
        sims = (crop_emb @ text).astype(np.float32)
        order = np.argsort(-sims, kind="stable")
        order = order[sims[order] >= cfg.min_text_score][: cfg.max_masks]
        if len(order) == 0:
            return self._empty(
                (h, w), f"no proposal reaches text score {cfg.min_text_score} for {prompt!r}"
            )
        best = props[order]
        extras = {
            "text_score": sims[order],
            "predicted_iou": best.extras["predicted_iou"],
            "refined": np.zeros(len(best), bool),
        }
        masks = best.masks
        if cfg.refine:
            masks, extras = self._refine_best(context, best, extras)
        return Detections.from_masks(
            masks,
            scores=sims[order],
            extras=extras,  # type: ignore[arg-type]
            meta={"model_id": self.model_id},
        )

    def proposal_config(self) -> Any:
        """The clip strategy's automatic-mask settings (an ``AmgConfig``): the config's grid,
        and its quality thresholds or, where it names none, the segmenter's recommended ones
        (SAM-calibrated 0.7 / 0.8 are far too strict for a segmenter whose predicted IoU is
        calibrated otherwise: composer_tiny kept no proposal at all on COCO photos)."""
        from composer.automatic import AmgConfig

        cfg = self.config
        base = AmgConfig(
            points_per_side=cfg.points_per_side,
            pred_iou_thresh=0.7,
            stability_score_thresh=0.8,
            keep_low_res_logits=cfg.refine,
        )
        return AmgConfig.for_segmenter(
            self.segmenter, base,
            pred_iou_thresh=cfg.pred_iou_thresh,
            stability_score_thresh=cfg.stability_score_thresh,
        )

    def _proposals(self, context: TaskContext) -> tuple[Detections, np.ndarray]:
        from composer.automatic import AutomaticMaskGenerator

        cfg = self.config
        amg = self.proposal_config()
        props = AutomaticMaskGenerator(self.segmenter, amg, cache=context.cache).generate(
            context.image
        )
        if len(props) == 0:
            return props, np.zeros((0, 1), np.float32)
        props = props.sort_by_score()[: cfg.max_proposals]
        crops = masked_crops(context.image, props.masks, cfg.crop_expand, cfg.background_dim)  # type: ignore[arg-type]
        emb = self.clip.encode_images(crops, batch_size=cfg.clip_batch)  # type: ignore[union-attr]
        return props, emb

    def _refine_best(
        self, context: TaskContext, best: Detections, extras: dict[str, np.ndarray]
    ) -> tuple[Masks, dict[str, np.ndarray]]:
        """Re-segment the best mask from a point at its most interior pixel plus its box."""
        assert best.masks is not None
        mask = best.masks[0].to_dense()[0]
        if not mask.any():
            return best.masks, extras
        dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        emb = context.cache.get(context.image, self.segmenter)
        kwargs: dict[str, Any] = {}
        if "low_res_logits" in best.extras:
            kwargs["mask_input"] = best.extras["low_res_logits"][:1, None].astype(np.float32)
        out = self.segmenter.predict(
            emb,
            # pixel indices, the frame of point prompts (SAM adds the half pixel itself;
            # clicks of composer.evaluation.points are indices too)
            points=np.array([[[x, y]]], np.float32),
            labels=np.array([[1]]),
            boxes=best.boxes[:1],
            multimask=False,
            keep_low_res=False,
            **kwargs,
        )
        refined = Masks.concatenate([out.masks, best.masks[1:]])
        extras = dict(extras)
        extras["refined"] = extras["refined"].copy()
        extras["refined"][0] = True
        extras["predicted_iou"] = extras["predicted_iou"].copy()
        extras["predicted_iou"][0] = float(out.scores[0])  # type: ignore[index]
        return refined, extras

    def _empty(self, image_size: tuple[int, int], message: str) -> Detections:
        """No masks, with the fields a non-empty result of the strategy has (labels, extras
        and, for the detector strategy, the instance task's model ids and class names), so
        that results of several prompts or images concatenate and write alike."""
        out = Detections.empty(image_size, message=message)
        if self.config.strategy == "detector":
            out.labels = np.zeros(0, np.int64)
            out.extras = {
                "predicted_iou": np.zeros(0, np.float32),
                "mask_box": np.zeros((0, 4), np.float32),
                "text_score": np.zeros(0, np.float32),
            }
            detector_id = getattr(self.detector, "model_id", type(self.detector).__name__)
            class_names = getattr(self.detector, "class_names", None) or {}
            out.meta.update(
                model_id=self.segmenter.model_id, detector=detector_id,
                class_names=dict(class_names),
            )
        else:  # open vocabulary: no labels, as Detections.from_masks in _by_clip
            out.extras = {
                "text_score": np.zeros(0, np.float32),
                "predicted_iou": np.zeros(0, np.float32),
                "refined": np.zeros(0, bool),
            }
            out.meta["model_id"] = self.model_id
        return out

    # ------------------------------------------------------------------ per-image cache
    def _cached(self, context: TaskContext, kind: str, make: Any) -> Any:
        if self.config.cache_images == 0:
            return make()
        key = f"{kind}:{image_hash(context.image)}:{context.image_id!r}"
        if key in self._per_image:
            self._per_image.move_to_end(key)
            return self._per_image[key]
        value = make()
        self._per_image[key] = value
        while len(self._per_image) > self.config.cache_images:
            self._per_image.popitem(last=False)
        return value


def masked_crops(
    image: np.ndarray, masks: Masks, expand: float = 1.5, dim: float = 0.5
) -> list[np.ndarray]:
    """Square crops around each mask for CLIP.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: N masks of the image.
        expand: crop side = ``expand`` x the longer side of the mask's box (at least 8 px).
        dim: blend of pixels outside the mask toward grey (0: untouched, 1: grey).

    Returns:
        N (s, s, 3) uint8 crops centred on the mask boxes, padded with grey outside the image.
    """
    grey = np.array([124, 116, 104], np.float32)  # CLIP's mean colour
    h, w = image.shape[:2]
    boxes = masks.boxes()
    out = []
    for i in range(len(masks)):
        m = masks[i].to_dense()[0]
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        side = max(8, int(np.ceil(max(x1 - x0, y1 - y0) * expand)))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
        crop = np.empty((side, side, 3), np.float32)
        crop[:] = grey
        inside = np.zeros((side, side), bool)
        sx0, sy0 = max(0, left), max(0, top)
        sx1, sy1 = min(w, left + side), min(h, top + side)
        if sx1 > sx0 and sy1 > sy0:
            crop[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[sy0:sy1, sx0:sx1]
            inside[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = m[sy0:sy1, sx0:sx1]
        crop[~inside] = (1 - dim) * crop[~inside] + dim * grey
        out.append(crop.round().clip(0, 255).astype(np.uint8))
    return out
