"""Interactive-segmentation benchmarks: GrabCut (50 masks) and Berkeley (100 masks).

Both follow the fBRS/RITM/SimpleClick conventions:

- GrabCut ``boundary_GT/<stem>.bmp``: max over channels; 255 foreground, 0 background,
  128 the unlabeled band along the boundary, which is *ignored* (neither counted in IoU nor
  used for clicks).
- Berkeley ``masks/<id>[a|b].png``: foreground = ``mask[..., 0] > 127``; no ignore region.
  Ids 189011 and 239007 carry three masks each (``<id>.png``, ``<id>a.png``, ``<id>b.png``),
  all on ``images/<id>.jpg``; the item id is the mask's stem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..io.image import load_image
from .paths import dataset_dir

PathLike = str | os.PathLike

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class InteractiveItem:
    """One object mask of an interactive-segmentation benchmark.

    Attributes:
        image_id: the mask's stem (e.g. ``"189011a"``); unique within the dataset.
        path: the image file; several items may share one image.
        mask_path: the ground-truth mask file.
        gt_mask: (H, W) bool foreground in original-image pixels.
        ignore: (H, W) bool pixels excluded from IoU and from click placement.
    """

    image_id: str
    path: Path
    mask_path: Path
    gt_mask: np.ndarray
    ignore: np.ndarray

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image and the masks."""
        return int(self.gt_mask.shape[0]), int(self.gt_mask.shape[1])

    def load_image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB pixels of the image.

        Raises:
            ValueError: the image and the mask differ in size, or the image carries an EXIF
                rotation: ``load_image`` turns it upright, the mask stays in stored pixels, and a
                half turn would mirror the object silently.
        """
        img = load_image(self.path)
        with Image.open(self.path) as im:
            orientation = im.getexif().get(0x0112, 1)
        if orientation in range(2, 9):
            raise ValueError(
                f"{self.path} has EXIF orientation {orientation}; its mask {self.mask_path} may "
                "not follow the rotation: store the image upright without the tag"
            )
        if img.shape[:2] != self.gt_mask.shape:
            raise ValueError(
                f"{self.path} is {img.shape[:2]} but its mask {self.mask_path} is {self.gt_mask.shape}"
            )
        return img


# modes whose raw array is not the pixel values a viewer (and cv2.imread, which RITM's
# readers use) shows: 1-bit reads as bool, palette as indices, and an opaque alpha channel
# of 255 would turn a whole GrabCut mask into foreground under "max over channels"
_MASK_MODES = {"1": "L", "P": "RGB", "PA": "RGB", "LA": "L", "RGBA": "RGB"}


def _read_gray(path: Path) -> np.ndarray:
    """The pixel values of a mask file: 1-bit as 0/255, palette as colours, no alpha channel.

    Raises:
        ValueError: the file cannot be read as an image; the message names it.
    """
    try:
        with Image.open(path) as im:
            mode = _MASK_MODES.get(im.mode)
            arr = np.asarray(im.convert(mode) if mode else im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read mask {path}: {exc}") from exc
    return arr


class _MaskDataset:
    """Shared list-of-items behaviour; subclasses fill ``self._pairs`` (image, mask) paths."""

    name = "interactive"
    root: Path

    def __init__(self) -> None:
        self._pairs: list[tuple[str, Path, Path]] = []

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, masks={len(self)})"

    def __iter__(self) -> Iterator[InteractiveItem]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> InteractiveItem:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} masks")
        image_id, image_path, mask_path = self._pairs[index]
        gt, ignore = self._read_mask(mask_path)
        return InteractiveItem(image_id, image_path, mask_path, gt, ignore)

    @property
    def image_ids(self) -> list[str]:
        return [p[0] for p in self._pairs]

    def _read_mask(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(gt, ignore), both (H, W) bool."""
        raise NotImplementedError


def _resolve_root(root: PathLike | None, name: str) -> Path:
    if root is None:
        return dataset_dir(name)
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"dataset {name!r} not found at {path}")
    return path


def _check_unique(seen: dict[str, Path], stem: str, mask_path: Path) -> None:
    """Record ``stem`` (an item id) in ``seen``.

    Raises:
        ValueError: another mask file already gave this id (e.g. ``x.png`` and ``x.bmp``): the
            object would be counted twice, or one of two objects under one id.
    """
    if stem in seen:
        raise ValueError(f"masks {seen[stem]} and {mask_path.name} give the same item id {stem!r}")
    seen[stem] = mask_path


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"expected folder {path} does not exist")
    return path


class GrabCut(_MaskDataset):
    """The GrabCut benchmark: ``data_GT/<stem>.{jpg,JPG,bmp}`` images, ``boundary_GT/<stem>.bmp``.

    Args:
        root: dataset folder (default ``<data root>/grabcut``).

    Raises:
        ValueError: the folder (or its ``data_GT``/``boundary_GT``) is missing, a mask has
            no image, two images share a stem or two masks an item id; the message names the
            expected path or the files.
    """

    name = "grabcut"

    def __init__(self, root: PathLike | None = None) -> None:
        super().__init__()
        self.root = _resolve_root(root, "grabcut")
        images = _require_dir(self.root / "data_GT")
        masks = _require_dir(self.root / "boundary_GT")
        by_stem: dict[str, Path] = {}
        for p in sorted(images.iterdir()):
            if p.suffix.lower() not in _IMAGE_EXTS:
                continue
            if p.stem in by_stem:  # which one the mask belongs to is unknowable
                raise ValueError(f"GrabCut images {by_stem[p.stem]} and {p.name} share the stem {p.stem!r}")
            by_stem[p.stem] = p
        seen: dict[str, Path] = {}
        for mask_path in sorted(masks.iterdir()):
            if mask_path.suffix.lower() not in _IMAGE_EXTS:
                continue
            stem = mask_path.stem
            _check_unique(seen, stem, mask_path)
            if stem not in by_stem:
                raise ValueError(f"GrabCut mask {mask_path} has no image {images / stem}.*")
            self._pairs.append((stem, by_stem[stem], mask_path))

    def _read_mask(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        arr = _read_gray(path)
        if arr.ndim == 3:
            arr = arr.max(axis=2)
        # RITM convention: exactly 128 is the unlabeled band, above it is foreground
        ignore = arr == 128
        gt = arr > 128
        return gt, ignore


_BERKELEY_STEM = re.compile(r"^(\d+)([a-z]?)$")


class Berkeley(_MaskDataset):
    """The Berkeley benchmark: ``images/<id>.jpg`` and ``masks/<id>[a|b].png`` (100 masks).

    Args:
        root: dataset folder (default ``<data root>/berkeley``).

    Raises:
        ValueError: the folder is missing, a mask name is not ``<digits>[letter].png``, a
            mask's image is missing, or two masks give one item id; the message names the
            expected path or the files.
    """

    name = "berkeley"

    def __init__(self, root: PathLike | None = None) -> None:
        super().__init__()
        self.root = _resolve_root(root, "berkeley")
        images = _require_dir(self.root / "images")
        masks = _require_dir(self.root / "masks")
        seen: dict[str, Path] = {}
        for mask_path in sorted(masks.iterdir()):
            if mask_path.suffix.lower() not in _IMAGE_EXTS:
                continue
            _check_unique(seen, mask_path.stem, mask_path)
            m = _BERKELEY_STEM.match(mask_path.stem)
            if m is None:
                raise ValueError(f"unexpected Berkeley mask name {mask_path.name}")
            image_path = images / f"{m.group(1)}.jpg"
            if not image_path.is_file():
                raise ValueError(f"Berkeley mask {mask_path} has no image {image_path}")
            self._pairs.append((mask_path.stem, image_path, mask_path))

    def _read_mask(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        arr = _read_gray(path)
        if arr.ndim == 3:
            arr = arr[..., 0]
        gt = arr > 127
        return gt, np.zeros_like(gt)
