"""composer.guided_filter and composer.refine on large images: the banded guided filter equals
the whole-array one to the bit, and holds about its stored statistics, not several full-size
temporaries per pixel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import composer.guided_filter as guided_filter
import composer.refine as refine
from composer.refine import GrabCutRefine, GuidedFilter

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the oracle
# The guided filter as it was written before it worked in bands: every statistic a whole
# (..., H, W) array, each box mean two running sums over the whole rows and columns.
def _oracle_window_sum(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    r = min(radius, n - 1)
    c = torch.cumsum(x, dim=dim)
    last = c.narrow(dim, n - 1, 1)
    hi = torch.cat([c.narrow(dim, r, n - r), last.expand_as(c.narrow(dim, 0, r))], dim=dim)
    zeros = torch.zeros_like(c.narrow(dim, 0, r + 1))
    lo = torch.cat([zeros, c.narrow(dim, 0, n - r - 1)], dim=dim)
    return hi - lo


def _oracle_box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = _oracle_window_sum(_oracle_window_sum(x, radius, -1), radius, -2)
    ones_h = _oracle_window_sum(torch.ones(h), radius, 0)
    ones_w = _oracle_window_sum(torch.ones(w), radius, 0)
    return s / (ones_h[:, None] * ones_w[None, :])


def _oracle_stats(image: np.ndarray, r: int, eps: float):
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    g = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / scale).permute(2, 0, 1)[None]
    c = g.shape[1]
    mean_i = _oracle_box_mean(g, r)
    cov = torch.empty((1, c, c, *arr.shape[:2]))
    for i in range(c):
        for j in range(i, c):
            v = _oracle_box_mean(g[:, i : i + 1] * g[:, j : j + 1], r)[:, 0]
            v = v - mean_i[:, i] * mean_i[:, j]
            cov[:, i, j] = v
            cov[:, j, i] = v
    cov = cov + eps * torch.eye(c).view(1, c, c, 1, 1)
    inv = torch.linalg.inv(cov[0].permute(2, 3, 0, 1)).permute(2, 3, 0, 1)[None]
    return g, mean_i, inv


def _oracle_filter(stats, p: torch.Tensor, r: int, window) -> torch.Tensor:
    g, mean_i, inv = stats
    y0, y1, x0, x1 = window
    g, mean_i, inv = (t[..., y0:y1, x0:x1] for t in (g, mean_i, inv))
    shape = p.shape
    p = p.reshape(-1, 1, y1 - y0, x1 - x0).float()
    mean_p = _oracle_box_mean(p, r)
    cov_ip = _oracle_box_mean(g * p, r) - mean_i * mean_p
    a = (inv * cov_ip[:, None]).sum(2)
    b = mean_p[:, 0] - (a * mean_i).sum(1)
    q = (_oracle_box_mean(a, r) * g).sum(1) + _oracle_box_mean(b[:, None], r)[:, 0]
    return q.reshape(shape)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().numpy().view(np.uint32)  # -0.0 and 0.0, NaN payloads: all told apart


def _assert_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.array_equal(_bits(got), _bits(want)), float((got - want).abs().max())


def _fixed_rows(rows: int):
    return lambda planes, width, height, radius: max(1, min(height, rows))


# ----------------------------------------------------------------------------- bit identity
@pytest.mark.parametrize("rows", [None, 1, 2, 5])
def test_banded_guided_filter_equals_the_whole_array_filter_to_the_bit(monkeypatch, rows) -> None:
    """Any band height (1 row included), any number of maps per group (1 included), RGB,
    grey and float guides, whole image and non-contiguous windows at the border and inside:
    the statistics and the filtered maps are the whole-array oracle's, bit for bit."""
    if rows is not None:
        monkeypatch.setattr(guided_filter, "_band_rows", _fixed_rows(rows))
        monkeypatch.setattr(guided_filter, "_BAND_ELEMENTS", 1)  # maps one at a time
    rng = np.random.default_rng(rows or 0)
    rgb = rng.integers(0, 256, (23, 31, 3)).astype(np.uint8)
    rgb[5:15, 3:20] = (200, 30, 60)  # a flat patch: near-singular covariances
    cases = [
        (rgb, 3, 1e-2),
        (rgb[..., 1], 2, 1e-4),  # grey
        (rng.random((23, 31, 3)).astype(np.float32), 1, 0.3),  # float guide
        (rgb[:4, :6], 9, 1e-2),  # radius beyond the image: clipped windows everywhere
    ]
    for image, r, eps in cases:
        h, w = image.shape[:2]
        gf = GuidedFilter(image, r, eps)
        stats = _oracle_stats(image, r, eps)
        _assert_identical(gf.guide, stats[0])
        _assert_identical(gf.mean_i, stats[1])
        _assert_identical(gf.inv, stats[2])
        assert gf.inv.stride() == stats[2].stride()
        maps = torch.from_numpy(rng.random((3, h, w)).astype(np.float32))
        maps[1] = torch.from_numpy(rng.standard_normal((h, w)).astype(np.float32) * 100)
        _assert_identical(gf(maps), _oracle_filter(stats, maps, r, (0, h, 0, w)))
        _assert_identical(gf(maps[:, None]), _oracle_filter(stats, maps[:, None], r, (0, h, 0, w)))
        for y0, y1, x0, x1 in ((0, h, 1, w - 1), (1, h - 1, 0, 3), (h // 2, h, w // 3, w)):
            win = maps[:, None, y0:y1, x0:x1]  # a view, as tasks.edges passes its windows
            _assert_identical(
                gf(win, (y0, y1, x0, x1)), _oracle_filter(stats, win, r, (y0, y1, x0, x1))
            )


def test_guided_filter_keeps_a_copy_of_the_guide() -> None:
    image = np.random.default_rng(0).integers(0, 256, (12, 15, 3)).astype(np.uint8)
    gf = GuidedFilter(image, 2, 1e-2)
    p = torch.rand(1, 12, 15)
    before = gf(p)
    image[:] = 0  # the caller reuses its buffer
    _assert_identical(gf(p), before)


def test_scaled_grabcut_takes_back_exactly_the_band() -> None:
    """The scaled path's copy-back (``np.copyto`` where the band is) is the indexed one."""
    image = np.random.default_rng(2).integers(90, 140, (300, 400, 3)).astype(np.uint8)
    mask = np.zeros((300, 400), np.uint8)
    cv2.ellipse(mask, (200, 150), (110, 70), 15, 0, 360, 1, -1)
    image[mask > 0] = (200, 40, 50)
    coarse = np.roll(mask > 0, (5, 7), axis=(0, 1))
    ref = GrabCutRefine(band=16, max_side=160)
    got = ref(image, coarse)
    # the oracle: the same steps with the band gathered by boolean indexing
    h, w = coarse.shape
    bw = ref.band_pixels((h, w))
    y0, y1, x0, x1 = refine._padded_bbox(coarse, 3 * bw)
    scale = ref.max_side / max(h, w)
    ch, cw = y1 - y0, x1 - x0
    sw, sh = max(1, int(round(cw * scale))), max(1, int(round(ch * scale)))
    small_img = cv2.resize(image[y0:y1, x0:x1], (sw, sh), interpolation=cv2.INTER_AREA)
    crop_f = coarse[y0:y1, x0:x1].astype(np.float32)
    small = cv2.resize(crop_f, (sw, sh), interpolation=cv2.INTER_AREA) >= 0.5
    out = ref._grabcut(small_img, small, max(2, int(round(bw * scale))), None, None, (0, 0))
    assert out is not None
    refined, band = out
    up = cv2.resize(refined.astype(np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR) >= 0.5
    up_band = cv2.resize(band.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_NEAREST) > 0
    want = coarse.copy()
    crop = want[y0:y1, x0:x1]
    crop[up_band] = up[up_band]
    np.testing.assert_array_equal(got, want)
    assert (got != coarse).any()


# ----------------------------------------------------------------------------- memory
_PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from composer.refine import GuidedFilter

    h, w = 1000, 2000
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    maps = torch.from_numpy(rng.random((1, h, w)).astype(np.float32))

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from here
    base = status("VmRSS")
    gf = GuidedFilter(image, 8, 1e-2)
    q = gf(maps)
    print(json.dumps({"pixels": h * w, "peak": status("VmHWM") - base}))
    """
)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc")
def test_guided_filter_peak_memory_stays_near_its_statistics() -> None:
    """Building the filter of a 2-MP image and filtering one whole map in a fresh process:
    the stored statistics are 51 bytes a pixel (a uint8 copy, float32 means and inverses)
    and the bands' temporaries are bounded (85 measured); the whole-array version peaked at
    about 270 bytes a pixel here."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    per_pixel = res["peak"] / res["pixels"]
    assert 40 < per_pixel < 120, per_pixel
