"""Mask annotations read from the files the toolkit writes and datasets ship, for the
converters of :mod:`composer.io.formats` (which re-exports :func:`read_annotations`,
:class:`Annotations` and :class:`ImageAnnotations`):

* a COCO dataset json (``images``, ``annotations``, ``categories``), e.g. ``sam-composer
  everything``'s output or a labelled dataset;
* a COCO results json (a list of ``{"image_id", "category_id", "segmentation", "score"}``),
  e.g. ``sam-composer eval``'s detections; image sizes come from the RLEs;
* a per-image detections json of ``sam-composer segment/instances/text`` (``image_size``,
  ``detections``), or a folder of them (``summary.json`` and other files are skipped).

Segmentations may be RLE (compressed or not) or polygons; they are kept as read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import log_path, read_log


@dataclass
class ImageAnnotations:
    """One image's masks, whatever file they came from."""

    name: str  #: output stem (file name without its suffix)
    file_name: str
    height: int
    width: int
    image_id: int
    #: (category key, segmentation as in COCO, the source annotation dict)
    anns: list[tuple[Any, Any, dict[str, Any]]] = field(default_factory=list)
    #: "coco" (dataset), "results" or "detections" (per-image jsons: ``crop_box`` is XYXY,
    #: ``point_coords`` ``[x, y]``; in COCO jsons XYWH and ``[[x, y]]``)
    source: str = "coco"


@dataclass
class Annotations:
    images: list[ImageAnnotations]
    #: category key -> name, in the order of YOLO class indices
    categories: dict[Any, str]


def _int(value: Any, what: str) -> int:
    """``int(value)``; ``ValueError`` naming ``what`` for NaN, text, fractions and the like (a
    height of 20.7 was cut to 20)."""
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{what} is {value!r}, not an integer")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what} is {value!r}, not an integer") from None


def _size_of(seg: Any, what: str = "RLE size") -> tuple[int, int] | None:
    if isinstance(seg, dict) and "size" in seg:
        return _int(seg["size"][0], what), _int(seg["size"][1], what)
    return None


def _sorted(cats: dict[Any, str]) -> dict[Any, str]:
    """Categories by id (numbers numerically, then anything else by its text)."""
    return dict(sorted(cats.items(), key=lambda kv: (not isinstance(kv[0], int), kv[0]
                                                     if isinstance(kv[0], int) else str(kv[0]))))


def _from_coco_dataset(data: dict[str, Any]) -> Annotations:
    cats = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories") or []}
    images: dict[int, ImageAnnotations] = {}
    stems: set[str] = set()
    for im in data["images"]:
        if im["id"] in images:  # a second image of an id would replace the first
            raise ValueError(f"image id {im['id']!r} appears more than once in 'images'")
        file_name = str(im.get("file_name", im["id"]))
        stem = Path(file_name).stem
        name = stem if stem not in stems else f"{stem}_{im['id']}"
        stems.add(name)
        images[im["id"]] = ImageAnnotations(
            name, file_name, _int(im["height"], f"image {im['id']!r} height"),
            _int(im["width"], f"image {im['id']!r} width"), im["id"])
    for ann in data.get("annotations") or []:
        if ann.get("image_id") not in images:
            raise ValueError(f"annotation {ann.get('id')} refers to image {ann.get('image_id')}, "
                             "which is not in 'images'")
        cat = ann.get("category_id", 1)
        cats.setdefault(cat, str(cat))
        images[ann["image_id"]].anns.append((cat, ann["segmentation"], ann))
    return Annotations(list(images.values()), _sorted(cats))


def _from_results(data: list[dict[str, Any]]) -> Annotations:
    images: dict[Any, ImageAnnotations] = {}
    cats: dict[Any, str] = {}
    for k, r in enumerate(data):
        if not isinstance(r, dict) or "segmentation" not in r or "image_id" not in r:
            raise ValueError(f"results entry {k} has no image_id and segmentation")
        size = _size_of(r["segmentation"], f"results entry {k}: RLE size")
        if size is None:
            raise ValueError(f"results entry {k}: polygons carry no image size; use a COCO "
                             "dataset json (with 'images') instead")
        iid = r["image_id"]
        if iid not in images:
            images[iid] = ImageAnnotations(str(iid), str(iid), size[0], size[1], iid,
                                           source="results")
        cat = r.get("category_id", 1)
        cats.setdefault(cat, str(cat))
        images[iid].anns.append((cat, r["segmentation"], r))
    return Annotations(list(images.values()), _sorted(cats))


def _from_detection_files(paths: list[Path]) -> Annotations:
    images: list[ImageAnnotations] = []
    cats: dict[Any, str] = {}
    for k, path in enumerate(paths, start=1):
        rec = json.loads(path.read_text())
        size = rec["image_size"]
        if not isinstance(size, list) or len(size) != 2:
            raise ValueError(f"{path}: image_size is {size!r}, not [height, width]")
        h, w = (_int(v, f"{path}: image_size") for v in size)
        names = (rec.get("meta") or {}).get("class_names")
        if isinstance(names, dict):  # instances/text: {"<category id>": name}
            names = {int(k): str(v) for k, v in names.items()
                     if str(k).lstrip("-").isdigit()}
        if isinstance(names, list):  # every class, present or not: indices stable across runs
            names = dict(enumerate(str(n) for n in names))
        if isinstance(names, dict):
            for i, n in names.items():
                cats.setdefault(i, n)
        # the image's file name where the json records it (written since 2026-11-23)
        file_name = rec.get("image_file")
        # labels are named after the image (Ultralytics pairs images/<stem>.* with
        # labels/<stem>.txt), not after the json, whose stem a folder run may have
        # disambiguated (photo.jpg + photo.png -> photo_jpg.json, photo_png.json)
        stem = Path(str(file_name)).stem if file_name else path.stem
        im = ImageAnnotations(stem, str(file_name) if file_name else path.stem, h, w, k,
                              source="detections")
        for j, det in enumerate(rec.get("detections") or []):
            if "segmentation" not in det:
                continue
            cat = _int(det.get("label", 0), f"{path}: detection {j} label")
            if isinstance(names, dict) and cat in names:
                cats.setdefault(cat, names[cat])
            elif det.get("class_name") is not None:
                cats.setdefault(cat, str(det["class_name"]))
            else:
                cats.setdefault(cat, "object" if "label" not in det else str(cat))
            im.anns.append((cat, det["segmentation"], det))
        images.append(im)
    return Annotations(images, _sorted(cats))


def _is_detection_file(data: Any) -> bool:
    return isinstance(data, dict) and "image_size" in data and "detections" in data


def read_annotations(path: str | os.PathLike[str]) -> Annotations:
    """Read any of the module's input kinds (a file, or a folder of per-image jsons).

    Raises:
        ValueError: not one of those kinds, a malformed entry, an image id listed twice, an
            image of no pixels, or no images at all.
    """
    try:
        out = _read(Path(path))
    except (KeyError, AttributeError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: malformed entry ({type(exc).__name__}: {exc})") from None
    if not out.images:
        raise ValueError(f"{path}: no images")
    for im in out.images:
        if im.height < 1 or im.width < 1:
            raise ValueError(f"{path}: image {im.file_name!r} has size {im.height}x{im.width}")
    return out


def _summary_jsons(folder: Path) -> set[str] | None:
    """Names of the per-image jsons of ``folder``'s folder run (instances/text): those its
    record log (``summary.json.records.jsonl``) lists as done, every earlier invocation of the
    same run included (``--limit`` is no setting, and a later, shorter invocation's
    ``summary.json`` lists only its own images), else those ``summary.json`` lists; None where
    the folder is no such run's output.

    Raises:
        OSError: the record log exists but cannot be read.
    """
    settings, records = read_log(log_path(folder / "summary.json"))
    command = settings.get("command") if settings is not None else None
    if command in ("instances", "text"):
        return {f"{rec['output']}.json" for rec in records.values()
                if "error" not in rec and isinstance(rec.get("output"), str)}
    try:
        doc = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(doc, dict) or doc.get("command") not in ("instances", "text")
            or not isinstance(doc.get("images"), list)):
        return None
    return {Path(str(im["json"])).name for im in doc["images"]
            if isinstance(im, dict) and im.get("json")}


def _read(src: Path) -> Annotations:
    if src.is_dir():
        files = []
        for p in sorted(src.glob("*.json")):
            try:
                if _is_detection_file(json.loads(p.read_text())):
                    files.append(p)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{p} is not valid JSON ({exc}); fix or remove it") from None
        if not files:
            raise ValueError(f"no per-image detection jsons (image_size, detections) in {src}")
        listed = _summary_jsons(src)
        if listed is not None:  # a folder run's output: only the images of its last run
            extra = [p.name for p in files if p.name not in listed]
            if extra:
                logging.getLogger(__name__).warning(
                    "%s: skipping %d json(s) that its run did not write (not in its record log "
                    "or summary.json): %s", src, len(extra), ", ".join(extra[:5]))
            files = [p for p in files if p.name in listed]
            if not files:
                raise ValueError(f"{src}: its run lists no per-image jsons (summary.json, "
                                 "summary.json.records.jsonl)")
        return _from_detection_files(files)
    try:
        data = json.loads(src.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{src} is not JSON: {exc}") from None
    if isinstance(data, dict) and "images" in data:
        return _from_coco_dataset(data)
    if isinstance(data, list):
        return _from_results(data)
    if _is_detection_file(data):
        return _from_detection_files([src])
    raise ValueError(f"{src}: not a COCO dataset (images, annotations), a COCO results list "
                     "or a per-image detections json (image_size, detections)")
