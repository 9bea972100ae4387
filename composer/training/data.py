"""Training data for promptable segmentation: sources, augmentation variants, samples.

A *source* yields :class:`SegmentationItem` s: an image plus one or more label *layers* (each
positive label of each layer is one training mask). BSDS500 gives one layer per annotator
(every region of every annotator is a mask), a COCO/LVIS json one layer per instance, the
interactive benchmarks one layer per object, and :func:`synthetic_shapes` random shapes for
tests. :func:`bsds_item_refs` and :func:`coco_item_refs` list the same items unread, as
:class:`ItemRef` s, for :class:`~composer.training.features.FeatureCache`, which reads an item
only for the cache entries it still lacks.

Each item is seen through a few deterministic augmentation :class:`Variant` s (crop, flip,
colour jitter). :func:`prepare_sample` turns (item, variant) into the model-input image and
the layers in the decoder's low-res frame (the padded square input scaled to ``low_res``),
which is what the loss and the prompt simulation use.

Frames: "original" pixels of the source image; "input": the variant's image resized so its
longest side is ``img_size``; "low-res": the padded ``img_size`` square scaled to ``low_res``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..structures.masks import crowd_flag

logger = logging.getLogger(__name__)

IGNORE_LABEL = 65535  # layer value of pixels excluded from loss and clicks (e.g. GrabCut's 128)


@dataclass(frozen=True)
class SegmentationItem:
    """One training image with its masks.

    Attributes:
        image_id: unique id within its source (e.g. ``"bsds/train/2092"``).
        image: (H, W, 3) uint8 RGB in original pixels.
        layers: (A, H, W) uint16 label layers in original pixels; 0 = no mask, k in
            1..65534 = mask k of that layer, :data:`IGNORE_LABEL` = ignored pixel.
    """

    image_id: str
    image: np.ndarray
    layers: np.ndarray

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}"
            )
        if self.layers.ndim != 3 or self.layers.shape[1:] != self.image.shape[:2]:
            raise ValueError(
                f"layers must be (A, H, W) with (H, W) = {self.image.shape[:2]}, got {self.layers.shape}"
            )


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
SKIP_BAD_AREA = "unreadable area"


@dataclass(frozen=True)
class SkippedAnnotation:
    """An annotation that :func:`coco_items` skipped (given a ``skipped`` list).

    Attributes:
        item_id: the image's item id (``"coco/<image id>"``).
        annotation_id: the annotation's ``id`` as the json gives it (None without one).
        reason: one of :data:`SKIP_NO_SEGMENTATION`, :data:`SKIP_BAD_SEGMENTATION`,
            :data:`SKIP_BAD_AREA`.
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
) -> Iterator[SegmentationItem]:
    """Items of a COCO/LVIS json (path or loaded ``COCO``): one binary layer per non-crowd
    instance (largest first).

    ``image_ids`` restricts (and orders) the images, e.g. :func:`coco_subset_split`.
    ``pack_layers``: instances share a layer, as its labels 1, 2, ..., where they do not
    overlap (each goes to the first layer it does not overlap), so the same masks take a
    layer per overlap depth instead of one per instance: full-resolution layers of many
    instances on a large photo (64 x 24 Mpx x 2 bytes = 3 GB) stay small. A packed item's
    masks are those of the unpacked one, less the empty ones; each layer's largest label is
    its number of masks.
    ``skipped``: if given, an annotation that supplies no mask (no ``segmentation``: a
    box-only one; an undecodable one; a non-numeric ``area``) is skipped and appended to it
    as a :class:`SkippedAnnotation`, and the image's other masks still come (the
    ``max_instances`` largest of those left; an image whose every instance is skipped comes
    without layers, ``(0, H, W)``); if None, such an annotation makes the image unusable (see
    Raises). An ``iscrowd`` that is not a flag is not skipped: the json loader refuses the
    whole file for it (as ``eval`` and ``convert`` do), and a ``COCO`` object with one makes
    that image unusable.
    ``failures``: if given, an unusable image (see Raises) is appended to it as (item id,
    message) and skipped, and the items of the other images still come; if None it raises.

    Raises:
        ValueError: the json or the image folder is missing or malformed, or one image is
            unusable: an image record without a usable ``height``/``width``/``file_name``, an
            image file that is missing or unreadable, or one whose size differs from its
            record's, or an annotation with an odd ``iscrowd``; without ``skipped``, also an
            annotation with a missing or undecodable ``segmentation`` (a box-only one) or a
            non-numeric ``area``. The message names the image (and the annotation).
    """
    from pycocotools import mask as mask_utils

    from ..data.coco import CocoDataset
    from ..io.image import load_image, size_mismatch
    from ..structures.masks import segmentation_rle

    def skip(what: str, item_id: str, ann: dict[str, Any], reason: str, exc: Exception) -> None:
        """Record ``ann`` as skipped, or (no ``skipped`` list) re-raise ``exc``."""
        if skipped is None:
            raise exc
        detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc).strip()
        message = f"{what}, annotation {ann.get('id')}: {detail or type(exc).__name__}"
        skipped.append(SkippedAnnotation(item_id, ann.get("id"), reason, message))

    ds = CocoDataset(ann_file, image_dir, image_ids=image_ids)
    for image_id in ds.image_ids:
        rec = ds.coco.imgs[image_id]
        item_id = f"coco/{image_id}"
        what = f"COCO image {image_id} ({rec.get('file_name')!s})"
        ann_id: Any = None

        try:
            h, w = int(rec["height"]), int(rec["width"])
            if h < 1 or w < 1:
                raise ValueError(f"height and width must be >= 1, got {h} and {w}")
            anns = []
            n_skipped = len(skipped) if skipped is not None else 0
            for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[image_id])):
                ann_id = a.get("id")
                if crowd_flag(a.get("iscrowd")):
                    continue
                try:
                    area = float(a.get("area", 0))
                except (TypeError, ValueError):
                    bad = ValueError(f"area must be a number, got {a.get('area')!r}"[:120])
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
            anns = sorted(anns, key=lambda pair: -pair[0])[:max_instances]
            if not anns and (skipped is None or len(skipped) == n_skipped):
                # no instance (crowd regions only); an image whose every instance is skipped
                # still comes, without layers, as coco_item_ids lists it
                continue
            # zeros: the pages of layers that packing leaves unused are never touched
            layers = np.zeros((len(anns), h, w), np.uint16)
            labels = [0] * len(anns)  # labels given in each layer
            for _, a in anns:
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
                i = labels.index(0)  # the first unused layer
                if pack_layers:
                    if not m.any():
                        continue  # no pixels: no label (a packed layer's labels count masks)
                    i = next((j for j in range(i) if not layers[j][box][m].any()), i)
                labels[i] += 1
                layers[i][box][m] = labels[i]
            layers = layers[: labels.index(0) if 0 in labels else len(labels)]
            ann_id = None
            name = rec.get("file_name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"file_name must be a non-empty string, got {name!r}")
            image = load_image(ds.image_dir / name)
            if image.shape[:2] != (h, w):
                raise ValueError(size_mismatch(ds.image_dir / name, image.shape[:2], (h, w)))
        except (ValueError, TypeError, KeyError) as exc:
            where = what if ann_id is None else f"{what}, annotation {ann_id}"
            detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc).strip()
            message = f"{where}: {detail or type(exc).__name__}"
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

    ds = CocoDataset(ann_file, image_dir, image_ids=image_ids)
    out = []
    for image_id in ds.image_ids:
        for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[image_id])):
            try:
                usable = not crowd_flag(a.get("iscrowd")) and float(a.get("area", 0)) >= min_area
            except (TypeError, ValueError):
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
    """
    from ..data.coco import load_coco

    coco = load_coco(ann_file)

    def load(image_id: int) -> SegmentationItem:
        for item in coco_items(coco, image_dir, min_area, max_instances, [image_id]):
            return item
        raise ValueError(f"COCO image {image_id} has no instance to train on")

    for image_id in coco_item_ids(coco, image_dir, min_area, image_ids):
        yield ItemRef(f"coco/{image_id}", partial(load, image_id))


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


def synthetic_shapes(
    n: int,
    size: int = 128,
    seed: int = 0,
    max_shapes: int = 4,
    backgrounds: Sequence[np.ndarray] | None = None,
) -> list[SegmentationItem]:
    """Random ellipses and rectangles on a noisy or natural background (tests, warm-up).

    Args:
        n: number of images.
        size: side of the square images in pixels.
        seed: RNG seed; the same seed gives the same images.
        max_shapes: at most this many shapes per image (at least 1); later shapes occlude.
        backgrounds: optional (H, W, 3) uint8 images; each item then uses a random crop of one
            as background, and half of the shapes are filled with a texture cut from another
            (shapes are flat colours with noise otherwise).

    Returns:
        ``n`` items, each with one layer whose labels 1..K are the visible shapes.
    """
    if n < 0 or size < 16:
        raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)

    def texture() -> np.ndarray:
        assert backgrounds is not None
        src = backgrounds[int(rng.integers(len(backgrounds)))]
        h, w = src.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = src[y0 : y0 + side, x0 : x0 + side]
        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float64)

    items = []
    for i in range(n):
        if backgrounds:
            img = texture()
        else:
            img = rng.normal(0.0, 12.0, (size, size, 3)) + rng.uniform(40, 200, 3)
        layer = np.zeros((size, size), np.uint16)
        k = int(rng.integers(1, max_shapes + 1))
        for j in range(1, k + 1):
            m = np.zeros((size, size), np.uint8)
            cx, cy = rng.uniform(0.2, 0.8, 2) * size
            rx, ry = rng.uniform(0.08, 0.25, 2) * size
            if rng.random() < 0.5:
                angle = float(rng.uniform(0, 180))
                cv2.ellipse(m, (int(cx), int(cy)), (int(rx), int(ry)), angle, 0, 360, 1, -1)
            else:
                cv2.rectangle(m, (int(cx - rx), int(cy - ry)), (int(cx + rx), int(cy + ry)), 1, -1)
            inside = m > 0
            if backgrounds and rng.random() < 0.5:
                img[inside] = texture()[inside]
            else:
                img[inside] = rng.uniform(0, 255, 3) + rng.normal(0.0, 8.0, (int(inside.sum()), 3))
            layer[inside] = j
        items.append(
            SegmentationItem(f"shapes/{seed}/{i}", img.clip(0, 255).astype(np.uint8), layer[None])
        )
    return items


def paste_composites(
    n: int,
    sources: Sequence[SegmentationItem],
    backgrounds: Sequence[np.ndarray],
    size: int = 512,
    seed: int = 0,
    max_objects: int = 3,
    min_source_frac: float = 0.01,
    feather: float = 1.0,
    scale: tuple[float, float] = (0.2, 0.7),
) -> list[SegmentationItem]:
    """Copy-paste training images: whole masks cut from ``sources`` onto other backgrounds.

    Each item pastes 1..``max_objects`` masks (each a random labelled mask of a random source
    item covering at least ``min_source_frac`` of its image), scaled so the object's box side
    is 20-70% of the image side, randomly mirrored, at a random place, over a random crop of a
    background. Later objects occlude earlier ones; the alpha edge is feathered by a Gaussian
    of ``feather`` pixels so the paste seam is not a trivial cue. The labels are the visible
    parts of the pasted objects (the background is unlabelled: no mask is sampled there).
    Teaches whole, salient objects (Ghiasi et al. 2021, "Simple Copy-Paste"). With
    ``max_objects=1`` and a larger ``scale`` the images look like salient-object photos (one
    large object, as in GrabCut or Berkeley).

    Args:
        n: number of images.
        sources: items whose labelled masks are cut out (e.g. COCO instances, BSDS regions).
        backgrounds: (H, W, 3) uint8 images.
        size: side of the square output images.
        seed: RNG seed (same seed, same images).
        max_objects: most objects per image.
        min_source_frac: smallest source mask as a fraction of its image.
        feather: sigma of the alpha blur in pixels (0: hard edges).
        scale: range of the object's box side as a fraction of the image side.
    """
    if n < 0 or size < 16 or not sources or not backgrounds:
        raise ValueError("need n >= 0, size >= 16, and non-empty sources and backgrounds")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must be 0 < low <= high <= 1, got {scale}")
    rng = np.random.default_rng(seed)

    def random_mask() -> tuple[np.ndarray, np.ndarray] | None:
        for _ in range(20):
            it = sources[int(rng.integers(len(sources)))]
            layer = it.layers[int(rng.integers(it.layers.shape[0]))]
            labels = [v for v in np.unique(layer).tolist() if v not in (0, IGNORE_LABEL)]
            if not labels:
                continue
            m = layer == labels[int(rng.integers(len(labels)))]
            if m.mean() < min_source_frac:
                continue
            ys, xs = np.nonzero(m)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            return it.image[y0:y1, x0:x1], m[y0:y1, x0:x1]
        return None

    items = []
    for i in range(n):
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        h, w = bg.shape[:2]
        side = int(min(h, w) * rng.uniform(0.6, 1.0))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        img = cv2.resize(bg[y0 : y0 + side, x0 : x0 + side], (size, size)).astype(np.float32)
        layer = np.zeros((size, size), np.uint16)
        k = 0
        for _ in range(int(rng.integers(1, max_objects + 1))):
            got = random_mask()
            if got is None:
                continue
            patch, m = got
            factor = size * rng.uniform(*scale) / max(patch.shape[:2])
            ph = max(2, min(size, int(patch.shape[0] * factor)))
            pw = max(2, min(size, int(patch.shape[1] * factor)))
            patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            alpha = cv2.resize(m.astype(np.float32), (pw, ph), interpolation=cv2.INTER_LINEAR)
            if rng.random() < 0.5:
                patch, alpha = patch[:, ::-1], alpha[:, ::-1]
            if feather > 0:
                alpha = cv2.GaussianBlur(np.ascontiguousarray(alpha), (0, 0), feather)
            py, px = int(rng.integers(0, size - ph + 1)), int(rng.integers(0, size - pw + 1))
            region = img[py : py + ph, px : px + pw]
            region[:] = region * (1 - alpha[..., None]) + patch * alpha[..., None]
            k += 1
            layer[py : py + ph, px : px + pw][alpha >= 0.5] = k
        if k == 0:
            continue
        items.append(
            SegmentationItem(
                f"paste/{seed}/{i}", img.clip(0, 255).astype(np.uint8), layer[None]
            )
        )
    return items


# --------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class Variant:
    """A deterministic augmentation of one image.

    Attributes:
        crop: (x0, y0, x1, y1) as fractions of the original width/height (0..1).
        flip: mirror left-right after cropping.
        brightness: additive brightness on the 0..255 scale.
        contrast: multiplicative contrast around the mean grey.
        saturation: blend factor with the greyscale image (1 = unchanged).
    """

    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    flip: bool = False
    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0

    def key(self) -> str:
        """Stable text key (cache file names)."""
        c = ",".join(f"{v:.4f}" for v in self.crop)
        return (
            f"c{c}f{int(self.flip)}b{self.brightness:.2f}k{self.contrast:.3f}s{self.saturation:.3f}"
        )


def make_variants(n: int, seed: int, min_crop: float = 0.5, jitter: float = 0.2) -> list[Variant]:
    """``n`` variants of one image: identity, mirror, then random crops/flips/colour jitter.

    Args:
        n: number of variants (>= 1).
        seed: per-image seed (e.g. hash of the image id) so variants are reproducible.
        min_crop: smallest crop side as a fraction of the image side.
        jitter: strength of colour jitter (0 disables it).
    """
    if n < 1:
        raise ValueError(f"need at least one variant, got {n}")
    rng = np.random.default_rng(seed)
    out = [Variant()]
    if n > 1:
        out.append(Variant(flip=True))
    while len(out) < n:
        sw, sh = rng.uniform(min_crop, 1.0, 2)
        x0, y0 = rng.uniform(0, 1 - sw), rng.uniform(0, 1 - sh)
        out.append(
            Variant(
                crop=(float(x0), float(y0), float(x0 + sw), float(y0 + sh)),
                flip=bool(rng.random() < 0.5),
                brightness=float(rng.uniform(-40, 40) * jitter / 0.2) if jitter else 0.0,
                contrast=float(1 + rng.uniform(-jitter, jitter)),
                saturation=float(1 + rng.uniform(-2 * jitter, 2 * jitter)),
            )
        )
    return out


def _crop_px(v: Variant, h: int, w: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = v.crop
    ix0, iy0 = int(round(x0 * w)), int(round(y0 * h))
    ix1, iy1 = max(ix0 + 1, int(round(x1 * w))), max(iy0 + 1, int(round(y1 * h)))
    return ix0, iy0, min(ix1, w), min(iy1, h)


def apply_variant(item: SegmentationItem, v: Variant) -> tuple[np.ndarray, np.ndarray]:
    """(image (h, w, 3) uint8, layers (A, h, w) uint16) of ``item`` seen through ``v``."""
    h, w = item.image.shape[:2]
    x0, y0, x1, y1 = _crop_px(v, h, w)
    img = item.image[y0:y1, x0:x1]
    layers = item.layers[:, y0:y1, x0:x1]
    if v.flip:
        img, layers = img[:, ::-1], layers[:, :, ::-1]
    if v.brightness or v.contrast != 1.0 or v.saturation != 1.0:
        f = img.astype(np.float32)
        grey = f.mean(axis=2, keepdims=True)
        f = grey + (f - grey) * v.saturation
        f = (f - f.mean()) * v.contrast + f.mean() + v.brightness
        img = f.clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), np.ascontiguousarray(layers)


def input_shape(h: int, w: int, img_size: int) -> tuple[int, int]:
    """(h', w') after resizing the longest side to ``img_size`` (as SAM's ResizeLongestSide);
    a side never rounds down to 0 (a 1 x 3000 px image is 1 x ``img_size``)."""
    scale = img_size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


@dataclass
class PreparedSample:
    """One (item, variant) in model frames.

    Attributes:
        image_id: the item id plus the variant key.
        image: (h, w, 3) uint8 RGB in the input frame (longest side ``img_size``, unpadded).
        layers: (A, L, L) uint16 label layers in the low-res frame (padding = 0).
        valid: (L, L) bool: inside the image and not ignored.
        input_size: (h, w) of ``image``.
        features: cached backbone features for ``image`` (None until computed).
        embedding: cached (1, C, g, g) image embedding of a frozen encoder (None until
            computed); takes precedence over ``features`` and ``image``.
    """

    image_id: str
    image: np.ndarray | None
    layers: np.ndarray
    valid: np.ndarray
    input_size: tuple[int, int]
    features: tuple | None = None
    embedding: Any = None
    masks_index: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))


def prepare_sample(
    item: SegmentationItem,
    variant: Variant,
    img_size: int,
    low_res: int,
    min_area: int = 16,
    max_area_frac: float = 0.95,
    layer_sampling: str = "centre",
) -> PreparedSample:
    """Resize ``item`` through ``variant`` to the input frame and its layers to the low-res frame.

    Args:
        item: the source item.
        variant: its augmentation.
        img_size: side of the padded model input.
        low_res: side of the low-res frame (``img_size // 4`` for SAM's geometry).
        min_area: masks smaller than this many low-res pixels are not sampled.
        max_area_frac: masks covering more of the valid region than this are not sampled.
        layer_sampling: ``"centre"``: each low-res pixel takes the label under its centre, so
            masks and image stay aligned. ``"corner"``: the label under its top-left corner
            (OpenCV's nearest resize; masks sit half a low-res pixel right of and below the
            image): the format of :class:`~composer.training.features.FeatureCache` entries,
            whose loader subsamples them at ``f // 2`` and so lands on the centres.
    """
    if layer_sampling not in ("centre", "corner"):
        raise ValueError(f"layer_sampling must be 'centre' or 'corner', got {layer_sampling!r}")
    img, layers = apply_variant(item, variant)
    h, w = img.shape[:2]
    ih, iw = input_shape(h, w, img_size)
    img = cv2.resize(img, (iw, ih), interpolation=cv2.INTER_LINEAR)
    lh, lw = max(1, round(ih * low_res / img_size)), max(1, round(iw * low_res / img_size))
    low = np.zeros((layers.shape[0], low_res, low_res), np.uint16)
    if layer_sampling == "corner":
        for a in range(layers.shape[0]):
            low[a, :lh, :lw] = cv2.resize(layers[a], (lw, lh), interpolation=cv2.INTER_NEAREST)
    else:
        # Low-res pixel j spans input pixels [j s, (j + 1) s), s = img_size / low_res; its
        # centre (j + 0.5) s lies at (j + 0.5) s * w / iw original pixels (the image's frame).
        s = img_size / low_res
        ys = np.minimum(((np.arange(lh) + 0.5) * s * h / ih).astype(np.int64), h - 1)
        xs = np.minimum(((np.arange(lw) + 0.5) * s * w / iw).astype(np.int64), w - 1)
        low[:, :lh, :lw] = layers[:, ys[:, None], xs[None, :]]
    valid = np.zeros((low_res, low_res), bool)
    valid[:lh, :lw] = True
    valid &= ~(low == IGNORE_LABEL).any(axis=0)
    sample = PreparedSample(f"{item.image_id}@{variant.key()}", img, low, valid, (ih, iw))
    sample.masks_index = index_masks(low, valid, min_area, max_area_frac)
    return sample


def index_masks(
    layers: np.ndarray, valid: np.ndarray, min_area: int, max_area_frac: float
) -> np.ndarray:
    """(N, 2) int64 (layer, label) pairs of the masks worth sampling in ``layers`` (A, L, L)."""
    limit = max_area_frac * max(int(valid.sum()), 1)
    pairs = []
    for a in range(layers.shape[0]):
        labels, counts = np.unique(layers[a][valid], return_counts=True)
        for lab, cnt in zip(labels.tolist(), counts.tolist(), strict=True):
            if lab not in (0, IGNORE_LABEL) and min_area <= cnt <= limit:
                pairs.append((a, lab))
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def masks_of(sample: PreparedSample, pairs: np.ndarray) -> np.ndarray:
    """(M, L, L) bool masks for (layer, label) ``pairs`` (M, 2) of ``sample``."""
    if len(pairs) == 0:
        return np.zeros((0, *sample.layers.shape[1:]), bool)
    return sample.layers[pairs[:, 0]] == pairs[:, 1, None, None]
