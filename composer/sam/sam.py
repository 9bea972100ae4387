"""The SAM model: image encoder + prompt encoder + mask decoder, with the image pre/post
processing that maps between the original image, the model input and the low-res logits.

Frames used below:
    original: pixels of the image as given, (H, W).
    input: the image resized so its longest side is ``img_size`` (e.g. 1024), (h, w); padded
        on the bottom/right to the square ``img_size`` model input.
    low-res: the decoder's logits, the padded input scaled by 1/4 (256x256 for SAM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .common import weight_dtype
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

_DEFAULT_MEAN = (123.675, 116.28, 103.53)
_DEFAULT_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything: embed an image once, then decode many prompts against it.

    Attributes ``image_encoder``, ``prompt_encoder``, ``mask_decoder`` and the (non-persistent)
    buffers ``pixel_mean`` / ``pixel_std`` have the official names, so official checkpoints load
    with ``strict=True``.

    Args:
        image_encoder: ``ImageEncoderViT`` or ``TinyViT``; must expose ``img_size``.
        prompt_encoder: the prompt encoder.
        mask_decoder: the mask decoder.
        pixel_mean: per-channel RGB mean on the 0..255 scale.
        pixel_std: per-channel RGB std on the 0..255 scale.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    pixel_mean: torch.Tensor  # (3, 1, 1) float buffer, not saved in state dicts
    pixel_std: torch.Tensor  # (3, 1, 1) float buffer, not saved in state dicts

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = _DEFAULT_MEAN,
        pixel_std: Sequence[float] = _DEFAULT_STD,
    ) -> None:
        super().__init__()
        if not isinstance(getattr(image_encoder, "img_size", None), int):
            raise TypeError(f"{type(image_encoder).__name__} has no integer img_size attribute")
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        mean = torch.tensor([float(v) for v in pixel_mean], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor([float(v) for v in pixel_std], dtype=torch.float32).view(-1, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    @property
    def device(self) -> torch.device:
        """Device of the model's buffers."""
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024 for SAM)."""
        return int(cast(int, self.image_encoder.img_size))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise colours and zero-pad (bottom/right) to the square model input.

        Args:
            x: (3, h, w) or (B, 3, h, w) float RGB on the 0..255 scale, already resized so the
                longest side is at most ``img_size``.

        Returns:
            (3, S, S) or (B, 3, S, S), S = ``img_size``, in the dtype of the image encoder's
            weights (normalised in float32 first), so a ``.half()`` model takes it as is.

        Raises:
            ValueError: if x is not 3- or 4-D with 3 channels, or h or w exceeds ``img_size``.
        """
        if x.ndim not in (3, 4) or x.shape[-3] != 3:
            raise ValueError(f"expected a (3, h, w) or (B, 3, h, w) image, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        size = self.img_size
        if h > size or w > size:
            raise ValueError(
                f"image of {h}x{w} exceeds the model input {size}x{size}; resize it first"
            )
        x = (x.float() - self.pixel_mean.float()) / self.pixel_std.float()
        return F.pad(x, (0, size - w, 0, size - h)).to(self.input_dtype)

    @property
    def input_dtype(self) -> torch.dtype:
        """Floating dtype of the image encoder's weights (float32 unless the model was cast)."""
        return weight_dtype(self.image_encoder)

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """Low-res logits -> logits at the original image size.

        Upsamples to the padded input square, crops the valid ``input_size`` region, then
        resizes to ``original_size`` (bilinear, ``align_corners=False`` throughout).

        Args:
            masks: (B, C, h', w') float logits in the low-res frame.
            input_size: (h, w) of the resized image before padding.
            original_size: (H, W) of the original image.

        Returns:
            (B, C, H, W) float logits in the original frame.
        """
        if masks.ndim != 4:
            raise ValueError(f"masks must be (B, C, h, w), got {tuple(masks.shape)}")
        size = self.img_size
        ih, iw = int(input_size[0]), int(input_size[1])
        if not (0 < ih <= size and 0 < iw <= size):
            raise ValueError(f"input_size {tuple(input_size)} is not inside {size}x{size}")
        out = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        out = out[..., :ih, :iw]
        oh, ow = int(original_size[0]), int(original_size[1])
        return F.interpolate(out, (oh, ow), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """End-to-end prediction for a list of images, each with its own prompts.

        Args:
            batched_input: one dict per image with
                'image': (3, h, w) float RGB 0..255, resized to the input frame;
                'original_size': (H, W);
                optional 'point_coords' (B, N, 2) float and 'point_labels' (B, N) int, in the
                input frame; optional 'boxes' (B, 4) float XYXY in the input frame;
                optional 'mask_inputs' (B, 1, 4h', 4w') float low-res logits.
            multimask_output: 3 masks per prompt instead of 1.

        Returns:
            One dict per image with 'masks' (B, M, H, W) bool in the original frame,
            'iou_predictions' (B, M) float and 'low_res_logits' (B, M, 4h', 4w') float.
        """
        images = torch.stack([self.preprocess(rec["image"]) for rec in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        outputs = []
        for rec, embedding in zip(batched_input, embeddings, strict=True):
            points = None
            if "point_coords" in rec:
                points = (rec["point_coords"], rec["point_labels"])
            mask_inputs = rec.get("mask_inputs")
            if mask_inputs is not None and not bool(torch.isfinite(mask_inputs).all()):
                raise ValueError("mask_inputs contain NaN or infinite values")
            sparse, dense = self.prompt_encoder(
                points=points, boxes=rec.get("boxes"), masks=rec.get("mask_inputs")
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, input_size=rec["image"].shape[-2:], original_size=rec["original_size"]
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs
