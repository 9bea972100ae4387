"""Augmentation variants and prepared samples: what the trainer reads.

Each item is seen through a few deterministic :class:`Variant` s (crop, flip, colour jitter).
:func:`prepare_sample` turns (item, variant) into the model-input image and the layers in the
decoder's low-res frame (the padded square input scaled to ``low_res``), which is what the loss
and the prompt simulation use; :func:`index_masks` lists the (layer, label) masks a sample
trains on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from .items import IGNORE_LABEL, SegmentationItem


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
