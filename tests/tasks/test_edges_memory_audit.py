"""Edge task on large and odd images: memory of edge NMS and the Sobel stage, values unchanged,
and images of one or two pixels a side (memory audit of tasks/edges.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _toy_segmenter import ToySegmenter
from scipy import ndimage

import tasks.edges as edges_mod
from composer.amg_utils import LowResUpsampler
from tasks.edges import EdgeConfig, EdgeTask, conv_tri, edge_nms, mask_boundary_edges


def _reference_nms(edges: np.ndarray, r: int, s: int, m: float) -> np.ndarray:
    """The whole-array edge NMS as first written (the published BSDS numbers come from it)."""
    e = conv_tri(np.asarray(edges, np.float64), 1)
    oy, ox = np.gradient(conv_tri(e, 4))
    _, oxx = np.gradient(ox)
    oyy, oxy = np.gradient(oy)
    ori = np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)
    out = e.copy()
    ys, xs = np.nonzero(e)
    val = e[ys, xs] * m
    cos, sin = np.cos(ori[ys, xs]), np.sin(ori[ys, xs])
    suppressed = np.zeros(len(ys), bool)
    for d in (*range(-r, 0), *range(1, r + 1)):
        suppressed |= val < edges_mod._interp(e, xs + d * cos, ys + d * sin)
    out[ys[suppressed], xs[suppressed]] = 0.0
    height, width = e.shape
    s = min(s, width // 2, height // 2)
    for i in range(s):
        f = i / s
        out[:, i] *= f
        out[:, width - 1 - i] *= f
        out[i, :] *= f
        out[height - 1 - i, :] *= f
    return out


@pytest.mark.parametrize("band_pixels", [7, 1 << 20])
def test_edge_nms_equals_the_whole_array_version(monkeypatch, band_pixels):
    monkeypatch.setattr(edges_mod, "_NMS_CHUNK_PIXELS", band_pixels)
    rng = np.random.default_rng(0)
    for h, w in [(2, 2), (2, 3), (3, 2), (2, 40), (40, 2), (9, 7), (61, 83)]:
        dense = rng.random((h, w))
        sparse = dense.astype(np.float32) * (rng.random((h, w)) < 0.3)
        for x in (dense, sparse):
            for r, s, m in [(1, 5, 1.01), (2, 1, 1.0), (3, 0, 1.2)]:
                got = edge_nms(x, r, s, m)
                assert got.dtype == np.float64
                assert np.array_equal(got, _reference_nms(x, r, s, m)), (h, w, r, s, m)


def test_edge_nms_does_not_change_its_input():
    x = np.random.default_rng(1).random((30, 40))
    before = x.copy()
    edge_nms(x)
    assert np.array_equal(x, before)


def test_edge_nms_memory_is_a_few_maps(monkeypatch):
    # the whole-array version peaked at ~20 float64 maps (a 24-MP map: 4.4 GB over its input)
    monkeypatch.setattr(edges_mod, "_NMS_CHUNK_PIXELS", 1 << 15)
    # dense: every pixel is compared
    x = np.random.default_rng(2).random((600, 800)).astype(np.float32)
    map_bytes = x.size * 8
    tracemalloc.start()
    try:
        edge_nms(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6.5 * map_bytes, f"edge_nms peaked at {peak / map_bytes:.1f} float64 maps"


@pytest.mark.parametrize("boundary", ["outer", "inner", "both"])
def test_mask_boundary_edges_equals_the_out_of_place_version(boundary):
    torch.manual_seed(0)
    logits = torch.randn(5, 32, 32) * 4
    up = LowResUpsampler((32, 32), 128, (96, 128), (75, 100))
    got = mask_boundary_edges(logits, up, 0.0, boundary)
    kx = edges_mod._SOBEL_X[None, None]
    ky = edges_mod._SOBEL_X.T.contiguous()[None, None]
    u = up(logits)[:, None]
    prob, mask = torch.sigmoid(u), (u > 0.0).float()
    padded = F.pad(prob, (1, 1, 1, 1), mode="replicate")
    mag = torch.sqrt(F.conv2d(padded, kx) ** 2 + F.conv2d(padded, ky) ** 2)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    if boundary in ("outer", "both"):
        keep |= (F.max_pool2d(mask, 3, 1, 1) > 0) & (mask == 0)
    if boundary in ("inner", "both"):
        keep |= (-F.max_pool2d(-mask, 3, 1, 1) == 0) & (mask > 0)
    want = (mag * keep).amax(dim=(0, 1)).numpy()
    assert got.max() > 0
    assert np.array_equal(got, want)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (1, 9), (9, 1), (2, 2), (3, 40)])
@pytest.mark.parametrize("refine", ["off", (1, 1e-3)])
def test_edge_task_on_tiny_images(size, refine):
    img = np.random.default_rng(3).integers(0, 256, (*size, 3), dtype=np.uint8)
    em = EdgeTask(ToySegmenter(), EdgeConfig(points_per_side=2, refine=refine))(img)
    assert em.edges.shape == size and em.edges.dtype == np.float32
    assert np.isfinite(em.edges).all() and 0 <= em.edges.min() <= em.edges.max() <= 1
    assert em.to_uint8().shape == size


def test_edge_nms_on_one_pixel_wide_maps_is_the_map():
    for shape in [(1, 1), (1, 5), (5, 1)]:
        x = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
        assert np.array_equal(edge_nms(x), x.astype(np.float64))


def test_conv_tri_matches_scipy_on_a_map_smaller_than_the_kernel():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    k = np.array([1, 2, 3, 4, 5, 4, 3, 2, 1], np.float64) / 25
    want = ndimage.convolve1d(
        ndimage.convolve1d(x, k, axis=0, mode="reflect"), k, axis=1, mode="reflect"
    )
    assert np.array_equal(conv_tri(x, 4), want)
