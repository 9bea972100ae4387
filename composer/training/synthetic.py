"""Synthetic training items: random shapes (tests, warm-up) and copy-paste composites.

:func:`synthetic_shapes` draws random ellipses and rectangles, each its own mask, on noise or on
given backgrounds; :func:`paste_composites` cuts whole masks out of source items and pastes
them, scaled, mirrored and feather-edged, onto other backgrounds. Both return
:class:`~composer.training.data.SegmentationItem` s.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .items import IGNORE_LABEL, SegmentationItem


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
