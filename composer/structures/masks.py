"""Masks of one image stored as COCO compressed RLE.

Dense (N, H, W) boolean arrays are produced only on request; everything else (areas, boxes,
IoU, indexing, concatenation, COCO export) runs on the RLE through pycocotools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` as two positive ints.

    Raises:
        ValueError: not two items, a string, fractional sizes (5.5 was cut to 5) or sizes <= 0.
    """
    if isinstance(image_size, (str, bytes)) or len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size!r}")
    h, w = int(image_size[0]), int(image_size[1])
    if h != image_size[0] or w != image_size[1]:
        raise ValueError(f"image_size must be whole pixels, got {image_size!r}")
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def _normalise_rle(rle: RLE, image_size: tuple[int, int], check_counts: bool = True) -> RLE:
    """Return a compressed RLE with bytes counts; accept str counts or uncompressed lists.

    Raises:
        ValueError: not a dict with ``size`` (H, W) and ``counts`` (bytes, str or a list of
            runs), a size other than ``image_size``, or uncompressed runs that do not add up.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        got = f"keys {sorted(rle)}" if isinstance(rle, Mapping) else type(rle).__name__
        raise ValueError(f"an RLE needs 'size' and 'counts', got {got}")
    if len(rle["size"]) != 2:
        raise ValueError(f"RLE size must be [H, W], got {rle['size']!r}")
    size = [int(rle["size"][0]), int(rle["size"][1])]
    if tuple(size) != image_size:
        raise ValueError(f"RLE size {size} differs from image_size {list(image_size)}")
    counts = rle["counts"]
    if not isinstance(counts, (bytes, str, list)):
        raise ValueError(f"RLE counts must be a string or a list of runs (or bytes), got "
                         f"{type(counts).__name__}")
    if isinstance(counts, list):
        c = np.asarray(counts)
        if c.dtype.kind not in "iu" or (c < 0).any() or int(c.sum()) != size[0] * size[1]:
            raise ValueError(f"uncompressed RLE counts must be non-negative integers adding up "
                             f"to {size[0] * size[1]} pixels")
        return mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if check_counts:
        # a truncated string decodes into uninitialised memory (area 0, to_dense() garbage)
        _check_compressed_counts(counts, size[0] * size[1])
    return {"size": size, "counts": counts}


def polygons_rle(polygons: Sequence[Sequence[float]], image_size: Sequence[int]) -> RLE:
    """One mask from COCO polygon parts ``[[x0, y0, x1, y1, ...], ...]`` as a compressed RLE.

    Parts of fewer than 3 points are skipped (no parts: an empty mask). Vertices far outside
    the image are clipped to one pixel beyond it (pycocotools would rasterise the whole
    span); NaN or infinite coordinates raise ``ValueError``, and so does a part that is not a
    list: a flat ``[x0, y0, x1, y1, ...]`` (the polygon not wrapped in a list of parts) was read
    as parts of one number each, an empty mask, and the object was lost unsaid. A part of an
    odd number of coordinates (of 3 points or more) raises too: pycocotools dropped its last
    number unsaid, so the polygon was not the one written.
    """
    h, w = _check_size(image_size)
    parts = []
    for p in polygons:
        if not isinstance(p, (list, tuple, np.ndarray)):
            raise ValueError(
                f"polygon parts must be lists of x, y coordinates, got {str(p)[:30]!r} (a flat "
                "list of numbers? write a polygon as [[x0, y0, x1, y1, ...]])"
            )
        xy = np.asarray(p, np.float64).ravel()
        if len(xy) < 6:
            continue
        if len(xy) % 2:
            raise ValueError(
                f"a polygon part has an odd number of coordinates ({len(xy)}): x, y pairs "
                "need an even count (a number is missing or one too many)"
            )
        if not np.all(np.isfinite(xy)):
            raise ValueError("polygon with NaN or infinite coordinates")
        xy[0::2], xy[1::2] = np.clip(xy[0::2], -1, w + 1), np.clip(xy[1::2], -1, h + 1)
        parts.append(xy.tolist())
    if not parts:
        return mask_utils.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]
    return mask_utils.merge(mask_utils.frPyObjects(parts, h, w))


def segmentation_rle(segmentation: Any, image_size: Sequence[int]) -> RLE:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a compressed RLE
    of an image of ``image_size``.

    This is the reader of segmentations from files: a compressed RLE string is checked to
    cover exactly the image (pycocotools decodes a truncated one into uninitialised memory).

    Raises:
        ValueError: anything else than polygons or an RLE, an RLE of another size, or RLE
            counts that are malformed or do not add up to the image's pixels.
    """
    size = _check_size(image_size)
    if isinstance(segmentation, list):
        return polygons_rle(segmentation, size)
    if isinstance(segmentation, dict):
        rle = _normalise_rle(segmentation, size)
        if not isinstance(segmentation["counts"], list):
            if not isinstance(rle["counts"], bytes):
                raise ValueError(
                    f"RLE counts must be a string or a list of runs, got {segmentation['counts']!r}"[:200]
                )
            _check_compressed_counts(rle["counts"], size[0] * size[1])
        return rle
    raise ValueError(f"unknown segmentation {str(segmentation)[:60]!r}: need RLE or polygons")


def crowd_flag(value: Any) -> bool:
    """A COCO annotation's ``iscrowd`` read as a bool: 0/1, ``True``/``False`` or the strings
    ``"0"``/``"1"``/``"true"``/``"false"`` (pycocotools reads the field with ``int()``);
    ``None`` (missing) is not crowd.

    Raises:
        ValueError: any other value (``"yes"``, 2, NaN): a truthiness test would have taken
            the string ``"0"`` for a crowd region.
    """
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("0", "false"):
            return False
        if text in ("1", "true"):
            return True
    elif isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"iscrowd must be 0 or 1, got {value!r}"[:120])


def _check_compressed_counts(counts: bytes, n_pixels: int) -> None:
    """Check a compressed COCO RLE string (pycocotools' ``rleFrString`` format) covers exactly
    ``n_pixels``: pycocotools decodes a short or empty string into uninitialised memory.

    Raises:
        ValueError: a character outside the format, a run cut off, a negative run, or runs
            that do not add up to ``n_pixels``.
    """
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        if n_pixels:
            raise ValueError(f"compressed RLE counts cover 0 pixels, not {n_pixels} (a truncated "
                             "or corrupt string)")
        return
    if ((c < 0) | (c >= 64)).any():
        bad = counts[int(np.flatnonzero((c < 0) | (c >= 64))[0])]
        raise ValueError(f"compressed RLE counts hold {chr(bad)!r}")
    ends = (c & 0x20) == 0
    if not ends[-1]:
        raise ValueError("compressed RLE counts end inside a run")
    group = np.concatenate([[0], np.cumsum(ends)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    k = np.arange(len(c)) - starts[group]
    if k.max() > 11:
        raise ValueError("compressed RLE counts hold a run too long for any image")
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    neg = (c[ends] & 0x10) != 0
    x[neg] -= np.int64(1) << (5 * (k[ends][neg] + 1))
    runs_v = x.copy()
    # runs i >= 3 are deltas from run i - 2: cumulative sums along the odd and even chains
    runs_v[1::2] = np.cumsum(x[1::2])
    if len(x) > 2:
        runs_v[2::2] = np.cumsum(x[2::2])
    if (runs_v < 0).any():
        raise ValueError("compressed RLE counts hold a negative run")
    if int(runs_v.sum()) != n_pixels:
        raise ValueError(f"compressed RLE counts cover {int(runs_v.sum())} pixels, not "
                         f"{n_pixels} (a truncated or corrupt string)")


def mask_polygons(mask: np.ndarray, tolerance: float = 0.0) -> tuple[list[list[float]], int]:
    """Outer boundaries of a binary mask as COCO polygons, and its number of holes.

    The boundaries follow the pixel edges (traced at twice the resolution), so with
    ``tolerance`` 0 the polygons rasterise back to exactly the mask (without its holes:
    COCO polygons cannot hold them). Coordinates are continuous pixels (pixel (x, y) covers
    [x, x + 1) x [y, y + 1)).

    Args:
        mask: (H, W) bool or 0/1 array.
        tolerance: Douglas-Peucker simplification in pixels (0: exact; on the COCO subset's
            masks 0.5 keeps 59% of the vertices at mean IoU .991, 1 keeps 10% at .959:
            ``benchmarks/bench_polygons.py``).

    Returns:
        ``(polygons, holes)``: one flat ``[x0, y0, x1, y1, ...]`` list per connected part
        (largest first), and how many holes the mask has.
    """
    import cv2

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    if tolerance < 0 or not np.isfinite(tolerance):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        return [], 0
    y0, x0 = int(ys.min()), int(xs.min())
    crop = m[y0 : int(ys.max()) + 1, x0 : int(xs.max()) + 1].astype(np.uint8)
    # at twice the resolution the boundary subpixels' centres lie 1/4 px inside the pixel
    # edges; CHAIN_APPROX_SIMPLE keeps the corners, which map back onto the edges exactly
    big = np.pad(np.kron(crop, np.ones((2, 2), np.uint8)), 1)
    contours, hierarchy = cv2.findContours(big, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    parents = hierarchy[0][:, 3]
    depth = np.zeros(len(contours), np.int64)
    for i in range(len(contours)):
        j = parents[i]
        while j >= 0:
            depth[i] += 1
            j = parents[j]
    polys: list[tuple[float, list[float]]] = []
    holes = int((depth % 2 == 1).sum())
    for contour, d in zip(contours, depth, strict=True):
        if d > 0:  # a hole, or a part inside a hole (covered once the holes are filled)
            continue
        if tolerance > 0:
            simple = cv2.approxPolyDP(contour, 2 * tolerance, True)
            contour = simple if len(simple) >= 3 else contour  # keep tiny parts
        pts = contour.reshape(-1, 2).astype(np.float64) - 1.0  # undo the pad
        # subpixel centre u + 0.5 (at 2x) -> u / 2 + 1/4: move the outer corners onto edges
        pts = np.where(pts % 2 == 0, pts / 2, (pts + 1) / 2) + (x0, y0)
        keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)  # corners that map together
        pts = pts[keep] if keep.any() else pts[:1]
        if len(pts) < 3:
            continue
        area = 0.5 * abs(float(np.dot(pts[:, 0], np.roll(pts[:, 1], 1))
                               - np.dot(pts[:, 1], np.roll(pts[:, 0], 1))))
        polys.append((area, pts.ravel().tolist()))
    polys.sort(key=lambda t: -t[0])
    return [p for _, p in polys], holes


def merge_polygons(polygons: Sequence[Sequence[float]]) -> list[float]:
    """One polygon for several parts (YOLO segmentation labels hold one per object).

    Each part is joined to the next at their closest vertices by a zero-width bridge (walked
    there and back), so the merged polygon covers exactly the parts (parts must not overlap:
    as :func:`mask_polygons` returns them).
    """
    from scipy.spatial import cKDTree

    parts = [np.asarray(p, np.float64).reshape(-1, 2) for p in polygons if len(p) >= 6]
    if not parts:
        return []
    # enter[k] / leave[k]: vertex of part k closest to part k - 1 / to part k + 1
    enter, leave = [0] * len(parts), [0] * len(parts)
    for k in range(len(parts) - 1):
        dist, idx = cKDTree(parts[k]).query(parts[k + 1])
        j = int(np.argmin(dist))
        leave[k], enter[k + 1] = int(idx[j]), j
    # walk part 0 from its entry; at its exit vertex, cross to part 1 and walk it the same way,
    # ...; the last part walks all the way round; then each part finishes its own round
    # (an explicit stack: masks can have thousands of parts)
    out: list[np.ndarray] = []
    tails: list[np.ndarray] = []
    for k, pts in enumerate(parts):
        n = len(pts)
        order = np.arange(enter[k], enter[k] + n + 1) % n
        if k + 1 < len(parts):
            cut = int(np.nonzero(order[:n] == leave[k])[0][0]) + 1
            out.append(pts[order[:cut]])
            tails.append(pts[order[cut - 1:]])  # back at the exit vertex, then round
        else:
            out.append(pts[order])
    out.extend(reversed(tails))
    return np.concatenate(out).ravel().tolist()

def int_position(index: Any, n: int, items: str) -> int | None:
    """The position (0 .. n-1) an int index names among ``n`` ``items``, or None for another
    kind of index (slice, array).

    Raises:
        IndexError: a bare ``True``/``False`` (an int to Python: it picked item 1 or 0), or an
            int out of range.
    """
    if isinstance(index, (bool, np.bool_)):
        raise IndexError(f"a bare boolean is not an index of {items}: {index!r}")
    if not isinstance(index, (int, np.integer)):
        return None
    i = int(index)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for {n} {items}")
    return i % n


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

    @classmethod
    def _trusted(cls, rles: list[RLE], image_size: tuple[int, int]) -> Masks:
        """Masks of RLEs pycocotools just encoded (no counts check: they cover the image)."""
        out = cls.empty(image_size)
        out._rles = [_normalise_rle(r, out.image_size, check_counts=False) for r in rles]
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Masks):
            return NotImplemented
        return self.image_size == other.image_size and [r["counts"] for r in self._rles] == [
            r["counts"] for r in other._rles]

    __hash__ = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, image_size: Sequence[int]) -> Masks:
        return cls([], image_size)

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> Masks:
        """Encode dense masks.

        Args:
            masks: (N, H, W) bool (or 0/1 integer) array; (H, W) is taken as N = 1. Any
                nonzero integer is foreground; floats must hold only 0 and 1.

        Raises:
            ValueError: another rank, an empty H or W, floats other than 0 and 1 (threshold
                probabilities or logits first), or a dtype that is neither bool, integer nor
                float.
        """
        arr = np.asarray(masks)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {arr.shape}")
        n, h, w = arr.shape
        if n == 0:
            return cls([], (h, w))
        if arr.dtype.kind == "f":
            if not np.all((arr == 0) | (arr == 1)):
                raise ValueError("float masks must hold only 0 and 1 (threshold probabilities "
                                 "or logits first)")
        elif arr.dtype.kind not in "biu":
            raise ValueError(f"masks must be bool or integer, got dtype {arr.dtype}")
        if arr.dtype != np.bool_:
            # a cast to uint8 wraps (256 became background), and pycocotools starts a new run
            # at every change of value, so uint8 masks of 1s and 2s decoded with gaps
            arr = arr != 0
        fortran = np.asfortranarray(arr.transpose(1, 2, 0).astype(np.uint8, copy=False))
        return cls._trusted(mask_utils.encode(fortran), (h, w))

    @classmethod
    def from_polygons(cls, polygons: Sequence[Sequence[Sequence[float]]], image_size: Sequence[int]) -> Masks:
        """One mask per item, each a COCO polygon list ``[[x0, y0, x1, y1, ...], ...]``."""
        size = _check_size(image_size)
        return cls([polygons_rle(poly, size) for poly in polygons], size)

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
        """Index with an int, a slice, a boolean (N,) array or an integer array; returns Masks.

        Raises:
            IndexError: an index out of range, a boolean array of another length, a bare
                ``True``/``False`` (it used to pick mask 1 or 0), or another kind of index.
        """
        out = Masks.empty(self.image_size)
        i = int_position(index, len(self), "masks")
        if i is not None:
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
        if idx.size and not (-len(self) <= idx.min() and idx.max() < len(self)):
            raise IndexError(f"mask indices {idx.min()}..{idx.max()} out of range for {len(self)} masks")
        out._rles = [self._rles[int(i)] for i in idx]
        return out

    @property
    def rles(self) -> list[RLE]:
        """The compressed RLEs (``counts`` as bytes); do not mutate."""
        return self._rles

    def to_coco_rles(self) -> list[dict[str, Any]]:
        """JSON-ready RLEs: ``{"size": [H, W], "counts": str}``."""
        return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in self._rles]

    def to_polygons(self, tolerance: float = 0.0) -> list[list[list[float]]]:
        """COCO polygons of each mask (outer boundaries; see :func:`mask_polygons`, which
        also counts the holes that polygons drop)."""
        return [mask_polygons(self[i].to_dense()[0], tolerance)[0] for i in range(len(self))]

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
