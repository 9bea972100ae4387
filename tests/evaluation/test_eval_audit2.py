"""Audit of the evaluation harness's semantics (runner failure accounting, protocol edge cases).

Synthetic inputs only: every test runs in well under a second and needs no data or weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from composer.evaluation import CocoEvaluator, ProposalEvaluator, run
from composer.structures import Detections

H, W = 48, 64


def _gt() -> dict[str, Any]:
    images = [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in (1, 2, 3)]
    anns = []
    for k, (iid, box) in enumerate(
        [(1, [4, 4, 20, 16]), (2, [10, 8, 30, 30]), (2, [40, 2, 20, 20]), (3, [1, 1, 40, 40])]
    ):
        x, y, w, h = box
        anns.append(
            {
                "id": k + 1,
                "image_id": iid,
                "category_id": 1,
                "bbox": [float(v) for v in box],
                "area": float(w * h),
                "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            }
        )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}


@dataclasses.dataclass
class _Item:
    image_id: int
    image: np.ndarray
    boxes: np.ndarray


def _items(gt: dict[str, Any]) -> list[_Item]:
    out = []
    for im in gt["images"]:
        xywh = np.array(
            [a["bbox"] for a in gt["annotations"] if a["image_id"] == im["id"]], np.float32
        )
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        out.append(_Item(im["id"], np.zeros((H, W, 3), np.uint8), xyxy))
    return out


def _task_without_labels_on(bad_id: int):
    """Detections = the GT boxes; the image ``bad_id`` gets no labels (CocoEvaluator refuses)."""

    def task(ctx: Any) -> Detections:
        item = ctx.meta["item"]
        n = len(item.boxes)
        labels = None if ctx.image_id == bad_id else np.ones(n, np.int64)
        # the proposal for image 2 misses one of its two objects
        boxes = item.boxes[:1] if ctx.image_id == 2 else item.boxes
        labels = None if labels is None else labels[: len(boxes)]
        return Detections(boxes=boxes, scores=np.ones(len(boxes), np.float32), labels=labels)

    return task


@pytest.mark.parametrize("coco_first", [False, True])
def test_image_failing_in_one_evaluator_counts_in_none(coco_first: bool):
    """Image 2 fails in CocoEvaluator.process (no labels). Before the fix it stayed in the
    ProposalEvaluator when that ran first (AR@100 = 0.75 over 3 images while the report said 2
    images and 1 failure); the metrics depended on the evaluators' order."""
    gt = _gt()
    prop = ProposalEvaluator(gt, iou_types=("bbox",), max_dets=(1, 100))
    coco = CocoEvaluator(gt, iou_types=("bbox",))
    evs = [coco, prop] if coco_first else [prop, coco]
    report = run(_task_without_labels_on(2), _items(gt), evs)
    meta, m = report["meta"], report["metrics"]
    assert meta["n_images"] == 2 and meta["n_failed"] == 1
    assert meta["failures"][0]["image_id"] == 2 and "kept_by" not in meta["failures"][0]
    assert prop.image_ids == [1, 3] and coco.image_ids == [1, 3]
    assert m["proposals/box_AR@100"] == pytest.approx(1.0)
    assert m["bbox/AP"] == pytest.approx(1.0)


def test_evaluator_without_discard_is_named_in_the_failure():
    class Counter:
        def __init__(self) -> None:
            self.ids: list[Any] = []

        def reset(self) -> None:
            self.ids = []

        def process(self, image_id: Any, prediction: Any) -> None:
            self.ids.append(image_id)

        def evaluate(self) -> dict[str, float]:
            return {"count/n": float(len(self.ids))}

    gt = _gt()
    report = run(_task_without_labels_on(3), _items(gt), [Counter(), CocoEvaluator(gt, ("bbox",))])
    fail = report["meta"]["failures"][0]
    assert fail["image_id"] == 3 and fail["kept_by"] == ["Counter"]


def test_discard_takes_an_image_back_from_each_evaluator():
    from composer.evaluation import ItemGroundTruth, PointEvaluator
    from composer.evaluation.edges_bsds import BoundaryEvaluator
    from composer.evaluation.points import ClickTrace

    rng = np.random.default_rng(0)
    gt = np.zeros((30, 40), bool)
    gt[15, :] = True
    bev = BoundaryEvaluator(thresholds=5)
    wrapped = ItemGroundTruth(bev, lambda item: item)
    pa = rng.random((30, 40))
    bev.process("a", pa, [gt])
    bev.process("b", np.ones((30, 40)), [gt])
    before = bev.evaluate()
    wrapped.discard("b")
    want = BoundaryEvaluator(thresholds=5)
    want.process("a", pa, [gt])
    got, exp = bev.evaluate(), want.evaluate()
    assert bev._ids == ["a"] and got["num_images"] == 1
    for key in ("ODS", "OIS", "AP"):
        assert got[key] == exp[key] and got[key] != before[key]

    def trace(iid: Any, iou: float) -> ClickTrace:
        z = np.zeros((1, 2), np.float32)
        return ClickTrace(
            iid,
            z,
            np.ones(1, np.int64),
            np.array([iou]),
            np.array([iou]),
            np.ones(1, np.float32),
            max_clicks=3,
        )

    pev = PointEvaluator(max_clicks=3, report_clicks=(1,))
    pev.process(1, [trace(1, 0.5), trace(1, 0.7)])
    pev.process(2, [trace(2, 0.1)])
    pev.discard(2)
    assert pev.evaluate()["points/mIoU@1"] == pytest.approx(0.6)

    with pytest.raises(NotImplementedError):
        ItemGroundTruth(
            type(
                "E",
                (),
                {"reset": lambda s: None, "process": lambda s, *a: None, "evaluate": lambda s: {}},
            )(),
            lambda i: i,
        ).discard(1)
