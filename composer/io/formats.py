"""Mask annotations in other formats: COCO polygons and YOLO segmentation labels.

Reads what the toolkit writes and what datasets ship:

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
labels (as Ultralytics' COCO converter does).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..structures.masks import mask_polygons, merge_polygons, segmentation_rle
from .visualize import write_json

FORMATS = ("coco-polygons", "yolo")


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


@dataclass
class Annotations:
    images: list[ImageAnnotations]
    #: category key -> name, in the order of YOLO class indices
    categories: dict[Any, str]


def _size_of(seg: Any) -> tuple[int, int] | None:
    if isinstance(seg, dict) and "size" in seg:
        return int(seg["size"][0]), int(seg["size"][1])
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
        file_name = str(im.get("file_name", im["id"]))
        stem = Path(file_name).stem
        name = stem if stem not in stems else f"{stem}_{im['id']}"
        stems.add(name)
        images[im["id"]] = ImageAnnotations(name, file_name, int(im["height"]), int(im["width"]),
                                            im["id"])
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
        size = _size_of(r["segmentation"])
        if size is None:
            raise ValueError(f"results entry {k}: polygons carry no image size; use a COCO "
                             "dataset json (with 'images') instead")
        iid = r["image_id"]
        if iid not in images:
            images[iid] = ImageAnnotations(str(iid), str(iid), size[0], size[1], iid)
        cat = r.get("category_id", 1)
        cats.setdefault(cat, str(cat))
        images[iid].anns.append((cat, r["segmentation"], r))
    return Annotations(list(images.values()), _sorted(cats))


def _from_detection_files(paths: list[Path]) -> Annotations:
    images: list[ImageAnnotations] = []
    cats: dict[Any, str] = {}
    for k, path in enumerate(paths, start=1):
        rec = json.loads(path.read_text())
        h, w = (int(v) for v in rec["image_size"])
        names = (rec.get("meta") or {}).get("class_names")
        if isinstance(names, list):  # every class, present or not: indices stable across runs
            for i, n in enumerate(names):
                cats.setdefault(i, str(n))
        im = ImageAnnotations(path.stem, path.stem, h, w, k)
        for det in rec.get("detections") or []:
            if "segmentation" not in det:
                continue
            cat = int(det.get("label", 0))
            if isinstance(names, list) and 0 <= cat < len(names):
                cats.setdefault(cat, str(names[cat]))
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
        ValueError: not one of those kinds, a malformed entry, an image of no pixels, or
            no images at all.
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


def _read(src: Path) -> Annotations:
    if src.is_dir():
        files = []
        for p in sorted(src.glob("*.json")):
            try:
                if _is_detection_file(json.loads(p.read_text())):
                    files.append(p)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
        if not files:
            raise ValueError(f"no per-image detection jsons (image_size, detections) in {src}")
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


def _polygons(seg: Any, h: int, w: int, tolerance: float) -> tuple[list[list[float]], int]:
    dense = mask_utils.decode(segmentation_rle(seg, (h, w)))
    return mask_polygons(dense.astype(bool), tolerance)


def to_coco_polygons(annotations: Annotations, out_json: str | os.PathLike[str],
                     tolerance: float = 0.0, holes: str = "rle") -> dict[str, int]:
    """Write a COCO dataset json whose segmentations are polygons.

    Returns stats: ``images``, ``annotations``, ``kept_rle`` (masks with holes kept as RLE),
    ``filled_holes``, ``crowd`` (crowd regions, kept as RLE), ``empty`` (masks with no pixels:
    kept as RLE, since an empty polygon list does not load).
    """
    if holes not in ("rle", "fill"):
        raise ValueError(f"holes must be 'rle' or 'fill', got {holes!r}")
    stats = {"images": 0, "annotations": 0, "kept_rle": 0, "filled_holes": 0, "crowd": 0,
             "empty": 0}
    cat_ids = {key: (key if isinstance(key, int) else i + 1)
               for i, key in enumerate(annotations.categories)}
    out: dict[str, Any] = {
        "images": [], "annotations": [],
        "categories": [{"id": cat_ids[k], "name": v} for k, v in annotations.categories.items()],
    }
    for im in annotations.images:
        out["images"].append({"id": im.image_id, "file_name": im.file_name,
                              "height": im.height, "width": im.width})
        stats["images"] += 1
        for cat, seg, src in im.anns:
            rle = segmentation_rle(seg, (im.height, im.width))
            polys, n_holes = mask_polygons(mask_utils.decode(rle).astype(bool), tolerance)
            ann = {k: v for k, v in src.items()
                   if k not in ("segmentation", "counts", "box_xyxy", "label")}
            ann.update(id=src.get("id", stats["annotations"] + 1), image_id=im.image_id,
                       category_id=cat_ids[cat], iscrowd=int(src.get("iscrowd", 0)))
            crowd, area = bool(ann["iscrowd"]), int(mask_utils.area(rle))
            if crowd or area == 0 or (n_holes and holes == "rle"):
                ann["segmentation"] = {"size": list(rle["size"]),
                                       "counts": rle["counts"].decode("ascii")}
                stats["crowd" if crowd else "empty" if area == 0 else "kept_rle"] += 1
            else:
                ann["segmentation"] = polys
                stats["filled_holes"] += int(n_holes > 0)
            ann["area"] = area
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
            out["annotations"].append(ann)
            stats["annotations"] += 1
    write_json(Path(out_json), out)
    return stats


_SAFE = re.compile(r"[^\w.-]+")


def to_yolo(annotations: Annotations, out_dir: str | os.PathLike[str],
            tolerance: float = 0.0) -> dict[str, int]:
    """Write YOLO segmentation labels: ``labels/<stem>.txt`` with one object per line, ``class
    x1 y1 x2 y2 ...`` in [0, 1] (a mask of several parts joined into one polygon by zero-width
    bridges, :func:`merge_polygons`), ``classes.txt`` with the class names in index order and
    a ``data.yaml`` naming them for Ultralytics.

    Returns stats: ``images``, ``objects``, ``multi_part`` (masks joined from several parts),
    ``dropped_holes``, ``crowd`` (crowd regions: not written), ``empty`` (masks with no
    pixels: not written).
    """
    out = Path(out_dir)
    labels = out / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    index = {key: i for i, key in enumerate(annotations.categories)}
    stats = {"images": 0, "objects": 0, "multi_part": 0, "dropped_holes": 0, "crowd": 0,
             "empty": 0}
    used: set[str] = set()
    for im in annotations.images:
        lines = []
        for cat, seg, src in im.anns:
            if src.get("iscrowd"):  # a crowd region is no instance (as Ultralytics' converter)
                stats["crowd"] += 1
                continue
            polys, n_holes = _polygons(seg, im.height, im.width, tolerance)
            if not polys:
                stats["empty"] += 1
                continue
            stats["multi_part"] += int(len(polys) > 1)
            stats["dropped_holes"] += int(n_holes > 0)
            pts = np.asarray(merge_polygons(polys)).reshape(-1, 2)
            pts = np.clip(pts / (im.width, im.height), 0.0, 1.0)
            lines.append(" ".join([str(index[cat])] + [f"{v:.6f}" for v in pts.ravel()]))
            stats["objects"] += 1
        name = _SAFE.sub("_", im.name) or f"image_{im.image_id}"
        if name in used:  # two stems that differ only in unsafe characters
            name = f"{name}_{_SAFE.sub('_', str(im.image_id))}"
        used.add(name)
        (labels / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
        stats["images"] += 1
    (out / "classes.txt").write_text("".join(f"{v}\n" for v in annotations.categories.values()))
    # the dataset file Ultralytics reads (point its train/val entries at the image folders)
    names = "".join(f"  {i}: {json.dumps(v)}\n" for i, v in enumerate(annotations.categories.values()))
    (out / "data.yaml").write_text(f"path: {json.dumps(str(out.resolve()))}\ntrain: images\n"
                                   f"val: images\nnames:\n{names}")
    return stats


def convert(src: str | os.PathLike[str], out: str | os.PathLike[str], to: str,
            tolerance: float = 0.0, holes: str = "rle") -> dict[str, int]:
    """Convert ``src`` (see the module doc) to ``to``: ``"coco-polygons"`` (``out`` is the json
    to write) or ``"yolo"`` (``out`` is a folder)."""
    if to not in FORMATS:
        raise ValueError(f"unknown format {to!r}: use one of {', '.join(FORMATS)}")
    if tolerance < 0 or not np.isfinite(tolerance):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    annotations = read_annotations(src)
    if to == "yolo":
        return to_yolo(annotations, out, tolerance)
    return to_coco_polygons(annotations, out, tolerance, holes)
