"""BSDS500 boundary benchmark: protocol pieces, the matcher, and the official MATLAB fixtures."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from _processes import gpu_visible
from scipy.optimize import linear_sum_assignment
from skimage.morphology import thin as skimage_thin

from composer.data.bsds import (
    BSDS500,
    bench_reference_dir,
    load_eval_bdry,
    load_eval_bdry_img,
    load_eval_bdry_thr,
    load_ground_truth,
    load_png_map,
    load_ucm2,
    ucm2_reference_dir,
)
from composer.evaluation._correspond import (
    build_candidate_graph,
    correspond_pixels,
    disk_offsets,
    match_graph,
    unmatched_cost,
)
from composer.evaluation._thin import thin
from composer.evaluation.edges_bsds import (
    BoundaryEvaluator,
    area_pr,
    as_boundary_map,
    bsds_thresholds,
    image_counts,
    max_f,
    recall_at_50,
    summarize,
)
from composer.structures.edges import EdgeMap

BENCH_IDS = ["2018", "3063", "5096", "6046", "8068"]


# ---------------------------------------------------------------- protocol pieces


def test_thresholds_follow_matlab_linspace():
    t = bsds_thresholds(5)
    np.testing.assert_allclose(t, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6], atol=1e-15)
    t99 = bsds_thresholds(99)
    assert t99.size == 99 and t99[0] == 0.01 and t99[-1] == 0.99
    # MATLAB's d1 + (i*(d2-d1))/(n-1): exact where numpy's linspace is off by one ulp
    d1, d2 = 0.01, 0.99
    assert np.array_equal(t99[:-1], d1 + (np.arange(98) * (d2 - d1)) / 98)
    with pytest.raises(ValueError):
        bsds_thresholds(0)


def test_max_f_interpolates_like_collect_eval_bdry():
    t = np.array([0.25, 0.5, 0.75])
    r = np.array([0.9, 0.6, 0.2])
    p = np.array([0.3, 0.8, 0.95])
    bt, br, bp, bf = max_f(t, r, p)
    # brute force over MATLAB's linspace(0, 1) (100 points) on each segment
    best = 0.0
    for i in range(1, 3):
        for d in np.linspace(0, 1, 100):
            rr = r[i] * d + r[i - 1] * (1 - d)
            pp = p[i] * d + p[i - 1] * (1 - d)
            best = max(best, 2 * pp * rr / (pp + rr))
    assert bf == pytest.approx(best, abs=1e-12)
    assert 0.25 < bt < 0.75 and bf > 2 * 0.8 * 0.6 / 1.4


def test_area_pr_and_r50_known_answers():
    # P = 1 for R in [0, 0.5]: area = sum over R = 0, .01, ..., .5 (51 points) * 0.01
    r = np.array([0.5, 0.25, 0.0])
    p = np.array([1.0, 1.0, 1.0])
    assert area_pr(r, p) == pytest.approx(0.51)
    assert area_pr(np.array([0.3, 0.3]), np.array([0.5, 0.6])) == 0.0
    # precision rises with the threshold; crossing of 0.5 between rows 1 and 2
    r = np.array([0.9, 0.8, 0.6, 0.3])
    p = np.array([0.2, 0.4, 0.6, 0.9])
    assert recall_at_50(r, p) == pytest.approx(0.7)
    assert recall_at_50(r, np.array([0.6, 0.7, 0.8, 0.9])) == pytest.approx(0.9)
    assert np.isnan(recall_at_50(r, np.array([0.1, 0.2, 0.3, 0.4])))
    # precision falling back to 0.5 among the last few pixels does not count
    p2 = np.array([0.2, 0.4, 0.6, 0.5])
    r2 = np.array([0.9, 0.8, 0.6, 0.002])
    assert recall_at_50(r2, p2) == pytest.approx(0.7)


def test_thin_matches_skimage():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = rng.integers(1, 40, size=2)
        b = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        assert np.array_equal(thin(b), skimage_thin(b))
    blob = np.zeros((30, 40), dtype=bool)
    blob[5:25, 3:37] = True  # touches nothing; thins to a line
    out = thin(blob)
    assert out.sum() < blob.sum() / 5 and np.array_equal(out, skimage_thin(blob))


# ---------------------------------------------------------------- matcher


def _brute_force(pred: np.ndarray, gt: np.ndarray, radius: float, dummy: float):
    """Dense assignment with the same objective: rows = GT (+ private unmatched column)."""
    py, px = np.nonzero(pred)
    gy, gx = np.nonzero(gt)
    d = np.hypot(gy[:, None] - py[None, :], gx[:, None] - px[None, :])
    big = 1e12
    cost = np.where(d <= radius, np.rint(d * 100) + 1, big)
    full = np.hstack([cost, np.where(np.eye(gy.size) > 0, dummy, big)])
    r, c = linear_sum_assignment(full)
    real = c < py.size
    return int(real.sum()), float(full[r[real], c[real]].sum())


def test_matcher_is_optimal_on_random_maps():
    rng = np.random.default_rng(1)
    for trial in range(25):
        h, w = rng.integers(8, 30, size=2)
        pred = rng.random((h, w)) < rng.uniform(0.02, 0.3)
        gt = rng.random((h, w)) < rng.uniform(0.02, 0.3)
        radius = float(rng.uniform(1.0, 4.5))
        cost_u = unmatched_cost(radius)
        graph = build_candidate_graph(pred, gt, radius)
        p_lin, g_node = match_graph(graph, pred.reshape(-1), cost_u)
        # a matching: distinct endpoints, pairs within the radius, on-pixels only
        assert np.unique(p_lin).size == p_lin.size and np.unique(g_node).size == g_node.size
        assert pred.reshape(-1)[p_lin].all()
        g_lin = graph.gt_lin[g_node]
        dist = np.hypot(p_lin // w - g_lin // w, p_lin % w - g_lin % w)
        assert np.all(dist <= radius)
        if not gt.any() or not pred.any():
            assert p_lin.size == 0
            continue
        n_ref, cost_ref = _brute_force(pred, gt, radius, cost_u + 1.0)
        ours = float(np.sum(np.rint(dist * 100) + 1))
        assert p_lin.size == n_ref, trial
        assert ours == pytest.approx(cost_ref), trial


def test_disk_offsets():
    dy, dx, w = disk_offsets(1.5)
    assert dy.size == 9 and w.max() == 141  # sqrt(2) * 100
    assert disk_offsets(0.0)[0].size == 1
    with pytest.raises(ValueError):
        disk_offsets(-1.0)


@pytest.mark.skipif(
    sys.version_info >= (3, 13), reason="pyEdgeEval does not install on Python 3.13 and newer"
)
def test_correspond_pixels_against_pyedgeeval(bsds_dir: Path):
    with contextlib.redirect_stdout(io.StringIO()):
        from pyEdgeEval._lib import correspond_pixels as csa

    ref = bench_reference_dir()
    pb = as_boundary_map(load_png_map(ref / "png" / "2018.png"))
    gts = [g["boundaries"] for g in load_ground_truth(ref / "groundTruth" / "2018.mat")]
    for t in (0.2, 0.6):
        bmap = thin(pb >= t)
        for gt in gts[:1]:
            m1, m2 = correspond_pixels(bmap, gt)
            c1, c2, _, _ = csa(bmap.astype(float), gt.astype(float), max_dist=0.0075)
            assert m1.sum() == m2.sum()
            assert not (m1 & ~bmap).any() and not (m2 & ~gt).any()
            # CSA's random sparse outlier graph misses a few matches now and then (it differs
            # from run to run); ours is a maximum matching
            assert m1.sum() >= (c1 > 0).sum()
            assert m1.sum() - (c1 > 0).sum() <= 0.01 * m1.sum()
            assert (m1 != (c1 > 0)).sum() <= 0.03 * m1.sum()


# ---------------------------------------------------------------- evaluator API


def _toy(h=160, w=200, seed=0):
    """Radius 0.0075 * 256 = 1.9 px. Annotator 1: a horizontal line; annotator 2: the same line
    one row lower plus a vertical line. Prediction: the horizontal line (0.9), the vertical line
    one column off (0.6), weak noise below 0.3."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), dtype=bool)
    gt[h // 2, 10:-10] = True
    gt2 = np.zeros_like(gt)
    gt2[h // 2 + 1, 10:-10] = True
    gt2[10:-10, w // 3] = True
    pb = rng.random((h, w)) * 0.3
    pb[10:-10, w // 3 + 1] = 0.6
    pb[h // 2, 10:-10] = 0.9
    return pb, [gt, gt2]


def test_evaluator_validates_input():
    pb, gts = _toy()
    ev = BoundaryEvaluator(thresholds=5)
    with pytest.raises(ValueError):
        ev.process("a", pb, [])
    with pytest.raises(ValueError):
        ev.process("a", pb, [gts[0][:-1]])
    with pytest.raises(ValueError):
        ev.process("a", pb * 2, gts)
    with pytest.raises(ValueError):
        ev.process("a", pb.astype(np.int32), gts)
    with pytest.raises(ValueError):
        ev.evaluate()
    ev.process("a", pb, gts)
    with pytest.raises(ValueError):
        ev.process("a", pb, gts)
    with pytest.raises(ValueError):
        BoundaryEvaluator(thresholds=[0.5, 0.2])
    with pytest.raises(ValueError):
        BoundaryEvaluator(max_dist=0)


def test_evaluator_counts_and_keys(tmp_path: Path):
    pb, gts = _toy()
    ev = BoundaryEvaluator(thresholds=5)
    ev.process("toy", EdgeMap(pb.astype(np.float32)), gts)
    res = ev.evaluate()
    assert {"ODS", "OIS", "AP", "R50", "ODS_threshold"} <= set(res)
    tb = ev.tables()
    assert tb.counts.shape == (1, 5, 4)
    # all GT pixels of both annotators are counted at every threshold
    assert np.all(tb.counts[0, :, 1] == gts[0].sum() + gts[1].sum())
    # at t = 2/3 only the horizontal line is on: matched by both annotators, precision 1
    n_line = gts[0].sum()
    assert tb.counts[0, 3].tolist() == [2 * n_line, tb.counts[0, 3, 1], n_line, n_line]
    # at t = 1/2 the vertical line joins; annotator 2 matches it too
    assert tb.precision[2] == 1.0 and tb.recall[2] > tb.recall[3]
    assert 0 < res["ODS"] <= 1 and res["OIS"] >= res["ODS"] - 1e-12
    tb.write_txt(tmp_path)
    back = load_eval_bdry(tmp_path)
    assert back["ODS"] == pytest.approx(res["ODS"], abs=1e-5)
    assert load_eval_bdry_thr(tmp_path).shape == (5, 4)
    assert load_eval_bdry_img(tmp_path).shape == (1, 5)
    # an empty prediction is scored, not an error
    ev.process("empty", np.zeros_like(pb), gts)
    assert ev.evaluate()["ODS"] < res["ODS"]


def test_workers_and_precomputed_counts_agree():
    items = [("a", *_toy(seed=0)), ("b", *_toy(seed=1))]
    serial = BoundaryEvaluator(thresholds=5)
    # fork: spawned workers would re-import the package (slow on a busy 2-core machine); but
    # never from a process that may hold a CUDA context (see _processes)
    context = "spawn" if gpu_visible() else "fork"
    pooled = BoundaryEvaluator(thresholds=5, workers=2, mp_context=context)
    manual = BoundaryEvaluator(thresholds=5)
    for iid, pb, gts in items:
        serial.process(iid, pb, gts)
        pooled.process(iid, pb, gts)
        manual.process_counts(iid, image_counts(pb, gts, **{**manual.settings()}))
    assert serial.evaluate() == pooled.evaluate() == manual.evaluate()
    with pytest.raises(ValueError):
        manual.process_counts("c", np.zeros((4, 4)))


def test_uint8_maps_are_read_like_matlab_png():
    m = np.array([[0, 85, 170, 255]], dtype=np.uint8)
    pb = as_boundary_map(m)
    assert pb.dtype == np.float64 and pb[0, 2] == 170 / 255
    # 170/255 == 2/3 exactly in double: the MATLAB threshold 2/3 keeps it
    assert (pb >= bsds_thresholds(5)[3]).tolist() == [[False, False, True, True]]


def test_summarize_rejects_bad_shapes():
    with pytest.raises(ValueError):
        summarize(np.zeros((1, 3, 4)), bsds_thresholds(4), ["a"])
    with pytest.raises(ValueError):
        summarize(np.zeros((2, 4, 4)), bsds_thresholds(4), ["a"])


# ---------------------------------------------------------------- data reader


def test_bsds500_reader(bsds_dir: Path):
    ds = BSDS500("test")
    assert len(ds) == 200 and ds.ids == sorted(ds.ids)
    assert ds.ids[:5] == ["100007", "100039", "100099", "10081", "101027"]
    s = ds[0]
    assert s.image.shape in ((321, 481, 3), (481, 321, 3)) and s.image.dtype == np.uint8
    gt = s.ground_truth
    assert 4 <= len(gt) <= 9
    assert gt[0]["segmentation"].shape == s.image.shape[:2] and gt[0]["segmentation"].min() >= 1
    assert gt[0]["boundaries"].dtype == bool and gt[0]["boundaries"].any()
    assert len(BSDS500("val")) == 100
    with pytest.raises(ValueError, match="test"):
        BSDS500("test", root=bsds_dir / "nope")
    with pytest.raises(ValueError):
        BSDS500("dev")


# ---------------------------------------------------------------- MATLAB fixtures


def test_bench_reference_test_2(bsds_dir: Path):
    """boundaryBench on the 5 png maps, nthresh = 5 (BSR test_benchs.m case 2)."""
    ref = bench_reference_dir()
    ev = BoundaryEvaluator(thresholds=5)
    for iid in BENCH_IDS:
        gts = [g["boundaries"] for g in load_ground_truth(ref / "groundTruth" / f"{iid}.mat")]
        ev.process(iid, load_png_map(ref / "png" / f"{iid}.png"), gts)
    res = ev.evaluate()
    want = load_eval_bdry(ref / "test_2")
    for key in ("ODS", "OIS", "AP", "ODS_recall", "ODS_precision", "OIS_recall", "OIS_precision"):
        assert res[key] == pytest.approx(want[key], abs=0.002), key
    assert res["ODS_threshold"] == pytest.approx(want["ODS_threshold"], abs=1e-4)
    tb = ev.tables()
    thr = load_eval_bdry_thr(ref / "test_2")
    np.testing.assert_allclose(tb.thresholds, thr[:, 0], atol=1e-5)
    np.testing.assert_allclose(tb.recall, thr[:, 1], atol=0.002)
    np.testing.assert_allclose(tb.precision, thr[:, 2], atol=0.002)
    img = load_eval_bdry_img(ref / "test_2")
    np.testing.assert_allclose(tb.image_rows[:, 3], img[:, 4], atol=0.002)
    np.testing.assert_allclose(tb.image_rows[:, 0], img[:, 1], atol=1e-4)


@pytest.mark.slow
def test_ucm2_reference_per_image(bsds_dir: Path):
    """gPb-owt-ucm maps, 99 thresholds: per-image rows of the official eval_bdry_img.txt.

    Four of the ten shipped maps keep the test quick (about 1 s of CPU each).
    """
    ref = ucm2_reference_dir()
    rows = load_eval_bdry_img(ref / "test_eval")
    ds = BSDS500("test")
    picks = [0, 3, 6, 9]
    ev = BoundaryEvaluator(thresholds=99)
    for k in picks:
        iid = ds.ids[k]
        ev.process(iid, load_ucm2(ref / "test_first10" / f"{iid}.mat"), ds[iid].boundaries)
    got = ev.tables().image_rows
    want = rows[picks]
    assert np.all(want[:, 0] == np.array(picks) + 1)
    np.testing.assert_allclose(got[:, 3], want[:, 4], atol=0.005)  # F
    np.testing.assert_allclose(got[:, 1], want[:, 2], atol=0.005)  # R
    np.testing.assert_allclose(got[:, 2], want[:, 3], atol=0.005)  # P
    np.testing.assert_allclose(got[:, 0], want[:, 1], atol=0.0101)  # best threshold
