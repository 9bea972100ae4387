"""Mask annotations in other formats: COCO polygons, YOLO segmentation labels and PNG masks.

Reads what the toolkit writes and what datasets ship (:mod:`composer.io.annotations`, whose
:func:`read_annotations` is importable from here too):

* a COCO dataset json (``images``, ``annotations``, ``categories``), e.g. ``sam-composer
  everything``'s output or a labelled dataset;
* a COCO results json (a list of ``{"image_id", "category_id", "segmentation", "score"}``),
  e.g. ``sam-composer eval``'s detections; image sizes come from the RLEs;
* a per-image detections json of ``sam-composer segment/instances/text`` (``image_size``,
  ``detections``), or a folder of them (``summary.json`` and other files are skipped).

Segmentations may be RLE (compressed or not) or polygons. Polygons follow pixel edges
(:func:`composer.structures.masks.mask_polygons`): with ``tolerance`` 0 they rasterise back
to exactly the mask, holes aside. COCO polygons cannot hold holes, so a mask with holes keeps
its RLE (``holes="rle"``, the default: the annotation stays exact) or loses them
(``holes="fill"``); YOLO labels always lose them. Both are counted in the returned stats.
Crowd annotations (``iscrowd``) keep their RLE in COCO polygons and are left out of YOLO
labels (as Ultralytics' COCO converter does). PNG masks (:func:`to_png_masks`, the layout of
segment-anything's ``scripts/amg.py``) are exact, holes and crowd regions included.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..structures.masks import crowd_flag, mask_polygons, merge_polygons, segmentation_rle
from .annotations import Annotations, ImageAnnotations, read_annotations
from .visualize import write_json

FORMATS = ("coco-polygons", "yolo", "png-masks")


def _image_stem(im: ImageAnnotations) -> str:
    """The stem Ultralytics pairs a label with: the image file's ("my.photo.jpg" ->
    "my.photo"); a file_name with no image suffix (a json of an older version records only
    the stem) is the stem itself."""
    from .image import IMAGE_SUFFIXES

    path = Path(im.file_name)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name




def _mask_rle(im: ImageAnnotations, i: int, seg: Any) -> dict[str, Any]:
    """Compressed RLE of mask ``i`` of ``im``.

    Raises:
        ValueError: a malformed segmentation, or one of another size than the image; the
            message names the image and the mask.
    """
    try:
        return segmentation_rle(seg, (im.height, im.width))
    except (ValueError, TypeError) as exc:  # pycocotools: TypeError for counts of a bad type
        raise ValueError(f"image {im.file_name!r}, mask {i}: {exc}") from None


def _check_masks(
    annotations: Annotations, crowd: bool = True, fields: bool = False
) -> dict[tuple[int, int], dict[str, Any]]:
    """Raise the ``ValueError`` a conversion would meet midway, before it writes anything: the
    folder conversions remove an earlier run's files as they go, so a failure halfway would
    leave neither that run's output nor a complete new one.

    Args:
        crowd: check crowd regions' segmentations too (YOLO labels skip them).
        fields: check the fields :func:`to_png_masks` writes to ``metadata.csv``.

    Returns:
        The checked RLEs by (image index, mask index), for the writer to use (each
        segmentation is read and checked once).

    Raises:
        ValueError: a malformed segmentation or field, named by image and mask.
    """
    rles: dict[tuple[int, int], dict[str, Any]] = {}
    for k, im in enumerate(annotations.images):
        for i, (_, seg, src) in enumerate(im.anns):
            try:
                is_crowd = crowd_flag(src.get("iscrowd"))
            except ValueError as exc:
                raise ValueError(f"image {im.file_name!r}, mask {i}: {exc}") from None
            if not crowd and is_crowd:
                continue
            rles[k, i] = _mask_rle(im, i, seg)
            if fields:
                try:
                    _amg_cells(src, im.source)
                    _score(src, "score")
                except ValueError as exc:
                    raise ValueError(f"image {im.file_name!r}, mask {i}: {exc}") from None
    return rles


def to_coco_polygons(annotations: Annotations, out_json: str | os.PathLike[str],
                     tolerance: float = 0.0, holes: str = "rle") -> dict[str, int]:
    """Write a COCO dataset json whose segmentations are polygons.

    Returns stats: ``images``, ``annotations``, ``kept_rle`` (masks with holes kept as RLE),
    ``filled_holes``, ``crowd`` (crowd regions, kept as RLE), ``empty`` (masks with no pixels:
    kept as RLE, since an empty polygon list does not load). A polygon annotation's ``area``
    and ``bbox`` are those of what its polygons decode to (with ``holes="fill"`` or a
    ``tolerance``, not the source mask's).

    Raises:
        ValueError: an unknown ``holes``, or a malformed segmentation (named by image and mask).
    """
    if holes not in ("rle", "fill"):
        raise ValueError(f"holes must be 'rle' or 'fill', got {holes!r}")
    stats = {"images": 0, "annotations": 0, "kept_rle": 0, "filled_holes": 0, "crowd": 0,
             "empty": 0}
    # ids of the source kept; other keys (e.g. a string category_id) numbered after the
    # largest id, so that they never take an id another category holds
    taken = [k for k in annotations.categories if isinstance(k, int)]
    next_id = max(taken, default=0) + 1
    cat_ids: dict[Any, int] = {}
    for key in annotations.categories:
        if isinstance(key, int):
            cat_ids[key] = key
        else:
            cat_ids[key] = next_id
            next_id += 1
    out: dict[str, Any] = {
        "images": [], "annotations": [],
        "categories": [{"id": cat_ids[k], "name": v} for k, v in annotations.categories.items()],
    }
    for im in annotations.images:
        out["images"].append({"id": im.image_id, "file_name": im.file_name,
                              "height": im.height, "width": im.width})
        stats["images"] += 1
        for i, (cat, seg, src) in enumerate(im.anns):
            rle = _mask_rle(im, i, seg)
            try:
                is_crowd = crowd_flag(src.get("iscrowd"))
            except ValueError as exc:
                raise ValueError(f"image {im.file_name!r}, mask {i}: {exc}") from None
            polys, n_holes = mask_polygons(mask_utils.decode(rle).astype(bool), tolerance)
            ann = {k: v for k, v in src.items()
                   if k not in ("segmentation", "counts", "box_xyxy", "label")}
            if im.source == "detections":  # per-image jsons: XYXY crop, [x, y] point
                box, pts = ann.get("crop_box"), ann.get("point_coords")
                if isinstance(box, list) and len(box) == 4 and all(
                        isinstance(v, (int, float)) for v in box):
                    ann["crop_box"] = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
                if isinstance(pts, list) and len(pts) == 2 and all(
                        isinstance(v, (int, float)) for v in pts):
                    ann["point_coords"] = [pts]
            ann.update(id=src.get("id", stats["annotations"] + 1), image_id=im.image_id,
                       category_id=cat_ids[cat], iscrowd=int(is_crowd))
            crowd, area = bool(ann["iscrowd"]), int(mask_utils.area(rle))
            if crowd or area == 0 or (n_holes and holes == "rle"):
                ann["segmentation"] = {"size": list(rle["size"]),
                                       "counts": rle["counts"].decode("ascii")}
                stats["crowd" if crowd else "empty" if area == 0 else "kept_rle"] += 1
            else:
                ann["segmentation"] = polys
                stats["filled_holes"] += int(n_holes > 0)
                # area and box of what the polygons decode to (filled holes, --tolerance):
                # COCOeval's size buckets and annotation tools read ``area``
                h, w = (int(v) for v in rle["size"])
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
                area = int(mask_utils.area(rle))
            ann["area"] = area
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
            out["annotations"].append(ann)
            stats["annotations"] += 1
    write_json(Path(out_json), out)
    return stats


_SAFE = re.compile(r"[^\w.-]+")
#: what a YOLO label's stem cannot hold: Ultralytics pairs ``images/<stem>.<ext>`` with
#: ``labels/<stem>.txt``, so anything a file name can hold is kept as it is
_PATH_UNSAFE = re.compile(r"[/\\\x00-\x1f]+")


def _safe_stems(images: list[ImageAnnotations], unsafe: re.Pattern[str] = _SAFE) -> list[str]:
    """Output stems of ``images``: ``unsafe`` characters as ``_``, distinct (a stem that clashes
    gets ``_<image id>``), never empty, ``.`` or ``..`` (those become ``image_<image id>``)."""
    used: set[str] = set()
    out = []
    for im in images:
        name = unsafe.sub("_", im.name)
        if not name.strip("."):  # "", "." or "..": no usable file or folder name
            name = f"image_{_SAFE.sub('_', str(im.image_id))}"
        if name.lower() in used:  # stems differing only in unsafe characters or in case
            name = f"{name}_{_SAFE.sub('_', str(im.image_id))}"  # (one file on macOS/Windows)
        used.add(name.lower())
        out.append(name)
    return out


#: the label files a YOLO conversion wrote, in its output folder
YOLO_MANIFEST = ".sam-composer-yolo.json"
_SAFE_LABEL = re.compile(r"[^/\\]+\.txt")


def _data_yaml(out: Path, names: list[str]) -> str:
    """The ``data.yaml`` a conversion writes into ``out`` for class ``names``."""
    lines = "".join(f"  {i}: {json.dumps(v)}\n" for i, v in enumerate(names))
    return f"path: {json.dumps(str(out.resolve()))}\ntrain: images\nval: images\nnames:\n{lines}"


def _unlisted_conversion(out: Path) -> bool:
    """Whether ``out`` is a YOLO conversion written before :data:`YOLO_MANIFEST` existed: its
    ``data.yaml`` is exactly what a conversion into this folder writes for the class names of
    its ``classes.txt``."""
    try:
        names = (out / "classes.txt").read_text().splitlines()
        return (out / "data.yaml").read_text() == _data_yaml(out, names)
    except (OSError, UnicodeDecodeError):
        return False


def to_yolo(annotations: Annotations, out_dir: str | os.PathLike[str],
            tolerance: float = 0.0) -> dict[str, int]:
    """Write YOLO segmentation labels: ``labels/<stem>.txt`` with one object per line, ``class
    x1 y1 x2 y2 ...`` in [0, 1] (a mask of several parts joined into one polygon by zero-width
    bridges, :func:`merge_polygons`), ``classes.txt`` with the class names in index order and
    a ``data.yaml`` naming them for Ultralytics.

    Returns stats: ``images``, ``objects``, ``multi_part`` (masks joined from several parts),
    ``dropped_holes``, ``crowd`` (crowd regions: not written), ``empty`` (masks with no
    pixels: not written), ``stale_labels_removed``: when ``out_dir`` holds an earlier
    conversion (the label files it lists in ``YOLO_MANIFEST``), those are removed first, as
    they index another class list; ``renamed``: label files not named as their image's stem
    (stems that clash, e.g. ``a.jpg`` and ``a.png``, or a path separator in a name), which
    Ultralytics will not pair with the image.

    Raises:
        ValueError: a malformed segmentation (named by image and mask), or ``out_dir`` holds
            YOLO files (``classes.txt``, ``data.yaml``, ``labels/*.txt``) that no conversion
            listed: a user's own dataset, whose labels would be deleted or re-indexed.
    """
    rles = _check_masks(annotations, crowd=False)  # before the stale labels go
    out = Path(out_dir)
    labels = out / "labels"
    manifest = out / YOLO_MANIFEST
    if manifest.is_file():
        try:
            earlier = json.loads(manifest.read_text())["labels"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ValueError(f"{manifest} is unreadable; delete it (and the labels it listed) "
                             "or convert into a new folder") from None
        written = [labels / str(n) for n in earlier if _SAFE_LABEL.fullmatch(str(n))]
    elif _unlisted_conversion(out):
        # written before conversions listed their labels: its labels/*.txt were all its own
        # (as that version removed them all on the next conversion)
        written = sorted(labels.glob("*.txt")) if labels.is_dir() else []
    else:
        theirs = [p for p in (out / "classes.txt", out / "data.yaml") if p.exists()]
        theirs += sorted(labels.glob("*.txt")) if labels.is_dir() else []
        if theirs:
            raise ValueError(
                f"{out} holds YOLO files that sam-composer convert did not write (e.g. "
                f"{theirs[0].relative_to(out)}); they would be replaced or re-indexed, so "
                "convert into a new or empty folder (a conversion by sam-composer before "
                "2026-11-24 that was moved or edited since: delete its labels, classes.txt "
                "and data.yaml first)"
            )
        written = []
    labels.mkdir(parents=True, exist_ok=True)
    stale = 0
    for old in written:  # an earlier conversion's labels index another class list
        if old.is_file():
            old.unlink()
            stale += 1
    # what this conversion writes, listed before it writes (a run cut short is still listed):
    # the next conversion into this folder removes these labels, and no file of the user's
    stems = _safe_stems(annotations.images, _PATH_UNSAFE)
    manifest.write_text(json.dumps({"labels": [f"{n}.txt" for n in stems]}))
    index = {key: i for i, key in enumerate(annotations.categories)}
    stats = {"images": 0, "objects": 0, "multi_part": 0, "dropped_holes": 0, "crowd": 0,
             "empty": 0, "stale_labels_removed": stale,
             # labels not named as their image (a clash): Ultralytics will not pair them
             # (compared with the image file's own stem: a clash may have renamed im.name already)
             "renamed": sum(n != _image_stem(im)
                            for n, im in zip(stems, annotations.images, strict=True))}
    for k, (im, name) in enumerate(zip(annotations.images, stems, strict=True)):
        lines = []
        for i, (cat, _seg, src) in enumerate(im.anns):
            if crowd_flag(src.get("iscrowd")):  # a crowd region is no instance (as Ultralytics' converter)
                stats["crowd"] += 1
                continue
            dense = mask_utils.decode(rles[k, i]).astype(bool)
            polys, n_holes = mask_polygons(dense, tolerance)
            if not polys:
                stats["empty"] += 1
                continue
            stats["multi_part"] += int(len(polys) > 1)
            stats["dropped_holes"] += int(n_holes > 0)
            pts = np.asarray(merge_polygons(polys)).reshape(-1, 2)
            pts = np.clip(pts / (im.width, im.height), 0.0, 1.0)
            lines.append(" ".join([str(index[cat])] + [f"{v:.6f}" for v in pts.ravel()]))
            stats["objects"] += 1
        (labels / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
        stats["images"] += 1
    (out / "classes.txt").write_text("".join(f"{v}\n" for v in annotations.categories.values()))
    # the dataset file Ultralytics reads (point its train/val entries at the image folders)
    (out / "data.yaml").write_text(_data_yaml(out, [str(v) for v in annotations.categories.values()]))
    return stats


#: metadata.csv columns: segment-anything's scripts/amg.py's, then category, score, iscrowd
PNG_MASK_COLUMNS = ("id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x",
                    "point_input_y", "predicted_iou", "stability_score", "crop_box_x0",
                    "crop_box_y0", "crop_box_w", "crop_box_h", "category", "score", "iscrowd")


def _number(value: Any, what: str) -> float | None:
    """A number of a source annotation; None for null (how NaN is written) and NaN."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value) if math.isfinite(value) else None


def _coord(value: Any, what: str) -> str:
    """A coordinate cell: whole numbers without a decimal point (as amg.py's ints)."""
    v = _number(value, what)
    return "" if v is None else str(int(v)) if v.is_integer() else repr(v)


def _score(src: dict[str, Any], key: str) -> str:
    v = _number(src.get(key), key)
    return "" if v is None else repr(v)


def _amg_cells(src: dict[str, Any], source: str) -> list[str]:
    """point_input_x .. crop_box_h of one source annotation (empty where it lacks them)."""
    point, crop = ["", ""], ["", "", "", ""]
    pts = src.get("point_coords")
    if isinstance(pts, list) and len(pts) == 1 and isinstance(pts[0], list):
        pts = pts[0]  # [[x, y]] (COCO jsons); per-image jsons have [x, y]
    if isinstance(pts, list) and len(pts) == 2 and not any(isinstance(v, list) for v in pts):
        point = [_coord(v, "point_coords") for v in pts]
    # several points (a list of lists) leave the cells empty: amg.py's input is one point
    elif pts is not None and not (isinstance(pts, list) and all(isinstance(v, list) for v in pts)):
        raise ValueError(f"point_coords is {pts!r}, not [[x, y]]")
    box = src.get("crop_box")
    if box is not None:
        nums = [_number(v, "crop_box") for v in box] if isinstance(box, list) else []
        xywh = [v for v in nums if v is not None]
        if len(xywh) != 4:
            raise ValueError(f"crop_box is {box!r}, not 4 finite numbers")
        if source == "detections":  # per-image jsons keep the generator's XYXY
            xywh[2:] = [xywh[2] - xywh[0], xywh[3] - xywh[1]]
        crop = [_coord(v, "crop_box") for v in xywh]
    return [*point, _score(src, "predicted_iou"), _score(src, "stability_score"), *crop]


def to_png_masks(annotations: Annotations, out_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Write one binary PNG per mask, the layout of segment-anything's ``scripts/amg.py``:
    per image a folder ``<stem>/`` (stems made safe as in :func:`to_yolo`) with ``0.png``,
    ``1.png``, ... (0 and 255, the image's size, in the source's order: an empty mask is
    written too, all zeros, so the numbers stay the source's), ``metadata.csv`` and
    ``labels.png``.

    ``metadata.csv`` has amg.py's columns (``PNG_MASK_COLUMNS``): ``id`` (the PNG's number),
    ``area`` and ``bbox_*`` of the mask itself (COCO's XYWH: a one-pixel mask has width 1,
    amg.py's boxes are one pixel smaller), ``point_input_*``, ``predicted_iou``,
    ``stability_score`` and ``crop_box_*`` (XYWH) from the source annotation, then
    ``category`` (its name), ``score`` and ``iscrowd``. A cell the source lacks (or holds null
    or NaN) stays empty. Crowd regions are written like any mask and marked ``iscrowd`` 1.

    ``labels.png`` is a 16-bit instance map: 0 background, mask ``i`` painted ``i + 1``; where
    masks overlap the first listed (the best ranked of a generator's) wins. PNG masks of an
    earlier run in a ``<stem>/`` folder are removed first.

    Returns stats: ``images``, ``masks``, ``crowd``, ``empty`` (masks with no pixels),
    ``hidden`` (masks with pixels, all taken by earlier masks in ``labels.png``).

    Raises:
        ValueError: a malformed segmentation or field, or more than 65535 masks in an image.
    """
    for im in annotations.images:  # every check before an earlier run's PNGs go
        if len(im.anns) > np.iinfo(np.uint16).max:
            raise ValueError(f"image {im.file_name!r} has {len(im.anns)} masks: labels.png "
                             "holds at most 65535")
    rles = _check_masks(annotations, fields=True)
    out = Path(out_dir)
    stats = {"images": 0, "masks": 0, "crowd": 0, "empty": 0, "hidden": 0}
    for k, (im, name) in enumerate(zip(annotations.images, _safe_stems(annotations.images),
                                       strict=True)):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):  # an earlier run's masks (it may have had more)
            if re.fullmatch(r"[0-9]+", old.stem):
                old.unlink()
        labels = np.zeros((im.height, im.width), np.uint16)
        rows = []
        for i, (cat, _seg, src) in enumerate(im.anns):
            rle = rles[k, i]
            try:
                amg = _amg_cells(src, im.source)
                score = _score(src, "score")
            except ValueError as exc:
                raise ValueError(f"image {im.file_name!r}, mask {i}: {exc}") from None
            mask = mask_utils.decode(rle).astype(bool)
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{i}.png")
            free = mask & (labels == 0)  # the first wins: as painting in reverse, overwriting
            labels[free] = i + 1
            area = int(mask.sum())
            bbox = [str(int(v)) for v in mask_utils.toBbox(rle)]
            crowd = None if src.get("iscrowd") is None else crowd_flag(src["iscrowd"])
            rows.append([str(i), str(area), *bbox, *amg, annotations.categories[cat], score,
                         "" if crowd is None else str(int(bool(crowd)))])
            stats["masks"] += 1
            stats["crowd"] += int(bool(crowd))
            stats["empty"] += int(area == 0)
            stats["hidden"] += int(area > 0 and not free.any())
        Image.fromarray(labels).save(folder / "labels.png")
        with open(folder / "metadata.csv", "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(PNG_MASK_COLUMNS)
            writer.writerows(rows)
        stats["images"] += 1
    return stats


def convert(src: str | os.PathLike[str], out: str | os.PathLike[str], to: str,
            tolerance: float = 0.0, holes: str = "rle") -> dict[str, int]:
    """Convert ``src`` (see the module doc) to ``to``: ``"coco-polygons"`` (``out`` is the json
    to write), ``"yolo"`` or ``"png-masks"`` (``out`` is a folder; ``tolerance`` and ``holes``
    do not apply: the PNGs are exact)."""
    if to not in FORMATS:
        raise ValueError(f"unknown format {to!r}: use one of {', '.join(FORMATS)}")
    if tolerance < 0 or not np.isfinite(tolerance):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    annotations = read_annotations(src)
    if to == "yolo":
        return to_yolo(annotations, out, tolerance)
    if to == "png-masks":
        return to_png_masks(annotations, out)
    return to_coco_polygons(annotations, out, tolerance, holes)
