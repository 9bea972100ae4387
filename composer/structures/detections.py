"""Detections: one dataclass of N items of one image that flows through every task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .masks import Masks, int_position, segmentation_rle


def _as_array(value: Any, dtype: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be an array of N items, got a scalar")
    return arr


def _as_vector(value: Any, dtype: Any, name: str) -> np.ndarray:
    """(N,) ``dtype`` from (N,), (N, 1) or (1, N).

    Raises:
        ValueError: a scalar, more than one axis longer than 1 ((3, 2) was flattened into
            6 items), or fractional / NaN integer labels (1.7 was cut to 1).
    """
    arr = np.asarray(value)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be an array of N items, got a scalar")
    if sum(s != 1 for s in arr.shape) > 1:
        raise ValueError(f"{name} must be (N,), got shape {arr.shape}")
    if np.issubdtype(dtype, np.integer) and arr.dtype.kind in "fc":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must be whole numbers, got {arr.ravel()[:5].tolist()}")
    return np.asarray(arr, dtype=dtype).reshape(-1)


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (np.int64(3) and 3 name one image)."""
    return value.item() if isinstance(value, np.generic) else value


def _brief(value: Any) -> str:
    """An array as its values when it has a few (up to 6), else as its shape and dtype."""
    if value is None:
        return "None"
    arr = np.asarray(value)
    if arr.ndim <= 1 and arr.size <= 6:
        fmt = "{:.4g}" if arr.dtype.kind == "f" else "{}"
        return "[" + ", ".join(fmt.format(v) for v in arr.reshape(-1).tolist()) + "]"
    return f"<{' x '.join(map(str, arr.shape))} {arr.dtype}>"


def _same_meta(a: Any, b: Any) -> bool:
    """Meta values equal as they read back from JSON: tuples as lists, arrays by value (a
    plain ``==`` raised on an array and told (4, 4) from [4, 4])."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_meta(v, b[k]) for k, v in a.items())
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        return x.shape == y.shape and bool(np.array_equal(x, y))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_meta(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


@dataclass(eq=False)
class Detections:
    """N items of one image, all coordinates in original-image pixels.

    Attributes:
        boxes: (N, 4) float32 XYXY boxes in original-image pixels.
        scores: optional (N,) float32 confidences (for SAM: predicted IoU).
        labels: optional (N,) int64 category ids.
        masks: optional Masks of length N (COCO RLE) with the image's size.
        extras: per-item arrays whose first axis has length N, e.g. ``predicted_iou`` (N,),
            ``stability_score`` (N,), ``point_coords`` (N, 2), ``crop_box`` (N, 4),
            ``prompt_index`` (N,), ``low_res_logits`` (N, h, w) float32.
        meta: collection-level facts: ``image_id``, ``model_id``, ``image_size`` (H, W),
            ``class_names`` ...
    """

    boxes: np.ndarray
    scores: np.ndarray | None = None
    labels: np.ndarray | None = None
    masks: Masks | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        # a summary, not the arrays: low-res logits of a few prompts filled pages of a notebook
        fields = [f"n={len(self)}"]
        if "image_size" in self.meta:
            fields.append(f"image_size={tuple(self.meta['image_size'])}")
        fields += [f"boxes={_brief(self.boxes)}", f"scores={_brief(self.scores)}",
                   f"labels={_brief(self.labels)}", f"masks={self.masks!r}"]
        extras = ", ".join(f"{k}: {_brief(v)}" for k, v in self.extras.items())
        keys = ", ".join(str(k) for k in self.meta)
        return f"Detections({', '.join(fields)}, extras={{{extras}}}, meta keys=[{keys}])"

    def __post_init__(self) -> None:
        boxes = _as_array(self.boxes, np.float32, "boxes")
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got shape {boxes.shape}")
        self.boxes = boxes
        n = len(boxes)
        if self.scores is not None:
            self.scores = _as_vector(self.scores, np.float32, "scores")
            if len(self.scores) != n:
                raise ValueError(f"scores has {len(self.scores)} items, boxes has {n}")
        if self.labels is not None:
            self.labels = _as_vector(self.labels, np.int64, "labels")
            if len(self.labels) != n:
                raise ValueError(f"labels has {len(self.labels)} items, boxes has {n}")
        if self.masks is not None:
            if not isinstance(self.masks, Masks):
                raise TypeError(f"masks must be a Masks, got {type(self.masks).__name__}")
            if len(self.masks) != n:
                raise ValueError(f"masks has {len(self.masks)} items, boxes has {n}")
        if self.masks is not None and self.meta.get("image_size") is not None:
            if tuple(int(s) for s in self.meta["image_size"]) != self.masks.image_size:
                raise ValueError(f"meta['image_size'] {tuple(self.meta['image_size'])} differs from "
                                 f"the masks' image_size {self.masks.image_size}")
        extras = {}
        for key, value in dict(self.extras).items():
            arr = np.asarray(value)
            if arr.ndim == 0 or len(arr) != n:
                raise ValueError(f"extras[{key!r}] must have {n} items, got shape {arr.shape}")
            extras[key] = arr
        self.extras = extras
        self.meta = dict(self.meta)

    def __eq__(self, other: object) -> bool:
        """Same items: equal arrays (NaN equal to NaN), masks, extras and meta."""
        if not isinstance(other, Detections):
            return NotImplemented

        def same(a: Any, b: Any) -> bool:
            if a is None or b is None:
                return a is b
            a, b = np.asarray(a), np.asarray(b)
            return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))

        return (same(self.boxes, other.boxes) and same(self.scores, other.scores)
                and same(self.labels, other.labels) and self.masks == other.masks
                and self.extras.keys() == other.extras.keys()
                and all(same(v, other.extras[k]) for k, v in self.extras.items())
                and _same_meta(self.meta, other.meta))

    __hash__ = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(cls, image_size: Sequence[int] | None = None, **meta: Any) -> Detections:
        masks = Masks.empty(image_size) if image_size is not None else None
        if image_size is not None:
            meta.setdefault("image_size", tuple(int(s) for s in image_size))
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), masks=masks, meta=meta)

    @classmethod
    def from_masks(cls, masks: Masks, scores: Any = None, labels: Any = None,
                   extras: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> Detections:
        """Detections whose boxes are the masks' tight boxes."""
        m = dict(meta or {})
        m.setdefault("image_size", masks.image_size)
        return cls(masks.boxes(), scores, labels, masks, dict(extras or {}), m)

    @classmethod
    def concatenate(cls, items: Sequence[Detections]) -> Detections:
        """Join detections of one image; per-item fields must be present in all or none.

        Raises:
            ValueError: a field present in some items only, extras keys that differ, or items
                of different images (their ``image_size`` or ``meta["image_id"]`` differ; the
                first item's would have been kept silently).
        """
        if not items:
            return cls.empty()
        sizes = {d.image_size for d in items} - {None}
        # empty items (Detections.empty(), a filter that kept nothing) add no items: their
        # missing labels, masks or extras must not refuse the others
        ids = {_plain(d.meta["image_id"]) for d in items if d.meta.get("image_id") is not None}
        metas = [d.meta for d in items]
        items = [d for d in items if len(d)] or list(items)
        for key, values in (("image_size", sizes), ("image_id", ids)):
            if len(values) > 1:
                raise ValueError(f"cannot concatenate detections of different images ({key} "
                                 f"{', '.join(sorted(map(repr, values)))})")
        def cat(name: str) -> np.ndarray | None:
            vals = [getattr(d, name) for d in items]
            if all(v is None for v in vals):
                return None
            if any(v is None for v in vals):
                raise ValueError(f"cannot concatenate: {name} missing in some detections")
            return np.concatenate(vals)
        masks_list = [d.masks for d in items]
        if all(m is None for m in masks_list):
            masks = None
        elif any(m is None for m in masks_list):
            raise ValueError("cannot concatenate: masks missing in some detections")
        else:
            masks = Masks.concatenate(masks_list)  # type: ignore[arg-type]
        keys = set(items[0].extras)
        for d in items[1:]:
            if set(d.extras) != keys:
                raise ValueError(f"cannot concatenate: extras keys differ ({sorted(keys)} vs {sorted(d.extras)})")
        extras = {k: np.concatenate([d.extras[k] for d in items]) for k in keys}
        meta: dict[str, Any] = {}
        for m in metas:
            for k, v in m.items():
                meta.setdefault(k, v)
        if len(sizes) == 1 and masks is None:
            meta.setdefault("image_size", next(iter(sizes)))
        return cls(np.concatenate([d.boxes for d in items]), cat("scores"), cat("labels"), masks, extras, meta)

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: Any) -> Detections:
        """Select items with an int, slice, boolean (N,) mask or integer array.

        Raises:
            IndexError: an index out of range, a boolean array of another length, a bare
                ``True``/``False`` (it used to pick item 1 or 0), or another kind of index.
        """
        i = int_position(index, len(self), "detections")
        if i is not None:
            index = np.array([i])
        elif isinstance(index, slice):
            index = np.arange(len(self))[index]
        idx = np.asarray(index)
        if idx.dtype == bool and idx.shape != (len(self),):
            raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} detections")
        if idx.size == 0 and idx.dtype != bool:
            idx = idx.astype(np.intp)  # [] is float64 to NumPy
        if idx.ndim != 1 or not (idx.dtype == bool or np.issubdtype(idx.dtype, np.integer)):
            raise IndexError(f"unsupported index of detections {index!r}"[:200])
        return Detections(
            self.boxes[idx],
            None if self.scores is None else self.scores[idx],
            None if self.labels is None else self.labels[idx],
            None if self.masks is None else self.masks[idx],
            {k: v[idx] for k, v in self.extras.items()},
            dict(self.meta),
        )

    @property
    def image_size(self) -> tuple[int, int] | None:
        if self.masks is not None:
            return self.masks.image_size
        size = self.meta.get("image_size")
        return None if size is None else (int(size[0]), int(size[1]))

    def sort_by_score(self, descending: bool = True) -> Detections:
        if self.scores is None:
            raise ValueError("sort_by_score needs scores")
        order = np.argsort(-self.scores if descending else self.scores, kind="stable")
        return self[order]

    # ---------------------------------------------------------------- COCO
    def to_coco(self, image_id: int | None = None, category_id: int | None = None) -> list[dict[str, Any]]:
        """COCO results entries: image_id, category_id, bbox (XYWH), score, and segmentation (RLE).

        ``image_id`` defaults to ``meta["image_id"]``; ``category_id`` to ``labels`` or 1.
        NumPy ids are written as Python numbers (JSON-ready).

        Raises:
            ValueError: no image_id, or NaN / infinite boxes or scores (JSON has no NaN).
        """
        image_id = self.meta.get("image_id") if image_id is None else image_id
        if image_id is None:
            raise ValueError("to_coco needs image_id (argument or meta['image_id'])")
        if isinstance(image_id, (np.generic, np.ndarray)) and np.ndim(image_id) == 0:
            image_id = image_id.item()  # np.float32 / 0-d arrays are not JSON-serialisable
        bad = ~np.isfinite(self.boxes).all(axis=1)
        if self.scores is not None:
            bad |= ~np.isfinite(self.scores)
        if bad.any():
            raise ValueError(f"to_coco: items {np.flatnonzero(bad)[:5].tolist()} have NaN or infinite "
                             f"boxes or scores")
        rles = self.masks.to_coco_rles() if self.masks is not None else None
        areas = self.masks.area if self.masks is not None else None  # once, not per item
        out = []
        for i in range(len(self)):
            x0, y0, x1, y1 = (float(v) for v in self.boxes[i])
            if category_id is not None:
                cat = int(category_id)
            elif self.labels is not None:
                cat = int(self.labels[i])
            else:
                cat = 1
            entry: dict[str, Any] = {
                "image_id": int(image_id) if isinstance(image_id, (int, np.integer)) else image_id,
                "category_id": cat,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(self.scores[i]) if self.scores is not None else 1.0,
            }
            if rles is not None:
                entry["segmentation"] = rles[i]
                entry["area"] = int(areas[i]) if areas is not None else 0
            out.append(entry)
        return out

    @classmethod
    def from_coco(cls, entries: Sequence[Mapping[str, Any]], image_size: Sequence[int] | None = None,
                  **meta: Any) -> Detections:
        """Build from COCO results/annotation entries of one image (RLE or polygon segmentation).

        Raises:
            ValueError: a segmentation that is neither polygons nor an RLE of ``image_size``,
                or compressed RLE counts that do not cover the image (pycocotools decodes a
                truncated string into uninitialised memory).
        """
        if not entries:
            return cls.empty(image_size, **meta)
        ids = {_plain(e["image_id"]) for e in entries if e.get("image_id") is not None}
        if len(ids) > 1:
            raise ValueError(f"from_coco takes entries of one image, got image_ids {sorted(map(repr, ids))[:5]}")
        if ids and "image_id" not in meta:
            meta["image_id"] = next(iter(ids))
        boxes = []
        for e in entries:
            x, y, w, h = (float(v) for v in e["bbox"])
            boxes.append([x, y, x + w, y + h])
        scores = [float(e.get("score", 1.0)) for e in entries]
        labels = [int(e.get("category_id", 1)) for e in entries]
        masks = None
        has_seg = ["segmentation" in e for e in entries]
        if any(has_seg) and not all(has_seg):
            raise ValueError(f"segmentation missing in {has_seg.count(False)} of {len(entries)} entries")
        if image_size is None and all(has_seg) and all(isinstance(e["segmentation"], Mapping) for e in entries):
            image_size = tuple(entries[0]["segmentation"]["size"])  # RLEs carry the image's size
        if any(has_seg) and image_size is None:
            raise ValueError("from_coco needs image_size for polygon segmentations")
        if image_size is not None and all(has_seg):
            h, w = _check_hw(image_size)
            masks = Masks._trusted([segmentation_rle(e["segmentation"], (h, w)) for e in entries], (h, w))
        if image_size is not None:
            meta.setdefault("image_size", tuple(int(s) for s in image_size))
        return cls(np.asarray(boxes, np.float32), np.asarray(scores, np.float32),
                   np.asarray(labels, np.int64), masks, {}, meta)


def _check_hw(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2:
        raise ValueError(f"image_size must be (H, W), got {size!r}")
    return int(size[0]), int(size[1])
