"""Training data for promptable segmentation: sources, augmentation variants, samples.

A *source* yields :class:`SegmentationItem` s: an image plus one or more label *layers* (each
positive label of each layer is one training mask). BSDS500 gives one layer per annotator
(every region of every annotator is a mask), a COCO/LVIS json one layer per instance, the
interactive benchmarks one layer per object; :mod:`~composer.training.synthetic` makes random
shapes for tests and copy-paste composites. :func:`bsds_item_refs` and :func:`coco_item_refs` list the same items unread, as
:class:`ItemRef` s, for :class:`~composer.training.features.FeatureCache`, which reads an item
only for the cache entries it still lacks.

Each item is seen through a few deterministic augmentation :class:`Variant` s (crop, flip,
colour jitter; :mod:`~composer.training.samples`). :func:`prepare_sample` turns (item, variant) into the model-input image and
the layers in the decoder's low-res frame (the padded square input scaled to ``low_res``),
which is what the loss and the prompt simulation use.

Frames: "original" pixels of the source image; "input": the variant's image resized so its
longest side is ``img_size``; "low-res": the padded ``img_size`` square scaled to ``low_res``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..structures.masks import crowd_flag
from .items import IGNORE_LABEL, SegmentationItem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemRef:
    """A training item known by its id before it is read: a source's image and label files
    are decoded only by ``load()``. :meth:`~composer.training.features.FeatureCache.build`
    loads it only when one of its entries is missing, so a rebuild of a complete cache reads
    no image.

    Attributes:
        image_id: the :attr:`SegmentationItem.image_id` of the item ``load`` returns.
        load: reads the item (each call reads it again).
    """

    image_id: str
    load: Callable[[], SegmentationItem]


# --------------------------------------------------------------------------- sources
def evaluation_bsds_ids(data_root: str | Path | None = None) -> set[str]:
    """BSDS image ids that are also evaluation images (Berkeley images, GrabCut numeric stems).

    Training on BSDS must exclude them: those images are used for reporting.
    """
    from ..data.paths import data_root as default_root

    root = Path(data_root) if data_root is not None else default_root()
    ids: set[str] = set()
    berkeley = root / "berkeley" / "images"
    if berkeley.is_dir():
        ids |= {p.stem for p in berkeley.iterdir() if p.is_file()}
    grabcut = root / "grabcut" / "data_GT"
    if grabcut.is_dir():
        ids |= {p.stem for p in grabcut.iterdir() if re.fullmatch(r"\d+", p.stem)}
    if not ids:
        raise ValueError(
            f"found no Berkeley/GrabCut images under {root}; cannot build the exclusion list"
        )
    return ids


def bsds_ids(
    splits: Sequence[str] = ("train", "val"),
    exclude: Iterable[str] = (),
    data_root: str | Path | None = None,
) -> list[tuple[str, str]]:
    """(split, id) pairs of BSDS500 images with ground truth, minus ``exclude``, sorted."""
    from ..data.paths import dataset_dir

    base = Path(data_root) / "bsds500" if data_root is not None else dataset_dir("bsds500")
    skip = set(exclude)
    out: list[tuple[str, str]] = []
    for split in splits:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown BSDS500 split {split!r}")
        for p in sorted((base / "groundTruth" / split).glob("*.mat")):
            if p.stem not in skip:
                out.append((split, p.stem))
    return out


def load_bsds_item(
    split: str, image_id: str, data_root: str | Path | None = None
) -> SegmentationItem:
    """One BSDS500 image with one label layer per annotator (``Segmentation``, labels 1..K).

    Raises:
        ValueError: the .mat is unreadable or has no annotators, a ``Segmentation`` differs
            in size from the image, or a region id does not fit below :data:`IGNORE_LABEL`.
    """
    from ..data.bsds import load_ground_truth
    from ..data.paths import dataset_dir
    from ..io.image import load_image

    base = Path(data_root) / "bsds500" if data_root is not None else dataset_dir("bsds500")
    image = load_image(base / "images" / split / f"{image_id}.jpg")
    # The dataset reader: every annotator of the cell whatever its orientation (a 1 x N cell
    # read by column index kept one annotator of an N x 1 cell), errors naming the file.
    gt_path = base / "groundTruth" / split / f"{image_id}.mat"
    annotators = load_ground_truth(gt_path)
    if not annotators:
        raise ValueError(f"{gt_path} has no annotators")
    segs = [a["segmentation"] for a in annotators]
    for seg in segs:
        if seg.shape != image.shape[:2]:
            raise ValueError(
                f"{gt_path}: Segmentation is {seg.shape[1]}x{seg.shape[0]} (WxH) but the image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        if seg.size and (seg.min() < 0 or seg.max() >= IGNORE_LABEL):
            raise ValueError(
                f"{gt_path}: region ids must be in 0..{IGNORE_LABEL - 1}, got "
                f"{seg.min()}..{seg.max()}"
            )
    layers = np.stack([seg.astype(np.uint16) for seg in segs])
    return SegmentationItem(f"bsds/{split}/{image_id}", image, layers)


def bsds_items(
    splits: Sequence[str] = ("train", "val"),
    exclude: Iterable[str] = (),
    data_root: str | Path | None = None,
) -> Iterator[SegmentationItem]:
    """BSDS500 items of ``splits`` minus the ids in ``exclude`` (see :func:`evaluation_bsds_ids`)."""
    for split, image_id in bsds_ids(splits, exclude, data_root):
        yield load_bsds_item(split, image_id, data_root)


def bsds_item_refs(
    splits: Sequence[str] = ("train", "val"),
    exclude: Iterable[str] = (),
    data_root: str | Path | None = None,
) -> Iterator[ItemRef]:
    """:func:`bsds_items` unread: the same items, in the same order, as :class:`ItemRef` s
    (only the ground-truth folder is listed)."""
    for split, image_id in bsds_ids(splits, exclude, data_root):
        yield ItemRef(f"bsds/{split}/{image_id}", partial(load_bsds_item, split, image_id, data_root))


#: why ``coco_items(skipped=...)`` skips an annotation (the keys of the counts that
#: ``sam-composer train`` reports); each one supplies no mask, the image's others still do
SKIP_NO_SEGMENTATION = "no segmentation"  # a box-only annotation
SKIP_BAD_SEGMENTATION = "undecodable segmentation"
SKIP_BAD_AREA = "unreadable area"  # not a finite number >= 0
SKIP_EMPTY_MASK = "empty mask"  # decodes to no pixel of the image (a polygon outside it)


def annotation_area(ann: Mapping[str, Any]) -> float:
    """An annotation's ``area`` as :func:`coco_items` reads it (0 where it has none).

    Raises:
        ValueError: the area is not a number, or is NaN, infinite or negative: such an
            annotation is skipped as :data:`SKIP_BAD_AREA` (a NaN one was left out unnamed,
            as if too small, while ``eval`` scores its mask).
    """
    value = ann.get("area", 0)
    try:
        area = float(value)
    except (TypeError, ValueError):
        area = math.nan
    if not (math.isfinite(area) and area >= 0):
        raise ValueError(f"area must be a finite number >= 0, got {value!r}"[:120])
    return area


def _segmentation_area(segmentation: Any, size: tuple[int, int]) -> float:
    """The pixel count of a segmentation in an image of ``size``, 0 where it cannot be decoded
    (:func:`coco_items` then skips it, named, when it decodes the masks)."""
    from pycocotools import mask as mask_utils

    from ..structures.masks import segmentation_rle

    try:
        return float(mask_utils.area(segmentation_rle(segmentation, size)))
    except (ValueError, TypeError, KeyError):
        return 0.0


def _check_max_instances(value: Any) -> int:
    """``max_instances`` as an int >= 1.

    Raises:
        ValueError: not a whole number >= 1 (a negative cap made every image unusable with
            "negative dimensions are not allowed", 0 yielded no image, 2.5 was taken as 2).
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not (ok and value >= 1):
        raise ValueError(f"max_instances must be a whole number >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SkippedAnnotation:
    """An annotation that :func:`coco_items` skipped (given a ``skipped`` list).

    Attributes:
        item_id: the image's item id (``"coco/<image id>"``).
        annotation_id: the annotation's ``id`` as the json gives it (None without one).
        reason: one of :data:`SKIP_NO_SEGMENTATION`, :data:`SKIP_BAD_SEGMENTATION`,
            :data:`SKIP_BAD_AREA`, :data:`SKIP_EMPTY_MASK`.
        message: what is wrong, naming the image and the annotation.
    """

    item_id: str
    annotation_id: Any
    reason: str
    message: str


def coco_items(
    ann_file: Any,
    image_dir: str | Path,
    min_area: float = 0.0,
    max_instances: int = 64,
    image_ids: Sequence[int] | None = None,
    failures: list[tuple[str, str]] | None = None,
    pack_layers: bool = False,
    skipped: list[SkippedAnnotation] | None = None,
    size_from_image: bool = False,
) -> Iterator[SegmentationItem]:
    """Items of a COCO/LVIS json (path or loaded ``COCO``): one binary layer per non-crowd
    instance (largest first). A json path is read without needing categories (see
    :func:`~composer.data.coco.normalise_coco_dict`'s ``need_categories``): training uses none.

    ``image_ids`` restricts (and orders) the images, e.g. :func:`coco_subset_split`.
    ``pack_layers``: instances share a layer, as its labels 1, 2, ..., where they do not
    overlap (each goes to the first layer it does not overlap), so the same masks take a
    layer per overlap depth instead of one per instance: full-resolution layers of many
    instances on a large photo (64 x 24 Mpx x 2 bytes = 3 GB) stay small. A packed item's
    masks are those of the unpacked one, less the empty ones; each layer's largest label is
    its number of masks.
    ``skipped``: if given, an annotation that supplies no mask (no ``segmentation``: a
    box-only one; an undecodable one; an ``area`` that is not a finite number >= 0, see
    :func:`annotation_area`; one that decodes to no pixel of the image, e.g. a polygon
    outside it) is skipped and appended to it as a :class:`SkippedAnnotation`,
    and the image's other masks still come (the ``max_instances`` largest of those that
    decode, an undecodable one leaving its place to the next; an image whose every instance
    is skipped comes without layers, ``(0, H, W)``); if None, such an annotation makes the image unusable (see
    Raises). An ``iscrowd`` that is not a flag is not skipped: the json loader refuses the
    whole file for it (as ``eval`` and ``convert`` do), and a ``COCO`` object with one makes
    that image unusable.
    ``size_from_image``: an image record without ``height`` or ``width`` (or with ``null``)
    takes its size from the image file (as read, upright per its EXIF orientation; a size the
    record does give must match it) instead of making the image unusable.
    ``failures``: if given, an unusable image (see Raises) is appended to it as (item id,
    message) and skipped, and the items of the other images still come; if None it raises.
    An unusable image adds nothing to ``skipped``: it is left out whole, named by its failure.

    Raises:
        ValueError: ``max_instances`` is not a whole number >= 1; the json or the image
            folder is missing or malformed, or one image is unusable: an image record without a usable ``height``/``width``/``file_name``, an
            image file that is missing or unreadable, or one whose size differs from its
            record's, or an annotation with an odd ``iscrowd``; without ``skipped``, also an
            annotation with a missing or undecodable ``segmentation`` (a box-only one) or an
            ``area`` that is not a finite number >= 0. The message names the image (and the
            annotation).
    """
    from pycocotools import mask as mask_utils

    from ..data.coco import CocoDataset, _integer, check_image_file, image_file
    from ..io.image import load_image, size_mismatch
    from ..structures.masks import segmentation_rle

    max_instances = _check_max_instances(max_instances)

    def skip(what: str, item_id: str, ann: dict[str, Any], reason: str, exc: Exception) -> None:
        """Record ``ann`` as skipped, or (no ``skipped`` list) re-raise ``exc``."""
        if skipped is None:
            raise exc
        detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc).strip()
        message = f"{what}, annotation {ann.get('id')}: {detail or type(exc).__name__}"
        skipped.append(SkippedAnnotation(item_id, ann.get("id"), reason, message))

    ds = CocoDataset(ann_file, image_dir, image_ids=image_ids, need_categories=False)

    def read_image(rec: Mapping[str, Any]) -> tuple[np.ndarray, Path]:
        """The pixels of an image record, and its file."""
        name = rec.get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"file_name must be a non-empty string, got {name!r}")
        path = image_file(ds.image_dir, name)  # "sub\\a.jpg" is sub/a.jpg if that exists
        check_image_file(path)
        return load_image(path), path

    for image_id in ds.image_ids:
        rec = ds.coco.imgs[image_id]
        item_id = f"coco/{image_id}"
        what = f"COCO image {image_id} ({rec.get('file_name')!s})"
        ann_id: Any = None
        n_skipped = len(skipped) if skipped is not None else 0

        image: np.ndarray | None = None
        try:
            if size_from_image and (rec.get("height") is None or rec.get("width") is None):
                # a record without a size: the file's (read now, not after the masks)
                image, path = read_image(rec)
                h, w = image.shape[:2]
                for key, value in (("height", h), ("width", w)):  # the one given, if any
                    if rec.get(key) is not None and _integer(rec[key], key) != value:
                        raise ValueError(f"the image file is {w}x{h} (WxH) but the json's "
                                         f"{key} is {rec[key]!r}")
            else:
                # whole numbers, said so (int() said "invalid literal for int() with base 10:
                # 'abc'", or "... not 'NoneType'" for a null, and cut 120.5 to 120 unsaid)
                h, w = (_integer(rec[k], k) for k in ("height", "width"))
            if h < 1 or w < 1:
                raise ValueError(f"height and width must be >= 1, got {h} and {w}")
            anns = []
            for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[image_id])):
                ann_id = a.get("id")
                if crowd_flag(a.get("iscrowd")):
                    continue
                try:
                    area = annotation_area(a)
                    if "area" not in a and a.get("segmentation") is not None:
                        # no area in the json, and none computed when it was read (a record
                        # without a size, taken from the file): the mask's pixel count, so that
                        # the largest come first (all were 0, the cap kept the json's first)
                        area = _segmentation_area(a["segmentation"], (h, w))
                except ValueError as bad:
                    skip(what, item_id, a, SKIP_BAD_AREA, bad)
                    continue
                if not area >= min_area:
                    continue
                if skipped is not None and a.get("segmentation") is None:
                    # skipped before the cap: the instances kept are the largest with a mask
                    skip(what, item_id, a, SKIP_NO_SEGMENTATION, ValueError("no segmentation"))
                    continue
                anns.append((area, a))
            ann_id = None
            anns = sorted(anns, key=lambda pair: -pair[0])
            n_layers = min(len(anns), max_instances)
            if not n_layers and (skipped is None or len(skipped) == n_skipped):
                # no instance (crowd regions only); an image whose every instance is skipped
                # still comes, without layers, as coco_item_ids lists it
                continue
            # zeros: the pages of layers that packing leaves unused are never touched
            layers = np.zeros((n_layers, h, w), np.uint16)
            labels = [0] * n_layers  # labels given in each layer
            taken = 0  # instances decoded; an undecodable one (skipped) leaves its place
            for _, a in anns:
                if taken == n_layers:
                    break  # the max_instances largest that decode are in
                ann_id = a.get("id")
                if a.get("segmentation") is None:
                    raise ValueError("no segmentation")
                # our decoder: an empty or odd segmentation is an empty mask or a clear error
                try:
                    rle = segmentation_rle(a["segmentation"], (h, w))
                except (ValueError, TypeError, KeyError) as exc:
                    skip(what, item_id, a, SKIP_BAD_SEGMENTATION, exc)
                    continue
                # the mask within its box: a few instances of a large photo are read and
                # written there only, not over the whole image each
                x0, y0, bw, bh = (int(v) for v in mask_utils.toBbox(rle))
                box = (slice(y0, y0 + bh), slice(x0, x0 + bw))
                m = mask_utils.decode(rle)[box].astype(bool)
                if skipped is not None and not m.any():
                    # named, and its place goes to the next largest: an empty mask (a
                    # polygon outside the image, or in 0..1 coordinates) was left out unsaid,
                    # counted neither as skipped nor as too small
                    skip(what, item_id, a, SKIP_EMPTY_MASK, ValueError(
                        "the segmentation covers no pixel of the image (outside it, or in "
                        "other coordinates?)"))
                    continue
                taken += 1
                i = labels.index(0)  # the first unused layer
                if pack_layers:
                    if not m.any():
                        continue  # no pixels: no label (a packed layer's labels count masks)
                    i = next((j for j in range(i) if not layers[j][box][m].any()), i)
                labels[i] += 1
                layers[i][box][m] = labels[i]
            layers = layers[: labels.index(0) if 0 in labels else len(labels)]
            ann_id = None
            if image is None:
                image, path = read_image(rec)
                if image.shape[:2] != (h, w):
                    raise ValueError(size_mismatch(path, image.shape[:2], (h, w)))
        except (ValueError, TypeError, KeyError) as exc:
            where = what if ann_id is None else f"{what}, annotation {ann_id}"
            detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc).strip()
            message = f"{where}: {detail or type(exc).__name__}"
            if skipped is not None:
                # the image is left out whole: the annotations of it skipped so far are not
                # those of an image whose other masks are used (its failure names it)
                del skipped[n_skipped:]
            if failures is None:
                raise ValueError(message) from None
            failures.append((item_id, message))
            continue
        yield SegmentationItem(item_id, image, layers)


def coco_item_ids(
    ann_file: Any,
    image_dir: str | Path,
    min_area: float = 0.0,
    image_ids: Sequence[int] | None = None,
) -> list[int]:
    """The image ids :func:`coco_items` yields, in its order, read from the json alone (no
    image or mask is decoded): the images with a non-crowd annotation of ``area`` >=
    ``min_area``. An annotation :func:`coco_items` would refuse or skip counts as usable here;
    it is refused or skipped, named, when the image is read.

    Raises:
        ValueError: the json or the image folder is missing or malformed.
    """
    from ..data.coco import CocoDataset

    ds = CocoDataset(ann_file, image_dir, image_ids=image_ids, need_categories=False)
    out = []
    for image_id in ds.image_ids:
        for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[image_id])):
            try:
                usable = not crowd_flag(a.get("iscrowd")) and annotation_area(a) >= min_area
            except ValueError:
                usable = True
            if usable:
                out.append(image_id)
                break
    return out


def coco_item_refs(
    ann_file: Any,
    image_dir: str | Path,
    min_area: float = 0.0,
    max_instances: int = 64,
    image_ids: Sequence[int] | None = None,
) -> Iterator[ItemRef]:
    """:func:`coco_items` unread: its items, in its order, as :class:`ItemRef` s listed from
    the json alone (:func:`coco_item_ids`); the json is read once, when the first is asked
    for. Loading one reads that image as :func:`coco_items` does, and raises where it would.

    A reference to a json given by its path names its item (the path, the file's size and
    modification time, the image id and the settings) and pickles in a few hundred bytes,
    whatever the json's size (it carried the parsed json: 453 KB for the 80-image subset,
    whose json is 1.5 MB; COCO train's is 450 MB). In the process that listed them the
    references share the json parsed at listing, which goes when they go, so they load the
    items as listed even if the file changes later. A copy in another process (e.g. a
    spawned worker) parses the json once for all its copies (that process keeps the two
    most recent jsons parsed), and raises ``ValueError`` if the file changed since the
    references were listed. A json given as a ``COCO`` object or a dict is carried whole.

    Raises:
        ValueError: ``max_instances`` is not a whole number >= 1 (when the first is asked for).
    """
    from ..data.coco import load_coco

    max_instances = _check_max_instances(max_instances)
    source: _CocoJson | Any
    if isinstance(ann_file, (str, os.PathLike)):
        taken = _CocoJson.of(ann_file)
        # this process's references share this parse, and it goes with them (not pinned in
        # the per-process cache, which serves copies sent to other processes)
        coco = _parsed_coco(taken, keep=False)
        source = replace(taken, parsed=coco)
    else:
        source = coco = load_coco(ann_file, need_categories=False)
    for image_id in coco_item_ids(coco, image_dir, min_area, image_ids):
        # a module-level function: a reference pickles (e.g. into a spawned worker)
        load = partial(_load_coco_item, source, image_dir, min_area, max_instances, image_id)
        yield ItemRef(f"coco/{image_id}", load)


@dataclass(frozen=True)
class _CocoJson:
    """A COCO/LVIS json file named by its absolute path and the size and modification time
    (ns) it had when it was listed: what a :func:`coco_item_refs` reference carries instead
    of the parsed json.

    ``parsed`` is the json as parsed at listing, in the process that listed it only: it is
    neither compared nor pickled (a copy in another process parses the file again, once,
    :func:`_parsed_coco`).
    """

    path: str
    size: int
    mtime_ns: int
    parsed: Any = field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple[Any, tuple[str, int, int]]:
        return (_CocoJson, (self.path, self.size, self.mtime_ns))

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> _CocoJson:
        """The file as it is now.

        Raises:
            ValueError: no such file (as :func:`~composer.data.coco.load_coco` words it).
        """
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise ValueError(f"annotation file not found: {p}")
        return cls(os.path.abspath(p), int(st.st_size), int(st.st_mtime_ns))


# Parsed jsons of this process, most recent last (a few: one COCO train json is GBs parsed).
_PARSED: OrderedDict[_CocoJson, Any] = OrderedDict()
_PARSED_MAX = 2
_PARSED_LOCK = threading.Lock()


def _parsed_coco(source: _CocoJson, keep: bool = True) -> Any:
    """``source`` parsed (a pycocotools ``COCO``): the parse it carries (its listing
    process), else one read once per process while it is among the :data:`_PARSED_MAX` most
    recent (``keep``: put a new parse among them).

    Raises:
        ValueError: the file is gone, or changed since ``source`` was taken (its references
            would name other items); a malformed json (as ``load_coco``).
    """
    from ..data.coco import load_coco

    if source.parsed is not None:
        return source.parsed
    with _PARSED_LOCK:  # held while parsing: threads resolving refs of one json parse it once
        if source in _PARSED:
            _PARSED.move_to_end(source)
            return _PARSED[source]
        now = _CocoJson.of(source.path)
        if now != source:
            raise ValueError(
                f"{source.path} changed since its items were listed (size {source.size} -> "
                f"{now.size} bytes, modified {source.mtime_ns} -> {now.mtime_ns} ns); list "
                "them again"
            )
        coco = load_coco(source.path, need_categories=False)
        if keep:
            _PARSED[source] = coco
            while len(_PARSED) > _PARSED_MAX:
                _PARSED.popitem(last=False)
        return coco


def _load_coco_item(
    source: _CocoJson | Any, image_dir: str | Path, min_area: float, max_instances: int,
    image_id: int,
) -> SegmentationItem:
    """The item of one COCO image, read as :func:`coco_items` reads it (an ItemRef's load);
    ``source`` a :class:`_CocoJson` or the json itself (a ``COCO`` object)."""
    coco = _parsed_coco(source) if isinstance(source, _CocoJson) else source
    for item in coco_items(coco, image_dir, min_area, max_instances, [image_id]):
        return item
    raise ValueError(f"COCO image {image_id} has no instance to train on")


# The shared COCO val2017 subset is both training data and an evaluation set: its first
# COCO_HOLDOUT images in json order (what ``--limit N``, N <= 40, evaluates) are never trained
# on; the remaining images are the training half.
COCO_HOLDOUT = 40


def coco_subset_split(split: str) -> list[int]:
    """Image ids of one half of the shared COCO subset (``$SAM_COMPOSER_DATA``), in json order.

    Args:
        split: ``"holdout"`` (the first :data:`COCO_HOLDOUT` images: evaluation only) or
            ``"train"`` (the rest).
    """
    if split not in ("train", "holdout"):
        raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
    from ..data.coco import coco_subset

    ids = coco_subset().image_ids
    return list(ids[:COCO_HOLDOUT] if split == "holdout" else ids[COCO_HOLDOUT:])


def interactive_items(dataset: Iterable) -> Iterator[SegmentationItem]:
    """Items of a GrabCut/Berkeley dataset (``composer.data.interactive``); ignore -> IGNORE_LABEL."""
    for item in dataset:
        layer = item.gt_mask.astype(np.uint16)
        layer[item.ignore] = IGNORE_LABEL
        yield SegmentationItem(f"interactive/{item.image_id}", item.load_image(), layer[None])


# Made elsewhere, importable from here as before: synthetic items and the augmented samples.
from .samples import (  # noqa: E402
    PreparedSample,
    Variant,
    apply_variant,
    index_masks,
    input_shape,
    make_variants,
    masks_of,
    prepare_sample,
)
from .synthetic import paste_composites, synthetic_shapes  # noqa: E402

__all__ = [
    "COCO_HOLDOUT",
    "IGNORE_LABEL",
    "ItemRef",
    "PreparedSample",
    "SegmentationItem",
    "SkippedAnnotation",
    "Variant",
    "annotation_area",
    "apply_variant",
    "bsds_ids",
    "bsds_item_refs",
    "bsds_items",
    "coco_item_ids",
    "coco_item_refs",
    "coco_items",
    "coco_subset_split",
    "evaluation_bsds_ids",
    "index_masks",
    "input_shape",
    "interactive_items",
    "load_bsds_item",
    "make_variants",
    "masks_of",
    "paste_composites",
    "prepare_sample",
    "synthetic_shapes",
]
