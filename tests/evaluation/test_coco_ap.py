"""CocoEvaluator and ProposalEvaluator against pycocotools run directly on the same files."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from composer.data.coco import CocoDataset, coco_subset
from composer.evaluation.coco_ap import CocoEvaluator
from composer.evaluation.proposals import ProposalEvaluator
from composer.structures import Detections, Masks

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def dataset(coco_dir: Path) -> CocoDataset:
    return coco_subset()


@pytest.fixture(scope="module")
def ann_file(coco_dir: Path) -> Path:
    return coco_dir / "annotations" / "instances_val2017.json"


def noisy_predictions(
    ds: CocoDataset,
    seed: int,
    n_random: int,
    class_agnostic: bool = False,
    n_images: int | None = None,
) -> dict[int, Detections]:
    """GT masks eroded/dilated/shifted with random scores, some wrong labels, plus random boxes."""
    rng = np.random.default_rng(seed)
    cat_ids = np.array(sorted(ds.class_names))
    kernel = np.ones((3, 3), np.uint8)
    out = {}
    for item in list(ds)[:n_images]:
        h, w = item.image_size
        gt = item.gt[~item.gt.extras["iscrowd"]]
        dense = [m.astype(np.uint8) for m in gt.masks.to_dense()]
        masks, labs = [], []
        for m, lab in zip(dense, gt.labels, strict=True):
            op = rng.integers(0, 4)
            if op == 1:
                m = cv2.erode(m, kernel, iterations=int(rng.integers(1, 4)))
            elif op == 2:
                m = cv2.dilate(m, kernel, iterations=int(rng.integers(1, 6)))
            elif op == 3:
                m = np.roll(m, (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), axis=(0, 1))
            if m.any():
                masks.append(m.astype(bool))
                labs.append(rng.choice(cat_ids) if rng.random() < 0.1 else lab)
        parts = [Masks.from_dense(np.stack(masks))] if masks else []
        if n_random:
            xy = rng.uniform(0, 1, (n_random, 2)) * [w - 8, h - 8]
            wh = rng.uniform(0.05, 1, (n_random, 2)) * ([w, h] - xy)  # up to the far border
            rles = mask_utils.frPyObjects(np.concatenate([xy, np.maximum(wh, 4)], 1), h, w)
            parts.append(Masks(rles, (h, w)))
            labs += list(rng.choice(cat_ids, n_random))
        mk = Masks.concatenate(parts, (h, w))
        if len(mk) == 0:
            out[item.image_id] = Detections.empty((h, w), image_id=item.image_id)
            continue
        labels_arr = None if class_agnostic else np.asarray(labs)
        # jitter the boxes so that box AP is not just mask AP
        boxes = mk.boxes() + rng.normal(0, 2, (len(mk), 4)).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        out[item.image_id] = Detections(
            boxes, rng.random(len(mk)), labels_arr, mk, meta={"image_size": (h, w)}
        )
    return out


def write_result_files(
    preds: dict[int, Detections], tmp: Path, category_id: int | None = None
) -> dict[str, Path]:
    """The standard results files: masks (segmentation only) and boxes (bbox only)."""
    entries = [
        e for iid, d in preds.items() for e in d.to_coco(image_id=iid, category_id=category_id)
    ]
    segm = [
        {k: e[k] for k in ("image_id", "category_id", "segmentation", "score")} for e in entries
    ]
    bbox = [{k: e[k] for k in ("image_id", "category_id", "bbox", "score")} for e in entries]
    paths = {"segm": tmp / "segm.json", "bbox": tmp / "bbox.json"}
    paths["segm"].write_text(json.dumps(segm))
    paths["bbox"].write_text(json.dumps(bbox))
    return paths


def pycocotools_stats(
    ann_file: Path,
    res_file: Path,
    iou_type: str,
    use_cats: bool = True,
    max_dets: list[int] | None = None,
    img_ids: list[int] | None = None,
) -> tuple[np.ndarray, COCOeval]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(str(res_file))
        E = COCOeval(gt, dt, iou_type)
        E.params.useCats = int(use_cats)
        if max_dets is not None:
            E.params.maxDets = max_dets
        if img_ids is not None:
            E.params.imgIds = sorted(img_ids)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E.stats.copy(), E


NAMES = [
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR@1",
    "AR@10",
    "AR@100",
    "ARs@100",
    "ARm@100",
    "ARl@100",
]


def test_coco_ap_equals_pycocotools(dataset, ann_file, tmp_path):
    preds = noisy_predictions(dataset, seed=0, n_random=3)
    files = write_result_files(preds, tmp_path)
    ev = CocoEvaluator(str(ann_file), results_file=tmp_path / "ours.json")
    for iid, d in preds.items():
        ev.process(iid, d)
    ours = ev.evaluate()
    for t in ("segm", "bbox"):
        ref, _ = pycocotools_stats(ann_file, files[t], t)
        got = np.array([ours[f"{t}/{n}"] for n in NAMES])
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12, err_msg=t)
        assert 0.2 < ours[f"{t}/AP"] < 0.95  # a non-trivial operating point
    assert ours["segm/AP"] != ours["bbox/AP"]
    written = json.loads((tmp_path / "ours.json").read_text())
    assert len(written) == sum(len(d) for d in preds.values())


def test_gt_as_predictions_scores_one(dataset):
    ev = CocoEvaluator(dataset.coco)
    pe = ProposalEvaluator(dataset.coco, iou_types=("segm",))
    for item in dataset:
        gt = item.gt[~item.gt.extras["iscrowd"]]
        ev.process(item.image_id, gt)
        pe.process(item.image_id, gt)
    m = ev.evaluate()
    for k in ("segm/AP", "segm/AP50", "segm/AP75", "segm/AR@100", "bbox/AP"):
        assert m[k] == pytest.approx(1.0), k
    p = pe.evaluate()
    assert p["proposals/AR@100"] == pytest.approx(1.0)
    assert p["proposals/AR@1000"] == pytest.approx(1.0)
    assert p["proposals/AR@10"] < 1.0  # some images hold more than 10 objects


def test_lvis_max_dets_fixes_summarize_hardcoding(dataset, ann_file, tmp_path):
    preds = noisy_predictions(dataset, seed=1, n_random=15, n_images=30)
    files = write_result_files(preds, tmp_path)
    ev = CocoEvaluator(ann_file, iou_types=("segm",), max_dets=(1, 10, 300))
    for iid, d in preds.items():
        ev.process(iid, d)
    ours = ev.evaluate()
    ref, E = pycocotools_stats(
        ann_file, files["segm"], "segm", max_dets=[1, 10, 300], img_ids=list(preds)
    )
    assert ref[0] == -1  # summarize() looks for maxDets=100, which is absent
    prec = E.eval["precision"][:, :, :, 0, 2]
    assert ours["segm/AP"] == pytest.approx(float(np.mean(prec[prec > -1])), abs=1e-12)
    got = [
        ours[f"segm/{n}"]
        for n in (
            "AP50",
            "AP75",
            "APs",
            "APm",
            "APl",
            "AR@1",
            "AR@10",
            "AR@300",
            "ARs@300",
            "ARm@300",
            "ARl@300",
        )
    ]
    np.testing.assert_allclose(got, ref[1:], rtol=0, atol=1e-12)


def test_proposal_ar_equals_pycocotools_use_cats_0(dataset, ann_file, tmp_path):
    preds = noisy_predictions(dataset, seed=2, n_random=120, class_agnostic=True, n_images=12)
    cat = int(dataset.coco.dataset["categories"][0]["id"])
    files = write_result_files(preds, tmp_path, category_id=cat)
    pe = ProposalEvaluator(str(ann_file))
    for iid, d in preds.items():
        pe.process(iid, d)
    ours = pe.evaluate()
    for t, pre in (("segm", "proposals/"), ("bbox", "proposals/box_")):
        ref, _ = pycocotools_stats(
            ann_file, files[t], t, use_cats=False, max_dets=[10, 100, 1000], img_ids=list(preds)
        )
        keys = ["AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AR_large@1000"]
        got = [ours[pre + k] for k in keys]
        np.testing.assert_allclose(got, ref[6:12], rtol=0, atol=1e-12, err_msg=t)
    assert ours["proposals/AR@10"] < ours["proposals/AR@100"] <= ours["proposals/AR@1000"] < 1.0
    # class-agnostic: the same masks with per-class evaluation score differently
    with_cats, _ = pycocotools_stats(
        ann_file,
        files["segm"],
        "segm",
        use_cats=True,
        max_dets=[10, 100, 1000],
        img_ids=list(preds),
    )
    assert with_cats[8] < ours["proposals/AR@1000"]


def test_lvis_style_json_and_frequency_groups(coco_dir, ann_file, tmp_path):
    data = json.loads(ann_file.read_text())
    for a in data["annotations"]:
        a.pop("iscrowd")
    for im in data["images"]:
        im.pop("file_name")
    freq = {}
    for c in data["categories"]:
        c["frequency"] = "rfc"[int(c["id"]) % 3]
        freq[c["id"]] = c["frequency"]
    lvis = tmp_path / "lvis_like.json"
    lvis.write_text(json.dumps(data))
    ds = CocoDataset(lvis, coco_dir / "val2017")
    assert len(ds) == 80 and all(p.path.is_file() for p in ds)
    preds = noisy_predictions(ds, seed=3, n_random=10, class_agnostic=True, n_images=20)
    pe = ProposalEvaluator(lvis, iou_types=("segm",))
    for iid, d in preds.items():
        pe.process(iid, d)
    ours = pe.evaluate()
    # reference for the rare group: pycocotools on a GT file holding only rare-category objects
    rare = copy.deepcopy(data)
    rare["annotations"] = [a for a in rare["annotations"] if freq[a["category_id"]] == "r"]
    for a in rare["annotations"]:
        a["iscrowd"] = 0
    for im in rare["images"]:
        im["file_name"] = im["coco_url"].rsplit("/", 1)[-1]
    (tmp_path / "rare.json").write_text(json.dumps(rare))
    files = write_result_files(preds, tmp_path, category_id=1)
    ref, _ = pycocotools_stats(
        tmp_path / "rare.json",
        files["segm"],
        "segm",
        use_cats=False,
        max_dets=[10, 100, 1000],
        img_ids=list(preds),
    )
    assert ours["proposals/AR_rare@1000"] == pytest.approx(ref[8], abs=1e-12)
    assert {"proposals/AR_frequent@1000", "proposals/AR_common@1000"} <= set(ours)


def test_empty_results_give_zeros_with_warning(dataset, caplog):
    ev = CocoEvaluator(dataset.coco)
    pe = ProposalEvaluator(dataset.coco)
    for item in list(dataset)[:3]:
        empty = Detections.empty(item.image_size, image_id=item.image_id)
        ev.process(item.image_id, empty)
        pe.process(item.image_id, empty)
    with caplog.at_level(logging.WARNING):
        m = ev.evaluate()
        p = pe.evaluate()
    assert len(m) == 24 and all(v == 0.0 for v in m.values())
    assert p["proposals/AR@1000"] == 0.0
    assert "no detections" in caplog.text and "no proposals" in caplog.text
    # nothing processed at all (every image failed): undefined, -1 as pycocotools says it
    assert CocoEvaluator(dataset.coco).evaluate()["segm/AP"] == -1.0
    assert ProposalEvaluator(dataset.coco).evaluate()["proposals/AR@1000"] == -1.0


def test_only_processed_images_count(dataset):
    ev = CocoEvaluator(dataset.coco, iou_types=("segm",))
    items = list(dataset)[:5]
    for item in items:
        ev.process(item.image_id, item.gt[~item.gt.extras["iscrowd"]])
    assert ev.image_ids == sorted(i.image_id for i in items)
    assert ev.evaluate()["segm/AP"] == pytest.approx(1.0)


def test_bad_input_is_rejected(dataset):
    ev = CocoEvaluator(dataset.coco)
    item = dataset[0]
    with pytest.raises(ValueError, match="not in the ground truth"):
        ev.process(999999999, item.gt)
    unlabeled = Detections.from_masks(item.gt.masks)
    with pytest.raises(ValueError, match="labels"):
        ev.process(item.image_id, unlabeled)
    with pytest.raises(ValueError, match="needs masks"):
        ev.process(item.image_id, Detections(item.gt.boxes, labels=item.gt.labels))
    wrong = Detections.from_masks(Masks.from_dense(np.ones((1, 5, 5), bool)), labels=[1])
    with pytest.raises(ValueError, match="size"):
        ev.process(item.image_id, wrong)
    with pytest.raises(ValueError):
        CocoEvaluator(dataset.coco, iou_types=("keypoints",))
    with pytest.raises(ValueError):
        CocoEvaluator(dataset.coco, max_dets=(100, 10))


# ------------------------------------------------------------------- LVIS federated protocol
def _lvis_case(federated: bool = True):
    """Two 100x100 images; categories 1 (frequent), 3 and 5 (common), 4 (rare). Image 1 lists
    category 3 as absent and category 4 as not exhaustively annotated; category 5 is checked
    nowhere. Known answers from the official `lvis` API (LVISEval 0.5.3) on the same input."""
    def ann(i, iid, c, x, y, w, h):
        return {"id": i, "image_id": iid, "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}

    images = [{"id": 1, "height": 100, "width": 100, "file_name": "1.jpg"},
              {"id": 2, "height": 100, "width": 100, "file_name": "2.jpg"}]
    if federated:
        images[0].update(neg_category_ids=[3], not_exhaustive_category_ids=[4])
        images[1].update(neg_category_ids=[], not_exhaustive_category_ids=[])
    gt = {"images": images,
          "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 3, "name": "b", "frequency": "c"},
                         {"id": 4, "name": "c", "frequency": "r"}, {"id": 5, "name": "d", "frequency": "c"}],
          "annotations": [ann(1, 1, 1, 10, 10, 30, 30), ann(2, 1, 4, 50, 50, 20, 20),
                          ann(3, 2, 1, 60, 10, 30, 30), ann(4, 2, 3, 10, 60, 20, 20)]}
    dets = {1: [(1, [10, 10, 40, 40], .9), (1, [70, 70, 80, 80], .95),   # cat 1: a TP, a FP above it
                (4, [50, 50, 70, 70], .8), (4, [0, 80, 10, 90], .99),    # cat 4: FP not exhaustive
                (3, [80, 0, 90, 10], .7),                                # cat 3: absent, a real FP
                (5, [30, 60, 40, 70], .6)],                              # cat 5: unchecked, dropped
            2: [(1, [60, 10, 90, 40], .5), (3, [10, 60, 30, 80], .4)]}
    return gt, dets


def _evaluate(gt, dets, **kw):
    ev = CocoEvaluator(gt, iou_types=("bbox",), **kw)
    for iid, ds in dets.items():
        ev.process(iid, Detections(np.array([d[1] for d in ds], np.float32),
                                   np.array([d[2] for d in ds], np.float32),
                                   np.array([d[0] for d in ds], np.int64), meta={"image_size": (100, 100)}))
    return ev, ev.evaluate()


def test_lvis_ground_truth_is_evaluated_with_the_federated_protocol():
    gt, dets = _lvis_case()
    ev, m = _evaluate(gt, dets)
    assert ev.max_dets == (1, 10, 300)  # LVIS' default
    # cat 1: FP then two TPs -> 2/3; cat 3: FP then TP -> 1/2; cat 4: its FP ignored -> 1
    assert m["bbox/AP"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert (m["bbox/APr"], m["bbox/APc"], m["bbox/APf"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert "bbox/AR@300" in m and m["bbox/APm"] == -1
    # the per-image cap runs over all categories before the filter: 3 per image drops image
    # 1's cat-3 FP and cat-4 TP (cat 3 -> 1, cat 4 -> 0)
    _, capped = _evaluate(gt, dets, max_dets=(1, 3))
    assert capped["bbox/AP"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert (capped["bbox/APr"], capped["bbox/APc"]) == pytest.approx((0.0, 1.0))
    # the same file without LVIS' lists is exhaustive COCO: cat 4's FP counts, no APr/c/f
    plain_gt, _ = _lvis_case(federated=False)
    ev, plain = _evaluate(plain_gt, dets)
    assert ev.max_dets == (1, 10, 100) and "bbox/APr" not in plain
    assert plain["bbox/AP"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
