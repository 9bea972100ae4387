"""Masks of one image stored as COCO compressed RLE.

Dense (N, H, W) boolean arrays are produced only on request; everything else (areas, boxes,
IoU, indexing, concatenation, COCO export) runs on the RLE through pycocotools.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size!r}")
    h, w = int(image_size[0]), int(image_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def _normalise_rle(rle: RLE, image_size: tuple[int, int]) -> RLE:
    """Return a compressed RLE with bytes counts; accept str counts or uncompressed lists."""
    if "size" not in rle or "counts" not in rle:
        raise ValueError(f"an RLE needs 'size' and 'counts', got keys {sorted(rle)}")
    size = [int(rle["size"][0]), int(rle["size"][1])]
    if tuple(size) != image_size:
        raise ValueError(f"RLE size {size} differs from image_size {list(image_size)}")
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": size, "counts": counts}


class Masks:
    """N binary masks of one image as COCO compressed RLE.

    Args:
        rles: N compressed RLE dicts (``{"size": [H, W], "counts": bytes | str}``); uncompressed
            RLEs (``counts`` a list) are compressed on the way in.
        image_size: (H, W) of the image the masks belong to, in original-image pixels.
    """

    __slots__ = ("_rles", "image_size")

    def __init__(self, rles: Iterable[RLE], image_size: Sequence[int]) -> None:
        self.image_size = _check_size(image_size)
        self._rles = [_normalise_rle(r, self.image_size) for r in rles]

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, image_size: Sequence[int]) -> Masks:
        return cls([], image_size)

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> Masks:
        """Encode dense masks.

        Args:
            masks: (N, H, W) bool (or 0/1 integer) array; (H, W) is taken as N = 1.
        """
        arr = np.asarray(masks)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {arr.shape}")
        n, h, w = arr.shape
        if n == 0:
            return cls([], (h, w))
        fortran = np.asfortranarray(arr.transpose(1, 2, 0).astype(np.uint8, copy=False))
        return cls(mask_utils.encode(fortran), (h, w))

    @classmethod
    def from_polygons(cls, polygons: Sequence[Sequence[Sequence[float]]], image_size: Sequence[int]) -> Masks:
        """One mask per item, each a COCO polygon list ``[[x0, y0, x1, y1, ...], ...]``."""
        h, w = _check_size(image_size)
        rles = []
        for poly in polygons:
            parts = mask_utils.frPyObjects([list(map(float, p)) for p in poly], h, w)
            rles.append(mask_utils.merge(parts) if parts else mask_utils.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0])
        return cls(rles, (h, w))

    @classmethod
    def concatenate(cls, items: Sequence[Masks], image_size: Sequence[int] | None = None) -> Masks:
        if not items:
            if image_size is None:
                raise ValueError("concatenate of no Masks needs image_size")
            return cls.empty(image_size)
        size = items[0].image_size
        for m in items:
            if m.image_size != size:
                raise ValueError(f"cannot concatenate masks of sizes {size} and {m.image_size}")
        out = cls.empty(size)
        out._rles = [r for m in items for r in m._rles]
        return out

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._rles)

    def __repr__(self) -> str:
        return f"Masks(n={len(self)}, image_size={self.image_size})"

    def __getitem__(self, index: Any) -> Masks:
        """Index with an int, a slice, a boolean (N,) array or an integer array; returns Masks."""
        out = Masks.empty(self.image_size)
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"mask index {i} out of range for {len(self)} masks")
            out._rles = [self._rles[i]]
            return out
        if isinstance(index, slice):
            out._rles = self._rles[index]
            return out
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} masks")
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise IndexError(f"unsupported mask index {index!r}")
        out._rles = [self._rles[int(i)] for i in idx]
        return out

    @property
    def rles(self) -> list[RLE]:
        """The compressed RLEs (``counts`` as bytes); do not mutate."""
        return self._rles

    def to_coco_rles(self) -> list[dict[str, Any]]:
        """JSON-ready RLEs: ``{"size": [H, W], "counts": str}``."""
        return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in self._rles]

    def to_dense(self) -> np.ndarray:
        """(N, H, W) bool array."""
        h, w = self.image_size
        if not self._rles:
            return np.zeros((0, h, w), dtype=bool)
        return mask_utils.decode(self._rles).transpose(2, 0, 1).astype(bool)

    @property
    def area(self) -> np.ndarray:
        """(N,) int64 pixel counts."""
        if not self._rles:
            return np.zeros(0, dtype=np.int64)
        # pycocotools' area() sizes a scratch array as uint8 from the RLE count, which NumPy 2
        # rejects beyond 255 masks (OverflowError); ask in chunks of at most 255.
        return np.concatenate(
            [
                np.asarray(mask_utils.area(self._rles[i : i + 255]), dtype=np.int64)
                for i in range(0, len(self._rles), 255)
            ]
        )

    def boxes(self) -> np.ndarray:
        """(N, 4) float32 tight XYXY boxes in pixels (x1, y1 exclusive); zeros for empty masks."""
        if not self._rles:
            return np.zeros((0, 4), dtype=np.float32)
        xywh = np.asarray(mask_utils.toBbox(self._rles), dtype=np.float32).reshape(-1, 4)
        xywh[:, 2:] += xywh[:, :2]
        return xywh

    def iou(self, other: Masks | None = None) -> np.ndarray:
        """(N, M) float64 pairwise IoU with ``other`` (or with itself)."""
        other = self if other is None else other
        if other.image_size != self.image_size:
            raise ValueError(f"IoU between sizes {self.image_size} and {other.image_size}")
        if not self._rles or not other._rles:
            return np.zeros((len(self), len(other)), dtype=np.float64)
        crowd = [0] * len(other)
        return np.asarray(mask_utils.iou(self._rles, other._rles, crowd), dtype=np.float64)
