"""Classical zero-shot edge baselines of SAM Table 3: Sobel, Canny and Felzenszwalb-Huttenlocher.

Each method is a task with a frozen config; ``task(image)`` (or ``task(context)`` /
``task.run(context)``, reading ``context.image``) returns an :class:`EdgeMap`, (H, W) float32 in
[0, 1], for the BSDS benchmark to threshold. The SAM paper gives none of these detectors'
settings, so the choices are ours. Defaults come from BSDS500 *val* (never test):
``recipes/edges_classic_bsds500.py --tune`` on the first 50 val images with 25 thresholds picked
Canny sigma=3, low_ratio=0.6 (val ODS .610) and Felzenszwalb-Huttenlocher sigma=0.8,
min_size=100 (.608). Sobel stays the bare 3x3 operator (sigma=0; strongest colour channel and
suppression won on val, .525): Gaussian pre-smoothing would lift it (sigma=2: .599) but turns it
into Canny without hysteresis.

- **Sobel**: 3x3 Sobel gradients of the image (optionally Gaussian-smoothed first), per-pixel
  colour channel of largest magnitude, Canny-style non-maximum suppression along the gradient
  (interpolated), divided by the image maximum.
- **Canny**: the same gradient after Gaussian smoothing (sigma), suppression, then hysteresis.
  The soft value of a pixel is the highest "high" threshold t (on the normalised magnitude) at
  which it survives hysteresis with low threshold ``low_ratio * t``. Thresholding the map at t
  therefore gives exactly ``Canny(sigma, low=low_ratio*t, high=t)``; the PR curve sweeps Canny's
  threshold pair, as in the BSDS500 paper's Canny curve. Values sit mid-way between the
  benchmark's thresholds so float32 rounding never moves a pixel across one.
- **Felzenszwalb-Huttenlocher**: :func:`skimage.segmentation.felzenszwalb` at several scales
  ``k``; a pixel is a boundary of a segmentation when its label differs from its right or lower
  neighbour; the soft value is the fraction of scales in which it is a boundary (centred in its
  bin, ``(count - 0.5) / n``), so coarse-scale boundaries score highest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.filters import gaussian, sobel_h, sobel_v
from skimage.segmentation import felzenszwalb

from composer.structures.edges import EdgeMap

logger = logging.getLogger(__name__)

#: Pixels processed at once by the banded steps (bounds their temporaries).
_BAND_PIXELS = 1 << 20

__all__ = [
    "CannyConfig",
    "CannyEdges",
    "FelzHuttConfig",
    "FelzHuttEdges",
    "SobelConfig",
    "SobelEdges",
    "METHODS",
    "classic_edges",
    "make_classic_task",
]


def _check_image(image: Any) -> np.ndarray:
    if hasattr(image, "image") and not isinstance(image, np.ndarray):
        image = image.image  # a task context
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"image must be a numpy array or a context with .image, got {type(image).__name__}"
        )
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(
            f"image must be (H, W, 3) or (H, W) uint8, got {image.shape} {image.dtype}"
        )
    if image.shape[0] < 3 or image.shape[1] < 3:
        raise ValueError(f"image too small for edge detection: {image.shape}")
    return image


def _gradients(image: np.ndarray, sigma: float, color: str) -> tuple[np.ndarray, ...]:
    """Sobel gradients ``(gy, gx, magnitude)``, (H, W) float64, on a [0, 1] image.

    ``color="gray"`` uses the luminance; ``"max"`` takes per pixel the channel with the largest
    gradient magnitude (and its direction).

    Memory: computed over bands of rows, each read with the filters' reach of context (the
    Gaussian's truncation at 4 sigma, one row for the Sobel filter), so every value is the
    whole-image one; the three results plus band-sized temporaries are alive, instead of
    twelve (H, W) float64 maps at the peak (a 24-MP image: 0.65 GB instead of 2.3 GB). The
    luminance of ``"gray"`` is still taken over the whole image first.
    """
    if color not in ("gray", "max"):
        raise ValueError(f"color must be 'gray' or 'max', got {color!r}")
    scaled = image.ndim == 3 and color == "gray"
    if scaled:
        img = image.astype(np.float64)
        img /= 255.0  # in place: the same values as image / 255.0
        planes = [rgb2gray(img)]
        del img
    else:
        planes = [image] if image.ndim == 2 else [image[..., c] for c in range(3)]
    h, w = image.shape[:2]
    gy, gx, mag = (np.empty((h, w)) for _ in range(3))
    # scipy's Gaussian reaches int(4 sigma + 0.5) pixels; one more row each for the Sobel
    # filter and to spare
    margin = (int(4.0 * sigma + 0.5) if sigma > 0 else 0) + 2
    band = max(1, _BAND_PIXELS // max(w, 1))
    for y0 in range(0, h, band):
        y1 = min(y0 + band, h)
        ya, yb = max(0, y0 - margin), min(h, y1 + margin)
        inner = slice(y0 - ya, y1 - ya)
        for i, plane in enumerate(planes):
            ch = plane[ya:yb]
            if not scaled:
                ch = ch.astype(np.float64)
                ch /= 255.0  # in place: the same values as image / 255.0
            if sigma > 0:
                ch = gaussian(ch, sigma=sigma, mode="nearest", preserve_range=True)
            by, bx = sobel_h(ch)[inner], sobel_v(ch)[inner]
            bm = np.hypot(by, bx)
            if i == 0:
                gy[y0:y1], gx[y0:y1], mag[y0:y1] = by, bx, bm
            else:
                take = bm > mag[y0:y1]
                for arr, new in zip((gy, gx, mag), (by, bx, bm), strict=True):
                    np.copyto(arr[y0:y1], new, where=take)
    return gy, gx, mag


def nonmax_suppress(gy: np.ndarray, gx: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """Canny non-maximum suppression with bilinear interpolation along the gradient.

    Args:
        gy, gx: (H, W) float64 gradient components (rows, columns).
        mag: (H, W) float64 gradient magnitude.

    Returns:
        (H, W) float64: ``mag`` where it is a local maximum across the edge (>= both neighbours
        one pixel away along the gradient direction), else 0.

    Memory: the comparisons run over bands of rows (each pixel's interpolation reads ``mag``
    wherever it points, so every value is the whole-map one); the whole-array expression held
    nine (H, W) float64 temporaries besides the result.
    """
    h, w = mag.shape
    out = np.zeros_like(mag)
    xx = np.arange(w, dtype=np.float64)
    band = max(1, _BAND_PIXELS // max(w, 1))
    for y0 in range(0, h, band):
        y1 = min(y0 + band, h)
        m = mag[y0:y1]
        with np.errstate(invalid="ignore", divide="ignore"):
            uy = np.where(m > 0, gy[y0:y1] / m, 0.0)
            ux = np.where(m > 0, gx[y0:y1] / m, 0.0)
        yy = np.arange(y0, y1, dtype=np.float64)[:, None]
        fwd = ndimage.map_coordinates(mag, [yy + uy, xx + ux], order=1, mode="nearest")
        bwd = ndimage.map_coordinates(mag, [yy - uy, xx - ux], order=1, mode="nearest")
        keep = (m > 0) & (m >= fwd) & (m >= bwd)
        np.copyto(out[y0:y1], m, where=keep)
    return out


def _normalise(x: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """Divide by the image maximum; a map whose maximum is below ``floor`` (flat image) is all 0.

    Returns (H, W) float32: the float64 quotient rounded, computed over bands of rows.
    """
    hi = float(x.max()) if x.size else 0.0
    out = np.zeros(x.shape, np.float32)
    if hi > floor:
        band = max(1, _BAND_PIXELS // max(x[0].size, 1))
        for y0 in range(0, len(x), band):
            out[y0 : y0 + band] = x[y0 : y0 + band] / hi
    return out


def _level_values(n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's thresholds t_i and values mid-way between t_i and t_{i+1} (last: to 1)."""
    t = np.linspace(1.0 / (n_levels + 1), 1.0 - 1.0 / (n_levels + 1), n_levels)
    upper = np.r_[t[1:], 1.0]
    return t, (t + upper) / 2.0


@dataclass(frozen=True)
class SobelConfig:
    """Sobel baseline settings.

    Attributes:
        sigma: Gaussian pre-smoothing in pixels (0: the bare 3x3 Sobel filter).
        color: ``"gray"`` (luminance) or ``"max"`` (strongest colour channel per pixel).
        nms: thin ridges by non-maximum suppression (else the raw magnitude; the benchmark
            then thins each thresholded map morphologically).
    """

    sigma: float = 0.0
    color: str = "max"
    nms: bool = True


@dataclass(frozen=True)
class CannyConfig:
    """Canny baseline settings.

    Attributes:
        sigma: Gaussian smoothing in pixels.
        low_ratio: hysteresis low threshold as a fraction of the high one.
        color: ``"gray"`` or ``"max"`` (as in :class:`SobelConfig`).
        levels: number of high thresholds encoded in the soft map (use the benchmark's count).
    """

    sigma: float = 3.0
    low_ratio: float = 0.6
    color: str = "max"
    levels: int = 99


@dataclass(frozen=True)
class FelzHuttConfig:
    """Felzenszwalb-Huttenlocher baseline settings.

    Attributes:
        scales: the ``scale`` (k) values; larger k, larger segments.
        sigma: Gaussian pre-smoothing of :func:`skimage.segmentation.felzenszwalb`.
        min_size: minimum segment size in pixels (post-merge).
    """

    scales: tuple[float, ...] = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
    sigma: float = 0.8
    min_size: int = 100


class _ClassicTask:
    config_cls: Any = object
    name = ""
    config: Any

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        cfg: Any = config if config is not None else self.config_cls()
        if not isinstance(cfg, self.config_cls):
            raise TypeError(
                f"config must be a {self.config_cls.__name__}, got {type(cfg).__name__}"
            )
        self.config = replace(cfg, **overrides) if overrides else cfg
        self._validate()

    def _validate(self) -> None:  # pragma: no cover - overridden
        pass

    def __call__(self, image: Any) -> EdgeMap:
        """Edge map of an (H, W, 3) uint8 image (or of ``context.image``).

        Returns:
            EdgeMap with ``edges`` (H, W) float32 in [0, 1] and ``meta["method"]``.
        """
        img = _check_image(image)
        edges = self._edges(img)
        meta = {"method": self.name, "config": self.config}
        if hasattr(image, "image_id"):
            meta["image_id"] = image.image_id
        return EdgeMap(edges, meta)

    def run(self, context: Any) -> EdgeMap:
        """Same as calling the task on ``context.image``."""
        if not hasattr(context, "image"):
            raise TypeError(f"context must have an .image attribute, got {type(context).__name__}")
        return self(context)

    def _edges(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError


class SobelEdges(_ClassicTask):
    """Sobel gradient magnitude, suppressed to ridges, normalised to [0, 1]."""

    config_cls = SobelConfig
    name = "sobel"

    def _validate(self) -> None:
        c = self.config
        if c.sigma < 0 or c.color not in ("gray", "max"):
            raise ValueError(f"invalid SobelConfig {c}")

    def _edges(self, image: np.ndarray) -> np.ndarray:
        c = self.config
        gy, gx, mag = _gradients(image, c.sigma, c.color)
        if c.nms:
            ridge = nonmax_suppress(gy, gx, mag)
            del gy, gx, mag
            return _normalise(ridge)
        del gy, gx
        return _normalise(mag)


class CannyEdges(_ClassicTask):
    """Canny (smoothing, gradient, suppression, hysteresis) as a soft map over its thresholds."""

    config_cls = CannyConfig
    name = "canny"

    def _validate(self) -> None:
        c = self.config
        if (
            c.sigma < 0
            or not (0 < c.low_ratio <= 1)
            or c.levels < 1
            or c.color not in ("gray", "max")
        ):
            raise ValueError(f"invalid CannyConfig {c}")

    def _edges(self, image: np.ndarray) -> np.ndarray:
        c = self.config
        gy, gx, mag = _gradients(image, c.sigma, c.color)
        ridge = nonmax_suppress(gy, gx, mag)
        del gy, gx, mag  # freed before the reconstruction, the peak
        ridge = _normalise(ridge).astype(np.float64)
        return hysteresis_levels(ridge, c.low_ratio, c.levels)


def hysteresis_levels(ridge: np.ndarray, low_ratio: float, levels: int) -> np.ndarray:
    """Soft map whose threshold at t is Canny hysteresis with high = t and low = ``low_ratio * t``.

    A pixel survives hysteresis at t when an 8-connected path inside ``ridge >= low_ratio * t``
    links it to a pixel with ``ridge >= t``. The largest such t is the grey-level reconstruction
    by dilation of ``ridge`` under ``ridge / low_ratio`` (max over paths of the min along them),
    computed once; it is then snapped to the benchmark's ``levels`` thresholds, each stored
    mid-way to the next one.

    Args:
        ridge: (H, W) float64 suppressed, normalised gradient magnitude in [0, 1].
        low_ratio: in (0, 1].
        levels: number of thresholds.

    Returns:
        (H, W) float32 in [0, 1).
    """
    from skimage.morphology import reconstruction

    if ridge.max() <= 0:
        return np.zeros(ridge.shape, dtype=np.float32)
    mask = ridge / low_ratio
    best = reconstruction(ridge, mask, method="dilation", footprint=np.ones((3, 3)))
    np.minimum(best, mask, out=best)  # a pixel must itself pass the low threshold
    del mask
    thresholds, values = _level_values(levels)
    # value of k thresholds <= best: 0 for k = 0, else values[k - 1] (float32 as stored)
    table = np.r_[0.0, values].astype(np.float32)
    out = np.empty(best.shape, np.float32)
    band = max(1, _BAND_PIXELS // max(best[0].size, 1))
    for y0 in range(0, len(best), band):
        out[y0 : y0 + band] = table[np.searchsorted(thresholds, best[y0 : y0 + band], side="right")]
    return out


class FelzHuttEdges(_ClassicTask):
    """Felzenszwalb-Huttenlocher segment boundaries, averaged over scales."""

    config_cls = FelzHuttConfig
    name = "felzenszwalb"

    def _validate(self) -> None:
        c = self.config
        if not c.scales or any(s <= 0 for s in c.scales) or c.sigma < 0 or c.min_size < 0:
            raise ValueError(f"invalid FelzHuttConfig {c}")

    def _edges(self, image: np.ndarray) -> np.ndarray:
        c = self.config
        img = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        n = len(c.scales)
        # Memory: skimage's felzenszwalb is the peak, about 330 bytes a pixel inside each call
        # (float64 copies of the image, 8-connected edge lists and their sorted copies); what
        # this loop keeps alive across the calls is the count, the smallest integer type that
        # holds n (one byte a pixel, not four)
        count = np.zeros(img.shape[:2], dtype=np.min_scalar_type(n))
        for k in c.scales:
            labels = felzenszwalb(img, scale=float(k), sigma=c.sigma, min_size=int(c.min_size))
            count += segment_boundaries(labels)
            del labels  # not alive during the next scale's segmentation
        # value of a count: 0, else (count - 0.5) / n, as float32
        counts = np.arange(n + 1)
        table = np.where(counts > 0, (counts - 0.5) / n, 0.0).astype(np.float32)
        return table[count]


def segment_boundaries(labels: np.ndarray) -> np.ndarray:
    """One-pixel boundaries of a label image.

    Args:
        labels: (H, W) int region labels.

    Returns:
        (H, W) bool, True where the label differs from the right or the lower neighbour.
    """
    b = np.zeros(labels.shape, dtype=bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return b


METHODS: dict[str, type[_ClassicTask]] = {
    "sobel": SobelEdges,
    "canny": CannyEdges,
    "felzenszwalb": FelzHuttEdges,
}
_ALIASES = {"felz-hutt": "felzenszwalb", "felzhutt": "felzenszwalb", "fh": "felzenszwalb"}


def make_classic_task(method: str, **overrides: Any) -> _ClassicTask:
    """The task for ``method`` (``sobel``, ``canny``, ``felzenszwalb``/``felz-hutt``/``fh``).

    Args:
        method: method name (case-insensitive).
        **overrides: config fields to change, e.g. ``sigma=1.5``.
    """
    key = _ALIASES.get(method.lower(), method.lower())
    if key not in METHODS:
        raise ValueError(f"unknown classic edge method {method!r}; choose from {sorted(METHODS)}")
    return METHODS[key](**overrides)


def classic_edges(image: np.ndarray, method: str, **overrides: Any) -> EdgeMap:
    """Edge map of one image with a classical method (see :func:`make_classic_task`).

    Args:
        image: (H, W, 3) uint8 RGB.
        method: ``"sobel"``, ``"canny"`` or ``"felzenszwalb"``.
        **overrides: config fields to change.

    Returns:
        EdgeMap, (H, W) float32 in [0, 1].
    """
    return make_classic_task(method, **overrides)(image)
