"""Click simulation geometry, the point protocol loop and PointEvaluator metrics (no models)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from composer.embedding import ImageEmbedding
from composer.evaluation.points import (
    ClickTrace,
    PointEvaluator,
    mask_iou,
    next_click,
    number_of_clicks,
    simulate_clicks,
)
from composer.segmenters.base import Segmenter
from composer.structures import Detections, Masks

H, W = 90, 120
LOW = (8, 8)

MaskFn = Callable[[np.ndarray, np.ndarray, bool], tuple[np.ndarray, np.ndarray]]


def disk(cy: int, cx: int, r: float, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class FakeSegmenter:
    """Segmenter test double: ``fn(points, labels, multimask) -> (masks (M, H, W), scores (M,))``.

    ``low_res_logits`` of mask j on call c are filled with ``100 * c + j`` so tests can see
    which logits were fed back.
    """

    model_id = "fake-points"

    def __init__(self, fn: MaskFn) -> None:
        self.fn = fn
        self.calls: list[dict] = []

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        h, w = np.asarray(image).shape[:2]
        return ImageEmbedding(torch.zeros(1, 1, 1, 1), (h, w), (h, w), max(h, w), self.model_id)

    def predict(
        self, embedding, points=None, labels=None, boxes=None, mask_input=None, multimask=True
    ):
        embedding.check_model(self.model_id)
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        lab = np.asarray(labels).reshape(-1)
        self.calls.append(
            {"points": pts, "labels": lab, "mask_input": mask_input, "multimask": multimask}
        )
        masks, scores = self.fn(pts, lab, multimask)
        m = len(masks)
        c = len(self.calls) - 1
        logits = np.stack([np.full(LOW, 100.0 * c + j, np.float32) for j in range(m)])
        extras = {
            "prompt_index": np.zeros(m, np.int64),
            "mask_index": np.arange(m),
            "low_res_logits": logits,
        }
        return Detections.from_masks(Masks.from_dense(masks), scores=scores, extras=extras)


def embedding_for(seg: FakeSegmenter, shape: tuple[int, int] = (H, W)) -> ImageEmbedding:
    return seg.embed(np.zeros((*shape, 3), np.uint8))


def constant(mask: np.ndarray) -> MaskFn:
    def fn(pts, lab, multimask):
        return mask[None], np.ones(1, np.float32)

    return fn


def disks_around_clicks(radius: float) -> MaskFn:
    """Union of disks at positive clicks minus disks at negative clicks."""

    def fn(pts, lab, multimask):
        out = np.zeros((H, W), bool)
        for (x, y), lb in zip(pts, lab, strict=True):
            d = disk(int(y), int(x), radius)
            out = out | d if lb == 1 else out & ~d
        return out[None], np.ones(1, np.float32)

    return fn


def test_segmenter_double_satisfies_protocol():
    assert isinstance(FakeSegmenter(constant(np.zeros((H, W), bool))), Segmenter)


# ---------------------------------------------------------------- click geometry
def test_first_click_at_disk_centre():
    gt = disk(37, 52, 15)
    point, label = next_click(gt)
    assert label == 1
    np.testing.assert_array_equal(point, [52, 37])  # (x, y)


def test_first_click_treats_image_border_as_boundary():
    gt = np.zeros((H, W), bool)
    gt[:, :41] = True  # a band touching the top, bottom and left borders
    (x, y), label = next_click(gt)
    assert label == 1
    assert x == 20  # halfway between the padded left border and the mask edge
    assert 20 <= y <= H - 21  # at least as far from the top/bottom borders (first tie wins)


def test_false_positive_region_gives_negative_click_at_its_centre():
    gt = disk(40, 30, 12)
    blob = np.zeros((H, W), bool)
    blob[20:61, 70:111] = True  # 41 x 41 square far from the object
    (x, y), label = next_click(gt, gt | blob)
    assert label == 0
    assert (x, y) == (90, 40)
    assert blob[int(y), int(x)]


def test_larger_false_negative_wins_over_smaller_false_positive():
    gt = disk(45, 40, 25)
    pred = disk(45, 40, 5) | disk(10, 110, 4)
    (x, y), label = next_click(gt, pred)
    assert label == 1
    assert gt[int(y), int(x)] and not pred[int(y), int(x)]


def test_no_error_and_errors_only_in_ignore_give_no_click():
    gt = disk(40, 60, 20)
    assert next_click(gt, gt.copy()) is None
    band = disk(40, 60, 23) & ~disk(40, 60, 17)
    assert next_click(gt, disk(40, 60, 22), ignore=band) is None


def test_clicks_avoid_ignore_pixels():
    gt = disk(45, 60, 30)
    ignore = np.zeros((H, W), bool)
    ignore[:, 45:75] = True  # blocks the middle of the object
    (x, y), label = next_click(gt, None, ignore)
    assert label == 1 and gt[int(y), int(x)] and not ignore[int(y), int(x)]


def test_next_click_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        next_click(np.zeros((H, W), bool), np.zeros((H, W + 1), bool))


def test_mask_iou_known_values_and_ignore():
    gt = np.zeros((10, 10), bool)
    gt[:, :5] = True
    pred = np.zeros((10, 10), bool)
    pred[:, :4] = True
    assert mask_iou(pred, gt) == pytest.approx(40 / 50)
    ignore = np.zeros((10, 10), bool)
    ignore[:, 4] = True  # the disagreeing column is ignored
    assert mask_iou(pred, gt, ignore) == 1.0
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


# ---------------------------------------------------------------- the protocol loop
def test_oracle_segmenter_gives_iou_one_after_one_click():
    gt = disk(40, 60, 20)
    seg = FakeSegmenter(constant(gt))
    trace = simulate_clicks(seg, embedding_for(seg), gt, max_clicks=5, image_id="a")
    assert len(trace.ious) == 1  # no error left: nothing further to click
    assert trace.ious[0] == 1.0 and trace.oracle_ious[0] == 1.0
    np.testing.assert_array_equal(trace.points[0], [60, 40])
    ev = PointEvaluator(max_clicks=5, report_clicks=(1, 3))
    ev.process("a", trace)
    m = ev.evaluate()
    assert m["points/mIoU@1"] == 1.0 and m["points/mIoU@3"] == 1.0
    assert m["points/NoC@85"] == 1.0 and m["points/NoC@90"] == 1.0
    assert m["points/NoF@85"] == 0.0 and m["points/n_masks"] == 1.0


def test_empty_segmenter_clicks_inside_error_region_until_budget():
    gt = disk(50, 70, 18)
    seg = FakeSegmenter(constant(np.zeros((H, W), bool)))
    trace = simulate_clicks(seg, embedding_for(seg), gt, max_clicks=7)
    assert len(trace.points) == 7
    assert np.all(trace.labels == 1)
    for x, y in trace.points:
        assert gt[int(y), int(x)]  # every click lies in the false-negative region
    assert np.all(trace.ious == 0.0)
    ev = PointEvaluator(max_clicks=7)
    ev.process(0, trace)
    m = ev.evaluate()
    assert m["points/NoC@85"] == 7.0 and m["points/NoC@90"] == 7.0
    assert m["points/NoF@85"] == 1.0 and m["points/NoF@90"] == 1.0
    assert m["points/mIoU@1"] == 0.0


def test_each_click_lands_in_the_previous_error_region():
    gt = np.zeros((H, W), bool)
    gt[15:75, 20:100] = True
    seg = FakeSegmenter(disks_around_clicks(radius=14))
    trace = simulate_clicks(seg, embedding_for(seg), gt, max_clicks=12)
    assert len(trace.points) >= 2
    pred = np.zeros((H, W), bool)
    for k, ((x, y), lb) in enumerate(zip(trace.points, trace.labels, strict=True)):
        inside_fn = gt[int(y), int(x)] and not pred[int(y), int(x)]
        inside_fp = pred[int(y), int(x)] and not gt[int(y), int(x)]
        assert (lb == 1 and inside_fn) or (lb == 0 and inside_fp), f"click {k} at {(x, y)}"
        pred, _ = disks_around_clicks(14)(trace.points[: k + 1], trace.labels[: k + 1], False)
        pred = pred[0]
        assert trace.ious[k] == pytest.approx(mask_iou(pred, gt))
    assert trace.ious[-1] > trace.ious[0]  # more clicks help this segmenter


def test_most_confident_vs_oracle_and_logits_fed_back():
    gt = disk(45, 60, 20)
    half = gt.copy()
    half[:, 60:] = False

    def fn(pts, lab, multimask):
        if multimask:
            return np.stack([gt, np.zeros_like(gt), half]), np.array([0.2, 0.9, 0.5], np.float32)
        return gt[None], np.array([0.8], np.float32)

    seg = FakeSegmenter(fn)
    trace = simulate_clicks(seg, embedding_for(seg), gt, max_clicks=3)
    assert trace.ious[0] == 0.0  # the most confident mask is empty
    assert trace.oracle_ious[0] == 1.0  # the best of three is the object
    assert trace.predicted_ious[0] == pytest.approx(0.9)
    assert [c["multimask"] for c in seg.calls] == [True, False]
    assert seg.calls[0]["mask_input"] is None
    fed = np.asarray(seg.calls[1]["mask_input"])
    assert fed.shape == (1, 1, *LOW) and np.all(fed == 1.0)  # call 0, mask 1 (the top-1)
    assert seg.calls[1]["points"].shape == (2, 2)  # all clicks so far are re-sent
    assert trace.ious[1] == 1.0


def test_options_disable_logit_feedback_and_keep_multimask():
    gt = disk(45, 60, 20)
    seg = FakeSegmenter(constant(np.zeros((H, W), bool)))
    simulate_clicks(
        seg, embedding_for(seg), gt, max_clicks=3, use_prev_logits=False, multimask_after_first=True
    )
    assert all(c["mask_input"] is None for c in seg.calls)
    assert all(c["multimask"] for c in seg.calls)


def test_simulate_clicks_input_errors():
    seg = FakeSegmenter(constant(np.zeros((H, W), bool)))
    emb = embedding_for(seg)
    with pytest.raises(ValueError, match="no foreground"):
        simulate_clicks(seg, emb, np.zeros((H, W), bool))
    gt = disk(10, 10, 3)
    with pytest.raises(ValueError, match="no foreground"):
        simulate_clicks(seg, emb, gt, ignore=gt)
    with pytest.raises(ValueError, match="differ from image size"):
        simulate_clicks(seg, emb, np.ones((H + 1, W), bool))
    with pytest.raises(ValueError, match="max_clicks"):
        simulate_clicks(seg, emb, gt, max_clicks=0)


# ---------------------------------------------------------------- metrics
def _trace(ious: list[float], max_clicks: int) -> ClickTrace:
    k = len(ious)
    return ClickTrace(
        image_id=0,
        points=np.zeros((k, 2), np.float32),
        labels=np.ones(k, np.int64),
        ious=np.asarray(ious),
        oracle_ious=np.asarray(ious) + 0.01,
        predicted_ious=np.zeros(k, np.float32),
        max_clicks=max_clicks,
    )


def test_number_of_clicks_known_answers():
    assert number_of_clicks(np.array([0.5, 0.86, 0.95]), 0.85, 5) == (2, True)
    assert number_of_clicks(np.array([0.5, 0.86, 0.95]), 0.90, 5) == (3, True)
    assert number_of_clicks(np.array([0.5, 0.6, 0.7]), 0.85, 3) == (3, False)
    assert number_of_clicks(np.array([0.5, 0.6, 0.9]), 0.85, 3) == (
        3,
        True,
    )  # reached at the last click


def test_point_evaluator_refuses_traces_of_a_smaller_click_budget():
    """A 3-click trace in a 4-click evaluator: its last IoU stood in for click 4, never made."""
    ev = PointEvaluator(max_clicks=4)
    with pytest.raises(ValueError, match="image 'x' was recorded with 3 clicks at most"):
        ev.process("x", [_trace([0.5, 0.6, 0.7], 4), _trace([0.5, 0.6, 0.7], 3)])
    assert ev.traces == []  # nothing of the refused image was kept
    ev.process("y", _trace([0.5], 5))  # a larger budget is fine: the evaluator reports fewer


def test_point_evaluator_aggregates_known_traces():
    ev = PointEvaluator(max_clicks=4, iou_thresholds=(0.85, 0.9), report_clicks=(1, 2, 3, 5, 9))
    ev.process("x", [_trace([0.5, 0.86, 0.92, 0.95], 4), _trace([0.9], 4)])  # 2nd stopped early
    ev.process("y", _trace([0.1, 0.2, 0.3, 0.9], 4))
    m = ev.evaluate()
    assert set(m) == {
        "points/mIoU@1", "points/mIoU@2", "points/mIoU@3",
        "points/oracle_mIoU@1", "points/oracle_mIoU@2", "points/oracle_mIoU@3",
        "points/NoC@85", "points/NoC@90", "points/NoF@85", "points/NoF@90", "points/n_masks",
    }  # fmt: skip
    assert m["points/mIoU@1"] == pytest.approx((0.5 + 0.9 + 0.1) / 3)
    assert m["points/mIoU@2"] == pytest.approx((0.86 + 0.9 + 0.2) / 3)  # 0.9 carried forward
    assert m["points/oracle_mIoU@1"] == pytest.approx((0.51 + 0.91 + 0.11) / 3)
    assert m["points/NoC@85"] == pytest.approx((2 + 1 + 4) / 3)
    assert m["points/NoC@90"] == pytest.approx((3 + 1 + 4) / 3)
    assert m["points/NoF@85"] == 0.0 and m["points/NoF@90"] == 0.0
    assert m["points/n_masks"] == 3.0
    np.testing.assert_allclose(ev.curves()["mIoU"], [0.5, 1.96 / 3, 2.12 / 3, 2.75 / 3])
    ev.reset()
    # nothing to score is "undefined" (-1, pycocotools' value), not a score of 0
    empty = ev.evaluate()
    assert set(empty) == set(m) and empty["points/n_masks"] == 0.0
    assert empty["points/mIoU@1"] == empty["points/oracle_mIoU@3"] == empty["points/NoC@90"] == -1.0
    assert empty["points/NoF@85"] == 0.0


def test_point_evaluator_validates_arguments():
    with pytest.raises(ValueError):
        PointEvaluator(max_clicks=0)
    with pytest.raises(ValueError):
        PointEvaluator(iou_thresholds=(85,))
    with pytest.raises(TypeError):
        PointEvaluator().process(0, [np.zeros(3)])
