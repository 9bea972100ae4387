"""Drawing masks, boxes and points over images, and writing per-mask PNGs."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .._atomic import atomic_write
from ..structures import Detections, Masks


def palette(n: int, seed: int = 3) -> np.ndarray:
    """(n, 3) uint8 distinct-ish colours (golden-ratio hues, fixed order)."""
    import colorsys

    hues = (np.arange(n) * 0.61803398875 + seed * 0.1) % 1.0
    return np.array([[int(c * 255) for c in colorsys.hsv_to_rgb(h, 0.75, 0.95)] for h in hues], np.uint8).reshape(n, 3)


def overlay(image: np.ndarray, masks: Masks | np.ndarray | None = None, alpha: float = 0.5,
            boxes: np.ndarray | None = None, points: np.ndarray | None = None,
            point_labels: np.ndarray | None = None, outline: bool = True) -> np.ndarray:
    """Draw masks (largest first, so small ones stay visible), boxes and points.

    Args:
        image: (H, W, 3) uint8 RGB; other arrays (gray, RGBA, 16-bit, float in [0, 1]) are
            converted as :func:`composer.io.image.load_image` converts them.
        masks: Masks, or (N, H, W) or (H, W) bool (or 0/1 numbers).
        alpha: mask opacity in [0, 1].
        boxes: optional (N, 4) XYXY pixels; boxes with NaN or infinite values are not drawn.
        points: optional (K, 2) XY pixels; ``point_labels`` (K,) 1 = green, 0 = red; points
            with NaN or infinite values are not drawn.

    Returns:
        (H, W, 3) uint8 RGB picture.

    Raises:
        ValueError: the masks are not of the image's size or are float values other than 0
            and 1, ``alpha`` is outside [0, 1], or the image array is unusable.
    """
    import cv2

    from .image import load_image

    if not (isinstance(alpha, (int, float, np.number)) and 0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        image = load_image(image)  # a 16-bit or [0, 1] float image was drawn all white / black
    out = image.astype(np.float32).copy()
    # Masks are decoded one at a time and drawn inside their boxes: thousands of masks of a
    # photo held as (N, H, W) took gigabytes, and whole-image passes per mask took minutes
    if isinstance(masks, Masks):
        if masks.image_size != image.shape[:2]:
            raise ValueError(
                f"masks of shape {(len(masks), *masks.image_size)} do not fit the "
                f"{image.shape[1]}x{image.shape[0]} image; give (N, H, W) masks of the image's size"
            )
        n, areas, boxes_xyxy = len(masks), masks.area, masks.boxes()
        rles = masks.rles

        def mask_at(i: int) -> np.ndarray:
            return mask_utils.decode(rles[i]).view(bool)
    elif masks is not None:
        given = np.asarray(masks)
        if given.dtype.kind == "f" and given.size and not np.isin(given, (0.0, 1.0)).all():
            # as Masks.from_dense: probabilities or logits would all be drawn as foreground
            raise ValueError("float masks must hold only 0 and 1; threshold probabilities or "
                             "logits first (e.g. masks > 0.5)")
        dense = given.astype(bool)
        if dense.ndim == 2:
            dense = dense[None]  # one (H, W) mask
        if dense.ndim != 3 or dense.shape[1:] != image.shape[:2]:
            raise ValueError(
                f"masks of shape {dense.shape} do not fit the {image.shape[1]}x{image.shape[0]} "
                "image; give (N, H, W) masks of the image's size"
            )
        n, areas = len(dense), dense.sum(axis=(1, 2))
        boxes_xyxy = _dense_boxes(dense)

        def mask_at(i: int) -> np.ndarray:
            return dense[i]
    else:
        n = 0
    if n:
        colors = palette(n).astype(np.float32)
        order = np.argsort(-np.asarray(areas))
        # each mask's tight box (x1, y1 exclusive) grown by a pixel, so that outlines traced in
        # it equal those traced in the whole image
        h, w = image.shape[:2]
        windows: list[tuple[int, int, int, int] | None] = []
        for i in order:
            x0, y0, x1, y1 = (int(v) for v in boxes_xyxy[i])
            if x1 <= x0 or y1 <= y0:
                windows.append(None)  # an empty mask
                continue
            windows.append((max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)))
        outlines: list[tuple[Any, tuple[int, ...]]] = []
        for i, win in zip(order, windows, strict=True):
            if win is None:
                continue
            x0, y0, x1, y1 = win
            m = np.ascontiguousarray(mask_at(int(i))[y0:y1, x0:x1])
            region = out[y0:y1, x0:x1]
            region[...] = np.where(m[..., None], region * (1 - alpha) + colors[i] * alpha, region)
            if outline:
                contours, _ = cv2.findContours(m.view(np.uint8),
                                               cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE,
                                               offset=(x0, y0))
                outlines.append((contours, tuple(int(c) for c in colors[i])))
        out_u8 = out.clip(0, 255).astype(np.uint8)
        for contours, color in outlines:  # drawn over every mask's fill
            cv2.drawContours(out_u8, contours, -1, color, 1)
    else:
        out_u8 = out.clip(0, 255).astype(np.uint8)
    out_u8 = np.ascontiguousarray(out_u8)
    # far-off coordinates are moved nearer (still off the picture): OpenCV takes int32 only
    lim = 4 * max(image.shape[:2]) + 16
    if boxes is not None:
        for b in np.asarray(boxes, np.float32).reshape(-1, 4):
            if not np.isfinite(b).all():
                continue
            x0, y0, x1, y1 = (int(round(v)) for v in b.clip(-lim, lim))
            cv2.rectangle(out_u8, (x0, y0), (x1, y1), (30, 144, 255), 2)
    if points is not None:
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        labels = np.ones(len(pts), int) if point_labels is None else np.asarray(point_labels).reshape(-1)
        r = max(3, int(round(0.012 * max(image.shape[:2]))))
        for (x, y), lab in zip(pts.clip(-lim, lim), labels, strict=True):
            if lab < 0 or not (math.isfinite(x) and math.isfinite(y)):
                continue
            color = (40, 200, 40) if lab == 1 else (230, 40, 40)
            cv2.circle(out_u8, (int(round(x)), int(round(y))), r, color, -1)
            cv2.circle(out_u8, (int(round(x)), int(round(y))), r, (255, 255, 255), 1)
    return out_u8


def _dense_boxes(dense: np.ndarray) -> np.ndarray:
    """(N, 4) int64 tight XYXY boxes (x1, y1 exclusive) of (N, H, W) bool masks; zeros for an
    empty mask."""
    out = np.zeros((len(dense), 4), np.int64)
    for i, m in enumerate(dense):
        cols, rows = np.flatnonzero(m.any(axis=0)), np.flatnonzero(m.any(axis=1))
        if cols.size:
            out[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return out


def save_png(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write ``array`` as a PNG atomically: a temporary ``.part`` file renamed over ``path``
    (an interrupted write leaves the earlier file, never a truncated one)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(p, "wb") as f:
        Image.fromarray(array).save(f, format="PNG")
    return p


def write_detections(dets: Detections, image: np.ndarray, out_dir: str | os.PathLike[str],
                     stem: str = "image", points: np.ndarray | None = None,
                     point_labels: np.ndarray | None = None, prompt_boxes: np.ndarray | None = None,
                     extra_meta: dict[str, Any] | None = None, mask_pngs: bool = True,
                     image_file: str | None = None, owned: bool = False) -> dict[str, Any]:
    """Write mask PNGs, an overlay PNG and a JSON (RLE, boxes, scores, extras) for one image.

    ``image_file`` (the input image's file name) is recorded as the JSON's ``image_file``, so
    that a conversion to COCO names the image file and not only its stem. ``owned``: the
    folder is a run's own (a folder-mode run's ``--out``, whose log lists its outputs), so
    files named as this call's outputs are earlier outputs even without their json.

    Mask PNGs ``<stem>_maskNNN.png`` (``NNN`` three digits or more) of an earlier call with
    this stem (those its json lists in ``mask_files``) are removed first, so the folder never
    mixes two runs' masks; files of the user's are never replaced (see ``Raises``). NaN scores
    are written as JSON null.

    Returns:
        A dict with the written paths: ``masks`` (list), ``overlay``, ``json``.

    Raises:
        ValueError: the masks are not of the image's size, ``<stem>.json`` exists and is not
            an output of ours, or a file this call writes exists with no json of ours beside it
            (checked before any file is touched).
    """
    if dets.masks is not None and dets.masks.image_size != tuple(np.shape(image)[:2]):
        h, w = dets.masks.image_size
        raise ValueError(
            f"the detections' masks are {w}x{h}, the image is "
            f"{np.shape(image)[1]}x{np.shape(image)[0]}; give the image the masks belong to"
        )
    out = Path(out_dir)
    mask_names = ([f"{stem}_mask{i:03d}.png" for i in range(len(dets.masks.rles))]
                  if dets.masks is not None and mask_pngs else [])
    stale = _earlier_outputs(out, stem, mask_names, owned)  # refuses files no run of ours wrote
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"masks": []}
    for old in stale:
        old.unlink(missing_ok=True)
    record: dict[str, Any] = {
        "image_size": list(image.shape[:2]),
        **({} if image_file is None else {"image_file": str(image_file)}),
        "meta": {k: v for k, v in ((k, _numpy_scalars_plain(v)) for k, v in
                                    {**dets.meta, **(extra_meta or {})}.items()) if _jsonable(v)},
        # what this call writes beside the json: the next call with this stem removes these
        "mask_files": mask_names,
        "detections": [],
    }
    rles = dets.masks.to_coco_rles() if dets.masks is not None else [None] * len(dets)
    areas = dets.masks.area if dets.masks is not None else None  # once, not once per item
    scalar_extras = {k: v for k, v in dets.extras.items() if v.ndim <= 2 and k != "low_res_logits"}
    for i in range(len(dets)):
        item: dict[str, Any] = {"box_xyxy": [float(v) for v in dets.boxes[i]]}
        if dets.scores is not None:
            item["score"] = float(dets.scores[i])
        if dets.labels is not None:
            item["label"] = int(dets.labels[i])
        if rles[i] is not None:
            item["segmentation"] = rles[i]
            item["area"] = int(areas[i]) if areas is not None else 0
        for k, v in scalar_extras.items():
            item[k] = np.asarray(v[i]).tolist()
        record["detections"].append(item)
    # the json first: it lists the mask files, so a run cut short while writing them leaves
    # files the next run knows as its own (a run is complete once the overlay exists)
    written["json"] = str(write_json(out / f"{stem}.json", record, indent=1))
    if dets.masks is not None and mask_pngs:
        for name, rle in zip(mask_names, dets.masks.rles, strict=True):  # one at a time
            m = mask_utils.decode(rle)
            written["masks"].append(str(save_png(m * np.uint8(255), out / name)))
    pic = overlay(image, dets.masks, boxes=prompt_boxes, points=points, point_labels=point_labels)
    written["overlay"] = str(save_png(pic, out / f"{stem}_overlay.png"))
    return written


def mask_png_files(out: Path, stem: str) -> list[Path]:
    """The files in ``out`` named as :func:`write_detections` names the masks of output stem
    ``stem``: ``<stem>_maskNNN.png``, ``NNN`` three digits or more."""
    pattern = re.compile(re.escape(stem) + r"_mask[0-9]{3,}\.png")
    try:
        return [p for p in out.glob(f"{glob_escape(stem)}_mask[0-9][0-9][0-9]*.png")
                if pattern.fullmatch(p.name)]
    except OSError:  # no such folder
        return []


def _earlier_outputs(out: Path, stem: str, mask_names: list[str], owned: bool) -> list[Path]:
    """The mask PNGs of an earlier :func:`write_detections` with ``stem`` in ``out``, to remove
    (so the folder never mixes two runs' masks): those its ``<stem>.json`` lists, or, for a
    json written before the list was kept, every ``<stem>_maskNNN.png``.

    Raises:
        ValueError: ``<stem>.json`` exists and is no output of ours (e.g. a LabelMe
            annotation beside its image), or there is no such json, the folder is not
            ``owned`` and a file this call would write (``<stem>_maskNNN.png``,
            ``<stem>_overlay.png``) exists: a user's file.
    """
    json_path = out / f"{stem}.json"
    if json_path.exists():
        try:
            earlier = json.loads(json_path.read_text())
            ours = isinstance(earlier, dict) and {"image_size", "detections"} <= set(earlier)
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise ValueError(f"{json_path} exists and is not an output of sam-composer (it would be "
                             "replaced); write into another folder")
        listed = earlier.get("mask_files")
        if isinstance(listed, list):
            present = {p.name for p in mask_png_files(out, stem)}
            return [out / str(n) for n in listed if str(n) in present]
        return mask_png_files(out, stem)
    if owned:
        return mask_png_files(out, stem)
    theirs = [out / n for n in (*mask_names, f"{stem}_overlay.png") if (out / n).exists()]
    if theirs:
        raise ValueError(f"{theirs[0]} exists and no earlier output here lists it (no {json_path.name}); "
                         "it would be replaced: write into another folder, or remove it")
    return []


def json_finite(obj: Any) -> Any:
    """JSON-like ``obj`` with NaN and infinite floats as None (JSON null), so that
    ``json.dumps(..., allow_nan=False)`` writes valid JSON (a NaN score from NaN weights)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], data: Any, indent: int | None = None,
               fsync: bool = False) -> Path:
    """Write ``data`` as standard JSON (NaN and infinity as null, :func:`json_finite`)
    atomically: a temporary ``.part`` file renamed over ``path``, so a reader never sees half a
    file; ``fsync`` also flushes it to disk first (logs an interruption must not lose)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", fsync=fsync) as f:  # no half-written .part left behind
        f.write(json.dumps(json_finite(data), indent=indent, allow_nan=False))
    return path


def _numpy_scalars_plain(v: Any) -> Any:
    """``v`` with numpy scalars (``np.int64(3)``, in dicts and lists too) as Python numbers:
    json cannot write them, and a meta value holding one was left out of the json."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _numpy_scalars_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_numpy_scalars_plain(x) for x in v]
    return v


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def parse_floats(text: str, n: Sequence[int], what: str) -> list[float]:
    """Parse "x,y[,l]" style CLI values; ``n`` lists the accepted counts."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from exc
    if len(vals) not in n:
        raise ValueError(f"{what} needs {' or '.join(map(str, n))} numbers, got {text!r}")
    return vals
