"""Edge-aware refinement of mask probability maps with the image as guide.

A low-resolution mask decoder (SAM's 256x256 logits for a 1024-px input, composer_tiny's 64x64
for 512 px) puts every boundary on a grid of 4-8 input pixels; bilinear upsampling then draws it
as a soft ramp that ignores where the image's own edge is. The guided filter (He, Sun and Tang,
"Guided Image Filtering", ECCV 2010 / TPAMI 2013) fits, in every (2r+1)^2 window, a linear model
``q = a . I + b`` of the map ``p`` in terms of the colour image ``I``; averaging the models of the
windows that cover a pixel gives an output that follows ``p`` in flat areas and snaps its
transitions to the image's colour edges. Cost: eight box filters per map; the image's window
statistics (and the per-pixel inverse of its colour covariance) are computed once per image and
shared by all maps of that image.
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
    lo = torch.cat([torch.zeros_like(c.narrow(dim, 0, r + 1)), c.narrow(dim, 0, n - r - 1)], dim=dim)
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


class GuidedFilter:
    """Colour guided filter for many maps of one image.

    Args:
        image: (H, W, 3) RGB or (H, W) grey guide image: uint8, or float in [0, 1]. Memory:
            about 60 bytes per pixel for the image's statistics (a 12-MP photo: 0.7 GB).
        radius: window radius r in pixels (>= 1).
        eps: regulariser of the local linear fit, in units of the guide's [0, 1] intensities
            squared: edges with contrast well above ``sqrt(eps)`` are followed, weaker
            texture is smoothed away.

    Call with (N, H, W) or (N, 1, H, W) float maps (probabilities in [0, 1]); returns the
    filtered maps with the input's shape.
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
        scale = 255.0 if arr.dtype == np.uint8 else 1.0
        guide = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / scale)
        self.guide = guide.permute(2, 0, 1)[None]  # (1, C, H, W)
        self.radius = int(radius)
        self.eps = float(eps)
        self.size = tuple(arr.shape[:2])
        g = self.guide
        c = g.shape[1]
        self.mean_i = box_mean(g, self.radius)  # (1, C, H, W)
        # per-pixel covariance of the guide in its window, regularised, then inverted once
        cov = torch.empty((1, c, c, *self.size))
        for i in range(c):
            for j in range(i, c):
                v = box_mean(g[:, i : i + 1] * g[:, j : j + 1], self.radius)[:, 0]
                v = v - self.mean_i[:, i] * self.mean_i[:, j]
                cov[:, i, j] = v
                cov[:, j, i] = v
        cov = cov + self.eps * torch.eye(c).view(1, c, c, 1, 1)
        # (H, W, C, C) inverse; a C x C solve per pixel, shared by every map of the image
        self.inv = torch.linalg.inv(cov[0].permute(2, 3, 0, 1)).permute(2, 3, 0, 1)[None]

    @torch.inference_mode()
    def __call__(
        self, maps: torch.Tensor, window: tuple[int, int, int, int] | None = None
    ) -> torch.Tensor:
        """Filter (N, H, W) or (N, 1, H, W) maps of the whole image, or of ``window``
        ``(y0, y1, x0, x1)`` of it (maps then (..., y1 - y0, x1 - x0)). A window gives the
        whole-image result except within ``2 * radius`` of its sides that are inside the image
        (there the maps' windows are clipped), so pad windows by that much."""
        y0, y1, x0, x1 = (0, self.size[0], 0, self.size[1]) if window is None else window
        if not (0 <= y0 < y1 <= self.size[0] and 0 <= x0 < x1 <= self.size[1]):
            raise ValueError(f"window {window} is not inside the {self.size} guide")
        size = (y1 - y0, x1 - x0)
        shape = maps.shape
        if tuple(shape[-2:]) != size:
            raise ValueError(f"maps are {tuple(shape[-2:])}, the guide window is {size}")
        g = self.guide[..., y0:y1, x0:x1]
        mean_i = self.mean_i[..., y0:y1, x0:x1]
        inv = self.inv[..., y0:y1, x0:x1]
        r = self.radius
        p = maps.reshape(-1, 1, *size).float()
        mean_p = box_mean(p, r)  # (N, 1, h, w)
        cov_ip = box_mean(g * p, r) - mean_i * mean_p  # (N, C, h, w)
        a = (inv * cov_ip[:, None]).sum(2)  # (N, C, h, w): inv @ cov per pixel
        b = mean_p[:, 0] - (a * mean_i).sum(1)  # (N, h, w)
        q = (box_mean(a, r) * g).sum(1) + box_mean(b[:, None], r)[:, 0]
        return q.reshape(shape)
