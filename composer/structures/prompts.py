"""Prompts for a promptable segmenter, always in original-image pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .masks import int_position


def _host(value: Any) -> Any:
    """A tensor (on any device, with or without grad; duck-typed, so this package needs no
    torch) as a numpy array; anything else as it is. ``np.asarray`` refuses CUDA tensors and
    tensors that require grad."""
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return value


@dataclass(frozen=True)
class Prompts:
    """N prompts of one image; each prompt may combine points, a box and a mask input.

    Attributes:
        points: optional (N, K, 2) float32 XY point coordinates in original-image pixels.
        labels: optional (N, K) int64 point labels: 1 foreground, 0 background, -1 padding.
        boxes: optional (N, 4) float32 XYXY boxes in original-image pixels.
        mask_input: optional (N, 1, h, w) float32 low-resolution logits in the segmenter's
            low-res frame (e.g. 256x256 for SAM), as returned in ``low_res_logits``.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    @classmethod
    def create(cls, points: Any = None, labels: Any = None, boxes: Any = None,
               mask_input: Any = None, image_size: Sequence[int] | None = None) -> Prompts:
        """Normalise shapes, check values and (when ``image_size`` is given) bounds.

        Accepts points as (K, 2) (one prompt) or (N, K, 2); labels as (K,) or (N, K); boxes as
        (4,) or (N, 4); mask_input as (h, w), (1, h, w) or (N, 1, h, w). Labels default to 1.

        Raises:
            ValueError: on an empty prompt set, NaN/inf values, wrong shapes (a mask input
                of fewer than 2 axes or an empty h or w included), boxes with x1 < x0 or
                y1 < y0, an ``image_size`` that is not (H, W), or coordinates outside the image.
        """
        points, labels, boxes, mask_input = (_host(v) for v in (points, labels, boxes, mask_input))
        pts = lab = bxs = mi = None
        if points is not None:
            pts = np.asarray(points, dtype=np.float32)
            if pts.ndim == 2:
                pts = pts[None]
            if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[1] == 0:
                raise ValueError(f"points must be (K, 2) or (N, K, 2) with K >= 1, got shape {pts.shape}")
            if labels is None:
                lab = np.ones(pts.shape[:2], dtype=np.int64)
            else:
                lab = np.asarray(labels)
                if lab.ndim == 1:
                    lab = lab[None]
                if lab.shape != pts.shape[:2]:
                    raise ValueError(f"labels shape {lab.shape} does not match points {pts.shape[:2]}")
                if not np.all(np.isin(lab, (-1, 0, 1))):
                    raise ValueError(f"point labels must be 1, 0 or -1, got {np.unique(lab).tolist()}")
                lab = lab.astype(np.int64)
        elif labels is not None:
            raise ValueError("labels were given without points")
        if boxes is not None:
            bxs = np.asarray(boxes, dtype=np.float32)
            if bxs.ndim == 1:
                bxs = bxs[None]
            if bxs.ndim != 2 or bxs.shape[-1] != 4:
                raise ValueError(f"boxes must be (4,) or (N, 4), got shape {bxs.shape}")
        if mask_input is not None:
            if np.asarray(mask_input).dtype == bool:
                raise ValueError(
                    "mask_input takes low-res logits (a previous low_res_logits), not a boolean "
                    "mask: as logits its 0/1 values are barely a prompt"
                )
            mi = np.asarray(mask_input, dtype=np.float32)
            given = mi.shape
            while 2 <= mi.ndim < 4:
                mi = mi[None]
            if mi.ndim != 4 or mi.shape[1] != 1 or mi.shape[2] == 0 or mi.shape[3] == 0:
                raise ValueError(f"mask_input must be (h, w), (1, h, w) or (N, 1, h, w), got shape {given}")
        counts = {name: len(a) for name, a in (("points", pts), ("boxes", bxs), ("mask_input", mi)) if a is not None}
        if not counts or all(c == 0 for c in counts.values()):
            raise ValueError("empty prompt set: give at least one point, box or mask input")
        n = max(counts.values())
        for name, c in counts.items():
            if c != n and not (name == "mask_input" and c == 1):
                raise ValueError(f"prompt counts differ: {counts}")
        for name, a in (("points", pts), ("boxes", bxs), ("mask_input", mi)):
            if a is not None and not np.all(np.isfinite(a)):
                raise ValueError(f"{name} contain NaN or infinite values")
        if bxs is not None:
            bad = (bxs[:, 2] < bxs[:, 0]) | (bxs[:, 3] < bxs[:, 1])
            if bad.any():
                raise ValueError(f"boxes must be XYXY with x1 >= x0 and y1 >= y0; bad: {bxs[bad][:3].tolist()}")
        if image_size is not None:
            if isinstance(image_size, (str, bytes)) or len(image_size) != 2:
                raise ValueError(f"image_size must be (H, W), got {image_size!r}")
            h, w = int(image_size[0]), int(image_size[1])
            if pts is not None:
                valid = lab >= 0 if lab is not None else np.ones(pts.shape[:2], bool)
                p = pts[valid]
                out = (p[:, 0] < 0) | (p[:, 0] > w) | (p[:, 1] < 0) | (p[:, 1] > h)
                if out.any():
                    raise ValueError(f"points outside the {w}x{h} image: {p[out][:3].tolist()}")
            if bxs is not None:
                out = (bxs[:, 0] < 0) | (bxs[:, 1] < 0) | (bxs[:, 2] > w) | (bxs[:, 3] > h)
                if out.any():
                    raise ValueError(f"boxes outside the {w}x{h} image: {bxs[out][:3].tolist()}")
        if mi is not None and mi.shape[0] == 1 and n > 1:
            mi = np.repeat(mi, n, axis=0)
        return cls(pts, lab, bxs, mi)

    def __len__(self) -> int:
        for a in (self.points, self.boxes, self.mask_input):
            if a is not None:
                return len(a)
        return 0

    def __getitem__(self, index: Any) -> Prompts:
        """Select prompts with an int, slice, boolean (N,) mask or integer array; the result
        keeps the prompt axis (``p[0]`` is one prompt with points (1, K, 2)).

        Raises:
            IndexError: an index out of range or a bare ``True``/``False``.
        """
        i = int_position(index, len(self), "prompts")
        if i is not None:
            index = slice(i, i + 1)

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]
        return Prompts(pick(self.points), pick(self.labels), pick(self.boxes), pick(self.mask_input))
