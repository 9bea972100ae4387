"""Stateless SAM predictor: ``embed(image) -> ImageEmbedding``, ``predict(embedding, prompts) -> Detections``.

Works with any model that has SAM's structure (``image_encoder``, ``prompt_encoder``,
``mask_decoder``, ``preprocess``): the official checkpoints, MobileSAM, and the project's own
trained default. The familiar ``set_image()`` / ``predict(point_coords=...)`` pair of the
official ``SamPredictor`` is kept for existing code, with its batched companions
``predict_torch``, ``set_torch_image``, ``transform`` and ``features``.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import numpy as np
import torch
from PIL import Image

from .embedding import ImageEmbedding, check_sizes
from .io.image import load_image
from .sam.common import weight_dtype
from .segmenters.base import MaskLogits, PromptableSegmenter, as_flag, refine_image, upsample_logits
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


class ResizeLongestSide:
    """Original-image pixels -> model input frame (the image resized so its longest side is
    ``target_length``), with the interface of the official transform of this name, for code
    that prepares ``SamPredictor.predict_torch`` / ``set_torch_image`` inputs itself.

    Args:
        target_length: the longest side of the input frame (the model's ``img_size``).
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(h, w) of an (oldh, oldw) image in the input frame."""
        return preprocess_shape(oldh, oldw, long_side_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 image -> a new (h, w, 3) uint8 array, resized as
        ``SamPredictor.set_image`` does."""
        return np.array(resize_longest_side(np.ascontiguousarray(image), self.target_length))

    def _scales(self, original_size: Any) -> tuple[float, float]:
        oh, ow = int(original_size[0]), int(original_size[1])
        h, w = preprocess_shape(oh, ow, self.target_length)
        return w / ow, h / oh

    def apply_coords(self, coords: np.ndarray, original_size: Any) -> np.ndarray:
        """(..., 2) XY in original pixels of an ``original_size`` (H, W) image -> float64 XY
        in the input frame."""
        sx, sy = self._scales(original_size)
        out = np.array(coords, dtype=np.float64, copy=True)
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def apply_boxes(self, boxes: np.ndarray, original_size: Any) -> np.ndarray:
        """(..., 4) XYXY in original pixels -> (N, 4) float64 XYXY in the input frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: Any) -> torch.Tensor:
        """:meth:`apply_coords` for a tensor (float result, same device)."""
        sx, sy = self._scales(original_size)
        out = coords.detach().clone().to(torch.float)
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: Any) -> torch.Tensor:
        """:meth:`apply_boxes` for a tensor: (N, 4) float XYXY in the input frame."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


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


def _model_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """A module's parameters and buffers (a shared one may repeat), walked without the
    de-duplication of ``parameters()`` and ``buffers()``, which costs five times as much."""
    out: list[Any] = []
    stack: list[Any] = [model]
    while stack:
        mod = stack.pop()
        out.extend(mod._parameters.values())
        out.extend(mod._buffers.values())
        stack.extend(m for m in mod._modules.values() if m is not None)
    return [t for t in out if t is not None]


# tensors whose middle value the cheap signature reads (spread evenly over the model's list)
_PROBED_TENSORS = 32


def _weights_signature(tensors: list[torch.Tensor]) -> tuple[Any, ...]:
    """Cheap witness of a change to a model's parameters and buffers (``tensors``, listed anew).

    - Each tensor's identity catches new tensor objects: ``load_state_dict(..., assign=True)``,
      a submodule swapped in, ``.to()`` / ``.half()``.
    - Its version counter catches in-place updates: an optimiser step, ``load_state_dict``,
      BatchNorm statistics.
    - Its storage address catches ``.data = ...``.
    - The middle value of up to ``_PROBED_TENSORS`` tensors, spread over the list, catches
      writes that bypass the version counter: through ``param.data`` (EMA updates, older
      training code) or into tensors made under ``torch.inference_mode``, which keep no
      counter. A write through ``.data`` to tensors none of those values lies in is not seen.

    Far cheaper than :func:`weights_fingerprint` (under 1 ms against about 10 ms for
    composer_tiny), which is recomputed only when this changes.
    """
    ids = tuple((id(t), -1 if t.is_inference() else t._version, t.data_ptr()) for t in tensors)
    step = max(1, -(-len(tensors) // _PROBED_TENSORS))
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors[::step]:
        if t.numel() and t.device.type != "meta":
            by_device.setdefault(t.device, []).append(t.detach().reshape(-1)[t.numel() // 2 :][:1])
    # One copy to the CPU per device, in the values' own (promoted) type: no float64 on the
    # model's device (MPS has none; docs/gpu.md) and one synchronisation on a GPU, not 32.
    return ids, tuple(_host_bytes(torch.cat(probes)) for probes in by_device.values())


def _host_bytes(values: torch.Tensor) -> bytes:
    host = values.cpu()
    try:
        return host.numpy().tobytes()  # type: ignore[no-any-return]
    except TypeError:  # bfloat16, float8: no numpy type, and float32 holds them exactly
        return host.float().numpy().tobytes()  # type: ignore[no-any-return]


# keywords of the stateless ``predict(embedding, ...)`` that the official-style form lacks
_STATELESS_ONLY = frozenset(("points", "labels", "boxes", "multimask", "keep_low_res", "refine", "tta", "rank"))
# and those of the official-style ``predict(point_coords=..., ...)`` that the stateless one lacks
_OFFICIAL_ONLY = frozenset(("point_coords", "point_labels", "box", "multimask_output", "return_logits"))


class SamPredictor(PromptableSegmenter):
    """Promptable segmenter over a SAM-structured model.

    Args:
        model: a ``Sam``-like module (``image_encoder`` with ``img_size``, ``prompt_encoder``,
            ``mask_decoder``, ``preprocess``); put in eval mode here (BatchNorm and dropout
            of a trained model must not act on predictions), unlike the official predictor.
        model_id: id recorded in embeddings, kept as given; defaults to ``model.model_id`` or
            ``model_id_prefix`` + the input size + the weights' fingerprint
            (:func:`weights_fingerprint`), e.g. ``composer_tiny-packaged-512px-0da76b6b6c90``.
        prompt_batch: prompts decoded per forward pass (bounds memory).
        model_id_prefix: start of the derived id; default ``"<encoder class>-"``.

    A derived id follows the weights: after the model is trained, fine-tuned, reloaded
    (``assign=True`` too), given a new submodule or cast in place, ``model_id`` carries the new
    fingerprint (what is checked, and the one write it can miss: :func:`_weights_signature`), so the embedding cache (memory and
    disk), flip TTA's mirrored embeddings and ONNX exports never take the old weights' entries
    for the new ones, and embeddings made before the change are refused by ``predict``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        model_id: str | None = None,
        prompt_batch: int = 64,
        model_id_prefix: str | None = None,
    ) -> None:
        for attr in ("image_encoder", "prompt_encoder", "mask_decoder", "preprocess"):
            if not hasattr(model, attr):
                raise TypeError(f"model has no attribute {attr!r}; expected a SAM-structured model")
        self.model: Any = model.eval()
        self._fixed_id: str | None = model_id or getattr(model, "model_id", None)
        self._id_prefix = (
            f"{type(model.image_encoder).__name__}-" if model_id_prefix is None else model_id_prefix
        )
        # (the model's tensors, their signature, the id derived from them)
        self._derived_id: tuple[list[torch.Tensor], tuple[Any, ...], str] | None = None
        self.img_size = int(getattr(self.model.image_encoder, "img_size"))  # noqa: B009
        self.mask_threshold = float(getattr(model, "mask_threshold", 0.0))
        mis = getattr(model.prompt_encoder, "mask_input_size", (self.img_size // 4, self.img_size // 4))
        self.low_res_size = (int(mis[0]), int(mis[1]))
        self.prompt_batch = int(prompt_batch)
        self.transform = ResizeLongestSide(self.img_size)
        # the official-structured decoder can skip masks below an IoU threshold
        decoder: Any = model.mask_decoder
        self.skips_low_iou = "min_iou" in inspect.signature(decoder.forward).parameters
        self._embedding: ImageEmbedding | None = None

    @property
    def model_id(self) -> str:
        """Id of the model and its current weights (see the class docstring)."""
        if self._fixed_id:
            return self._fixed_id
        # listed on every call: assign=True loads, swapped submodules, .to() and .half() put
        # new tensors in the model; the known list keeps the old ones alive, so a new tensor
        # cannot take an old one's id()
        tensors = _model_tensors(self.model)
        signature = _weights_signature(tensors)
        known = self._derived_id
        if known is None or signature != known[1]:
            # the input size too: a CNN encoder's weights fit any multiple of its stride, and
            # the same weights at another size make embeddings of another grid and frame
            derived = f"{self._id_prefix}{self.img_size}px-{weights_fingerprint(self.model)}"
            known = (tensors, signature, derived)
            self._derived_id = known
        return known[2]

    @model_id.setter
    def model_id(self, value: str | None) -> None:
        """Fix the id to ``value``; ``None`` derives it from the weights afresh (after a write
        the cheap check cannot see, see :func:`_weights_signature`)."""
        self._fixed_id = None if value is None else str(value)
        if value is None:
            self._derived_id = None

    def __getstate__(self) -> dict[str, Any]:
        # tensor addresses mean nothing in another process: the id is derived again there
        state = super().__getstate__()
        state["_derived_id"] = None
        return state

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ stateless API
    @torch.inference_mode()
    def embed(self, image: Any) -> ImageEmbedding:
        """Run the image encoder once.

        Args:
            image: path, (H, W[, C]) array or PIL image, converted to (H, W, 3) uint8 RGB by
                :func:`composer.io.image.load_image` (a float array is read as [0, 1] when its
                maximum is at most 1.5, else as 0..255; a mean/std-normalised one is refused).

        Returns:
            ImageEmbedding with features (1, C, h, w) on the model's device.
        """
        arr = load_image(image)
        resized = resize_longest_side(arr, self.img_size)
        x = torch.tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        # a refining model keeps the image for predict's GrabCut refinement (mask_refine)
        return self._embed_input(x, (int(arr.shape[0]), int(arr.shape[1])), self.image_extras(arr))

    def _embed_input(
        self, x: torch.Tensor, original_size: tuple[int, int], extras: dict[str, torch.Tensor]
    ) -> ImageEmbedding:
        """Encode a (1, 3, h, w) RGB 0..255 image already resized into the input frame."""
        input_size = (int(x.shape[-2]), int(x.shape[-1]))
        x = self.model.preprocess(x.to(self.device).float())
        # a model cast to half or bfloat16 takes its input in that dtype (an official ``Sam``'s
        # preprocess returns float32 for a float32 input whatever its weights)
        features = self.model.image_encoder(x.to(weight_dtype(self.model.image_encoder)))
        return ImageEmbedding(
            features=features,
            original_size=(int(original_size[0]), int(original_size[1])),
            input_size=input_size,
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
        points = boxes = None
        if prompts.points is not None:
            coords = torch.as_tensor(self._to_input_frame(prompts.points, embedding))
            points = (coords, torch.as_tensor(prompts.labels))
        if prompts.boxes is not None:
            b = self._to_input_frame(prompts.boxes.reshape(-1, 2, 2), embedding).reshape(-1, 4)
            boxes = torch.as_tensor(b)
        masks = None if prompts.mask_input is None else torch.as_tensor(prompts.mask_input)
        return self._decode_input_frame(embedding, points, boxes, masks, multimask, min_iou)

    def _decode_input_frame(
        self,
        embedding: ImageEmbedding,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        multimask: bool,
        min_iou: float | None = None,
    ) -> MaskLogits:
        """Prompt encoder + mask decoder for prompts already in the model input frame: points
        ((N, K, 2) XY, (N, K) labels), boxes (N, 4) XYXY, masks (N, 1, h, w) low-res logits.

        Raises:
            ValueError: ``embedding``'s feature grid or ``pad_size`` are not this model's (an
                embedding built by hand under this model's id, or by its weights at another
                input size under a fixed ``model_id``: ``ImageEmbedding.check_fits``).
        """
        dev = self.device
        image_pe = self.model.prompt_encoder.get_dense_pe()
        # the decoder adds the dense prompt embedding (of the pe's grid) to the features: the
        # grids must agree (the channels need not: a decoder may project them first)
        embedding.check_fits(self.img_size, image_pe.shape[-2:])
        if points is not None:
            points = (points[0].to(dev, torch.float32), points[1].to(dev, torch.int))
        if boxes is not None:
            boxes = boxes.to(dev, torch.float32)
        if masks is not None:
            masks = masks.to(dev, weight_dtype(self.model.prompt_encoder))
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        logits, iou = self.model.mask_decoder(
            # features from a cache may be float32 while the model was cast to half
            image_embeddings=embedding.features.to(
                dev, weight_dtype(self.model.mask_decoder)
            ),
            image_pe=image_pe,
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

        ``image_format`` describes an array's channel order (OpenCV's ``cv2.imread`` gives
        BGR); a path or PIL image is decoded as RGB whatever it says.

        Raises:
            ValueError: ``image_format`` is not "RGB" or "BGR", "BGR" for a path or PIL image
                (already decoded as RGB: swapping its channels would feed the model BGR), or
                the image cannot be read.
        """
        self._embedding = None
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format == "BGR" and not isinstance(image, (np.ndarray, torch.Tensor)):
            raise ValueError(
                "image_format='BGR' describes an array's channel order; a path or PIL image is "
                "decoded as RGB (drop image_format)"
            )
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

    @property
    def features(self) -> torch.Tensor:
        """(1, C, h, w) features of the image set with ``set_image``."""
        return self.embedding.features

    def get_image_embedding(self) -> torch.Tensor:
        """(1, C, h, w) features of the image set with ``set_image``."""
        return self.embedding.features

    @torch.inference_mode()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: Any) -> None:
        """Embed an image already resized into the input frame (official interface).

        Args:
            transformed_image: (1, 3, h, w) RGB on the 0..255 scale, resized with
                ``self.transform.apply_image`` (longest side ``img_size``).
            original_image_size: (H, W) of the image before resizing.

        Raises:
            ValueError: the tensor is not (1, 3, h, w) with longest side ``img_size``, or
                ``original_image_size`` is not two positive sizes of which the tensor is a
                resize (see :class:`~composer.embedding.ImageEmbedding`).
        """
        self._embedding = None
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[:2] != (1, 3) or max(shape[2:]) != self.img_size:
            raise ValueError(
                f"set_torch_image takes a (1, 3, h, w) image with longest side {self.img_size}, "
                f"got shape {shape}"
            )
        size = tuple(int(v) for v in original_image_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"original_image_size must be (H, W), got {original_image_size!r}")
        # the embedding's own size checks, before the encoder pass rather than after it
        check_sizes(size, shape[2:], self.img_size)
        # no RGB image at the original size here: flip TTA, refinement and ranking do not apply
        self._embedding = self._embed_input(transformed_image, (size[0], size[1]), {})

    @torch.inference_mode()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B prompts against the image set with ``set_image`` (official interface).

        Prompts are in the *input frame* (``self.transform.apply_coords_torch`` /
        ``apply_boxes_torch`` of original-image pixels). The decoder's outputs are returned
        as they are: no flip TTA, mask refinement or contrast ranking.

        Args:
            point_coords: optional (B, N, 2) float XY.
            point_labels: (B, N) ints (1 foreground, 0 background, -1 padding), with coords.
            boxes: optional (B, 4) float XYXY.
            mask_input: optional (B, 1, h, w) low-res logits (h = w = 256 for SAM).
            multimask_output: three masks per prompt instead of one.
            return_logits: masks as float logits instead of booleans.

        Returns:
            masks (B, C, H, W) bool (or float32 logits) at the original size, iou_predictions
            (B, C) float32 and low_res_logits (B, C, h, w) float32, on the model's device.

        Raises:
            RuntimeError: no image is set.
            ValueError: no prompt, labels missing, NaN or infinite values, labels other than
                -1, 0, 1, or shapes that do not fit (named by the prompt encoder).
        """
        emb = self.embedding
        # weights changed since set_image (fine-tuned, reloaded, cast): the features are stale
        emb.check_model(self.model_id)
        multimask_output = as_flag("multimask_output", multimask_output)
        return_logits = as_flag("return_logits", return_logits)
        if point_coords is not None and point_labels is None:
            raise ValueError("point_labels must be given with point_coords")
        if point_coords is None and point_labels is not None:
            raise ValueError("point_labels were given without point_coords")
        if point_coords is None and boxes is None and mask_input is None:
            raise ValueError("empty prompt set: give point_coords, boxes or mask_input")
        given = (("point_coords", point_coords), ("boxes", boxes), ("mask_input", mask_input))
        tensors = {name: torch.as_tensor(t) for name, t in given if t is not None}
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contain NaN or infinite values")
        points = None
        if point_coords is not None:
            labels = torch.as_tensor(point_labels)
            if bool(((labels != -1) & (labels != 0) & (labels != 1)).any()):
                raise ValueError(f"point labels must be 1, 0 or -1, got {labels.unique().tolist()}")
            points = (tensors["point_coords"], labels)
        mask = tensors.get("mask_input")
        if mask is not None and mask.dtype == torch.bool:
            raise ValueError("mask_input takes low-res logits (low_res_logits), not a boolean mask")
        if mask is not None and (
            mask.ndim != 4 or tuple(mask.shape[1:]) != (1, *self.low_res_size)
        ):
            raise ValueError(
                f"mask_input must be (B, 1, {self.low_res_size[0]}, {self.low_res_size[1]}) for "
                f"{self.model_id}, got {tuple(mask.shape)}"
            )
        out = self._decode_input_frame(emb, points, tensors.get("boxes"), mask, multimask_output)
        up = upsample_logits(out.logits, emb)
        masks = up if return_logits else up > self.mask_threshold
        return masks, out.iou_pred, out.logits

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
        official = sorted(_OFFICIAL_ONLY.intersection(kwargs))
        stateless = sorted(_STATELESS_ONLY.intersection(kwargs))
        if official and stateless:
            raise TypeError(
                f"predict() mixes the official form's {', '.join(official)} with the "
                f"embedding form's {', '.join(stateless)}: after set_image use point_coords, "
                "point_labels, box, mask_input, multimask_output, return_logits; with an "
                "embedding use points, labels, boxes, mask_input, multimask"
            )
        if (
            (args and isinstance(args[0], ImageEmbedding))
            or "embedding" in kwargs
            or stateless
        ):
            # the stateless form (its TypeError names a first argument that is no embedding)
            return super().predict(*args, **kwargs)
        return self._predict_single(*args, **kwargs)

    @torch.inference_mode()
    def _predict_single(self, point_coords: Any = None, point_labels: Any = None, box: Any = None,
                        mask_input: Any = None, multimask_output: bool = True,
                        return_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        emb = self.embedding
        emb.check_model(self.model_id)  # stale after a change of weights since set_image
        multimask_output = as_flag("multimask_output", multimask_output)
        return_logits = as_flag("return_logits", return_logits)
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
        self.warn_if_image_missing(emb, "off" if return_logits else "auto", "auto",
                                   "auto", multimask_output and not return_logits,
                                   first_prompt=prompts.mask_input is None)
        if ranker is not None:
            scores = (scores + ranker.weight * ranker.contrasts(refine_image(emb), masks)).astype(np.float32)
        low = out.logits if out.feedback is None else out.feedback
        return masks, scores, low[0].cpu().numpy()
