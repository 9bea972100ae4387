"""Single-click mIoU in the low-res frame, to monitor training on held-out samples.

Same protocol as :mod:`composer.evaluation.points` (which the recipes use for reported numbers
at full resolution): one positive click at the maximum of the distance transform of the
ground-truth mask; the model returns 3 masks; *top-1* takes the mask with the highest predicted
IoU, *oracle* the best of the 3. Invalid pixels (padding, ignore bands) are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import PreparedSample, masks_of
from .losses import mask_iou
from .prompts import center_click, to_input_frame


@dataclass(frozen=True)
class ClickResult:
    """Single-click mIoU over ``n`` masks (values in 0..1)."""

    miou_top1: float
    miou_oracle: float
    n: int


@torch.no_grad()
def evaluate_samples(
    model: Any, samples: Sequence[PreparedSample], max_masks: int = 8, seed: int = 0
) -> ClickResult:
    """Single-click mIoU in the low-res frame on prepared (e.g. held-out, cached) samples.

    Args:
        model: a ``Sam``; samples with cached ``features`` need ``image_encoder.forward_neck``.
        samples: prepared samples; up to ``max_masks`` masks each (a fixed random subset).
        max_masks: masks evaluated per sample.
        seed: seed of the mask subset.
    """
    from .forward import decode_prompts, embed_sample

    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    img_size = int(model.image_encoder.img_size)
    low_res = int(model.prompt_encoder.mask_input_size[0])
    top1, oracle = [], []
    try:
        for s in samples:
            idx = s.masks_index
            if len(idx) == 0:
                continue
            pick = rng.choice(len(idx), size=min(max_masks, len(idx)), replace=False)
            gt = masks_of(s, idx[np.sort(pick)]) & s.valid
            clicks = np.array([center_click(m) for m in gt], np.float64)
            coords = to_input_frame(clicks, low_res, img_size)[:, None]
            labels = np.ones((len(gt), 1), np.int64)
            emb = embed_sample(model, s)
            logits, iou_pred = decode_prompts(
                model, emb, coords, labels, None, None, multimask=True
            )
            dev = logits.device
            ious = mask_iou(
                logits.float(), torch.from_numpy(gt).to(dev), torch.from_numpy(s.valid).to(dev)
            )
            best = iou_pred.argmax(1)
            top1.append(ious[torch.arange(len(gt)), best])
            oracle.append(ious.max(1).values)
    finally:
        model.train(was_training)
    if not top1:
        return ClickResult(float("nan"), float("nan"), 0)
    t, o = torch.cat(top1), torch.cat(oracle)
    return ClickResult(float(t.mean()), float(o.mean()), len(t))
