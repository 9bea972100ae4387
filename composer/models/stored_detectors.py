"""Detectors of stored boxes: a COCO results json (:class:`CocoJsonDetector`) and a dataset's
ground truth (:class:`GroundTruthDetector`); both importable from
:mod:`composer.models.detectors`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..structures import Detections
from .coco_names import COCO_CATEGORIES
from .detector_base import (
    _check_max_dets,
    _check_threshold,
    _file_digest,
    _finish,
    _finite_number,
    _load,
)

logger = logging.getLogger(__name__)


def _integer(value: Any) -> bool:
    """An integral number, or a string of one (ids read with ``int()``)."""
    if isinstance(value, str):
        try:
            int(value)
        except ValueError:
            return False
        return True
    return _finite_number(value) and float(value).is_integer()


def _check_result_entry(i: int, e: Mapping[str, Any]) -> None:
    """One COCO results entry: ``bbox`` four finite numbers with width and height >= 0, a
    finite numeric ``score`` (when given), an integer ``image_id`` and ``category_id``.

    A NaN score or box would be dropped without a word by the score filter, so the file is
    refused instead, naming the entry.

    Raises:
        ValueError: the first malformed field.
    """
    bbox = e["bbox"]
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(_finite_number(v) for v in bbox)
        or bbox[2] < 0
        or bbox[3] < 0
    ):
        raise ValueError(
            f"results entry {i}: bbox must be [x, y, width, height] of finite numbers with "
            f"width, height >= 0, got {bbox!r}"[:200]
        )
    if "score" in e and not _finite_number(e["score"]):
        raise ValueError(f"results entry {i}: score must be a finite number, got {e['score']!r}"[:200])
    for key in ("image_id", "category_id"):
        if key in e:
            value = e[key]
            if not _integer(value):
                raise ValueError(f"results entry {i}: {key} must be an integer, got {value!r}"[:200])


def _coco_image_map(source: Path | Mapping[str, Any]) -> tuple[dict[Hashable, int], dict[int, str]]:
    """(file name, name and stem -> image id; category id -> name) of a COCO json (a path or
    its loaded dict)."""
    data = json.loads(source.read_text()) if isinstance(source, Path) else source
    ids: dict[Hashable, int] = {}
    for im in data.get("images", []):
        name = str(im["file_name"])
        # a file_name written on Windows (sub\\a.jpg) names a.jpg too, as the COCO readers
        # take it (composer.data.coco.image_file): its folder's a.jpg found no boxes
        for each in dict.fromkeys((name, name.replace("\\", "/"))):
            ids[each] = ids[Path(each).stem] = ids[Path(each).name] = int(im["id"])
    names = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    return ids, names


class CocoJsonDetector:
    """Boxes read from a COCO results json (``image_id``, ``category_id``, ``bbox`` XYWH, ``score``).

    Args:
        results: path of the results json, or its list of entries.
        image_ids: how to find an image's entries from the ``image_id`` the caller passes: a
            mapping (e.g. file name -> COCO id) or a COCO annotation json whose ``images``
            map file names and stems to ids (its ``categories`` also name the classes).
            Without it the caller's ``image_id`` must be the COCO id itself, unless
            ``results`` is a ground-truth-style json (``images``, ``annotations``), whose own
            ``images`` then map the names.
        class_names: category id -> name (default: COCO's, or the annotation json's).
        score_threshold: drop entries scoring below this.
        max_dets: keep at most this many per image.
        model_id: id recorded in outputs (default: the json file's name).

    An image without entries gives empty Detections with ``meta["message"]``.

    Raises:
        ValueError: unreadable json, entries without ``image_id``/``bbox``, or a bad
            threshold or ``max_dets``.
    """

    def __init__(
        self,
        results: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
        image_ids: Mapping[Hashable, int] | str | os.PathLike[str] | None = None,
        class_names: Mapping[int, str] | None = None,
        score_threshold: float = 0.0,
        max_dets: int | None = None,
        model_id: str | None = None,
    ) -> None:
        if isinstance(results, (str, os.PathLike)):
            path = Path(results)
            if not path.is_file():
                raise ValueError(f"detection results file not found: {path}")
            try:
                entries = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid json: {exc}") from exc
            # the content's digest: a file edited, or another file of the same name, is another
            # detector (a folder run resumed with the old boxes' outputs)
            default_id = f"coco-json:{path.name}#{_file_digest(path)}"
        else:
            entries, default_id = list(results), "coco-json"
        own_map: Mapping[str, Any] | None = None
        if isinstance(entries, Mapping) and "annotations" in entries:
            # a ground-truth-style file works too: its images map file names to ids (so a
            # folder's images find their boxes) and its categories name the classes
            own_map, entries = entries, entries["annotations"]
            if isinstance(entries, list):  # crowd regions are no instances (as GroundTruthDetector)
                entries = [e for e in entries
                           if not (isinstance(e, Mapping) and e.get("iscrowd") in (1, True, "1"))]
        if not isinstance(entries, list):
            raise ValueError("COCO results must be a list of {image_id, category_id, bbox, score}")
        names: dict[int, str] = {}
        if isinstance(image_ids, (str, os.PathLike)):
            self.image_ids, names = _coco_image_map(Path(image_ids))
        elif image_ids is None and own_map is not None:
            try:
                self.image_ids, names = _coco_image_map(own_map)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"the images or categories of the COCO json are malformed: "
                                 f"{type(exc).__name__}: {exc}") from None
        else:
            self.image_ids = dict(image_ids or {})
        # the stems of the names each id is mapped from ("1.jpg" -> 1: {1: {"1"}})
        self._mapped_ids: dict[int, set[str]] = {}
        stem_ids: dict[str, set[int]] = {}
        for k, v in self.image_ids.items():
            self._mapped_ids.setdefault(int(v), set()).add(Path(str(k)).stem)
            stem_ids.setdefault(Path(str(k)).stem, set()).add(int(v))
        # a map keyed by file names also answers their stems (the CLI passes stems), where
        # the stem names one id only
        self._stem_ids = {k: next(iter(v)) for k, v in stem_ids.items() if len(v) == 1}
        self._class_names = dict(class_names or names or COCO_CATEGORIES)
        self.score_threshold = _check_threshold(score_threshold)
        self.max_dets = _check_max_dets(max_dets)
        self.model_id = model_id or default_id
        self._by_image: dict[int, list[Mapping[str, Any]]] = {}
        for i, e in enumerate(entries):
            if not isinstance(e, Mapping) or "image_id" not in e or "bbox" not in e:
                raise ValueError(f"results entry {i} lacks image_id or bbox: {e!r}"[:200])
            _check_result_entry(i, e)
            self._by_image.setdefault(int(e["image_id"]), []).append(e)
        classless = sum(1 for e in entries if "category_id" not in e)
        if classless and class_names and 0 not in class_names:
            # the caller's categories (eval's ground truth): a box without a class is in none
            # of them, and was scored in no AP unsaid
            logger.warning("%s: %d of %d entries have no category_id; they are objects of "
                           "class 0, which is not among the %d categories given, so their "
                           "boxes count in no category's AP", self.model_id,
                           classless, len(entries), len(class_names))
        if classless:
            # boxes without a class are objects, not persons (the old default label 1)
            self._class_names.setdefault(0, "object")
        unnamed = sorted({int(e["category_id"]) for e in entries if "category_id" in e}
                         - set(self._class_names))
        if unnamed and (class_names or names):
            # the caller's categories (eval's ground truth): such boxes are scored in none
            logger.warning("%s: category ids %s are not among the %d categories given (%s); "
                           "their boxes count in no category's AP", self.model_id,
                           unnamed[:10], len(self._class_names),
                           ", ".join(map(str, sorted(self._class_names)[:10])))
        elif unnamed:  # 0-based or 80-class ids (YOLO exports) name the wrong classes or none
            logger.warning("%s: category ids %s are not among the %d class names (are they "
                           "0-based or 1..80 rather than COCO's 1..90 ids?)", self.model_id,
                           unnamed[:10], len(self._class_names))
        negative = sum(1 for e in entries if _finite_number(e.get("score", 1.0))
                       and float(e.get("score", 1.0)) < min(0.0, self.score_threshold or 0.0))
        if negative:  # logits rather than probabilities? below the floor, they are never used
            logger.warning("%s: %d of %d entries have negative scores, below the score floor "
                           "%g, and are never used (are the scores logits?)", self.model_id,
                           negative, len(entries), self.score_threshold or 0.0)

    @property
    def class_names(self) -> Mapping[int, str]:
        return self._class_names

    @property
    def result_image_ids(self) -> frozenset[int]:
        """The image ids that the results have entries for."""
        return frozenset(self._by_image)

    def coco_id(self, image_id: Hashable | None) -> int | None:
        """The results' image id of the caller's ``image_id`` (None when it cannot be told)."""
        if image_id is None:
            return None
        if image_id in self.image_ids:
            return int(self.image_ids[image_id])
        # a number is the results' id itself: not looked up as a file name ("1.jpg" may be
        # the image of another id; int 1 gave the boxes of the image whose stem is "1")
        if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
            return int(image_id)
        key = str(image_id)
        for k in (key, Path(key).name, Path(key).stem):
            if k in self.image_ids:
                return int(self.image_ids[k])
        if Path(key).stem in self._stem_ids:
            return self._stem_ids[Path(key).stem]
        # digits alone (int() also reads "2_1" as 21 and " 7" as 7), unless the map gives
        # that id to another file: "2.jpg" is then not the image named "1.jpg" of id 2
        if not (key.isascii() and key.isdigit()):
            return None
        cid = int(key)
        stems = self._mapped_ids.get(cid)
        return cid if stems is None or Path(key).stem in stems else None

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        arr = _load(image)
        h, w = arr.shape[:2]
        cid = self.coco_id(image_id)
        entries = self._by_image.get(cid, []) if cid is not None else []
        if not entries:
            msg = (
                f"{self.model_id}: no boxes for image {image_id!r}"
                if cid is not None
                else f"{self.model_id}: image id {image_id!r} is not in the results' image ids"
            )
            logger.info(msg)
            return _empty((h, w), self.model_id, self._class_names, image_id, msg)
        xywh = np.asarray([e["bbox"] for e in entries], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        scores = np.asarray([float(e.get("score", 1.0)) for e in entries], np.float32)
        labels = np.asarray([int(e.get("category_id", 0)) for e in entries], np.int64)
        return _finish(
            boxes,
            scores,
            labels,
            (h, w),
            self.model_id,
            self._class_names,
            image_id,
            self.score_threshold,
            self.max_dets,
        )


class GroundTruthDetector:
    """A dataset's ground-truth boxes as detections (score 1), crowd regions left out.

    The upper bound of box-prompted instance segmentation (``--boxes gt``).

    Args:
        dataset: anything with ``item(image_id)`` returning an item with ``gt`` Detections
            (e.g. :class:`composer.data.coco.CocoDataset`) and ``class_names``.
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "item"):
            raise TypeError(f"dataset must have item(image_id), got {type(dataset).__name__}")
        self.dataset = dataset
        self.model_id = f"ground-truth:{getattr(dataset, 'name', 'dataset')}"

    @property
    def class_names(self) -> Mapping[int, str]:
        return dict(getattr(self.dataset, "class_names", COCO_CATEGORIES))

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        if image_id is None:
            raise ValueError("GroundTruthDetector needs the image_id of a dataset image")
        try:
            gt = self.dataset.item(image_id).gt
        except (KeyError, ValueError, TypeError) as exc:  # a bare KeyError: 123 said nothing
            raise ValueError(f"{self.model_id}: image id {image_id!r} is not an image of the "
                             f"dataset ({type(exc).__name__}: {exc})") from None
        crowd = np.asarray(gt.extras.get("iscrowd", np.zeros(len(gt))), bool)
        gt = gt[~crowd]
        h, w = gt.image_size or _load(image).shape[:2]
        return _finish(
            gt.boxes,
            np.ones(len(gt), np.float32),
            gt.labels,
            (h, w),
            self.model_id,
            self.class_names,
            image_id,
            0.0,
            None,
        )


def _empty(
    image_size: tuple[int, int],
    model_id: str,
    class_names: Mapping[int, str],
    image_id: Hashable | None,
    message: str,
) -> Detections:
    dets = Detections.empty(
        image_size, model_id=model_id, class_names=dict(class_names), message=message
    )
    dets.labels = np.zeros(0, np.int64)
    if image_id is not None:
        dets.meta["image_id"] = image_id
    return dets
