"""What every box detector shares: the :class:`Detector` protocol and the checks and
finishing steps of the backends in :mod:`composer.models.detectors`."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..structures import Detections


@runtime_checkable
class Detector(Protocol):
    """A box detector.

    Attributes:
        model_id: id of the model and weights (recorded in the output's ``meta``).
        class_names: category id -> name of every class the detector can output.
    """

    model_id: str

    @property
    def class_names(self) -> Mapping[int, str]: ...

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        """Detect objects.

        Args:
            image: (H, W, 3) uint8 RGB array (or anything ``composer.io.load_image`` reads).
            image_id: the dataset's id of the image; backends that read stored results need it.

        Returns:
            Detections sorted by score: boxes (N, 4) float32 XYXY in original-image pixels,
            scores (N,), labels (N,) int64 category ids, ``meta["class_names"]``.
        """
        ...


def _finish(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    image_size: tuple[int, int],
    model_id: str,
    class_names: Mapping[int, str],
    image_id: Hashable | None,
    score_threshold: float,
    max_dets: int | None,
) -> Detections:
    """Clip to the image, drop low scores and empty boxes, sort by score, keep ``max_dets``."""
    h, w = image_size
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    scores = np.asarray(scores, np.float32).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    keep = (scores >= score_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    order = np.argsort(-scores[keep], kind="stable")
    idx = np.flatnonzero(keep)[order]
    if max_dets is not None:
        idx = idx[: int(max_dets)]
    meta: dict[str, Any] = {
        "model_id": model_id,
        "class_names": dict(class_names),
        "image_size": (h, w),
    }
    if image_id is not None:
        meta["image_id"] = image_id
    return Detections(boxes[idx], scores[idx], labels[idx], meta=meta)


def _check_threshold(value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {value}")
    return float(value)


def _check_max_dets(value: Any) -> int | None:
    """``max_dets`` as an int, or None (no cap).

    Raises:
        ValueError: not None and not a whole number >= 0 (a negative cap sliced the
            detections from the end: -1 silently dropped the last one).
    """
    if value is None:
        return None
    if not (_finite_number(value) and float(value) >= 0 and float(value).is_integer()):
        raise ValueError(f"max_dets must be None or a whole number >= 0, got {value!r}")
    return int(value)


def _load(image: Any) -> np.ndarray:
    from ..io.image import load_image

    return load_image(image)


def _finite_number(value: Any) -> bool:
    """A real number (not a bool, not a string such as "nan") that is finite."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _file_digest(path: Path) -> str:
    """The first 12 hex digits of a file's SHA-256 (part of a file-backed detector's id)."""
    from ..hub.download import file_sha256

    return file_sha256(path)[:12]
