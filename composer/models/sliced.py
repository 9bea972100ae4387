"""Sliced detection (SAHI's sliced inference, Akyon et al. 2022): tiles of an image
(:func:`slice_windows`), greedy merging of the boxes found more than once (:func:`merge_boxes`)
and :class:`SlicedDetector`, which runs a detector on the whole image and its tiles; all
importable from :mod:`composer.models.detectors`."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from ..structures import Detections
from .detector_base import Detector, _check_max_dets, _finish, _load
from .stored_detectors import CocoJsonDetector, GroundTruthDetector


def slice_windows(size: tuple[int, int], slice_size: int, overlap: float) -> np.ndarray:
    """Tiles of side ``slice_size`` covering an image, neighbours overlapping by ``overlap``.

    Along each axis the tiles start every ``slice_size * (1 - overlap)`` pixels (rounded down)
    and the last one ends at the border; an axis not longer than ``slice_size`` is one tile of
    its full length.

    Args:
        size: (H, W) of the image.
        slice_size: tile side in pixels (>= 32).
        overlap: fraction of the tile side shared with the next tile, in [0, 1).

    Returns:
        (T, 4) int64 windows ``x0, y0, x1, y1``, row by row.

    Raises:
        ValueError: a bad ``slice_size`` or ``overlap``.
    """
    if int(slice_size) < 32:
        raise ValueError(f"slice_size must be >= 32 pixels, got {slice_size}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    s = int(slice_size)
    h, w = int(size[0]), int(size[1])
    ys, xs = (_tile_starts(n, s, overlap) for n in (h, w))
    return np.asarray(
        [(x, y, min(x + s, w), min(y + s, h)) for y in ys for x in xs], np.int64
    ).reshape(-1, 4)


def _tile_starts(length: int, slice_size: int, overlap: float) -> list[int]:
    """Where the tiles of one axis start: every ``slice_size * (1 - overlap)`` pixels, the
    last one ending at the border (one tile when the axis is not longer than a tile)."""
    s = int(slice_size)
    if length <= s:
        return [0]
    step = max(1, int(s * (1.0 - float(overlap))))
    return [*range(0, length - s, step), length - s]


def count_windows(size: tuple[int, int], slice_size: int, overlap: float) -> int:
    """How many tiles :func:`slice_windows` gives (checked settings), without building the
    tiles: one axis's starts are cheap, their product is what can run to millions."""
    return len(_tile_starts(int(size[0]), slice_size, overlap)) * len(
        _tile_starts(int(size[1]), slice_size, overlap)
    )


def _match_row(boxes: np.ndarray, i: int, others: np.ndarray, metric: str) -> np.ndarray:
    """Overlap of box ``i`` with the boxes ``others`` (indices), XYXY: IoU, or IoS
    (intersection over the smaller box). One row at a time keeps memory O(N)."""
    b, o = boxes[i], boxes[others]
    iw = (np.minimum(b[2], o[:, 2]) - np.maximum(b[0], o[:, 0])).clip(0)
    ih = (np.minimum(b[3], o[:, 3]) - np.maximum(b[1], o[:, 1])).clip(0)
    inter = iw * ih
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    area_o = (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1])
    denom = area_b + area_o - inter if metric == "iou" else np.minimum(area_b, area_o)
    return np.where(denom > 0, inter / np.maximum(denom, 1e-12), 0.0)


def merge_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    metric: str = "ios",
    threshold: float = 0.5,
    merge: str = "nmm",
    class_agnostic: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy duplicate removal over boxes found more than once (tiles and the whole image).

    Boxes are visited by score. Each box not yet taken keeps its place and takes every
    lower-scored box of its class (any class with ``class_agnostic``) whose ``metric``
    overlap with it is at least ``threshold``. ``merge="nms"`` drops the boxes taken;
    ``"nmm"`` (non-maximum merging, SAHI's default) grows the kept box to their union, which
    joins the parts of an object cut by tile borders; the score stays the highest.

    Args:
        boxes: (N, 4) XYXY; scores: (N,); labels: (N,).
        metric: "iou" or "ios" (intersection over the smaller box).
        threshold: overlap from which two boxes are the same object, in [0, 1].
        merge: "nms" or "nmm".
        class_agnostic: match boxes of different labels too.

    Returns:
        boxes (float32), scores (float32), labels (int64) of the kept objects, by score.

    Raises:
        ValueError: an unknown ``metric`` or ``merge``, or a threshold outside [0, 1].
    """
    if metric not in ("iou", "ios"):
        raise ValueError(f"metric must be 'iou' or 'ios', got {metric!r}")
    if merge not in ("nms", "nmm"):
        raise ValueError(f"merge must be 'nms' or 'nmm', got {merge!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    taken = np.zeros(len(boxes), bool)
    keep: list[int] = []
    out = boxes.copy()
    for i in range(len(boxes)):
        if taken[i]:
            continue
        keep.append(i)
        rest = np.flatnonzero(~taken[i + 1 :]) + i + 1
        if not class_agnostic:
            rest = rest[labels[rest] == labels[i]]
        group = rest[_match_row(boxes, i, rest, metric) >= float(threshold)]
        taken[group] = True
        if merge == "nmm" and group.size:
            members = boxes[np.r_[i, group]]
            out[i] = (*members[:, :2].min(0), *members[:, 2:].max(0))
    idx = np.asarray(keep, np.int64)
    return out[idx].astype(np.float32), scores[idx], labels[idx]


class SlicedDetector:
    """A detector run on the whole image and on overlapping tiles, the boxes merged (SAHI).

    A detector with a small input (SSD-MobileNet-v2: 300 x 300) sees a 640-px photo at half
    scale and a 4000-px one at a thirteenth, and misses what becomes a few pixels there. Each
    tile of ``slice_size`` pixels is given to the detector as an image of its own, so an object
    is seen ``image side / slice_size`` times larger; the boxes are shifted back to the image,
    pooled with the whole image's (``full_image``) and merged with :func:`merge_boxes`, so an
    object found in several tiles or cut by a tile border counts once.

    Args:
        detector: a detector that works on pixels alone (SSD, torchvision); stored boxes
            (:class:`CocoJsonDetector`, :class:`GroundTruthDetector`) cannot be sliced.
        slice_size: tile side in pixels (default 400).
        overlap: fraction of a tile shared with its neighbour (default 0.2, SAHI's).
        full_image: also run the detector on the whole image (default True), which finds the
            objects larger than a tile.
        metric, threshold, merge, class_agnostic: see :func:`merge_boxes` (defaults "iou",
            0.5, "nms", False).
        max_dets: keep at most this many after merging (default 100).
        drop_cut: drop a tile's boxes that touch one of its borders inside the image (within
            2 px): they are parts of objects cut by the tile, which the whole image or a
            neighbouring tile sees whole (default True).
        max_tiles: refuse an image that would need more tiles than this (default 2500, a
            50 x 50 grid: a 16,000-px square at 400 px) with a ValueError that names a tile
            side within the cap, before the detector runs; None for no cap. A slice far too
            small for the image would otherwise run the detector thousands of times and pool
            hundreds of thousands of boxes.

    The defaults were chosen by SSD-MobileNet-v2's box AP on the training half of the COCO
    subset (``recipes/choose_slices.py``): 27.1 -> 31.1 (small objects 7.1 -> 11.3). SAHI's
    own merge (non-maximum merging by intersection over the smaller box) lost AP there (8.7
    at 320 px): with a low score floor a weak box that contains a strong one grows it to
    its own size.

    The cost is one detector run per tile plus the whole image: ``meta["slices"]`` records
    the tiles of each call.

    Raises:
        ValueError: bad settings, or a detector of stored boxes.
    """

    def __init__(
        self,
        detector: Detector,
        slice_size: int = 400,
        overlap: float = 0.2,
        full_image: bool = True,
        metric: str = "iou",
        threshold: float = 0.5,
        merge: str = "nms",
        class_agnostic: bool = False,
        max_dets: int | None = 100,
        drop_cut: bool = True,
        max_tiles: int | None = 2500,
    ) -> None:
        if isinstance(detector, (CocoJsonDetector, GroundTruthDetector)):
            raise ValueError(
                f"{type(detector).__name__} returns stored boxes of whole images and cannot "
                "be run on tiles; slice a detector that runs on pixels (ssd, a torchvision arch)"
            )
        self.check(slice_size, overlap, metric, threshold, merge)
        self.detector = detector
        self.slice_size = int(slice_size)
        self.overlap = float(overlap)
        self.full_image = bool(full_image)
        self.metric, self.threshold, self.merge = metric, float(threshold), merge
        self.class_agnostic = bool(class_agnostic)
        self.max_dets = _check_max_dets(max_dets)
        self.drop_cut = bool(drop_cut)
        if max_tiles is not None and int(max_tiles) < 1:
            raise ValueError(f"max_tiles must be >= 1 or None, got {max_tiles}")
        self.max_tiles = None if max_tiles is None else int(max_tiles)
        self.model_id = (
            f"{detector.model_id}+sliced{self.slice_size}o{self.overlap:g}"
            f"{'' if self.full_image else '-tiles'}-{merge}-{metric}{self.threshold:g}"
            f"{'' if self.drop_cut else '-keepcut'}"
        )

    @staticmethod
    def check(
        slice_size: int,
        overlap: float,
        metric: str = "iou",
        threshold: float = 0.5,
        merge: str = "nms",
    ) -> None:
        """Validate settings without a detector.

        Raises:
            ValueError: a tile side below 32 px, an overlap outside [0, 1), an unknown metric
                or merge, or a threshold outside [0, 1].
        """
        slice_windows((64, 64), slice_size, overlap)
        merge_boxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0), metric, threshold, merge)

    @property
    def class_names(self) -> Mapping[int, str]:
        return self.detector.class_names

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        arr = _load(image)
        h, w = arr.shape[:2]
        n_tiles = count_windows((h, w), self.slice_size, self.overlap)
        if self.max_tiles is not None and n_tiles > self.max_tiles:
            side = self.slice_size
            while count_windows((h, w), side, self.overlap) > self.max_tiles:
                side = int(side * 1.25) + 1
            raise ValueError(
                f"a {w}x{h} image cut into {self.slice_size}-px tiles (overlap "
                f"{self.overlap:g}) needs {n_tiles} tiles, more than max_tiles="
                f"{self.max_tiles}; use a tile side of about {side} px or more (--slice {side})"
                " or a smaller overlap"
            )
        windows = slice_windows((h, w), self.slice_size, self.overlap)
        if len(windows) == 1 and self.full_image:
            windows = windows[:0]  # the one tile is the whole image
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if self.full_image:
            parts.append(_arrays(self.detector(arr)))
        for x0, y0, x1, y1 in windows:
            b, sc, lab = _arrays(self.detector(np.ascontiguousarray(arr[y0:y1, x0:x1])))
            keep = np.ones(len(b), bool)
            if self.drop_cut:  # boxes touching a tile border inside the image: cut objects
                m = 2.0
                keep &= ~((b[:, 0] <= m) & (x0 > 0)) & ~((b[:, 1] <= m) & (y0 > 0))
                keep &= ~((b[:, 2] >= x1 - x0 - m) & (x1 < w))
                keep &= ~((b[:, 3] >= y1 - y0 - m) & (y1 < h))
            parts.append((b[keep] + np.array([x0, y0, x0, y0], np.float32), sc[keep], lab[keep]))
        boxes = np.concatenate([p[0].reshape(-1, 4) for p in parts]) if parts else np.zeros((0, 4))
        scores = np.concatenate([p[1].reshape(-1) for p in parts]) if parts else np.zeros(0)
        labels = np.concatenate([p[2].reshape(-1) for p in parts]) if parts else np.zeros(0)
        if len(windows):  # duplicates between tiles and the whole image; no tile: none to merge
            boxes, scores, labels = merge_boxes(
                boxes, scores, labels, self.metric, self.threshold, self.merge, self.class_agnostic
            )
        dets = _finish(boxes, scores, labels, (h, w), self.model_id, self.class_names,
                       image_id, 0.0, self.max_dets)
        dets.meta["slices"] = int(len(windows))
        return dets


def _arrays(dets: Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes (N, 4), scores (N,) and labels (N,) of a detector's output (1 where absent)."""
    b = np.asarray(dets.boxes, np.float32).reshape(-1, 4)
    sc = np.ones(len(b), np.float32) if dets.scores is None else np.asarray(dets.scores)
    lab = np.ones(len(b), np.int64) if dets.labels is None else np.asarray(dets.labels)
    return b, sc.reshape(-1), lab.reshape(-1)
