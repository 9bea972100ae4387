"""Edge cases of the evaluation metrics checked against their reference implementations."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from composer.embedding import ImageEmbedding
from composer.evaluation.coco_ap import CocoEvaluator, standard_stats
from composer.evaluation.points import PointEvaluator, next_click, simulate_clicks
from composer.evaluation.proposals import ProposalEvaluator
from composer.structures import Detections, Masks

H, W = 48, 64


def ritm_next_click(
    gt: np.ndarray, pred: np.ndarray, not_clicked: np.ndarray
) -> tuple[tuple[int, int], int]:
    """RITM's ``Clicker._get_next_click`` (isegm/inference/clicker.py), verbatim in numpy/cv2.

    Returns ((x, y), label).
    """
    fn = np.pad(gt & ~pred, 1)
    fp = np.pad(pred & ~gt, 1)
    fn_dt = cv2.distanceTransform(fn.astype(np.uint8), cv2.DIST_L2, 0)[1:-1, 1:-1]
    fp_dt = cv2.distanceTransform(fp.astype(np.uint8), cv2.DIST_L2, 0)[1:-1, 1:-1]
    fn_dt = fn_dt * not_clicked
    fp_dt = fp_dt * not_clicked
    positive = np.max(fn_dt) > np.max(fp_dt)
    dt = fn_dt if positive else fp_dt
    ys, xs = np.where(dt == np.max(dt))
    return (int(xs[0]), int(ys[0])), int(positive)


class _ConstantSegmenter:
    """Returns the same mask whatever the clicks (a segmenter that ignores them)."""

    model_id = "constant-edge-cases"

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.points: list[np.ndarray] = []

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        h, w = np.asarray(image).shape[:2]
        return ImageEmbedding(torch.zeros(1, 1, 1, 1), (h, w), (h, w), max(h, w), self.model_id)

    def predict(
        self, embedding, points=None, labels=None, boxes=None, mask_input=None, multimask=True
    ) -> Detections:
        self.points.append(np.asarray(points, np.float32).reshape(-1, 2))
        return Detections.from_masks(
            Masks.from_dense(self.mask[None]),
            scores=np.ones(1, np.float32),
            extras={"low_res_logits": np.zeros((1, 8, 8), np.float32)},
        )


# ---------------------------------------------------------------- point protocol
def test_next_click_skips_pixels_already_clicked_like_ritm():
    gt = np.zeros((H, W), bool)
    gt[10:31, 12:40] = True
    pred = np.zeros((H, W), bool)
    first, label = next_click(gt, pred)
    assert label == 1
    # the segmenter ignored the click: RITM's clicker does not click the same pixel again
    (x, y), label = next_click(gt, pred, clicked=[first])
    not_clicked = np.ones((H, W), np.float32)
    not_clicked[int(first[1]), int(first[0])] = 0
    (rx, ry), rlabel = ritm_next_click(gt, pred, not_clicked)
    assert (int(x), int(y)) == (rx, ry) and label == rlabel
    assert (int(x), int(y)) != (int(first[0]), int(first[1]))


def test_click_sequence_matches_ritm_clicker_on_random_predictions():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:H, :W]
    gt = (yy - 24) ** 2 / 15**2 + (xx - 30) ** 2 / 22**2 <= 1
    not_clicked = np.ones((H, W), np.float32)
    clicks: list[tuple[int, int]] = []
    for _ in range(12):
        cy, cx, r = rng.integers(5, H - 5), rng.integers(5, W - 5), rng.integers(3, 15)
        pred = (gt & (rng.random((H, W)) < 0.97)) ^ ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        ours = next_click(gt, pred, clicked=clicks or None)
        assert ours is not None
        (x, y), label = ours
        ref, ref_label = ritm_next_click(gt, pred, not_clicked)
        assert (int(x), int(y)) == ref and label == ref_label
        clicks.append(ref)
        not_clicked[ref[1], ref[0]] = 0


def test_segmenter_ignoring_clicks_gets_distinct_clicks_and_noc_max_clicks():
    gt = np.zeros((H, W), bool)
    gt[8:40, 10:50] = True
    seg = _ConstantSegmenter(np.zeros((H, W), bool))  # never segments anything
    emb = seg.embed(np.zeros((H, W, 3), np.uint8))
    trace = simulate_clicks(seg, emb, gt, max_clicks=5)
    pts = [tuple(p) for p in trace.points.astype(int).tolist()]
    assert len(pts) == 5 and len(set(pts)) == 5  # no click is repeated
    # each click is RITM's choice given the clicks before it
    not_clicked = np.ones((H, W), np.float32)
    for x, y in pts:
        assert ritm_next_click(gt, np.zeros_like(gt), not_clicked)[0] == (x, y)
        not_clicked[y, x] = 0
    ev = PointEvaluator(max_clicks=5, report_clicks=(1, 5))
    ev.process(0, trace)
    m = ev.evaluate()
    assert m["points/NoC@85"] == 5.0 and m["points/NoF@85"] == 1.0  # never reached: max_clicks
    assert m["points/mIoU@5"] == 0.0


# ---------------------------------------------------------------- COCO AP / proposal AR
def _rle(m: np.ndarray) -> dict[str, Any]:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def _small_gt() -> dict[str, Any]:
    """Three 48x64 images: image 1 two small objects, image 2 one small object, image 3 none."""
    boxes = {1: [(2, 2, 20, 20, 1), (22, 22, 38, 38, 2)], 2: [(5, 25, 15, 35, 1)], 3: []}
    anns: list[dict[str, Any]] = []
    for iid, objs in boxes.items():
        for x0, y0, x1, y1, cat in objs:
            m = np.zeros((H, W), bool)
            m[y0:y1, x0:x1] = True
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": iid,
                    "category_id": cat,
                    "segmentation": _rle(m),
                    "area": float(m.sum()),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "iscrowd": 0,
                }
            )
    images = [{"id": i, "height": H, "width": W, "file_name": f"{i}.png"} for i in boxes]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _pycocotools_no_detections(
    gt: dict[str, Any], img_ids: list[int], use_cats: bool, max_dets: list[int]
) -> dict[str, float]:
    """COCOeval on an empty result set (``loadRes`` rejects ``[]``; build the COCO directly)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": gt["images"],
            "categories": gt["categories"],
            "annotations": [],
        }
        coco_dt.createIndex()
        E = COCOeval(coco_gt, coco_dt, "segm")
        E.params.imgIds = img_ids
        E.params.useCats = int(use_cats)
        E.params.maxDets = max_dets
        E.evaluate()
        E.accumulate()
    return standard_stats(E, max_dets)


@pytest.mark.parametrize("img_ids", [[1, 2], [3]])
def test_no_detections_score_like_pycocotools(img_ids: list[int]):
    gt = _small_gt()
    ref = _pycocotools_no_detections(gt, img_ids, True, [1, 10, 100])
    ev = CocoEvaluator(copy.deepcopy(gt), iou_types=("segm",))
    for iid in img_ids:
        ev.process(iid, Detections.empty((H, W)))
    ours = {k.removeprefix("segm/"): v for k, v in ev.evaluate().items()}
    assert ours == pytest.approx(ref)
    # only small objects: medium/large are undefined (-1), not 0; no objects at all: all -1
    assert ours["APl"] == -1.0 and ours["ARm@100"] == -1.0
    assert ours["AP"] == (0.0 if img_ids == [1, 2] else -1.0)


def test_no_proposals_score_like_pycocotools():
    gt = _small_gt()
    ref = _pycocotools_no_detections(gt, [1, 2], False, [10, 100, 1000])
    ev = ProposalEvaluator(copy.deepcopy(gt), iou_types=("segm",))
    for iid in (1, 2):
        ev.process(iid, Detections.empty((H, W)))
    ours = ev.evaluate()
    assert ours["proposals/AR@1000"] == ref["AR@1000"] == 0.0
    assert ours["proposals/AR_small@1000"] == ref["ARs@1000"] == 0.0
    assert ours["proposals/AR_large@1000"] == ref["ARl@1000"] == -1.0


def test_a_results_file_cut_short_leaves_no_part_file(tmp_path):
    """A full disk while CocoEvaluator wrote results_file left a half-written
    ``<name>.part`` beside it; the error now removes it, and an earlier file stays whole."""
    from composer.evaluation.coco_ap import CocoResults
    from tests.test_atomic import file_size_limit

    results = CocoResults(copy.deepcopy(_small_gt()))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 40, (4000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 20, (4000, 2))], axis=1).astype(np.float32)
    results.add(1, Detections(boxes=boxes, scores=rng.random(4000).astype(np.float32)), False, 1)
    out = tmp_path / "results.json"
    out.write_text("[]")
    with file_size_limit(1 << 16), pytest.raises(OSError):
        results.write(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert out.read_text() == "[]"
    results.write(out)
    assert len(json.loads(out.read_text())) == 4000 and out.stat().st_size > 1 << 16


def test_ground_truth_without_area_is_sized_by_its_mask_as_coco_defines_it():
    """A user's json without "area" got the box's area: a triangle filling half of a 120 x 120
    box (7,140 pixels, COCO's medium) counted as large (14,161 > 96^2), so its AP went to APl
    instead of APm. pycocotools on the same json with COCO's area (the mask's) is the answer."""
    h = w = 200
    poly = [10.0, 10.0, 130.0, 10.0, 10.0, 130.0]
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "segmentation": [poly],
                           "iscrowd": 0}],
          "categories": [{"id": 3, "name": "thing"}]}
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
    mask = mask_utils.decode(rle).astype(bool)
    ev = CocoEvaluator(gt, iou_types=("segm",))
    ev.process(1, Detections(np.array([[10, 10, 130, 130]], np.float32),
                             np.array([0.9], np.float32), np.array([3]),
                             Masks.from_dense(mask[None])))
    ours = ev.evaluate()
    # pycocotools itself, on the json with COCO's area and the same results
    ref = copy.deepcopy(gt)
    ref["annotations"][0].update(area=float(mask_utils.area(rle)),
                                 bbox=[float(v) for v in mask_utils.toBbox(rle)])
    coco = COCO()
    coco.dataset = ref
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        enc["counts"] = enc["counts"].decode()
        dt = coco.loadRes([{"image_id": 1, "category_id": 3, "segmentation": enc,
                            "score": 0.9}])
        E = COCOeval(coco, dt, "segm")
        E.evaluate()
        E.accumulate()
        E.summarize()
    assert 32**2 < mask_utils.area(rle) < 96**2  # medium by its mask, large by its box
    assert ours["segm/APm"] == pytest.approx(E.stats[4]) == pytest.approx(1.0)
    assert ours["segm/APl"] == pytest.approx(E.stats[5]) == -1.0
