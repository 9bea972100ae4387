"""EdgeTask (SAM App. D.2) on a toy segmenter, and the edge NMS port."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from _toy_segmenter import ToySegmenter, toy_scene
from scipy import ndimage

from composer.amg_utils import LowResUpsampler
from composer.embedding import EmbeddingCache
from composer.refine import GuidedFilter
from composer.structures import EdgeMap
from tasks.base import TaskContext
from tasks.edges import (
    EdgeConfig,
    EdgeTask,
    conv_tri,
    edge_nms,
    mask_boundary_edges,
    parse_refine,
)


def _true_boundaries(image: np.ndarray) -> np.ndarray:
    change = np.zeros(image.shape[:2], bool)
    diff_y = np.any(image[1:] != image[:-1], axis=-1)
    diff_x = np.any(image[:, 1:] != image[:, :-1], axis=-1)
    change[1:] |= diff_y
    change[:-1] |= diff_y
    change[:, 1:] |= diff_x
    change[:, :-1] |= diff_x
    return change


def test_edge_task_finds_object_boundaries():
    image = toy_scene()
    seg = ToySegmenter()
    ctx = TaskContext(image, "toy", EmbeddingCache())
    edges = EdgeTask(seg, EdgeConfig(points_per_side=10))(ctx)
    assert isinstance(edges, EdgeMap) and edges.edges.shape == image.shape[:2]
    assert edges.edges.dtype == np.float32
    assert 0.5 < edges.edges.max() <= 1.0 and edges.edges.min() >= 0.0
    assert edges.meta["image_id"] == "toy" and edges.meta["n_masks"] > 0
    band = ndimage.binary_dilation(_true_boundaries(image), iterations=2)
    on, off = edges.edges[band].mean(), edges.edges[~band].mean()
    assert on > 10 * off
    # thinned: few pixels are on; the strong ones lie on the true boundaries
    assert (edges.edges > 0.1).mean() < 0.25
    assert band[edges.edges > 0.3].mean() > 0.9
    # the task asked the shared cache: one encoder pass for the image
    assert ctx.cache.encoder_calls == 1


def test_edge_task_options_and_flat_image():
    seg = ToySegmenter()
    image = toy_scene()
    raw = EdgeTask(seg, EdgeConfig(points_per_side=6, edge_nms=False))(image)
    thin = EdgeTask(seg, EdgeConfig(points_per_side=6, edge_nms=True))(image)
    assert raw.edges.max() == pytest.approx(1.0)  # linear normalisation
    assert (thin.edges > 0).sum() < (raw.edges > 0).sum()
    inner = EdgeTask(seg, EdgeConfig(points_per_side=6, boundary="inner", edge_nms=False))(image)
    assert not np.array_equal(inner.edges > 0, raw.edges > 0)
    flat = EdgeTask(seg, EdgeConfig(points_per_side=4))(np.full((30, 40, 3), 90, np.uint8))
    assert flat.edges.shape == (30, 40) and np.isfinite(flat.edges).all()
    with pytest.raises(ValueError):
        EdgeConfig(boundary="middle")
    with pytest.raises(ValueError):
        EdgeConfig(box_nms_thresh=2.0)
    cfg = EdgeConfig().amg_config()
    assert (
        cfg.points_per_side,
        cfg.pred_iou_thresh,
        cfg.stability_score_thresh,
        cfg.multimask,
        cfg.crop_n_layers,
    ) == (16, 0.0, 0.0, True, 0)


def test_edge_nms_thins_a_thick_ridge():
    ridge = np.zeros((60, 80))
    ridge[:, 40] = 1.0
    ridge = ndimage.gaussian_filter(ridge, 3)
    ridge /= ridge.max()
    out = edge_nms(ridge)
    rows = out[10:50] > 0.05
    assert (rows.sum(axis=1) <= 2).all() and rows[:, 39:42].any(axis=1).all()
    # border suppression fades the first s pixels to zero
    assert (out[0] == 0).all() and (out[:, 0] == 0).all()


def test_conv_tri_is_normalised():
    x = np.random.default_rng(0).random((20, 30))
    for r in (1, 4):
        y = conv_tri(np.ones_like(x), r)
        np.testing.assert_allclose(y, 1.0)
        assert conv_tri(x, r).shape == x.shape


def test_edge_nms_agrees_with_pyedgeeval():
    with contextlib.redirect_stdout(io.StringIO()):
        fast = pytest.importorskip("pyEdgeEval.preprocess").fast_nms
    rng = np.random.default_rng(0)
    x = ndimage.gaussian_filter(rng.random((80, 120)), 3)
    x = np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1))
    x /= x.max()
    ours, ref = edge_nms(x), fast(x.copy())
    # pyEdgeEval replaces Oxx == 0 by 1e-5 where Dollar's MATLAB adds 1e-5: rare orientation
    # differences flip a handful of pixels; the suppression itself is the same.
    assert ((ours > 0) != (ref > 0)).mean() < 0.005
    same = (ours > 0) == (ref > 0)
    np.testing.assert_allclose(ours[same], ref[same], atol=1e-12)


def test_guided_refinement_moves_mask_edges_onto_image_edges():
    # image edge at column 30; mask A's soft boundary is 2 px off it (at 32), mask B has a
    # phantom boundary at column 60 inside the flat bright area
    image = np.full((48, 80, 3), 40, np.uint8)
    image[:, 30:] = 200
    cols = np.arange(80, dtype=np.float32)
    logits = torch.from_numpy(
        np.stack([np.tile((cols - 32) / 2, (48, 1)), np.tile((cols - 60) / 2, (48, 1))])
    )
    identity = LowResUpsampler((48, 80), 80, (48, 80), (48, 80))
    plain = mask_boundary_edges(logits, identity, 0.0, "outer")[24]
    refined = mask_boundary_edges(logits, identity, 0.0, "outer", GuidedFilter(image, 8, 1e-2))[24]
    assert int(np.argmax(plain[:45])) == 32 and int(np.argmax(refined[:45])) == 29
    # without refinement the phantom boundary is as strong as the real one; with it, weak
    assert plain[45:].max() == pytest.approx(plain[:45].max(), rel=1e-3)
    assert refined[45:].max() < 0.25 * refined[:45].max()


def test_edge_refine_settings_and_parsing():
    seg = ToySegmenter()
    assert EdgeConfig().refine == "auto" and EdgeConfig().refine_setting(seg) is None
    seg.edge_refine = (3, 0.02)  # a model's recommendation
    assert EdgeConfig().refine_setting(seg) == (3, 0.02)
    assert EdgeConfig(refine="off").refine_setting(seg) is None
    assert EdgeConfig(refine=(5, 0.1)).refine_setting(seg) == (5, 0.1)
    assert parse_refine("auto") == "auto" and parse_refine(" off ") == "off"
    assert parse_refine("8,0.01") == (8, 0.01) == parse_refine("8:0.01")
    for bad in ("8", "x,1", "0,0.01", "8,0", "8,0.1,2"):
        with pytest.raises(ValueError):
            parse_refine(bad)
    for bad_cfg in ("on", (0, 0.1), (2, -1.0), (2.5, 0.1), 3):
        with pytest.raises(ValueError):
            EdgeConfig(refine=bad_cfg)  # type: ignore[arg-type]
    # the task records and applies it; edges still lie on the scene's boundaries
    image = toy_scene()
    edges = EdgeTask(seg, EdgeConfig(points_per_side=8))(image)
    assert edges.meta["refine"] == (3, 0.02)
    band = ndimage.binary_dilation(_true_boundaries(image), iterations=2)
    assert band[edges.edges > 0.3].mean() > 0.9
    assert EdgeTask(seg, EdgeConfig(points_per_side=8, refine="off"))(image).meta["refine"] is None
