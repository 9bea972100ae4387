"""COCO and LVIS instance annotations: images with ground truth as Detections.

LVIS v1 JSON is read through the same path after two fixes: annotations without
``iscrowd`` get ``iscrowd = 0`` (pycocotools' ``computeIoU`` reads the field), and image
records that carry only ``coco_url`` get ``file_name`` = the URL's last part.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..io.image import load_image, size_mismatch
from ..structures import Detections, Masks
from ..structures.masks import crowd_flag, segmentation_rle
from .paths import dataset_dir

logger = logging.getLogger(__name__)

TINY80 = "coco_val2017_tiny80"

PathLike = str | os.PathLike

#: the label of a ground-truth annotation without a category (``category_id`` None, as
#: :func:`normalise_coco_dict` leaves it with ``need_categories=False``)
NO_CATEGORY = -1


def normalise_coco_dict(
    data: Mapping[str, Any], source: str | None = None, need_categories: bool = True
) -> dict[str, Any]:
    """A COCO-format dict that pycocotools evaluates correctly, also for LVIS files.

    Adds ``iscrowd = 0`` where missing, ``bbox`` from the segmentation where missing and
    ``area`` where missing: the segmentation's pixel count, as COCO defines it (the bbox's
    area only where the segmentation cannot be read), and ``file_name`` from ``coco_url`` where missing. Image and
    category ids, annotations' ``image_id`` and ``category_id`` and images' ``height`` and
    ``width`` given as integer strings or floats (``"18"``, ``18.0``) become ints. Polygon
    parts of fewer than 3 points are dropped, and so is an annotation left with none, with a
    warning (it has no pixels to segment or score, and pycocotools fails on it). Annotations
    whose image is not in ``images`` are counted in a warning. The input is not modified.
    ``source`` (e.g. the json's path) starts every error and warning, so that with two jsons
    (``train --data`` and ``--val-data``) the message says which one is wrong.
    ``need_categories=False`` (training, which uses no category): a missing or unreadable
    ``categories`` list, and an annotation's ``category_id`` that is missing, not an integer or
    not among the categories, are a warning naming a few (the list is then empty, such a
    ``category_id`` None), not an error; ``eval`` keeps the default, as AP is per category.

    Raises:
        ValueError: ``data`` is not a mapping; ``images``, ``annotations`` or ``categories`` is
            missing or not a list of records; a record lacks a key pycocotools indexes by
            (an image's or category's ``id``; an annotation's ``id``, ``image_id`` or
            ``category_id``); an image or category id, ``image_id`` or ``category_id`` that is
            not an integer; two images or two annotations share an id (pycocotools keeps the
            last and counts it twice); or an annotation's ``category_id`` is not among the
            categories (COCOeval would leave that object out of AP unseen); the
            category errors only with ``need_categories``.
    """
    prefix = f"{source}: " if source else ""
    try:
        return _normalised(data, prefix, need_categories)
    except ValueError as exc:
        if not prefix:
            raise
        raise ValueError(f"{prefix}{exc}") from None


def _normalised(data: Mapping[str, Any], prefix: str, need_categories: bool) -> dict[str, Any]:
    """:func:`normalise_coco_dict`'s work; ``prefix`` starts its warnings."""
    if not isinstance(data, Mapping):
        raise ValueError(
            "COCO json must be an object with images, annotations and categories, "
            f"got a {type(data).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if key not in data and (need_categories or key != "categories"):
            raise ValueError(f"COCO json needs key {key!r}; it has {sorted(data)}")
    categories = data.get("categories")
    categories_said = False  # a warning said the json is read without categories
    if not need_categories:
        # training uses no category: a json without them (or with a list pycocotools cannot
        # index) was refused whole
        problem = _categories_problem(categories)
        if problem:
            logger.warning("%s%s; training does not use categories, so the json is read "
                           "without them", prefix, problem)
            categories, categories_said = [], True
    required = {"images": ("id",), "annotations": ("id", "image_id", "category_id"),
                "categories": ("id",)}
    if not need_categories:
        required["annotations"] = ("id", "image_id")
    for key, fields in required.items():
        records = categories if key == "categories" else data[key]
        if not isinstance(records, list):
            raise ValueError(f"COCO json {key!r} must be a list, got a {type(records).__name__}")
        for i, rec in enumerate(records):
            if not isinstance(rec, Mapping):
                raise ValueError(f"COCO json {key}[{i}] is not an object: {str(rec)[:60]!r}")
            missing = [f for f in fields if f not in rec]
            if missing:
                raise ValueError(f"COCO json {key}[{i}] has no {', '.join(missing)}")
    out = dict(data)
    out["images"] = [dict(im) for im in data["images"]]
    out["annotations"] = [dict(a) for a in data["annotations"]]
    out["categories"] = [dict(c) for c in categories or ()]  # a list: checked above
    # ids as integers: pycocotools indexes by the value, and results (ours, and any detector's)
    # carry integer category and image ids, so a json with "18" would match none of them
    fields_ = [("images", "id"), ("categories", "id"), ("annotations", "image_id")]
    if need_categories:
        fields_.append(("annotations", "category_id"))
    for key, field in fields_:
        for i, rec in enumerate(out[key]):
            rec[field] = _integer(rec[field], f"COCO json {key}[{i}] {field}")
    for key in ("images", "annotations"):
        seen: set[Any] = set()
        for i, rec in enumerate(out[key]):
            if not isinstance(rec["id"], Hashable):
                raise ValueError(f"COCO json {key}[{i}] has id {str(rec['id'])[:60]}, not a number")
            if rec["id"] in seen:
                raise ValueError(f"COCO json {key}[{i}] repeats id {rec['id']!r}")
            seen.add(rec["id"])
    for im in out["images"]:
        for field in ("height", "width"):
            if field in im:
                try:
                    im[field] = _integer(im[field], "")
                except ValueError:
                    pass  # a missing or bad size is reported where the image is read
    cat_ids = {c["id"] for c in out["categories"]}
    if not need_categories:
        unknown = []
        for ann in out["annotations"]:
            try:
                ann["category_id"] = _integer(ann.get("category_id"), "")
            except ValueError:
                ann["category_id"] = None
            if ann["category_id"] not in cat_ids:
                unknown.append(ann)
                ann["category_id"] = None  # pycocotools indexes it: a value it can hash
        if unknown and not categories_said:  # with none, none has one: said above
            logger.warning("%s%d annotation(s) have no category_id, or one not among the "
                           "categories; training does not use categories, so they are "
                           "trained on (%s)", prefix, len(unknown), _some_annotations(unknown))
    for i, ann in enumerate(out["annotations"]):
        if need_categories and ann["category_id"] not in cat_ids:
            raise ValueError(
                f"COCO json annotations[{i}] (id {ann['id']!r}) has category_id "
                f"{ann['category_id']!r}, which is not among the categories"
            )
    image_ids = {im["id"] for im in out["images"]}
    orphans = [a for a in out["annotations"] if a["image_id"] not in image_ids]
    if orphans:
        logger.warning("%s%d annotation(s) name an image_id that is not among the images; "
                       "they are not used (%s)", prefix, len(orphans), _some_annotations(orphans))
    for im in out["images"]:
        if "file_name" not in im:
            url = im.get("coco_url")
            if not url:
                raise ValueError(
                    f"image record {im.get('id')!r} has neither file_name nor coco_url"
                )
            im["file_name"] = str(url).rstrip("/").rsplit("/", 1)[-1]
    sizes = {im["id"]: (im.get("height"), im.get("width")) for im in out["images"]}
    for i, ann in enumerate(out["annotations"]):
        try:  # an int pycocotools can compare: the string "0" is not a crowd region
            ann["iscrowd"] = int(crowd_flag(ann.get("iscrowd")))
        except ValueError as exc:
            raise ValueError(f"COCO json annotations[{i}] (id {ann['id']!r}): {exc}") from None
        if "bbox" in ann and "area" in ann:
            continue
        # decoded once for both (None where the image's size or the segmentation cannot be
        # read: reading the image's ground truth then says so)
        rle = _readable_rle(ann, sizes.get(ann["image_id"]))
        if "bbox" not in ann and rle is not None:
            ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]  # COCO's definition
        if "area" not in ann:
            # COCO's area is the segmentation's pixel count (pycocotools' and detectron2's):
            # it picks the small/medium/large bucket of APs/APm/APl, where a thin or diagonal
            # object's box area (which this was) put it a size class too high
            if rle is not None:
                ann["area"] = float(mask_utils.area(rle))
            elif "bbox" in ann:
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    # polygon parts of fewer than 3 points (pycocotools cannot encode them: [] fails, and 4
    # numbers are read as a box) are left out, and so is an annotation with no part left, as
    # detectron2 does: it has no pixels to segment or to score
    kept, empty = [], []
    for ann in out["annotations"]:
        seg = ann.get("segmentation")
        if isinstance(seg, list) and all(isinstance(part, list) for part in seg):
            parts = [part for part in seg if len(part) >= 6]
            if not parts:
                empty.append(ann)
                continue
            ann["segmentation"] = parts
        kept.append(ann)
    if empty:
        # named (a few), so the user can find them in the json: the count alone did not say
        # which, and an image left with no other annotation is then "not used" for it
        logger.warning("%s%d annotation(s) have no polygon of 3 or more points (an empty "
                       "segmentation); they are left out (%s)", prefix, len(empty),
                       _some_annotations(empty))
    out["annotations"] = kept
    return out


def load_coco(ann: COCO | PathLike | Mapping[str, Any], need_categories: bool = True) -> COCO:
    """A pycocotools ``COCO`` from an existing COCO object, a json path or a dict.

    Paths and dicts go through :func:`normalise_coco_dict` (LVIS support; ``need_categories``
    as there: False for training, which uses none); a given ``COCO`` object is returned as is. A file is decoded as json's UTF-8 (or UTF-16/32), whatever the
    locale, with or without a byte-order mark.

    Raises:
        ValueError: the file does not exist or is not a COCO-format json.
    """
    if isinstance(ann, COCO):
        return ann
    if isinstance(ann, (str, os.PathLike)):
        path = Path(ann)
        if not path.is_file():
            raise ValueError(f"annotation file not found: {path}")
        # read as bytes: json decodes them as UTF-8 (or UTF-16/32), and a UTF-8 byte-order
        # mark (Windows tools write one) is dropped; a text-mode open decoded the file with
        # the locale's encoding, so a non-ASCII file_name (cafe with an accent) was garbled or
        # refused under an ASCII or Latin-1 locale (Windows' cp1252), and a BOM was refused
        raw = path.read_bytes()
        try:
            text = raw.decode(json.detect_encoding(raw))
        except UnicodeDecodeError as exc:
            # said so: a json written in a legacy encoding (Windows' cp1252, Latin-1) was
            # "not valid json: 'utf-8' codec can't decode byte 0xe9 ..."
            raise ValueError(f"{path} is not valid json: it is not UTF-8 text, as json must be "
                             f"({exc}); save it as UTF-8") from None
        del raw  # the parse needs only the text: the bytes were held through it (GBs for LVIS)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid json: {exc}") from exc
    elif isinstance(ann, Mapping):
        data = copy.deepcopy(dict(ann))
    else:
        raise TypeError(f"expected a COCO object, a json path or a dict, got {type(ann).__name__}")
    coco = COCO()
    # a file's errors and warnings name it (train reads two jsons: --data and --val-data)
    source = str(ann) if isinstance(ann, (str, os.PathLike)) else None
    coco.dataset = normalise_coco_dict(data, source=source, need_categories=need_categories)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def annotations_to_detections(
    anns: Sequence[Mapping[str, Any]], image_size: tuple[int, int], image_id: Any = None
) -> Detections:
    """Ground-truth annotations of one image as Detections.

    Args:
        anns: COCO annotation dicts (polygon, uncompressed or compressed RLE segmentation).
        image_size: (H, W) of the image.
        image_id: stored in ``meta["image_id"]``.

    Returns:
        Detections with ``boxes`` (N, 4) float32 XYXY from the annotations' bbox, ``labels``
        (N,) int64 category ids (:data:`NO_CATEGORY`, -1, where ``category_id`` is None: a
        json read with ``need_categories=False``), ``scores`` all 1, ``masks`` (Masks, N) and extras
        ``iscrowd`` (N,) bool, ``area`` (N,) float64 (the annotation's stored area) and
        ``ann_id`` (N,) int64.

    Raises:
        ValueError: an annotation has no segmentation, one that cannot be decoded (naming
            the annotation), or no bbox.
    """
    h, w = image_size
    if not anns:
        dets = Detections.empty((h, w), image_id=image_id)
        dets.labels = np.zeros(0, np.int64)
        dets.extras = {
            "iscrowd": np.zeros(0, bool),
            "area": np.zeros(0, np.float64),
            "ann_id": np.zeros(0, np.int64),
        }
        return dets
    rles = []
    for a in anns:
        seg = a.get("segmentation")
        if seg is None:
            raise ValueError(f"annotation {a.get('id')} has no segmentation")
        # decoded before the bbox is asked for: normalise_coco_dict gives one to every
        # segmentation that decodes, so an annotation without one has an undecodable
        # segmentation, whose error says what is wrong (a flat polygon was "has no bbox")
        try:
            rles.append(segmentation_rle(dict(seg) if isinstance(seg, Mapping) else seg, (h, w)))
        except ValueError as exc:
            raise ValueError(f"annotation {a.get('id')}: {exc}") from None
        if "bbox" not in a:
            raise ValueError(f"annotation {a.get('id')} has no bbox")
    masks = Masks._trusted(rles, (h, w))  # segmentation_rle checked each
    boxes = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    extras = {
        "iscrowd": np.asarray([crowd_flag(a.get("iscrowd")) for a in anns], bool),
        "area": np.asarray([float(a.get("area", 0.0)) for a in anns], np.float64),
        "ann_id": np.asarray([int(a.get("id", -1)) for a in anns], np.int64),
    }
    # a category_id of None: a json read with need_categories=False (training's readers) left
    # the annotation without a category; int(None) was a TypeError traceback
    labels = np.asarray([NO_CATEGORY if a.get("category_id") is None else int(a["category_id"])
                         for a in anns], np.int64)
    meta = {"image_id": image_id, "image_size": (h, w)}
    return Detections(boxes, np.ones(len(anns), np.float32), labels, masks, extras, meta)


def image_file(image_dir: PathLike, file_name: str) -> Path:
    """The file of a record's ``file_name`` in ``image_dir``.

    A Windows-style name (``sub\\a.jpg``, written by a tool on Windows) names, on a system
    whose separator is ``/``, a file with a backslash in its name: when no such file exists
    and ``sub/a.jpg`` does, that one is the file (on Windows both read the same).
    """
    path = Path(image_dir) / file_name
    if "\\" in file_name and os.sep != "\\" and not path.exists():
        alt = Path(image_dir) / file_name.replace("\\", "/")
        if alt.exists():
            return alt
    return path


def check_image_file(path: Path) -> None:
    """Refuse a missing image file whose name holds backslashes with a hint (the plain "image
    file not found" left the user to guess that the json was written on Windows).

    Raises:
        ValueError: ``path`` does not exist and its name holds a backslash, on a system whose
            separator is ``/`` (a backslash in the folder's name, not the record's, says
            nothing of the json: the plain "not found" then comes from reading the image).
    """
    if os.sep != "\\" and "\\" in path.name and not path.exists():
        alt = path.parent / path.name.replace("\\", "/")
        raise ValueError(f"image file not found: {path} (nor {alt}, reading its backslashes as "
                         "folder separators: a file_name written on Windows?)")


@dataclass(frozen=True)
class CocoItem:
    """One image of a COCO/LVIS dataset.

    Attributes:
        image_id: the json's integer image id.
        path: image file (``image_dir / file_name``; see :func:`image_file` for a
            Windows-style ``file_name``).
        image_size: (H, W) from the json record.
        gt: ground truth as Detections (see :func:`annotations_to_detections`).
        class_names: category id -> name, shared by all items of the dataset.
    """

    image_id: int
    path: Path
    image_size: tuple[int, int]
    gt: Detections
    class_names: Mapping[int, str]

    def load_image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB pixels of the image.

        Raises:
            ValueError: the file is unreadable, or its size (upright, per its EXIF orientation)
                is not the json's; the message names the file (and an EXIF rotation that
                explains the difference).
        """
        check_image_file(self.path)
        image = load_image(self.path)
        if image.shape[:2] != tuple(self.image_size):
            raise ValueError(f"{self.path.name}: "
                             f"{size_mismatch(self.path, image.shape[:2], self.image_size)}")
        return image


class CocoDataset:
    """A COCO-format instance dataset (COCO or LVIS json plus an image folder).

    Items come in the json's image order (or ``image_ids`` order) and are built on access.

    Args:
        ann_file: path to the annotation json, or a pycocotools ``COCO`` object.
        image_dir: folder holding the images named by each record's ``file_name``.
        image_ids: optional subset (and order) of image ids.
        name: dataset name for reports (default: the json file's stem).
        need_categories: as :func:`load_coco`'s (False: training's readers, which use no
            category; ``class_names`` is then empty where the json has no categories, and an
            annotation without a known category has the label :data:`NO_CATEGORY`).

    Raises:
        ValueError: a missing json or image folder (the message names the path), or image ids
            that are not in the json.
    """

    def __init__(
        self,
        ann_file: PathLike | COCO,
        image_dir: PathLike,
        image_ids: Sequence[int] | None = None,
        name: str | None = None,
        need_categories: bool = True,
    ) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            if self.image_dir.exists():  # was "image folder not found" for a file that exists
                raise ValueError(f"the image folder {self.image_dir} is a file, not a folder "
                                 "(pass the folder the json's file_names are relative to)")
            raise ValueError(f"image folder not found: {self.image_dir}")
        self.ann_file = None if isinstance(ann_file, COCO) else Path(ann_file)
        self.coco = load_coco(ann_file, need_categories=need_categories)
        try:
            all_ids = [int(im["id"]) for im in self.coco.dataset["images"]]
        except (TypeError, ValueError):
            bad = next(im["id"] for im in self.coco.dataset["images"] if not _is_integer(im["id"]))
            raise ValueError(f"COCO image ids must be integers, got {bad!r}") from None
        if image_ids is None:
            self.image_ids = all_ids
        else:
            known = set(all_ids)
            missing = [i for i in image_ids if int(i) not in known]
            if missing:
                raise ValueError(f"image ids not in the annotations: {missing[:10]}")
            self.image_ids = [int(i) for i in image_ids]
        self.class_names: dict[int, str] = {
            int(c["id"]): str(c.get("name", c["id"])) for c in self.coco.dataset["categories"]
        }
        default = self.ann_file.stem if self.ann_file is not None else "coco"
        self.name = name or default

    def __len__(self) -> int:
        return len(self.image_ids)

    def __repr__(self) -> str:
        return f"CocoDataset(name={self.name!r}, images={len(self)}, categories={len(self.class_names)})"

    def __iter__(self) -> Iterator[CocoItem]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> CocoItem:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        image_id = self.image_ids[index]
        return self.item(image_id)

    def item(self, image_id: int) -> CocoItem:
        """The item of one image id.

        Raises:
            ValueError: the image record has no integer ``height`` and ``width``, or an
                annotation has no segmentation or bbox.
        """
        rec = self.coco.imgs[int(image_id)]
        try:
            size = (int(rec["height"]), int(rec["width"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"COCO image record {image_id} needs integer height and width, got "
                f"{rec.get('height')!r} x {rec.get('width')!r}"
            ) from None
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[int(image_id)]))
        gt = annotations_to_detections(anns, size, int(image_id))
        gt.meta["class_names"] = self.class_names
        return CocoItem(
            int(image_id), image_file(self.image_dir, rec["file_name"]), size, gt,
            self.class_names,
        )


def _categories_problem(categories: Any) -> str | None:
    """What makes ``categories`` (a json's list) unusable to pycocotools, or None: it is
    missing, not a list of records, or a record has no integer ``id``."""
    if categories is None:
        return "the json has no categories"
    if not isinstance(categories, list):
        return f"its 'categories' is a {type(categories).__name__}, not a list"
    for i, rec in enumerate(categories):
        if not isinstance(rec, Mapping) or not _is_integer(rec.get("id")):
            return f"its categories[{i}] has no integer id: {str(rec)[:60]!r}"
    return None


def _is_integer(value: Any) -> bool:
    try:
        _integer(value, "")
    except ValueError:
        return False
    return True


def _some_annotations(anns: Sequence[Mapping[str, Any]], n: int = 3) -> str:
    """The first ``n`` of ``anns`` named by id and image id, for a warning:
    ``"e.g. annotation 6 of image 1, annotation 9 of image 4"``."""
    named = ", ".join(f"annotation {a.get('id')!r} of image {a.get('image_id')!r}"
                      for a in anns[:n])
    return f"e.g. {named}" if len(anns) > n else named


def _readable_rle(ann: Mapping[str, Any], size: tuple[Any, Any] | None) -> dict[str, Any] | None:
    """``ann``'s segmentation as an RLE, or None where the image's size or the segmentation
    cannot be read."""
    if size is None or not all(isinstance(v, int) and v > 0 for v in size):
        return None
    try:
        return segmentation_rle(ann.get("segmentation"), size)
    except (ValueError, TypeError, KeyError):
        return None


def _integer(value: Any, what: str) -> int:
    """``value`` as an int where it is one: 18, ``"18"``, 18.0, ``"18.0"`` (not True, 1.5, NaN or
    ``"cat"``).

    Raises:
        ValueError: any other value; the message starts with ``what``.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, str):
        try:
            value = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            pass
        else:
            return _integer(value, what)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{what} must be an integer, got {str(value)[:60]!r}")


def coco_subset(name: str = TINY80, image_ids: Sequence[int] | None = None) -> CocoDataset:
    """The shared COCO val2017 subset (default ``coco_val2017_tiny80``, 80 images).

    Reads ``<data root>/<name>/annotations/instances_val2017.json`` and ``val2017/``.

    Raises:
        ValueError: the dataset folder is missing; the message names the expected path.
    """
    root = dataset_dir(name)
    ann = root / "annotations" / "instances_val2017.json"
    if not ann.is_file():
        raise ValueError(f"COCO annotations not found at {ann}")
    return CocoDataset(ann, root / "val2017", image_ids=image_ids, name=name)
