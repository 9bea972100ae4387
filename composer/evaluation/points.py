"""Point-prompt evaluation: the SAM paper's 1..N point protocol and interactive NoC.

Click simulation (SAM paper App. D.1, the RITM/fBRS standard):

- The error regions are ``FN = gt & ~pred`` and ``FP = pred & ~gt``, both without ignored
  pixels; before the first click the prediction is empty, so ``FN`` is the whole object.
- Each region is zero-padded by one pixel (the image border counts as boundary) and its
  Euclidean distance transform taken. The next click goes to the pixel farthest from the
  boundary of the error region: the argmax over ``FN`` (positive click, label 1) if its
  maximum distance exceeds the one over ``FP``, else over ``FP`` (negative click, label 0).
  The first click is thus the "centre" of the object; ties go to the first pixel in
  row-major order. Pixels already clicked are never clicked again: their distances are set to
  0 after the transform (RITM's ``not_clicked_map``), so a click that the segmenter did not
  honour is followed by the next-farthest pixel, not by the same click repeated. Click
  coordinates are pixel indices ``(x, y)`` in original-image pixels.
- Every click re-prompts with *all* clicks so far and, by default, the previous step's
  low-res logits of the chosen mask as ``mask_input`` (as SAM was trained and as RITM-style
  evaluation does).
- Multimask: the first click asks for 3 masks. Later clicks ask for one mask: with more than
  one prompt SAM returns its fourth, single-mask token (paper App. A), which is also the
  official predictor's usage. ``multimask_after_first=True`` keeps 3 masks throughout.
- Zoom-in (optional, off by default as in the SAM paper; RITM-style evaluations use it): after
  the first click, predict in a crop around the current mask, the positive clicks and the
  newest click (:class:`~composer.interactive.ZoomIn`); the masks are scored in the whole image.
- Scoring: per click, ``iou`` of the most confident mask (highest score: the predicted IoU, the
  paper's default, or a segmenter's ``mask_rank`` score such as composer_tiny's predicted IoU
  plus boundary contrast) and ``oracle_iou``, the best of the returned masks against the GT.
  The next click is placed from the most confident mask. IoU ignores the ``ignore`` pixels.

NoC@t = the first click whose IoU reaches t, or ``max_clicks`` if none does; NoF@t counts
masks that never reach t within ``max_clicks`` (RITM counts NoC == max_clicks instead, which
also includes masks that reach t exactly at the last click).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from ..embedding import ImageEmbedding
from ..interactive import ClickSession, ZoomIn, top_index
from ..segmenters.base import Segmenter
from .base import threshold_name

logger = logging.getLogger(__name__)


def mask_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of two (H, W) bool masks over the pixels not in ``ignore``; 1.0 if both are empty.

    Raises:
        ValueError: the shapes differ.
    """
    if pred.shape != gt.shape or (ignore is not None and ignore.shape != gt.shape):
        shapes = (pred.shape, gt.shape, None if ignore is None else ignore.shape)
        raise ValueError(f"mask shapes differ (pred, gt, ignore): {shapes}")
    p, g = pred.astype(bool), gt.astype(bool)
    if ignore is not None:
        valid = ~ignore.astype(bool)
        p, g = p & valid, g & valid
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(p & g)) / float(union)


def _farthest_point(
    region: np.ndarray, exclude: np.ndarray | None = None
) -> tuple[float, tuple[int, int]]:
    """(max distance, (y, x)) of the padded Euclidean distance transform of a bool region.

    ``exclude`` pixels (already clicked) get distance 0 after the transform, as RITM's clicker
    multiplies the distance map by its ``not_clicked_map``; they still count as region pixels
    when the distances of the others are computed.
    """
    if not region.any():
        return 0.0, (0, 0)
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    if exclude is not None:
        dist[exclude] = 0.0
    flat = int(np.argmax(dist))
    y, x = divmod(flat, region.shape[1])
    return float(dist[y, x]), (y, x)


def next_click(
    gt_mask: np.ndarray,
    pred_mask: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    clicked: np.ndarray | Sequence[Any] | None = None,
) -> tuple[np.ndarray, int] | None:
    """The next simulated click for a prediction against the ground truth.

    Args:
        gt_mask: (H, W) bool ground truth in original-image pixels.
        pred_mask: (H, W) bool current prediction; None (or empty) before the first click.
        ignore: optional (H, W) bool pixels that are neither errors nor clickable.
        clicked: optional (K, 2) ``(x, y)`` pixel indices of the clicks made so far; they are
            not clicked again (RITM's ``not_clicked_map``).

    Returns:
        ``(point, label)``: point (2,) float32 ``(x, y)`` pixel indices, label 1 (positive,
        inside a false-negative region) or 0 (negative, inside a false-positive region); None
        when there is no error left (outside ``clicked`` pixels).

    Raises:
        ValueError: shapes differ or a mask is not 2-D.
    """
    gt = np.asarray(gt_mask, dtype=bool)
    if gt.ndim != 2:
        raise ValueError(f"gt_mask must be (H, W), got shape {gt.shape}")
    pred = np.zeros_like(gt) if pred_mask is None else np.asarray(pred_mask, dtype=bool)
    ign = np.zeros_like(gt) if ignore is None else np.asarray(ignore, dtype=bool)
    if pred.shape != gt.shape or ign.shape != gt.shape:
        raise ValueError(
            f"mask shapes differ: gt {gt.shape}, pred {pred.shape}, ignore {ign.shape}"
        )
    valid = ~ign
    done = None
    if clicked is not None:
        xy = np.rint(np.asarray(clicked, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
        h, w = gt.shape
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        done = np.zeros_like(gt)
        done[xy[inside, 1], xy[inside, 0]] = True
    fn_d, fn_yx = _farthest_point(gt & ~pred & valid, done)
    fp_d, fp_yx = _farthest_point(pred & ~gt & valid, done)
    if fn_d == 0.0 and fp_d == 0.0:
        return None
    positive = fn_d > fp_d
    y, x = fn_yx if positive else fp_yx
    return np.array([x, y], dtype=np.float32), int(positive)


@dataclass(frozen=True)
class ClickTrace:
    """The outcome of one simulated click session on one object mask.

    Attributes:
        image_id: the image (or mask) id the session belongs to.
        points: (K, 2) float32 click ``(x, y)`` pixel indices in original-image pixels.
        labels: (K,) int64 click labels, 1 positive, 0 negative.
        ious: (K,) float64 IoU of the most confident mask after each click.
        oracle_ious: (K,) float64 best IoU among the returned masks after each click.
        predicted_ious: (K,) float32 the segmenter's score of the most confident mask.
        max_clicks: the session's click budget; K < max_clicks means the prediction had no
            error left outside the clicked pixels (every later click would keep the same IoU).
        meta: free-form facts (mask id, object area ...).
    """

    image_id: Hashable
    points: np.ndarray
    labels: np.ndarray
    ious: np.ndarray
    oracle_ious: np.ndarray
    predicted_ious: np.ndarray
    max_clicks: int
    meta: dict[str, Any] = field(default_factory=dict)

    def padded(self, attr: str = "ious", n: int | None = None) -> np.ndarray:
        """(n,) float64 per-click values of ``attr``, the last value carried forward."""
        n = self.max_clicks if n is None else int(n)
        vals = np.asarray(getattr(self, attr), dtype=np.float64)[:n]
        if len(vals) == 0:
            return np.zeros(n, np.float64)
        return np.concatenate([vals, np.full(n - len(vals), vals[-1])])


def simulate_clicks(
    segmenter: Segmenter,
    embedding: ImageEmbedding,
    gt_mask: np.ndarray,
    ignore: np.ndarray | None = None,
    max_clicks: int = 20,
    *,
    use_prev_logits: bool = True,
    multimask_after_first: bool = False,
    image_id: Hashable = None,
    zoom_in: ZoomIn | None = None,
    image: Any = None,
) -> ClickTrace:
    """Run the click protocol (see the module docstring) for one object.

    Args:
        segmenter: any Segmenter; ``predict`` gets (1, K, 2) points and (1, K) labels.
        embedding: the image's embedding from this segmenter (or the shared cache).
        gt_mask: (H, W) bool ground truth at the embedding's ``original_size``.
        ignore: optional (H, W) bool pixels excluded from IoU and clicks (GrabCut's band).
        max_clicks: click budget (>= 1).
        use_prev_logits: feed the chosen mask's ``low_res_logits`` back as ``mask_input``.
        multimask_after_first: ask for 3 masks on every click, not only the first.
        image_id: recorded in the trace.
        zoom_in: predict later clicks in a crop around the object
            (:class:`~composer.interactive.ZoomIn`); needs ``image``.
        image: the embedded image (only needed for ``zoom_in``).

    Returns:
        A ClickTrace with up to ``max_clicks`` clicks (fewer once no error is left).

    Raises:
        ValueError: ``max_clicks`` < 1, mask shapes that differ from the embedding's image,
            or a ground truth with no clickable foreground pixel.
    """
    if int(max_clicks) < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    gt = np.asarray(gt_mask, dtype=bool)
    ign = None if ignore is None else np.asarray(ignore, dtype=bool)
    size = tuple(embedding.original_size)
    if gt.shape != size or (ign is not None and ign.shape != size):
        raise ValueError(
            f"gt_mask {gt.shape} / ignore {None if ign is None else ign.shape} differ from image size {size}"
        )
    clickable = gt if ign is None else gt & ~ign
    if not clickable.any():
        raise ValueError(
            f"ground-truth mask of {image_id!r} has no foreground pixel outside the ignore region"
        )

    session = ClickSession(
        segmenter, image, embedding, zoom_in=zoom_in, use_prev_logits=use_prev_logits
    )
    ious: list[float] = []
    oracle: list[float] = []
    scores: list[float] = []
    pred: np.ndarray | None = None
    for step in range(int(max_clicks)):
        click = next_click(gt, pred, ign, clicked=session.points or None)
        if click is None:
            break
        dense, conf = session.click(click[0], click[1], multimask=step == 0 or multimask_after_first)
        if dense.shape[1:] != gt.shape:
            raise ValueError(
                f"segmenter returned masks of size {dense.shape[1:]} for an image of size {gt.shape}"
            )
        top = top_index(conf)
        all_ious = [mask_iou(m, gt, ign) for m in dense]
        ious.append(all_ious[top])
        oracle.append(max(all_ious))
        scores.append(float(conf[top]))
        pred = dense[top]
    points, labels = session.points, session.labels
    return ClickTrace(
        image_id=image_id,
        points=np.asarray(points, np.float32).reshape(-1, 2),
        labels=np.asarray(labels, np.int64),
        ious=np.asarray(ious, np.float64),
        oracle_ious=np.asarray(oracle, np.float64),
        predicted_ious=np.asarray(scores, np.float32),
        max_clicks=int(max_clicks),
        meta={"gt_area": int(gt.sum()), "encoder_calls": session.encoder_calls},
    )


def number_of_clicks(ious: np.ndarray, threshold: float, max_clicks: int) -> tuple[int, bool]:
    """(NoC, reached): the first 1-based click with IoU >= threshold, else (max_clicks, False)."""
    hit = np.flatnonzero(np.asarray(ious)[:max_clicks] >= threshold)
    if hit.size:
        return int(hit[0]) + 1, True
    return int(max_clicks), False


class PointEvaluator:
    """mIoU after k clicks and NoC/NoF over many object masks.

    Args:
        max_clicks: click budget per mask.
        iou_thresholds: IoU targets for NoC/NoF (0.85 and 0.90 are the RITM standard).
        report_clicks: k for ``mIoU@k`` (the SAM paper plots 1, 2, 3, 5, 9); k > max_clicks
            are dropped.
        use_prev_logits: see :func:`simulate_clicks`.
        multimask_after_first: see :func:`simulate_clicks`.
        zoom_in: see :func:`simulate_clicks` (``run_clicks`` then needs the image).

    Metrics: ``points/mIoU@k``, ``points/oracle_mIoU@k``, ``points/NoC@85``,
    ``points/NoF@85`` (one pair per threshold), ``points/n_masks``.
    """

    prefix = "points"

    def __init__(
        self,
        max_clicks: int = 20,
        iou_thresholds: Sequence[float] = (0.85, 0.90),
        report_clicks: Sequence[int] = (1, 2, 3, 5, 9),
        *,
        use_prev_logits: bool = True,
        multimask_after_first: bool = False,
        zoom_in: ZoomIn | None = None,
    ) -> None:
        if int(max_clicks) < 1:
            raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
        thr = tuple(float(t) for t in iou_thresholds)
        if any(not 0.0 < t <= 1.0 for t in thr):
            raise ValueError(f"iou_thresholds must be in (0, 1], got {iou_thresholds}")
        clicks = tuple(int(k) for k in report_clicks)
        if any(k < 1 for k in clicks):
            raise ValueError(f"report_clicks must be >= 1, got {report_clicks}")
        self.max_clicks = int(max_clicks)
        self.iou_thresholds = thr
        self.report_clicks = tuple(k for k in clicks if k <= self.max_clicks)
        self.use_prev_logits = bool(use_prev_logits)
        self.multimask_after_first = bool(multimask_after_first)
        self.zoom_in = zoom_in
        self.traces: list[ClickTrace] = []

    def run_clicks(
        self,
        segmenter: Segmenter,
        embedding: ImageEmbedding,
        gt_mask: np.ndarray,
        ignore: np.ndarray | None = None,
        image_id: Hashable = None,
        image: Any = None,
    ) -> ClickTrace:
        """:func:`simulate_clicks` with this evaluator's settings (does not record the trace)."""
        return simulate_clicks(
            segmenter,
            embedding,
            gt_mask,
            ignore,
            self.max_clicks,
            use_prev_logits=self.use_prev_logits,
            multimask_after_first=self.multimask_after_first,
            image_id=image_id,
            zoom_in=self.zoom_in,
            image=image,
        )

    def reset(self) -> None:
        self.traces = []

    def process(self, image_id: Hashable, prediction: ClickTrace | Sequence[ClickTrace]) -> None:
        """Record the click traces of one image (one per object mask).

        Raises:
            TypeError: ``prediction`` is not a ClickTrace or a sequence of them.
            ValueError: a trace recorded with a smaller click budget than ``max_clicks`` (its
                last IoU would stand in for clicks never made).
        """
        traces = [prediction] if isinstance(prediction, ClickTrace) else list(prediction)
        for t in traces:
            if not isinstance(t, ClickTrace):
                raise TypeError(
                    f"PointEvaluator.process needs ClickTrace items, got {type(t).__name__}"
                )
            if t.max_clicks < self.max_clicks:
                raise ValueError(
                    f"a trace of image {image_id!r} was recorded with {t.max_clicks} clicks at "
                    f"most; this evaluator reports up to {self.max_clicks}"
                )
        self.traces.extend(traces)

    def discard(self, image_id: Hashable) -> None:
        """Forget the traces recorded for one image (matched by ``ClickTrace.image_id``)."""
        self.traces = [t for t in self.traces if t.image_id != image_id]

    def curves(self) -> dict[str, np.ndarray]:
        """Per-click mean IoU: ``{"mIoU": (max_clicks,), "oracle_mIoU": (max_clicks,)}`` float64."""
        if not self.traces:
            z = np.zeros(self.max_clicks, np.float64)
            return {"mIoU": z, "oracle_mIoU": z.copy()}
        ious = np.stack([t.padded("ious", self.max_clicks) for t in self.traces])
        orc = np.stack([t.padded("oracle_ious", self.max_clicks) for t in self.traces])
        return {"mIoU": ious.mean(0), "oracle_mIoU": orc.mean(0)}

    def evaluate(self) -> dict[str, float]:
        """mIoU@k, oracle mIoU@k, NoC and NoF; with no mask processed (a dataset without
        non-crowd masks, or every image failed) mIoU and NoC are -1, pycocotools' value for
        "undefined", with a warning (they were 0, a score no segmenter had earned)."""
        p = self.prefix
        out: dict[str, float] = {}
        if not self.traces:
            logger.warning("PointEvaluator: no masks were processed; mIoU and NoC are -1 "
                           "(undefined)")
            for k in self.report_clicks:
                out[f"{p}/mIoU@{k}"] = out[f"{p}/oracle_mIoU@{k}"] = -1.0
            for thr in self.iou_thresholds:
                out[f"{p}/NoC@{threshold_name(thr)}"] = -1.0
                out[f"{p}/NoF@{threshold_name(thr)}"] = 0.0
            out[f"{p}/n_masks"] = 0.0
            return out
        curves = self.curves()
        for k in self.report_clicks:
            out[f"{p}/mIoU@{k}"] = float(curves["mIoU"][k - 1])
            out[f"{p}/oracle_mIoU@{k}"] = float(curves["oracle_mIoU"][k - 1])
        for thr in self.iou_thresholds:
            name = threshold_name(thr)
            res = [
                number_of_clicks(t.padded("ious", self.max_clicks), thr, self.max_clicks)
                for t in self.traces
            ]
            out[f"{p}/NoC@{name}"] = float(np.mean([r[0] for r in res]))
            out[f"{p}/NoF@{name}"] = float(sum(not r[1] for r in res))
        out[f"{p}/n_masks"] = float(len(self.traces))
        return out

    def per_mask(self) -> list[dict[str, Any]]:
        """JSON-ready per-mask records: image_id, ious, oracle_ious, clicks and labels."""
        return [
            {
                "image_id": t.image_id if isinstance(t.image_id, (int, str)) else str(t.image_id),
                "mask_id": t.meta.get("mask_id"),
                "ious": [round(float(v), 6) for v in t.ious],
                "oracle_ious": [round(float(v), 6) for v in t.oracle_ious],
                "points": t.points.tolist(),
                "labels": t.labels.tolist(),
            }
            for t in self.traces
        ]
