"""Stateless SAM predictor: ``embed(image) -> ImageEmbedding``, ``predict(embedding, prompts) -> Detections``.

Works with any model that has SAM's structure (``image_encoder``, ``prompt_encoder``,
``mask_decoder``, ``preprocess``): the official checkpoints, MobileSAM, and the project's own
trained default. The familiar ``set_image()`` / ``predict(point_coords=...)`` pair of the
official ``SamPredictor`` is kept for existing code.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import numpy as np
import torch
from PIL import Image

from .embedding import ImageEmbedding
from .io.image import load_image
from .segmenters.base import MaskLogits, PromptableSegmenter, refine_image, upsample_logits
from .structures import Prompts


def preprocess_shape(old_h: int, old_w: int, long_side: int) -> tuple[int, int]:
    """(h, w) after resizing so the longest side equals ``long_side`` (rounded like the official code)."""
    scale = long_side * 1.0 / max(old_h, old_w)
    # at least one pixel: a 3 x 5000 strip would otherwise round its short side to 0
    return max(1, int(old_h * scale + 0.5)), max(1, int(old_w * scale + 0.5))


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image so its longest side is ``long_side`` (PIL bilinear)."""
    h, w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    if (h, w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short, stable id of a model's architecture and weights.

    Hashes every parameter's name and shape and a strided sample of its values, so two models
    with different weights get different ids while vit_h costs milliseconds, not seconds.
    """
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.device.type == "meta" or t.numel() == 0:
            continue
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        h.update(flat[::step][:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


# keywords of the stateless ``predict(embedding, ...)`` that the official-style form lacks
_STATELESS_ONLY = frozenset(("points", "labels", "boxes", "multimask", "keep_low_res", "refine", "tta", "rank"))


class SamPredictor(PromptableSegmenter):
    """Promptable segmenter over a SAM-structured model.

    Args:
        model: a ``Sam``-like module (``image_encoder`` with ``img_size``, ``prompt_encoder``,
            ``mask_decoder``, ``preprocess``).
        model_id: id recorded in embeddings; defaults to ``model.model_id`` or
            ``"<Class>-<weights fingerprint>"``.
        prompt_batch: prompts decoded per forward pass (bounds memory).
    """

    def __init__(self, model: torch.nn.Module, model_id: str | None = None, prompt_batch: int = 64) -> None:
        for attr in ("image_encoder", "prompt_encoder", "mask_decoder", "preprocess"):
            if not hasattr(model, attr):
                raise TypeError(f"model has no attribute {attr!r}; expected a SAM-structured model")
        self.model: Any = model.eval()
        self.model_id = model_id or getattr(model, "model_id", None) or (
            f"{type(model.image_encoder).__name__}-{weights_fingerprint(model)}"
        )
        self.img_size = int(getattr(self.model.image_encoder, "img_size"))  # noqa: B009
        self.mask_threshold = float(getattr(model, "mask_threshold", 0.0))
        mis = getattr(model.prompt_encoder, "mask_input_size", (self.img_size // 4, self.img_size // 4))
        self.low_res_size = (int(mis[0]), int(mis[1]))
        self.prompt_batch = int(prompt_batch)
        # the official-structured decoder can skip masks below an IoU threshold
        decoder: Any = model.mask_decoder
        self.skips_low_iou = "min_iou" in inspect.signature(decoder.forward).parameters
        self._embedding: ImageEmbedding | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ stateless API
    @torch.inference_mode()
    def embed(self, image: Any) -> ImageEmbedding:
        """Run the image encoder once.

        Args:
            image: path, (H, W, C) array or PIL image (converted to RGB by ``load_image``).

        Returns:
            ImageEmbedding with features (1, C, h, w) on the model's device.
        """
        arr = load_image(image)
        resized = resize_longest_side(arr, self.img_size)
        x = torch.tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        x = self.model.preprocess(x.float())
        features = self.model.image_encoder(x)
        # a refining model keeps the image for predict's GrabCut refinement (mask_refine)
        extras = self.image_extras(arr)
        return ImageEmbedding(
            features=features,
            original_size=(int(arr.shape[0]), int(arr.shape[1])),
            input_size=(int(resized.shape[0]), int(resized.shape[1])),
            pad_size=self.img_size,
            model_id=self.model_id,
            extras=extras,
        )

    def _to_input_frame(self, coords: np.ndarray, embedding: ImageEmbedding) -> np.ndarray:
        oh, ow = embedding.original_size
        ih, iw = embedding.input_size
        out = coords.astype(np.float32, copy=True)
        out[..., 0] *= iw / ow
        out[..., 1] *= ih / oh
        return out

    @torch.inference_mode()
    def decode(
        self,
        embedding: ImageEmbedding,
        prompts: Prompts,
        multimask: bool = True,
        min_iou: float | None = None,
    ) -> MaskLogits:
        """Prompt encoder + mask decoder for validated prompts in original-image pixels.

        ``min_iou``: masks of prompts whose returned outputs all have a predicted IoU <= it
        are not computed (``SKIPPED_LOGIT``, i.e. empty); see ``MaskDecoder.forward``.
        """
        dev = self.device
        points = boxes = masks = None
        if prompts.points is not None:
            coords = torch.as_tensor(self._to_input_frame(prompts.points, embedding), device=dev)
            labels = torch.as_tensor(prompts.labels, device=dev, dtype=torch.int)
            points = (coords, labels)
        if prompts.boxes is not None:
            b = self._to_input_frame(prompts.boxes.reshape(-1, 2, 2), embedding).reshape(-1, 4)
            boxes = torch.as_tensor(b, device=dev)
        if prompts.mask_input is not None:
            masks = torch.as_tensor(prompts.mask_input, device=dev)
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        logits, iou = self.model.mask_decoder(
            image_embeddings=embedding.features.to(dev),
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            **({} if min_iou is None else {"min_iou": float(min_iou)}),
        )
        return MaskLogits(logits.float(), iou.float())

    # ------------------------------------------------------------------ official-style API
    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        """Embed ``image`` and keep it for ``predict(point_coords=...)`` (official interface).

        The image set before is dropped first, so a call that fails leaves no image set (a
        later ``predict`` raises instead of answering for the previous image).

        Raises:
            ValueError: ``image_format`` is not "RGB" or "BGR", or the image cannot be read.
        """
        self._embedding = None
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        arr = load_image(image)
        if image_format == "BGR":
            arr = np.ascontiguousarray(arr[..., ::-1])
        self._embedding = self.embed(arr)

    def reset_image(self) -> None:
        self._embedding = None

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def embedding(self) -> ImageEmbedding:
        if self._embedding is None:
            raise RuntimeError("no image is set: call set_image(image) first")
        return self._embedding

    @property
    def original_size(self) -> tuple[int, int]:
        return self.embedding.original_size

    @property
    def input_size(self) -> tuple[int, int]:
        return self.embedding.input_size

    def get_image_embedding(self) -> torch.Tensor:
        """(1, C, h, w) features of the image set with ``set_image``."""
        return self.embedding.features

    def predict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Two call forms.

        ``predict(embedding, points=None, labels=None, boxes=None, mask_input=None, multimask=True)``
        returns Detections (see ``PromptableSegmenter.predict``).

        ``predict(point_coords=None, point_labels=None, box=None, mask_input=None,
        multimask_output=True, return_logits=False)`` after ``set_image`` follows the official
        SamPredictor: one prompt; returns ``(masks (C, H, W) bool or float logits,
        scores (C,) float32, low_res_logits (C, h, w) float32)`` as numpy arrays. Boolean
        masks get the segmenter's ``mask_refine`` (if any), and boolean multimask outputs are
        scored under its ``mask_rank`` (if any); logits are the decoder's (averaged
        with the mirrored image's under ``flip_tta`` when there is no ``mask_input``).
        """
        if (
            (args and isinstance(args[0], ImageEmbedding))
            or "embedding" in kwargs
            or not _STATELESS_ONLY.isdisjoint(kwargs)
        ):
            # the stateless form (its TypeError names a first argument that is no embedding)
            return super().predict(*args, **kwargs)
        return self._predict_single(*args, **kwargs)

    @torch.inference_mode()
    def _predict_single(self, point_coords: Any = None, point_labels: Any = None, box: Any = None,
                        mask_input: Any = None, multimask_output: bool = True,
                        return_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        emb = self.embedding
        if point_coords is not None and point_labels is None:
            raise ValueError("point_labels must be given with point_coords")
        box_arr = None if box is None else np.asarray(box, np.float32)
        if box_arr is not None and box_arr.shape not in ((4,), (1, 4)):
            raise ValueError(f"box must be one XYXY box, (4,) or (1, 4); got shape {box_arr.shape}")
        prompts = Prompts.create(point_coords, point_labels, box_arr, mask_input, image_size=emb.original_size)
        if len(prompts) != 1:
            raise ValueError(
                f"predict(point_coords=..., box=...) takes one prompt, got {len(prompts)}; "
                "decode many with predict(embedding, points=(N, K, 2), labels=(N, K), boxes=(N, 4))"
            )
        self.check_mask_input(prompts)
        out = self.decode_tta(emb, prompts, multimask_output, self.resolve_tta("auto", emb))
        up = upsample_logits(out.logits, emb)[0]
        masks = (up if return_logits else up > self.mask_threshold).cpu().numpy()
        refiner, image = (None, None) if return_logits else self.refinement(emb)
        if refiner is not None and image is not None:
            pts = None if prompts.points is None else prompts.points[0]
            lbl = None if prompts.labels is None else prompts.labels[0]
            for m in masks:
                refiner.refine_inplace(image, m, pts, lbl)
        scores = out.iou_pred[0].float().cpu().numpy()
        ranker = None if return_logits or not multimask_output else self.resolve_rank("auto", emb)
        if ranker is not None:
            scores = (scores + ranker.weight * ranker.contrasts(refine_image(emb), masks)).astype(np.float32)
        low = out.logits if out.feedback is None else out.feedback
        return masks, scores, low[0].cpu().numpy()
