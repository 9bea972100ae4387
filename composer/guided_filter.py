"""Edge-aware refinement of mask probability maps with the image as guide: the guided filter.

A low-resolution mask decoder (SAM's 256x256 logits for a 1024-px input, composer_tiny's 64x64
for 512 px) puts every boundary on a grid of 4-8 input pixels; bilinear upsampling then draws it
as a soft ramp that ignores where the image's own edge is. The guided filter (He, Sun and Tang,
"Guided Image Filtering", ECCV 2010 / TPAMI 2013) fits, in every (2r+1)^2 window, a linear model
``q = a . I + b`` of the map ``p`` in terms of the colour image ``I``; averaging the models of the
windows that cover a pixel gives an output that follows ``p`` in flat areas and snaps its
transitions to the image's colour edges. Cost: eight box filters per map; the image's window
statistics (and the per-pixel inverse of its colour covariance) are computed once per image and
shared by all maps of that image.

:class:`GuidedFilter` and :func:`box_mean` are importable from :mod:`composer.refine` too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _window_sum(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum over [i - r, i + r] (clipped at the ends) along ``dim``, by a running sum: O(1) per
    element whatever the radius."""
    n = x.shape[dim]
    r = min(radius, n - 1)
    c = torch.cumsum(x, dim=dim)
    last = c.narrow(dim, n - 1, 1)
    # upper ends: c[min(i + r, n - 1)]; lower ends: c[i - r - 1], or 0 below the start
    hi = torch.cat([c.narrow(dim, r, n - r), last.expand_as(c.narrow(dim, 0, r))], dim=dim)
    lo = torch.cat(
        [torch.zeros_like(c.narrow(dim, 0, r + 1)), c.narrow(dim, 0, n - r - 1)], dim=dim
    )
    return hi - lo


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)^2 window of each pixel of (..., H, W) ``x``, windows clipped at the
    border (each mean is over the pixels inside the image). Running sums: O(1) per pixel
    whatever the radius."""
    if radius <= 0:
        return x
    h, w = x.shape[-2:]
    s = _window_sum(_window_sum(x, radius, -1), radius, -2)
    ones_h = _window_sum(torch.ones(h, dtype=x.dtype, device=x.device), radius, 0)
    ones_w = _window_sum(torch.ones(w, dtype=x.dtype, device=x.device), radius, 0)
    return s / (ones_h[:, None] * ones_w[None, :])


#: Values (float32) of one band of the guided filter's streamed box filters: the filter works
#: over bands of rows of about this many values per pass (at least two windows' heights), so
#: its temporaries are a few tens of bytes times this, not a multiple of the image.
_BAND_ELEMENTS = 1 << 20


def _band_rows(planes: int, width: int, height: int, radius: int) -> int:
    """Rows of one band of ``planes`` (.., rows, ``width``) planes: about ``_BAND_ELEMENTS``
    values, and at least two windows' heights (a band re-reads ``2 * radius + 1`` rows)."""
    rows = max(2 * (2 * radius + 1), _BAND_ELEMENTS // max(1, planes * width))
    return max(1, min(height, rows))


def _window_sum_lean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """``_window_sum(x, radius, -1)`` to the bit (the same running sums and differences; its
    first ``r + 1`` values, less zero there, are the sums themselves), with one temporary."""
    n = x.shape[-1]
    r = min(radius, n - 1)
    c = torch.cumsum(x, dim=-1)
    out = torch.empty(c.shape)
    out[..., : n - r] = c[..., r:]
    out[..., n - r :] = c[..., n - 1 :]
    out[..., r + 1 :] -= c[..., : n - r - 1]
    return out


class _BoxMeanRows:
    """:func:`box_mean` of an (..., H, W) array whose rows ``rows(lo, hi)`` gives on demand,
    band by band from the top (``take``), bit-identical to ``box_mean`` of the whole array.

    A band's horizontal running sums are its own rows'. The vertical ones run down whole
    columns: torch's CPU ``cumsum`` of float32 adds in a float64 accumulator and rounds it to
    float32 at every row, so a band's sums restart from the float64 sums of the row above its
    first input row (``carry``) and are the whole columns' to the bit.
    """

    def __init__(self, rows: Any, height: int, width: int, radius: int) -> None:
        self.rows = rows
        self.height = height
        self.radius = radius
        self.reach = min(radius, height - 1)  # the vertical pass's, clipped as _window_sum does
        self.ones_h = _window_sum(torch.ones(height), radius, 0)
        self.ones_w = _window_sum(torch.ones(width), radius, 0)
        self.pos = 0  # the first row the next band gives
        self.carry: torch.Tensor | None = None  # float64 column sums down to the row above it

    def take(self, end: int) -> torch.Tensor:
        """(..., end - pos, W) float32 box means of rows [pos, end); pos moves to ``end``."""
        r0, r1, r, h = self.pos, end, self.reach, self.height
        lo, hi = max(0, r0 - r - 1), min(h, r1 + r)  # the input rows the band's windows read
        sums = _window_sum_lean(self.rows(lo, hi), self.radius).double()
        if self.carry is not None:  # lo > 0: the step the whole column's accumulator takes
            sums[..., 0, :] += self.carry
        sums.cumsum_(dim=-2)
        nxt = r1 - r - 1  # the next band's first input row
        self.carry = sums[..., nxt - 1 - lo, :].clone() if nxt > 0 else None
        c = sums.float()
        del sums
        # row i: c[min(i + r, h - 1)] - c[i - r - 1] (nothing above the first r + 1 rows)
        out = torch.empty((*c.shape[:-2], r1 - r0, c.shape[-1]))
        k = max(0, min(r1, h - r) - r0)
        out[..., :k, :] = c[..., r0 + r - lo : r0 + r - lo + k, :]
        out[..., k:, :] = c[..., h - 1 - lo : h - lo, :]
        j = max(r0, r + 1)
        if j < r1:
            out[..., j - r0 :, :] -= c[..., j - r - 1 - lo : r1 - r - 1 - lo, :]
        out /= self.ones_h[r0:r1, None] * self.ones_w[None, :]
        self.pos = r1
        return out


class _RowWindow:
    """Rows ``[lo, hi)`` on demand of what ``produce(end)`` gives band by band (rows
    ``[hi, end)``), for a reader whose ``lo`` and ``hi`` only move down: keeps the rows read
    again (a box filter's overlap of its bands), forgets those above ``lo``."""

    def __init__(self, produce: Any) -> None:
        self.produce = produce
        self.buf: torch.Tensor | None = None
        self.lo = self.hi = 0

    def __call__(self, lo: int, hi: int) -> torch.Tensor:
        if hi > self.hi:
            new = self.produce(hi)
            self.buf = new if self.buf is None else torch.cat([self.buf, new], dim=-2)
            self.hi = hi
        assert self.buf is not None and lo >= self.lo
        self.buf = self.buf[..., lo - self.lo :, :]
        self.lo = lo
        return self.buf[..., : hi - lo, :]


class GuidedFilter:
    """Colour guided filter for many maps of one image.

    Args:
        image: (H, W, 3) RGB or (H, W) grey guide image: uint8, or float in [0, 1]. Memory:
            about 51 bytes per pixel for a uint8 image (60 for a float one): a copy of the
            image, its window means and the inverses of its window covariances (a 12-MP
            photo: 0.6 GB). Building them and filtering work over bands of rows, so the
            temporaries are a band's: about 0.1 GB for a 6000-px-wide image at radius 8
            (they grow with the width and the radius, not with the height).
        radius: window radius r in pixels (>= 1).
        eps: regulariser of the local linear fit, in units of the guide's [0, 1] intensities
            squared: edges with contrast well above ``sqrt(eps)`` are followed, weaker
            texture is smoothed away.

    Call with (N, H, W) or (N, 1, H, W) float maps (probabilities in [0, 1]); returns the
    filtered maps with the input's shape.

    Attributes:
        mean_i: (1, C, H, W) float32 window means of the guide.
        inv: (1, C, C, H, W) float32 inverses of the regularised window covariances.
    """

    def __init__(self, image: Any, radius: int, eps: float) -> None:
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
            raise ValueError(f"guide image must be (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")
        # a uint8 guide is kept as a copy of its pixels (3 bytes a pixel, not 12) and scaled
        # to [0, 1] band by band, to the same float32 values
        self._scale = 255.0 if arr.dtype == np.uint8 else 1.0
        if arr.dtype == np.uint8:
            self._pixels = np.array(arr, order="C")
        else:
            self._pixels = np.ascontiguousarray(arr, dtype=np.float32) / self._scale
        self.radius = int(radius)
        self.eps = float(eps)
        self.size = tuple(arr.shape[:2])
        h, w = self.size
        c = arr.shape[-1]
        r = self.radius
        self.mean_i = torch.empty((1, c, h, w))
        means = _BoxMeanRows(lambda lo, hi: self._guide(lo, hi, 0, w), h, w, r)
        rows = _band_rows(c, w, h, r)
        for r0 in range(0, h, rows):
            self.mean_i[..., r0 : r0 + rows, :] = means.take(min(h, r0 + rows))
        # per-pixel covariance of the guide in its window, regularised, then inverted once:
        # band by band, so only a band's covariances exist at a time
        pairs = [(i, j) for i in range(c) for j in range(i, c)]

        def products(lo: int, hi: int) -> torch.Tensor:
            g = self._guide(lo, hi, 0, w)
            return torch.cat([g[:, i : i + 1] * g[:, j : j + 1] for i, j in pairs], dim=1)

        boxes = _BoxMeanRows(products, h, w, r)
        eye = self.eps * torch.eye(c)
        # (H, W, C, C) inverses, stored as torch.linalg.inv returns them (column-major)
        inv = torch.empty_strided((h, w, c, c), (w * c * c, c * c, 1, c))
        rows = _band_rows(len(pairs) + c * c, w, h, r)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            sums = boxes.take(r1)
            mean_i = self.mean_i[..., r0:r1, :]
            cov = torch.empty((1, c, c, r1 - r0, w))
            for k, (i, j) in enumerate(pairs):
                v = sums[:, k] - mean_i[:, i] * mean_i[:, j]
                cov[:, i, j] = v
                cov[:, j, i] = v
            cov += eye.view(1, c, c, 1, 1)
            # a C x C solve per pixel, shared by every map of the image
            inv[r0:r1] = torch.linalg.inv(cov[0].permute(2, 3, 0, 1))
            del sums, cov
        self.inv = inv.permute(2, 3, 0, 1)[None]

    @property
    def guide(self) -> torch.Tensor:
        """(1, C, H, W) float32 guide intensities in [0, 1] (made on each access)."""
        return self._guide(0, self.size[0], 0, self.size[1])

    def _guide(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """(1, C, y1 - y0, x1 - x0) float32 guide intensities in [0, 1] of those rows and
        columns (a view of the float pixels, or a fresh band scaled from the uint8 ones)."""
        px = self._pixels[y0:y1, x0:x1]
        if self._pixels.dtype == np.uint8:
            px = np.ascontiguousarray(px, dtype=np.float32) / self._scale
        return torch.from_numpy(px).permute(2, 0, 1)[None]

    @torch.inference_mode()
    def __call__(
        self, maps: torch.Tensor, window: tuple[int, int, int, int] | None = None
    ) -> torch.Tensor:
        """Filter (N, H, W) or (N, 1, H, W) maps of the whole image, or of ``window``
        ``(y0, y1, x0, x1)`` of it (maps then (..., y1 - y0, x1 - x0)). A window gives the
        whole-image result except within ``2 * radius`` of its sides that are inside the image
        (there the maps' windows are clipped), so pad windows by that much.

        Works over bands of rows and groups of maps (the result is the same to the bit as
        filtering all at once): besides the maps and the result, it holds a band's
        temporaries, not the direct computation's full-size ones (about 100 bytes per pixel
        of the window per map)."""
        y0, y1, x0, x1 = (0, self.size[0], 0, self.size[1]) if window is None else window
        if not (0 <= y0 < y1 <= self.size[0] and 0 <= x0 < x1 <= self.size[1]):
            raise ValueError(f"window {window} is not inside the {self.size} guide")
        size = (y1 - y0, x1 - x0)
        shape = maps.shape
        if tuple(shape[-2:]) != size:
            raise ValueError(f"maps are {tuple(shape[-2:])}, the guide window is {size}")
        h, w = size
        c = self.mean_i.shape[1]
        p = maps.reshape(-1, 1, *size).float()
        q = torch.empty((p.shape[0], h, w))
        # a group's band: its maps' p, g * p, a and b (1 + C planes each) and inv * cov (C * C)
        per_map = (1 + c) + c * c
        group = max(1, _BAND_ELEMENTS // (per_map * w * _band_rows(1, w, h, self.radius)))
        for m0 in range(0, p.shape[0], group):
            self._filter(p[m0 : m0 + group], q[m0 : m0 + group], (y0, x0), per_map)
        return q.reshape(shape)

    def _filter(
        self, p: torch.Tensor, q: torch.Tensor, origin: tuple[int, int], per_map: int
    ) -> None:
        """Write the filtered (n, 1, h, w) maps ``p`` of the window at ``origin`` (y0, x0) of
        the guide into the (n, h, w) ``q``, band by band. The maths is the direct one's,

            mean_p = box_mean(p); cov_ip = box_mean(g * p) - mean_i * mean_p
            a = inv @ cov_ip (per pixel); b = mean_p - a . mean_i
            q = box_mean(a) . g + box_mean(b)

        with every box mean streamed (``_BoxMeanRows``): the second pair reads the rows of
        ``a`` and ``b`` that the first pair's bands give."""
        (y0, x0), (n, _, h, w) = origin, p.shape
        r = self.radius
        c = self.mean_i.shape[1]

        def guide(lo: int, hi: int) -> torch.Tensor:
            return self._guide(y0 + lo, y0 + hi, x0, x0 + w)

        def maps_rows(lo: int, hi: int) -> torch.Tensor:  # p and g * p: (n, 1 + C, k, w)
            pr = p[..., lo:hi, :]
            return torch.cat([pr, guide(lo, hi) * pr], dim=1)

        first = _BoxMeanRows(maps_rows, h, w, r)

        def coefficients(end: int) -> torch.Tensor:  # a and b of the next rows: (n, C + 1, k, w)
            r0 = first.pos
            means = first.take(end)
            mean_p = means[:, :1]
            mean_i = self.mean_i[..., y0 + r0 : y0 + end, x0 : x0 + w]
            inv = self.inv[..., y0 + r0 : y0 + end, x0 : x0 + w]
            cov_ip = means[:, 1:] - mean_i * mean_p  # (n, C, k, w)
            del means
            a = (inv * cov_ip[:, None]).sum(2)  # (n, C, k, w): inv @ cov per pixel
            b = mean_p[:, 0] - (a * mean_i).sum(1)  # (n, k, w)
            return torch.cat([a, b[:, None]], dim=1)

        second = _BoxMeanRows(_RowWindow(coefficients), h, w, r)
        rows = _band_rows(n * per_map, w, h, r)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            means = second.take(r1)  # box means of a and b: (n, C + 1, k, w)
            q[:, r0:r1] = (means[:, :c] * guide(r0, r1)).sum(1) + means[:, c]
