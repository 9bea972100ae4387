"""sam-composer: a composable zero-shot segmentation toolkit built around Segment Anything.

Public entry points are imported lazily so that ``import composer`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Masks": "composer.structures",
    "Detections": "composer.structures",
    "Prompts": "composer.structures",
    "EdgeMap": "composer.structures",
    "ImageEmbedding": "composer.embedding",
    "EmbeddingCache": "composer.embedding",
    "load_image": "composer.io.image",
    "build_sam": "composer.sam.build",
    "sam_model_registry": "composer.sam.build",
    "SamPredictor": "composer.predictor",
    "Segmenter": "composer.segmenters.base",
    "load_segmenter": "composer.segmenters",
    "AutomaticMaskGenerator": "composer.automatic",
    "load_detector": "composer.models.detectors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'composer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
