"""BSDS500 boundary benchmark (ODS, OIS, AP, R50), following the official MATLAB code step by step.

Per image and threshold ``t`` (``evaluation_bdry_image.m``): ``bmap = pb >= t``; morphological
thinning (``bwmorph(bmap, 'thin', inf)``; :mod:`._thin` runs scikit-image's implementation of
the same algorithm on the foreground pixels only); one-to-one pixel matching against *every* annotator within ``max_dist * diagonal``
pixels; recall counts matched GT pixels summed over annotators out of all GT pixels; precision
counts predicted pixels matched to *any* annotator out of all predicted pixels.

Collection (``collect_eval_bdry.m``): ODS is the best F of the dataset-wide curve, linearly
interpolated between adjacent thresholds (``maxF``); OIS sums each image's counts at its best
threshold (the last one on ties); AP is ``Area_PR`` (P interpolated at R = 0:0.01:1, outside the
curve counted 0); R50 is the recall at 50% precision (see :func:`recall_at_50`).

The matcher defaults to :mod:`composer.evaluation._correspond`, an exact maximum-cardinality,
minimum-distance matcher that agrees with the BSDS CSA matcher to well under 0.1% of counts and
runs about ten times faster; ``matcher="csa"`` uses ``pyEdgeEval``'s port of the official one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from composer.structures.edges import EdgeMap

from ._correspond import build_candidate_graph, disk_offsets, match_graph, unmatched_cost
from ._thin import thin as thin_map

logger = logging.getLogger(__name__)

#: Column order of the per-image count arrays.
COUNT_FIELDS = ("cntR", "sumR", "cntP", "sumP")


def bsds_thresholds(n: int) -> np.ndarray:
    """The benchmark's ``n`` thresholds ``linspace(1/(n+1), 1-1/(n+1), n)`` with MATLAB's arithmetic.

    Returns:
        (n,) float64, strictly increasing in (0, 1). MATLAB computes ``d1 + (i*(d2-d1))/(n-1)`` and
        sets the last element to ``d2``; numpy's ``linspace`` differs in the last bit for some
        elements, which matters when a map value equals a threshold exactly (``pb >= t``).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of thresholds must be a positive int, got {n!r}")
    d1, d2 = 1.0 / (n + 1), 1.0 - 1.0 / (n + 1)
    if n == 1:
        return np.array([d2])
    t = d1 + (np.arange(n, dtype=np.float64) * (d2 - d1)) / (n - 1)
    t[-1] = d2
    return t


def _matlab_linspace01(n: int) -> np.ndarray:
    t = (np.arange(n, dtype=np.float64) * 1.0) / (n - 1)
    t[-1] = 1.0
    return t


def as_boundary_map(edges: EdgeMap | np.ndarray) -> np.ndarray:
    """Soft boundary map as the benchmark reads it.

    Args:
        edges: an :class:`EdgeMap`, or an (H, W) array: uint8 is read as ``value / 255`` in float64
            (how the MATLAB code reads PNG maps), bool as 0/1, floats must be finite in [0, 1].

    Returns:
        (H, W) float64 in [0, 1].
    """
    if isinstance(edges, EdgeMap):
        return edges.edges.astype(np.float64)
    if not isinstance(edges, np.ndarray):
        raise TypeError(f"edges must be an EdgeMap or numpy array, got {type(edges).__name__}")
    if edges.ndim != 2:
        raise ValueError(f"edge map must be (H, W), got shape {edges.shape}")
    if edges.dtype == np.uint8:
        return edges.astype(np.float64) / 255.0
    if edges.dtype == bool:
        return edges.astype(np.float64)
    if not np.issubdtype(edges.dtype, np.floating):
        raise ValueError(f"edge map dtype must be uint8, bool or float, got {edges.dtype}")
    pb = edges.astype(np.float64)
    if pb.size and (not np.all(np.isfinite(pb)) or pb.min() < 0 or pb.max() > 1):
        raise ValueError("float edge map must be finite and within [0, 1]")
    return pb


#: pyEdgeEval (an sdist only) builds on Python 3.10 to 3.12; its setup.py fails on 3.13 and newer.
PYEDGEEVAL_INSTALLS = sys.version_info < (3, 13)


def _import_pyedgeeval():
    # pyEdgeEval prints a warning on import when an optional .mat reader is missing.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from pyEdgeEval._lib import correspond_pixels
            from pyEdgeEval.preprocess import fast_nms
    except ImportError as exc:
        if not PYEDGEEVAL_INSTALLS:
            raise ImportError(
                "edge NMS (apply_nms=True) and matcher='csa' need pyEdgeEval, which does not "
                "install on Python 3.13 and newer (its setup.py fails); use Python 3.10 to 3.12 "
                "for them. The default matcher and the edge task's own NMS do not need it"
            ) from exc
        raise ImportError(
            "edge NMS (apply_nms=True) and matcher='csa' need pyEdgeEval, the edges extra: "
            'pip install "sam-composer[edges]"'
        ) from exc
    return correspond_pixels, fast_nms


def image_counts(
    pb: np.ndarray,
    gt_boundaries: Sequence[np.ndarray],
    thresholds: np.ndarray,
    max_dist: float = 0.0075,
    thin: bool = True,
    apply_nms: bool = False,
    matcher: str = "fast",
) -> np.ndarray:
    """Counts of one image at every threshold (``evaluation_bdry_image.m``).

    Args:
        pb: (H, W) soft boundary map, read by :func:`as_boundary_map` (uint8 as value / 255).
        gt_boundaries: per annotator, (H, W) bool boundary maps.
        thresholds: (T,) float64 increasing thresholds; a pixel is on when ``pb >= t``.
        max_dist: matching radius as a fraction of the image diagonal.
        thin: thin each binarised map before matching, as the benchmark does by default.
        apply_nms: first run Dollar's edge NMS (pyEdgeEval's ``fast_nms``; r=1, s=5, m=1.01).
        matcher: ``"fast"`` (this package's exact matcher) or ``"csa"`` (pyEdgeEval's CSA port).

    Returns:
        (T, 4) int64 columns :data:`COUNT_FIELDS`: matched GT pixels summed over annotators, all GT
        pixels summed over annotators, predicted pixels matched to any annotator, predicted pixels.
    """
    if matcher not in ("fast", "csa"):
        raise ValueError(f"matcher must be 'fast' or 'csa', got {matcher!r}")
    pb = as_boundary_map(pb)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    h, w = pb.shape
    gts = [np.asarray(g).astype(bool) for g in gt_boundaries]
    if any(g.shape != pb.shape for g in gts):
        raise ValueError(f"every GT map must have the edge map's shape {pb.shape}")
    if apply_nms:
        _, fast_nms = _import_pyedgeeval()
        pb = np.clip(fast_nms(np.ascontiguousarray(pb)), 0.0, None)
    radius = max_dist * float(np.hypot(h, w))
    counts = np.zeros((len(thresholds), 4), dtype=np.int64)
    counts[:, 1] = sum(int(g.sum()) for g in gts)
    if matcher == "fast":
        offsets = disk_offsets(radius)
        candidates = pb >= float(np.min(thresholds))
        graphs = [build_candidate_graph(candidates, g, radius, offsets) for g in gts]
        cost = unmatched_cost(radius)
    else:
        correspond_pixels, _ = _import_pyedgeeval()
    prev: np.ndarray | None = None
    for i, t in enumerate(thresholds):
        raw = pb >= t
        # Equal binary maps give equal counts: skip the thinning and the matching.
        if prev is not None and np.array_equal(raw, prev):
            counts[i] = counts[i - 1]
            continue
        prev = raw
        bmap = thin_map(raw) if thin else raw
        n_pred = int(bmap.sum())
        counts[i, 3] = n_pred
        if n_pred == 0:
            continue
        acc = np.zeros(h * w, dtype=bool)
        matched_gt = 0
        if matcher == "fast":
            flat = bmap.reshape(-1)
            for k, graph in enumerate(graphs):
                p, g = match_graph(graph, flat, cost, seed=(k, i))
                acc[p] = True
                matched_gt += int(g.size)
        else:
            bm = bmap.astype(np.float64)
            for gt in gts:
                m1, m2, _, _ = correspond_pixels(bm, gt.astype(np.float64), max_dist=max_dist)
                acc |= m1.reshape(-1) > 0
                matched_gt += int((m2 > 0).sum())
        counts[i, 0] = matched_gt
        counts[i, 2] = int(acc.sum())
    return counts


def fmeasure(r: np.ndarray | float, p: np.ndarray | float) -> np.ndarray:
    """``2PR / (P + R)``, 0 where ``P + R == 0`` (``fmeasure`` in collect_eval_bdry.m)."""
    r, p = np.asarray(r, dtype=np.float64), np.asarray(p, dtype=np.float64)
    s = p + r
    return 2.0 * p * r / (s + (s == 0))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return num / (den + (den == 0))


def max_f(
    thresholds: np.ndarray, recall: np.ndarray, precision: np.ndarray
) -> tuple[float, float, float, float]:
    """Best F on the curve linearly interpolated between adjacent thresholds (``maxF``).

    Args:
        thresholds, recall, precision: (T,) float64.

    Returns:
        (threshold, recall, precision, F) at the best of 100 points per segment.
    """
    t, r, p = (np.asarray(a, dtype=np.float64) for a in (thresholds, recall, precision))
    best = (float(t[0]), float(r[0]), float(p[0]), float(fmeasure(r[0], p[0])))
    if t.size < 2:
        return best
    d = _matlab_linspace01(100)[None, :]
    ti = t[1:, None] * d + t[:-1, None] * (1 - d)
    ri = r[1:, None] * d + r[:-1, None] * (1 - d)
    pi = p[1:, None] * d + p[:-1, None] * (1 - d)
    f = fmeasure(ri, pi).ravel()
    k = int(np.argmax(f))  # first maximum, as the strict ``f > bestF`` scan keeps it
    if f[k] > best[3]:
        best = (float(ti.ravel()[k]), float(ri.ravel()[k]), float(pi.ravel()[k]), float(f[k]))
    return best


def area_pr(recall: np.ndarray, precision: np.ndarray) -> float:
    """``Area_PR``: P interpolated at R = 0:0.01:1 over the unique recalls, NaN -> 0, times 0.01.

    This is the "AP" that edge-detection papers report (pyEdgeEval calls it ``AUC``).
    """
    r_u, idx = np.unique(np.asarray(recall, dtype=np.float64), return_index=True)
    if r_u.size <= 1:
        return 0.0
    p_u = np.asarray(precision, dtype=np.float64)[idx]
    ri = np.arange(101) / 100.0
    p_i = np.interp(ri, r_u, p_u, left=np.nan, right=np.nan)
    return float(np.nansum(p_i) * 0.01)


def recall_at_50(recall: np.ndarray, precision: np.ndarray) -> float:
    """R50: the recall where the PR curve reaches 50% precision.

    Thresholds with recall < 1e-3 are dropped (as in Dollar's ``edgesEvalPlot.m``). Walking the
    curve from the lowest threshold, R50 is the recall linearly interpolated (in precision) at the
    first crossing to precision >= 0.5, or the recall at the lowest threshold when its precision
    is already >= 0.5. On curves whose precision rises with the threshold this equals
    ``edgesEvalPlot``'s ``interp1(P_unique, R, max(min P, .5))``; unlike it, it is not thrown off
    when the precision of the few pixels left at the top thresholds falls back to 0.5.

    Args:
        recall, precision: (T,) float64 dataset-wide curve in increasing-threshold order.

    Returns:
        R50, or NaN when precision never reaches 0.5.
    """
    r = np.asarray(recall, dtype=np.float64)
    p = np.asarray(precision, dtype=np.float64)
    keep = r >= 1e-3
    r, p = r[keep], p[keep]
    if r.size == 0:
        return float("nan")
    if p[0] >= 0.5:
        return float(r[0])
    up = np.flatnonzero((p[:-1] < 0.5) & (p[1:] >= 0.5))
    if up.size == 0:
        return float("nan")
    i = int(up[0])
    frac = (0.5 - p[i]) / (p[i + 1] - p[i])
    return float(r[i] + frac * (r[i + 1] - r[i]))


@dataclass
class BoundaryTables:
    """Everything ``collect_eval_bdry.m`` writes, for PR plots and per-image inspection.

    Attributes:
        thresholds: (T,) float64.
        recall, precision, f1: (T,) float64 dataset-wide curve (rows of ``eval_bdry_thr.txt``).
        image_ids: N image ids in processing order.
        image_rows: (N, 4) float64 ``[best_threshold, R, P, F]`` per image, interpolated like the
            dataset curve (``eval_bdry_img.txt`` without the leading index).
        counts: (N, T, 4) int64 raw counts, columns :data:`COUNT_FIELDS`.
        summary: (8,) float64 ``[ODS_t, ODS_R, ODS_P, ODS_F, OIS_R, OIS_P, OIS_F, AP]``
            (``eval_bdry.txt``).
        r50: recall at 50% precision.
    """

    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f1: np.ndarray
    image_ids: list[str]
    image_rows: np.ndarray
    counts: np.ndarray
    summary: np.ndarray
    r50: float

    def write_txt(self, folder: str | Path) -> None:
        """Write ``eval_bdry.txt``, ``eval_bdry_thr.txt`` and ``eval_bdry_img.txt`` as MATLAB does."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)

        def row(vals, fmt="%10g") -> str:
            return " ".join(fmt % v for v in vals) + "\n"

        with open(folder / "eval_bdry.txt", "w") as f:
            f.write(row(self.summary))
        with open(folder / "eval_bdry_thr.txt", "w") as f:
            for v in zip(self.thresholds, self.recall, self.precision, self.f1, strict=True):
                f.write(row(v))
        with open(folder / "eval_bdry_img.txt", "w") as f:
            for i, v in enumerate(self.image_rows, start=1):
                f.write(f"{i:10d} " + row(v))


def summarize(
    counts: np.ndarray, thresholds: np.ndarray, image_ids: Sequence[str]
) -> BoundaryTables:
    """Collect per-image counts into the benchmark's tables (``collect_eval_bdry.m``).

    Args:
        counts: (N, T, 4) int64 per-image counts from :func:`image_counts`.
        thresholds: (T,) float64.
        image_ids: N ids.

    Returns:
        The :class:`BoundaryTables`.
    """
    counts = np.asarray(counts)
    if counts.ndim != 3 or counts.shape[2] != 4 or counts.shape[1] != len(thresholds):
        raise ValueError(f"counts must be (N, {len(thresholds)}, 4), got {counts.shape}")
    if counts.shape[0] == 0 or counts.shape[0] != len(image_ids):
        raise ValueError(f"need one id per image and at least one image, got {len(image_ids)} ids")
    t = np.asarray(thresholds, dtype=np.float64)
    rows = np.zeros((counts.shape[0], 4))
    best = np.zeros(4)
    for i, c in enumerate(counts):
        r, p = _ratio(c[:, 0], c[:, 1]), _ratio(c[:, 2], c[:, 3])
        rows[i] = max_f(t, r, p)
        f = fmeasure(r, p)
        best += c[np.flatnonzero(f == f.max())[-1]]  # ff(end): last best threshold
    total = counts.sum(axis=0)
    r, p = _ratio(total[:, 0], total[:, 1]), _ratio(total[:, 2], total[:, 3])
    f = fmeasure(r, p)
    ods = max_f(t, r, p)
    r_max, p_max = float(_ratio(best[0], best[1])), float(_ratio(best[2], best[3]))
    summary = np.array([*ods, r_max, p_max, float(fmeasure(r_max, p_max)), area_pr(r, p)])
    return BoundaryTables(
        t, r, p, f, list(image_ids), rows, counts.astype(np.int64), summary, recall_at_50(r, p)
    )


class BoundaryEvaluator:
    """The BSDS500 boundary benchmark as a reset / process / evaluate evaluator.

    Example:
        >>> ev = BoundaryEvaluator(thresholds=99, workers=2)
        >>> for sample in BSDS500("test"):
        ...     ev.process(sample.image_id, edge_map, sample.boundaries)
        >>> ev.evaluate()  # {"ODS": ..., "OIS": ..., "AP": ..., "R50": ..., "ODS_threshold": ...}

    Args:
        thresholds: number of thresholds (MATLAB ``linspace``, default 99 as in boundaryBench.m)
            or an explicit increasing sequence in (0, 1].
        max_dist: matching tolerance as a fraction of the image diagonal (0.0075; NYUDv2: 0.011).
        thin: thin each binarised map (``bwmorph thin``) before matching.
        apply_nms: run Dollar's edge NMS on each map first (for thick, un-suppressed maps).
        workers: None, 0 or 1 evaluates in this process inside :meth:`process`; n > 1 sends each
            image to a pool of n spawned processes and collects in :meth:`evaluate`.
        matcher: ``"fast"`` (default) or ``"csa"`` (pyEdgeEval's port of the official matcher).
        mp_context: multiprocessing start method of the pool (``"spawn"``, ``"forkserver"`` or
            ``"fork"``); each spawned worker imports this package once.
    """

    def __init__(
        self,
        thresholds: int | Sequence[float] = 99,
        max_dist: float = 0.0075,
        thin: bool = True,
        apply_nms: bool = False,
        workers: int | None = None,
        matcher: str = "fast",
        mp_context: str = "spawn",
    ) -> None:
        if isinstance(thresholds, (int, np.integer)) and not isinstance(thresholds, bool):
            self.thresholds = bsds_thresholds(int(thresholds))
        else:
            t = np.asarray(thresholds, dtype=np.float64)
            if t.ndim != 1 or t.size == 0 or np.any(np.diff(t) <= 0) or t[0] <= 0 or t[-1] > 1:
                raise ValueError(
                    f"thresholds must be increasing values in (0, 1], got {thresholds!r}"
                )
            self.thresholds = t
        if not (np.isfinite(max_dist) and max_dist > 0):
            raise ValueError(f"max_dist must be > 0, got {max_dist}")
        if workers is not None and (not isinstance(workers, int) or workers < 0):
            raise ValueError(f"workers must be None or an int >= 0, got {workers!r}")
        if matcher not in ("fast", "csa"):
            raise ValueError(f"matcher must be 'fast' or 'csa', got {matcher!r}")
        self.max_dist = float(max_dist)
        self.thin = bool(thin)
        self.apply_nms = bool(apply_nms)
        self.workers = workers
        self.matcher = matcher
        if mp_context not in multiprocessing.get_all_start_methods():
            raise ValueError(f"mp_context {mp_context!r} not available here")
        self.mp_context = mp_context
        self._pool: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget all processed images (and stop the worker pool, if any)."""
        self.close()
        self._ids: list[str] = []
        self._results: list = []
        self._tables: BoundaryTables | None = None

    def close(self) -> None:
        """Stop the worker pool; results already collected are kept."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def process(
        self, image_id: str, edges: EdgeMap | np.ndarray, gt_boundaries: Sequence[np.ndarray]
    ) -> None:
        """Add one image.

        Args:
            image_id: unique id of the image.
            edges: :class:`EdgeMap` or (H, W) array (see :func:`as_boundary_map`).
            gt_boundaries: one (H, W) boundary map per annotator (bool or 0/1), same H, W.
        """
        if image_id in self._ids:
            raise ValueError(f"image {image_id!r} was already processed")
        pb = as_boundary_map(edges)
        if isinstance(gt_boundaries, np.ndarray) and gt_boundaries.ndim == 2:
            raise ValueError("gt_boundaries must be a list of (H, W) maps, one per annotator")
        gts = [np.asarray(g) for g in gt_boundaries]
        if not gts:
            raise ValueError(f"image {image_id!r}: no ground-truth annotators given")
        for k, g in enumerate(gts):
            if g.shape != pb.shape:
                raise ValueError(
                    f"image {image_id!r}: annotator {k} boundaries {g.shape} != edge map {pb.shape}"
                )
        gts = [g.astype(bool) for g in gts]
        args = (pb, gts, self.thresholds, self.max_dist, self.thin, self.apply_nms, self.matcher)
        self._tables = None
        self._ids.append(image_id)
        if self.workers is not None and self.workers > 1:
            if self._pool is None:
                self._pool = multiprocessing.get_context(self.mp_context).Pool(self.workers)
            self._results.append(self._pool.apply_async(image_counts, args))
        else:
            start = time.perf_counter()
            self._results.append(image_counts(*args))
            logger.debug("boundary eval %s: %.2fs", image_id, time.perf_counter() - start)

    def process_counts(self, image_id: str, counts: np.ndarray) -> None:
        """Add one image's counts computed elsewhere (e.g. by :func:`image_counts` in your own pool).

        Args:
            image_id: unique id of the image.
            counts: (T, 4) int64 as returned by :func:`image_counts` with this evaluator's
                thresholds, max_dist, thin and apply_nms settings.
        """
        if image_id in self._ids:
            raise ValueError(f"image {image_id!r} was already processed")
        c = np.asarray(counts)
        if c.shape != (self.thresholds.size, 4):
            raise ValueError(f"counts must be ({self.thresholds.size}, 4), got {c.shape}")
        if np.any(c < 0) or np.any(c[:, 0] > c[:, 1]) or np.any(c[:, 2] > c[:, 3]):
            raise ValueError("counts must satisfy 0 <= cntR <= sumR and 0 <= cntP <= sumP")
        self._tables = None
        self._ids.append(image_id)
        self._results.append(c.astype(np.int64))

    def discard(self, image_id: str) -> None:
        """Forget one processed image (no-op if it was not processed)."""
        if image_id not in self._ids:
            return
        k = self._ids.index(image_id)
        del self._ids[k]
        del self._results[k]
        self._tables = None

    def settings(self) -> dict[str, object]:
        """Keyword arguments of :func:`image_counts` matching this evaluator."""
        return {
            "thresholds": self.thresholds,
            "max_dist": self.max_dist,
            "thin": self.thin,
            "apply_nms": self.apply_nms,
            "matcher": self.matcher,
        }

    def _counts(self) -> np.ndarray:
        done = [r if isinstance(r, np.ndarray) else r.get() for r in self._results]
        self._results = done
        self.close()
        return np.stack(done)

    def tables(self) -> BoundaryTables:
        """Per-threshold and per-image tables (see :class:`BoundaryTables`)."""
        if not self._ids:
            raise ValueError("no images processed; call process() first")
        if self._tables is None:
            self._tables = summarize(self._counts(), self.thresholds, self._ids)
        return self._tables

    def evaluate(self) -> dict[str, float]:
        """ODS, OIS, AP (``Area_PR``), R50 and the ODS threshold, plus their recall/precision."""
        tb = self.tables()
        s = tb.summary
        result = {
            "ODS": float(s[3]),
            "OIS": float(s[6]),
            "AP": float(s[7]),
            "R50": float(tb.r50),
            "ODS_threshold": float(s[0]),
            "ODS_recall": float(s[1]),
            "ODS_precision": float(s[2]),
            "OIS_recall": float(s[4]),
            "OIS_precision": float(s[5]),
            "num_images": float(len(tb.image_ids)),
        }
        logger.info(
            "BSDS boundaries on %d images: ODS %.4f OIS %.4f AP %.4f",
            len(tb.image_ids),
            result["ODS"],
            result["OIS"],
            result["AP"],
        )
        return result
