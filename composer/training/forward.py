"""The model's forward pieces that training and its monitoring share: one sample's image
embedding and the decoding of a batch of prompts (``Sam`` attribute names).

:class:`~composer.training.trainer.Trainer` runs them inside its loss rounds and
:func:`~composer.training.evaluate.evaluate_samples` under ``torch.no_grad``;
:mod:`composer.training.trainer` re-exports both names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .data import PreparedSample
from .features import image_to_input


def embed_sample(model: Any, sample: PreparedSample) -> torch.Tensor:
    """(1, C, g, g) image embedding of a sample: its cached embedding (frozen encoders), its
    cached backbone features through ``image_encoder.forward_neck``, or its input-frame image
    through the whole encoder (without gradient when the encoder is frozen)."""
    enc = model.image_encoder
    device = model.pixel_mean.device
    if sample.embedding is not None:
        return sample.embedding.to(device, torch.float32)
    if sample.features is not None:
        if not hasattr(enc, "forward_neck"):
            raise TypeError(f"{type(enc).__name__} cannot consume cached features")
        feats = tuple(f[None].to(device, torch.float32) for f in sample.features)
        return enc.forward_neck(feats)
    if sample.image is None:
        raise ValueError(f"sample {sample.image_id} has neither features nor an image")
    x = image_to_input(model, sample.image)
    if torch.is_grad_enabled() and any(p.requires_grad for p in enc.parameters()):
        return enc(x)
    with torch.no_grad():
        return enc(x)


def decode_prompts(
    model: Any,
    emb: torch.Tensor,
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    boxes: np.ndarray | None,
    mask_in: torch.Tensor | None,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode n prompts of one image.

    Args:
        model: a ``Sam``.
        emb: (1, C, g, g) image embedding.
        coords: (n, K, 2) float XY clicks in the input frame (K may be 0), or None.
        labels: (n, K) int click labels (1, 0, or -1 for padding).
        boxes: (n, 4) float XYXY boxes in the input frame, or None.
        mask_in: (n, 1, L, L) float low-res logits of the previous round, or None.
        multimask: three outputs instead of the single one.

    Returns:
        logits (n, M, L, L) float in the low-res frame and iou_pred (n, M) float.
    """
    dev = model.pixel_mean.device
    points = None
    if coords is not None and coords.shape[1] > 0:
        points = (
            torch.as_tensor(coords, dtype=torch.float32, device=dev),
            torch.as_tensor(labels, dtype=torch.int64, device=dev),
        )
    box_t = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32, device=dev)
    sparse, dense = model.prompt_encoder(points=points, boxes=box_t, masks=mask_in)
    return model.mask_decoder(
        image_embeddings=emb,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
