"""Memory audit, second round: the Sobel stage of the segmenter edges works on each mask's box
in bands of rows, and the classical baselines (Sobel, Canny, Felzenszwalb-Huttenlocher) work
in bands of rows and free what they have spent. Every output must equal the whole-array code
as first written (kept here as the oracle; the published numbers come from it), bit for bit;
the memory is measured on moderately sized images with generous margins."""

from __future__ import annotations

import multiprocessing
import sys
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _memory import traced_peak
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.filters import gaussian, sobel_h, sobel_v
from skimage.morphology import reconstruction
from skimage.segmentation import felzenszwalb

import tasks.edges as edges_mod
import tasks.edges_classic as classic_mod
from composer.amg_utils import LowResUpsampler
from composer.refine import GuidedFilter
from tasks.edges import mask_boundary_edges
from tasks.edges_classic import CannyEdges, FelzHuttEdges, SobelEdges, nonmax_suppress


# --------------------------------------------------------------------------- oracles
@torch.inference_mode()
def _oracle_boundary_edges(logits, upsampler, thr, boundary, refine):
    """The whole-map Sobel stage as first written: every map of a chunk at full size."""
    height, width = upsampler.original_size
    out = torch.zeros((height, width))
    kx = edges_mod._SOBEL_X[None, None]
    ky = edges_mod._SOBEL_X.T.contiguous()[None, None]
    chunk = max(1, edges_mod._CHUNK_BYTES // (4 * height * width))
    for s in range(0, len(logits), chunk):
        up = upsampler(logits[s : s + chunk])[:, None]
        if refine is not None:
            prob = edges_mod._refine_maps(torch.sigmoid(up), refine)
            mask = (prob > 1.0 / (1.0 + np.exp(-thr))).float()
        else:
            mask = (up > thr).float()
            prob = torch.sigmoid(up)
        padded = F.pad(prob, (1, 1, 1, 1), mode="replicate")
        mag = torch.sqrt(F.conv2d(padded, kx) ** 2 + F.conv2d(padded, ky) ** 2)
        keep = torch.zeros_like(mask, dtype=torch.bool)
        if boundary in ("outer", "both"):
            keep |= (F.max_pool2d(mask, 3, 1, 1) > 0) & (mask == 0)
        if boundary in ("inner", "both"):
            keep |= (-F.max_pool2d(-mask, 3, 1, 1) == 0) & (mask > 0)
        out = torch.maximum(out, (mag * keep).amax(dim=(0, 1)))
    return out.numpy()


def _oracle_gradients(image, sigma, color):
    img = image.astype(np.float64) / 255.0
    if color == "gray" or img.ndim == 2:
        chans = [rgb2gray(img) if img.ndim == 3 else img]
    else:
        chans = [img[..., c] for c in range(3)]
    best = None
    for ch in chans:
        if sigma > 0:
            ch = gaussian(ch, sigma=sigma, mode="nearest", preserve_range=True)
        gy, gx = sobel_h(ch), sobel_v(ch)
        mag = np.hypot(gy, gx)
        if best is None:
            best = [gy, gx, mag]
        else:
            take = mag > best[2]
            for arr, new in zip(best, (gy, gx, mag), strict=True):
                arr[take] = new[take]
    return best


def _oracle_nms(gy, gx, mag):
    h, w = mag.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        uy = np.where(mag > 0, gy / mag, 0.0)
        ux = np.where(mag > 0, gx / mag, 0.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    fwd = ndimage.map_coordinates(mag, [yy + uy, xx + ux], order=1, mode="nearest")
    bwd = ndimage.map_coordinates(mag, [yy - uy, xx - ux], order=1, mode="nearest")
    keep = (mag > 0) & (mag >= fwd) & (mag >= bwd)
    return np.where(keep, mag, 0.0)


def _oracle_normalise(x, floor=1e-6):
    hi = float(x.max()) if x.size else 0.0
    return (x / hi if hi > floor else np.zeros_like(x)).astype(np.float32)


def _oracle_sobel(image, sigma, color, nms):
    gy, gx, mag = _oracle_gradients(image, sigma, color)
    return _oracle_normalise(_oracle_nms(gy, gx, mag) if nms else mag)


def _oracle_canny(image, sigma, low_ratio, color, levels):
    gy, gx, mag = _oracle_gradients(image, sigma, color)
    ridge = _oracle_normalise(_oracle_nms(gy, gx, mag)).astype(np.float64)
    if ridge.max() <= 0:
        return np.zeros(ridge.shape, dtype=np.float32)
    best = reconstruction(ridge, ridge / low_ratio, method="dilation", footprint=np.ones((3, 3)))
    best = np.minimum(best, ridge / low_ratio)
    t = np.linspace(1.0 / (levels + 1), 1.0 - 1.0 / (levels + 1), levels)
    values = (t + np.r_[t[1:], 1.0]) / 2.0
    k = np.searchsorted(t, best, side="right")
    return np.where(k > 0, values[np.maximum(k - 1, 0)], 0.0).astype(np.float32)


def _oracle_felz(image, scales, sigma, min_size):
    count = np.zeros(image.shape[:2], dtype=np.int32)
    for k in scales:
        labels = felzenszwalb(image, scale=float(k), sigma=sigma, min_size=int(min_size))
        b = np.zeros(labels.shape, dtype=bool)
        b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        b[:-1, :] |= labels[:-1, :] != labels[1:, :]
        count += b
    n = len(scales)
    return np.where(count > 0, (count - 0.5) / n, 0.0).astype(np.float32)


# --------------------------------------------------------------------------- inputs
def _shapes_image(h: int, w: int, seed: int) -> np.ndarray:
    """Flat-coloured rectangles and discs on a gradient, with mild noise: (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 100 * yy / h, 90 + 80 * xx / w, 120 + 0 * yy], -1)
    for _ in range(8):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.4) * min(h, w)
        inside = (
            (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            if rng.random() < 0.5
            else ((abs(yy - cy) < r) & (abs(xx - cx) < 0.7 * r))
        )
        img[inside] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _mask_logits(n_random: int, size: int, seed: int) -> torch.Tensor:
    """(N, size, size) low-res logits: an empty mask, a full one, a one-pixel one, masks on
    each border and at a corner, and smooth random blobs."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.full((size, size), -9.0), torch.full((size, size), 9.0)]
    dot = torch.full((size, size), -9.0)
    dot[size // 2, size // 3] = 9.0
    maps.append(dot)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for cy, cx in [(0, size // 2), (size - 1, size // 2), (size // 2, 0), (size // 2, size - 1)]:
        maps.append(4.0 - ((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt())
    maps.append(3.0 - ((yy - size + 1) ** 2 + xx**2).float().sqrt())
    for _ in range(n_random):
        noise = torch.randn((1, 1, size // 4, size // 4), generator=g) * 6
        maps.append(F.interpolate(noise, (size, size), mode="bilinear")[0, 0] - 1.0)
    return torch.stack(maps).float()


# --------------------------------------------------------------------------- segmenter edges
@pytest.mark.parametrize("boundary", ["outer", "inner", "both"])
@pytest.mark.parametrize("refined", [False, True])
def test_mask_boundary_edges_equals_the_whole_map_version(monkeypatch, boundary, refined):
    geometries = [
        # (low-res size, pad, input size, original size): banded matmul upsampling (output
        # smaller than the input) and the two-stage one (output larger)
        ((32, 32), 128, (96, 128), (75, 100)),
        ((16, 16), 64, (48, 64), (93, 124)),
    ]
    # (band pixels, chunk bytes): bands of one row with one mask a chunk; one band; a few
    settings = [(7, 1), (1 << 20, 64 << 20), (300, 3 * 4 * 93 * 124)]
    for g, (low, pad, inp, orig) in enumerate(geometries):
        logits = _mask_logits(2, low[0], seed=g)
        up = LowResUpsampler(low, pad, inp, orig)
        refine = None
        if refined:
            refine = GuidedFilter(_shapes_image(*orig, seed=g), 2, 1e-2)
        for band, chunk in settings:
            monkeypatch.setattr(edges_mod, "_BAND_PIXELS", band)
            monkeypatch.setattr(edges_mod, "_CHUNK_BYTES", chunk)
            got = mask_boundary_edges(logits, up, 0.0, boundary, refine)
            want = _oracle_boundary_edges(logits, up, 0.0, boundary, refine)
            assert got.dtype == np.float32 and got.shape == orig
            assert (got > 0).mean() > 0.05
            assert np.array_equal(got, want), (orig, band, chunk)


def _peak_rss_in_child(fn, *args) -> float | None:
    """MB of resident memory that ``fn(*args)`` adds at its peak, run in a forked child (the
    modules are loaded already; nothing of the test process is disturbed), or None where
    Linux's peak counter cannot be restarted."""
    if not sys.platform.startswith("linux"):
        return None
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            import resource

            torch.set_num_threads(1)
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # the peak counts from here
            except OSError:
                send.send(None)
                return
            with open("/proc/self/status") as f:
                before = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
            fn(*args)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            send.send((peak - before) / 1024)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            send.send(repr(e))

    proc = ctx.Process(target=child)
    proc.start()
    try:
        if not receive.poll(300):
            raise TimeoutError("the measuring child did not answer")
        result = receive.recv()
    finally:
        proc.join(30)
    if isinstance(result, str):
        raise RuntimeError(result)
    return result


def test_mask_boundary_edges_scratch_is_a_few_maps_not_a_dozen(monkeypatch):
    """Peak resident memory of the Sobel stage on a 2500 x 3500 image (35 MB a float32 map,
    above glibc's mmap threshold, so each map is counted when alive), one mask at a time: the
    output and one upsampled mask must fit; the whole-map code peaked at about fourteen."""
    monkeypatch.setattr(edges_mod, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(edges_mod, "_BAND_PIXELS", 1 << 16)
    h, w = 2500, 3500
    up = LowResUpsampler((16, 16), 64, (48, 64), (h, w))
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    logits = torch.stack(
        [
            9.0 - ((yy - 8) ** 2 + (xx - 8) ** 2).sqrt(),
            torch.full((16, 16), 9.0),
        ]
    )
    mask_boundary_edges(logits, LowResUpsampler((16, 16), 64, (48, 64), (30, 40)), 0.0, "both")
    mb = _peak_rss_in_child(mask_boundary_edges, logits, up, 0.0, "both")
    if mb is None:
        pytest.skip("the peak resident memory cannot be restarted here (Linux /proc only)")
    maps = mb / (4 * h * w / 2**20)
    assert maps < 4.0, f"the Sobel stage peaked at {maps:.1f} maps"


# --------------------------------------------------------------------------- classic baselines
@pytest.mark.parametrize("band_pixels", [50, 1 << 20])
def test_classic_edges_equal_the_whole_array_versions(monkeypatch, band_pixels):
    monkeypatch.setattr(classic_mod, "_BAND_PIXELS", band_pixels)
    rng = np.random.default_rng(5)
    images = [
        _shapes_image(70, 90, seed=1),
        rng.integers(0, 256, (41, 57, 3), dtype=np.uint8),
        _shapes_image(53, 37, seed=2)[..., 1],  # grey (H, W)
    ]
    for img in images:
        for sigma, color, nms in [(0.0, "max", True), (1.5, "gray", True), (0.7, "max", False)]:
            got = SobelEdges(sigma=sigma, color=color, nms=nms)(img).edges
            assert np.array_equal(got, _oracle_sobel(img, sigma, color, nms)), (sigma, color)
        for sigma, low, color in [(3.0, 0.6, "max"), (1.0, 0.4, "gray")]:
            got = CannyEdges(sigma=sigma, low_ratio=low, color=color, levels=25)(img).edges
            want = _oracle_canny(img, sigma, low, color, 25)
            assert want.max() > 0
            assert np.array_equal(got, want), (sigma, low, color)
    img = images[0]
    got = FelzHuttEdges(scales=(30.0, 100.0, 400.0), min_size=20)(img).edges
    want = _oracle_felz(img, (30.0, 100.0, 400.0), 0.8, 20)
    assert (want > 0).mean() > 0.02
    assert np.array_equal(got, want)


def test_nonmax_suppress_equals_the_whole_array_version_and_keeps_its_inputs(monkeypatch):
    monkeypatch.setattr(classic_mod, "_BAND_PIXELS", 64)
    rng = np.random.default_rng(6)
    gy, gx = rng.normal(size=(2, 45, 31))
    gy[:5] = 0.0  # zero magnitude: no direction
    gx[:5] = 0.0
    mag = np.hypot(gy, gx)
    copies = [a.copy() for a in (gy, gx, mag)]
    assert np.array_equal(nonmax_suppress(gy, gx, mag), _oracle_nms(gy, gx, mag))
    for a, b in zip((gy, gx, mag), copies, strict=True):
        assert np.array_equal(a, b)


def test_sobel_peak_is_a_few_maps(monkeypatch):
    # the whole-array code peaked at ~11.5 float64 maps over the image
    monkeypatch.setattr(classic_mod, "_BAND_PIXELS", 1 << 15)
    img = _shapes_image(600, 800, seed=3)
    map_bytes = 600 * 800 * 8
    peak = traced_peak(SobelEdges(), img)
    assert peak < 6.0 * map_bytes, f"Sobel peaked at {peak / map_bytes:.1f} float64 maps"
    gy, gx, mag = classic_mod._gradients(img, 0.0, "max")
    peak = traced_peak(nonmax_suppress, gy, gx, mag)  # ~10 maps over its inputs before
    # 1.5 maps with NumPy 2.x, 1.61 with NumPy 1.24 (make test-oldest)
    assert peak < 2.0 * map_bytes, f"NMS peaked at {peak / map_bytes:.2f} float64 maps"


def test_canny_frees_the_gradients_before_the_reconstruction(monkeypatch):
    """The grey-level reconstruction is Canny's peak (skimage's, ~10 maps); only the ridge map
    and its low threshold map may be alive beside it (the gradients were three more)."""
    import skimage.morphology

    img = _shapes_image(300, 400, seed=4)
    map_bytes = 300 * 400 * 8
    alive = []

    def spy(seed, mask, **kwargs):
        alive.append(tracemalloc.get_traced_memory()[0])
        return reconstruction(seed, mask, **kwargs)

    monkeypatch.setattr(skimage.morphology, "reconstruction", spy)
    tracemalloc.start()
    try:
        edges = CannyEdges()(img).edges
    finally:
        tracemalloc.stop()
    assert len(alive) == 1 and edges.max() > 0
    assert alive[0] < 2.6 * map_bytes, f"{alive[0] / map_bytes:.1f} maps alive"
