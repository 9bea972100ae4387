"""Object proposals from a promptable segmenter (SAM paper, Appendix D.3).

A modified automatic mask generator: a 64x64 point grid, box NMS at 0.9, no crops and no
predicted-IoU or stability filtering (about 900 masks per image with SAM); when more than
``max_proposals`` remain they are ranked by the mean of predicted IoU and stability score and
the top ones kept. That mean is the proposal score. The paper's "single output" ablation (one
mask per point, 128x128 grid, NMS 0.95, random ranking) is :meth:`ProposalConfig.single_output`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from composer.automatic import AmgConfig, AutomaticMaskGenerator
from composer.embedding import EmbeddingCache
from composer.structures import Detections

from .base import TaskContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProposalConfig:
    """Settings of SAM-style mask proposals.

    Attributes:
        points_per_side: grid points per side (64 in the paper).
        points_per_batch: prompts decoded per forward pass.
        box_nms_thresh: box IoU threshold of the mask NMS (0.9 in the paper).
        max_proposals: keep at most this many (1000 for AR@1000).
        multimask: three masks per point (True) or the single-output ablation (False).
        ranking: ``"mean"`` (mean of predicted IoU and stability, the paper's default) or
            ``"random"`` (the single-output ablation); the rank order also sets ``scores``.
        seed: seed of the random ranking.
    """

    points_per_side: int = 64
    points_per_batch: int = 64
    box_nms_thresh: float = 0.9
    max_proposals: int = 1000
    multimask: bool = True
    ranking: str = "mean"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if self.max_proposals < 1:
            raise ValueError(f"max_proposals must be >= 1, got {self.max_proposals}")
        if self.ranking not in ("mean", "random"):
            raise ValueError(f"ranking must be 'mean' or 'random', got {self.ranking!r}")
        if not 0.0 <= self.box_nms_thresh <= 1.0:
            raise ValueError(f"box_nms_thresh must be in [0, 1], got {self.box_nms_thresh}")

    @classmethod
    def single_output(cls) -> ProposalConfig:
        """The paper's single-output ablation: 128x128 grid, NMS 0.95, random ranking."""
        return cls(points_per_side=128, box_nms_thresh=0.95, multimask=False, ranking="random")

    def amg_config(self) -> AmgConfig:
        return AmgConfig(
            points_per_side=self.points_per_side,
            points_per_batch=self.points_per_batch,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            box_nms_thresh=self.box_nms_thresh,
            crop_n_layers=0,
            multimask=self.multimask,
        )


class ProposalTask:
    """Class-agnostic mask proposals of one image.

    Args:
        segmenter: any ``PromptableSegmenter``.
        config: settings (default :class:`ProposalConfig`, the paper's protocol).

    Call with a :class:`TaskContext` (uses its shared cache) or an image.
    """

    #: automatic masks are decoded without the segmenter's predict-time settings (mask
    #: refinement, flip TTA, contrast ranking); reports record them as not applied
    uses_predict_settings = False

    def __init__(self, segmenter: Any, config: ProposalConfig | None = None) -> None:
        self.segmenter = segmenter
        self.config = ProposalConfig() if config is None else config
        if not isinstance(self.config, ProposalConfig):
            raise TypeError(f"config must be a ProposalConfig, got {type(self.config).__name__}")

    @property
    def model_id(self) -> str:
        return str(self.segmenter.model_id)

    def __call__(self, context: TaskContext | Any) -> Detections:
        """Proposals of ``context.image``.

        Returns:
            At most ``max_proposals`` Detections sorted by ``scores`` (descending): RLE masks,
            boxes in original-image pixels, ``scores`` = mean(predicted IoU, stability) (or a
            random rank score), extras as from :class:`AutomaticMaskGenerator`; meta has
            ``image_id`` and ``n_before_ranking``.
        """
        if not isinstance(context, TaskContext):
            from composer.io.image import load_image

            context = TaskContext(load_image(context), None, EmbeddingCache())
        cfg = self.config
        dets = AutomaticMaskGenerator(
            self.segmenter, cfg.amg_config(), cache=context.cache
        ).generate(context.image)
        n = len(dets)
        if cfg.ranking == "mean":
            scores = 0.5 * (dets.extras["predicted_iou"] + dets.extras["stability_score"])
        else:
            # a random permutation, expressed as scores so that evaluators rank by it
            scores = np.random.default_rng(cfg.seed).permutation(n).astype(np.float32) / max(n, 1)
        dets.scores = scores.astype(np.float32)
        dets = dets.sort_by_score()[: cfg.max_proposals]
        dets.meta.update(image_id=context.image_id, n_before_ranking=n)
        return dets
