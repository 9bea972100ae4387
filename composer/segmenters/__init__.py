"""Segmenter backends and ``load_segmenter``, the one place that picks a backend by name.

Backends are registry entries: a name, a loader and a line of description. ``DEFAULT_ORDER``
lists, best first, the backends ``load_segmenter()`` may return without a name; the first one
that works here without a download wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import MaskLogits, PromptableSegmenter, Segmenter, best_per_prompt
from .classic import ClassicConfig, ClassicSegmenter

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "DEFAULT_ORDER",
    "default_segmenter_name",
    "ClassicConfig",
    "ClassicSegmenter",
    "MaskLogits",
    "PromptableSegmenter",
    "Segmenter",
    "best_per_prompt",
    "load_segmenter",
    "resolve_device",
]


@dataclass(frozen=True)
class Backend:
    """A named way to build a segmenter.

    Attributes:
        name: the name ``load_segmenter`` accepts.
        loader: ``loader(name, checkpoint, **kwargs) -> PromptableSegmenter``.
        description: one line for logs and error messages.
    """

    name: str
    loader: Callable[..., PromptableSegmenter]
    description: str


def resolve_device(device: Any = "auto") -> Any:
    """The ``torch.device`` a ``device`` argument names.

    Args:
        device: "auto" or None (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda",
            "cuda:N", "mps", or a ``torch.device``.

    Raises:
        ValueError: an unknown device name, or an accelerator torch cannot use here (the
            message says why, e.g. a CPU-only torch build or no visible GPU).
    """
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from ..sam.build import check_device

    return check_device(device, choices="auto, cpu, cuda, cuda:N or mps", cpu_hint="--device cpu")


def _load_classic(
    name: str, checkpoint: Any = None, device: Any = None, **kwargs: Any
) -> PromptableSegmenter:
    if checkpoint is not None:
        raise ValueError(f"the classic backend has no weights; got checkpoint={checkpoint!r}")
    if device is not None and device.type != "cpu":
        raise ValueError(f"the classic backend runs on the CPU only; got device={str(device)!r}")
    return ClassicSegmenter(**kwargs)


def _load_onnx(
    name: str, checkpoint: Any = None, device: Any = None, **kwargs: Any
) -> PromptableSegmenter:
    if checkpoint is None:
        raise ValueError(
            "the onnx backend needs an export folder: checkpoint=DIR "
            "(written by `sam-composer export --model NAME --out DIR`)"
        )
    if device is not None and device.type != "cpu":
        raise ValueError(f"the onnx backend runs on the CPU (ONNX Runtime); got device={str(device)!r}")
    from .onnx import OnnxSegmenter

    return OnnxSegmenter(checkpoint, **kwargs)


# official weights each SAM architecture loads when no checkpoint is given
SAM_WEIGHTS = {
    "vit_b": "sam_vit_b",
    "vit_l": "sam_vit_l",
    "vit_h": "sam_vit_h",
    "vit_t": "mobile_sam_vit_t",
}


def _load_sam(
    name: str, checkpoint: Any = None, device: Any = None, **kwargs: Any
) -> PromptableSegmenter:
    # imported here: the SAM network pulls in far more than the classic backend needs
    from ..predictor import SamPredictor
    from ..sam import build_sam

    arch = "vit_h" if name == "sam" else name
    if checkpoint is None:
        # a SAM without its weights segments nothing useful: resolve the registered file
        # (a clear error naming the file, URL and download command when it is absent)
        from ..hub import resolve_checkpoint

        checkpoint = resolve_checkpoint(SAM_WEIGHTS[arch])
    return SamPredictor(build_sam(arch, checkpoint, device=device or "cpu"), **kwargs)


def _load_composer_tiny(
    name: str, checkpoint: Any = None, device: Any = None, **kwargs: Any
) -> PromptableSegmenter:
    from ..predictor import SamPredictor
    from ..sam.composer_tiny import (
        AMG_THRESHOLDS,
        BOX_ZOOM,
        EDGE_REFINE,
        FLIP_TTA,
        MASK_RANK,
        MASK_REFINE,
        MODEL_NAME,
        PACKAGED_WEIGHTS,
        PROMPT_SHIFT,
        build_composer_tiny,
    )

    ckpt = PACKAGED_WEIGHTS if checkpoint is None else checkpoint
    if checkpoint is None and not PACKAGED_WEIGHTS.is_file():
        raise ValueError(
            f"the packaged {MODEL_NAME} weights are missing: expected {PACKAGED_WEIGHTS}"
        )
    model = build_composer_tiny(ckpt, device=device or "cpu")
    tag = "packaged" if checkpoint is None else "custom"
    # the id carries the weights' fingerprint and follows them if they change in place
    segmenter = SamPredictor(model, model_id_prefix=f"{MODEL_NAME}-{tag}-", **kwargs)
    # the automatic generator's quality filters, chosen for this model on BSDS500 val
    segmenter.amg_thresholds = dict(AMG_THRESHOLDS)
    # the edge task's guided refinement of the coarse mask maps, chosen on BSDS500 val
    segmenter.edge_refine = EDGE_REFINE
    # GrabCut refinement of the returned masks' boundaries, chosen on held-out training images
    segmenter.mask_refine = MASK_REFINE
    # flip test-time augmentation of first clicks and boxes, chosen on the same held-out data
    segmenter.flip_tta = FLIP_TTA
    # where its training put prompts: flip TTA mirrors the place a prompt marks
    segmenter.prompt_shift = PROMPT_SHIFT
    # first-click masks ranked by predicted IoU and boundary colour contrast, chosen likewise
    segmenter.mask_rank = MASK_RANK
    # small detector boxes decoded again in a crop, chosen on the COCO subset's training half
    segmenter.box_zoom = BOX_ZOOM
    return segmenter


def _available(name: str) -> bool:
    """Whether ``load_segmenter(name)`` works here without a download."""
    if name == "classic":
        return True
    if name == "composer_tiny":
        from ..sam.composer_tiny import PACKAGED_WEIGHTS

        return PACKAGED_WEIGHTS.is_file() and name in DEFAULT_ORDER
    if name in SAM_WEIGHTS:
        from ..hub import cached_path

        try:
            return cached_path(SAM_WEIGHTS[name]).is_file()
        except ValueError:
            return False
    return False


BACKENDS: dict[str, Backend] = {
    "classic": Backend(
        "classic", _load_classic, "no learned weights: superpixel geodesics + GrabCut"
    ),
    "composer_tiny": Backend(
        "composer_tiny",
        _load_composer_tiny,
        "the project's trained model: EfficientNet-Lite0 + SAM decoder",
    ),
    "onnx": Backend(
        "onnx", _load_onnx, "an ONNX export (sam-composer export) run by ONNX Runtime on the CPU"
    ),
    "sam": Backend("sam", _load_sam, "SAM ViT-H (alias of vit_h)"),
    "vit_b": Backend("vit_b", _load_sam, "SAM ViT-B"),
    "vit_l": Backend("vit_l", _load_sam, "SAM ViT-L"),
    "vit_h": Backend("vit_h", _load_sam, "SAM ViT-H"),
    "vit_t": Backend("vit_t", _load_sam, "MobileSAM TinyViT"),
}

# Without a name, load_segmenter() takes the first backend of this list that works here
# without a download: official SAM weights in the cache, then the packaged trained model,
# then the weights-free classic backend (always available).
DEFAULT_ORDER: tuple[str, ...] = ("vit_h", "vit_l", "vit_b", "vit_t", "composer_tiny", "classic")


def default_segmenter_name() -> str:
    """The backend ``load_segmenter()`` picks on this machine (see ``DEFAULT_ORDER``)."""
    for name in DEFAULT_ORDER:
        if _available(name):
            return name
    return "classic"


def load_segmenter(
    name: str | None = None, checkpoint: Any = None, device: Any = "auto", **kwargs: Any
) -> PromptableSegmenter:
    """Build a segmenter by backend name.

    Args:
        name: a key of ``BACKENDS`` ("classic", "composer_tiny", "sam", "vit_b", "vit_l",
            "vit_h", "vit_t", "onnx"); None picks the best available (``default_segmenter_name()``).
        checkpoint: weights (a path or a registered weights name, see ``build_sam``); None
            means the registered official weights for SAM names (from the cache; an error
            names the download command when absent) and the packaged weights for
            "composer_tiny"; the export folder for "onnx"; must be None for "classic".
        device: where the network runs: "auto" (default: CUDA when torch sees a GPU, else
            the CPU), "cpu", "cuda", "cuda:N", "mps" or a ``torch.device``. The classic and
            onnx backends run on the CPU ("auto" gives them the CPU; an accelerator is an error).
        **kwargs: passed to the backend's constructor (e.g. ``config=ClassicConfig(...)``
            for "classic", ``prompt_batch``).

    Returns:
        The segmenter (``model_id``, ``embed``, ``predict``).

    Raises:
        ValueError: unknown name (the message lists the valid ones), a checkpoint given
            to a backend without weights, or a device this machine cannot use.
    """
    key = default_segmenter_name() if name is None else str(name).strip().lower()
    backend = BACKENDS.get(key)
    if backend is None:
        raise ValueError(f"unknown segmenter {name!r}; valid names: {sorted(BACKENDS)}")
    auto = device is None or (isinstance(device, str) and device.strip().lower() == "auto")
    dev = resolve_device("cpu" if auto and key in ("classic", "onnx") else device)
    segmenter = backend.loader(key, checkpoint, device=dev, **kwargs)
    weights = (
        "none"
        if key == "classic"
        else (
            str(checkpoint)
            if checkpoint is not None
            else "packaged"
            if key == "composer_tiny"
            else SAM_WEIGHTS.get("vit_h" if key == "sam" else key, "?")
        )
    )
    segmenter.description = (  # type: ignore[attr-defined]
        f"backend {key}{' (default)' if name is None else ''}: {backend.description}; weights: {weights}"
    )
    logger.info(
        "segmenter: %s%s (%s), weights: %s, model_id %s, device %s",
        key,
        " [default]" if name is None else "",
        backend.description,
        "none" if checkpoint is None else checkpoint,
        segmenter.model_id,
        dev,
    )
    return segmenter
