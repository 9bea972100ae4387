"""InstanceTask: detector boxes -> masks in one batched call on the shared embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import skimage.data

from composer.embedding import EmbeddingCache
from composer.models.detectors import CocoJsonDetector, GroundTruthDetector, load_detector
from composer.predictor import SamPredictor
from composer.sam import build_sam
from composer.structures import Detections
from tasks.base import Task, TaskContext
from tasks.instances import InstanceConfig, InstanceTask


class CountingSam(SamPredictor):
    """The tiny random SAM, recording every predict call's arguments."""

    def __init__(self) -> None:
        super().__init__(build_sam("vit_tiny_test"))
        self.calls: list[dict[str, Any]] = []

    def predict(
        self,
        embedding,
        points=None,
        labels=None,
        boxes=None,
        mask_input=None,
        multimask=True,
        keep_low_res=True,
    ):
        self.calls.append(
            {
                "boxes": None if boxes is None else np.asarray(boxes).copy(),
                "mask_input": mask_input,
                "multimask": multimask,
            }
        )
        return super().predict(
            embedding, points, labels, boxes, mask_input, multimask, keep_low_res
        )


class FixedDetector:
    """Returns given boxes (XYXY), scores and labels for every image."""

    model_id = "fixed"
    class_names = {1: "person", 18: "dog", 3: "car"}

    def __init__(self, boxes, scores, labels) -> None:
        self.out = (
            np.asarray(boxes, np.float32),
            np.asarray(scores, np.float32),
            np.asarray(labels),
        )
        self.seen: list[Any] = []

    def __call__(self, image, image_id=None) -> Detections:
        self.seen.append(image_id)
        b, s, lab = self.out
        return Detections(
            b, s, lab, meta={"model_id": self.model_id, "class_names": self.class_names}
        )


@pytest.fixture
def image() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut()[::2, ::2])  # (256, 256, 3)


BOXES = [
    [10, 10, 120, 200],
    [100, 50, 250, 250],
    [0, 0, 60, 60],
    [30, 120, 90, 250],
    [5, 5, 20, 30],
]
SCORES = [0.3, 0.9, 0.5, 0.7, 0.1]
LABELS = [18, 1, 3, 1, 1]


def test_all_boxes_in_one_call_with_one_encoder_pass(image):
    seg, cache = CountingSam(), EmbeddingCache()
    task = InstanceTask(seg, FixedDetector(BOXES, SCORES, LABELS))
    assert isinstance(task, Task)
    out = task(TaskContext(image, 42, cache))
    assert len(seg.calls) == 1 and len(seg.calls[0]["boxes"]) == 5
    assert cache.encoder_calls == 1
    # labels and scores are the detector's, sorted by score; predicted IoU kept aside
    order = np.argsort(SCORES)[::-1]
    assert np.allclose(out.scores, np.asarray(SCORES)[order])
    assert out.labels.tolist() == np.asarray(LABELS)[order].tolist()
    assert np.allclose(out.boxes, np.asarray(BOXES, np.float32)[order])
    assert out.masks is not None and len(out.masks) == 5 and out.masks.image_size == (256, 256)
    assert out.extras["predicted_iou"].shape == (5,) and out.extras["mask_box"].shape == (5, 4)
    assert not np.allclose(out.extras["predicted_iou"], out.scores)
    assert out.meta["image_id"] == 42 and out.meta["detector"] == "fixed"
    # a second task (or a second run) on the same image reuses the embedding
    InstanceTask(seg, FixedDetector(BOXES[:2], SCORES[:2], LABELS[:2]))(
        TaskContext(image, 42, cache)
    )
    assert cache.encoder_calls == 1 and cache.hits == 1


def test_refinement_feeds_back_the_best_low_res_logits(image):
    seg = CountingSam()
    ctx = TaskContext(image, 1, EmbeddingCache())
    det = FixedDetector(BOXES, SCORES, LABELS)
    plain = InstanceTask(seg, det, InstanceConfig(multimask=True))(ctx)
    seg.calls.clear()
    refined = InstanceTask(seg, det, InstanceConfig(refine=True, multimask=True))(ctx)
    assert len(seg.calls) == 2 and ctx.cache.encoder_calls == 1
    first, second = seg.calls
    assert first["multimask"] and not second["multimask"]
    assert np.array_equal(first["boxes"], second["boxes"])
    mi = np.asarray(second["mask_input"])
    assert mi.shape == (5, 1, *seg.low_res_size) and mi.dtype == np.float32
    # the fed-back logits are the most confident of the three masks of each box
    emb = ctx.cache.get(image, seg)
    ref = seg.predict(emb, boxes=first["boxes"], multimask=True)
    iou = ref.extras["predicted_iou"].reshape(5, 3)
    best = ref.extras["low_res_logits"].reshape(5, 3, *seg.low_res_size)[
        np.arange(5), iou.argmax(1)
    ]
    assert np.allclose(mi[:, 0], best, atol=1e-5)
    # same items, labels, scores and image size; the masks themselves change
    assert len(refined) == len(plain) == 5 and refined.masks.image_size == plain.masks.image_size
    assert refined.labels.tolist() == plain.labels.tolist() and np.allclose(
        refined.scores, plain.scores
    )
    assert refined.meta["refined"] and not plain.meta["refined"]
    assert not np.array_equal(refined.masks.to_dense(), plain.masks.to_dense())


def test_threshold_max_dets_and_clipping(image):
    boxes = [[-20, -10, 100, 300], [50, 50, 50.5, 90], [10, 10, 90, 90], [0, 0, 40, 40]]
    det = FixedDetector(boxes, [0.9, 0.95, 0.2, 0.6], [1, 1, 1, 3])
    seg = CountingSam()
    out = InstanceTask(seg, det, InstanceConfig(score_threshold=0.5, max_dets=2))(
        TaskContext(image, 0, EmbeddingCache())
    )
    # the 0.95 box is 0.5 px wide (dropped), the 0.2 one is below the threshold
    assert np.allclose(out.scores, [0.9, 0.6])
    assert np.allclose(out.boxes[0], [0, 0, 100, 256])  # clipped to the 256 x 256 image
    assert len(seg.calls[0]["boxes"]) == 2
    for bad in (dict(score_threshold=1.5), dict(max_dets=0), dict(min_box_size=-1)):
        with pytest.raises(ValueError):
            InstanceConfig(**bad)


def test_no_detections_gives_empty_result_with_message(image, caplog):
    seg, cache = CountingSam(), EmbeddingCache()
    with caplog.at_level("INFO", logger="tasks.instances"):
        out = InstanceTask(seg, FixedDetector(np.zeros((0, 4)), [], []))(
            TaskContext(image, 9, cache)
        )
    assert len(out) == 0 and out.masks is not None and out.masks.image_size == (256, 256)
    assert "found no boxes" in out.meta["message"] and "found no boxes" in caplog.text
    assert seg.calls == [] and cache.encoder_calls == 0  # nothing to segment, nothing embedded
    below = InstanceTask(
        seg, FixedDetector(BOXES, SCORES, LABELS), InstanceConfig(score_threshold=0.95)
    )
    assert len(below(TaskContext(image, 9, cache))) == 0
    assert out.to_coco(image_id=9) == []


def test_ssd_boxes_on_a_photo(image, ssd_files):
    seg = CountingSam()
    out = InstanceTask(seg, load_detector(score_threshold=0.5))(
        TaskContext(image, "astro", EmbeddingCache())
    )
    assert 1 in out.labels.tolist() and out.meta["class_names"][1] == "person"
    assert out.meta["detector"] == "ssd_mobilenet_v2_coco_2018_03_29"


def test_stored_boxes_are_found_by_image_id(image, tmp_path):
    import json

    path = tmp_path / "res.json"
    path.write_text(
        json.dumps([{"image_id": 7, "category_id": 1, "bbox": [10, 10, 100, 100], "score": 0.8}])
    )
    task = InstanceTask(CountingSam(), CocoJsonDetector(path))
    assert task(TaskContext(image, 7, EmbeddingCache())).labels.tolist() == [1]
    missing = task(TaskContext(image, 8, EmbeddingCache()))
    assert len(missing) == 0 and "no boxes for image 8" in missing.meta["message"]


def test_ground_truth_boxes_give_box_ap_one(coco_dir):
    """Known answer: with ground-truth boxes as detections, box AP is exactly 1."""
    from composer.data.coco import coco_subset
    from composer.evaluation import CocoEvaluator, run

    ds = coco_subset(image_ids=coco_subset().image_ids[:2])
    task = InstanceTask(CountingSam(), GroundTruthDetector(ds))
    report = run(task, ds, CocoEvaluator(ds.coco, iou_types=("bbox", "segm")))
    assert report["meta"]["n_failed"] == 0 and report["meta"]["cache"]["encoder_calls"] == 2
    assert report["metrics"]["bbox/AP"] == pytest.approx(1.0)
    assert 0.0 <= report["metrics"]["segm/AP"] < 1.0


# ------------------------------------------------------------------------- small-box zoom
def test_zoom_window_is_a_square_inside_the_image():
    from tasks.instances import zoom_window

    x0, y0, x1, y1 = zoom_window(np.array([100, 100, 120, 110]), (480, 640), 3.0, 64)
    assert (x1 - x0, y1 - y0) == (64, 64)  # 3 x 20 = 60 < the 64-px minimum
    assert abs((x0 + x1) / 2 - 110) <= 1 and abs((y0 + y1) / 2 - 105) <= 1
    assert zoom_window(np.array([5, 5, 20, 30]), (256, 256), 3.0, 64) == (0, 0, 75, 75)
    assert zoom_window(np.array([600, 440, 640, 480]), (480, 640), 3.0, 64) == (520, 360, 640, 480)
    assert zoom_window(np.array([0, 0, 300, 100]), (200, 640), 3.0, 64) == (0, 0, 640, 200)


def test_zoom_decodes_small_boxes_again_in_a_crop(image):
    seg, cache = CountingSam(), EmbeddingCache()
    det = FixedDetector(BOXES, SCORES, LABELS)
    plain = InstanceTask(seg, det)(TaskContext(image, 7, cache))
    seg.calls.clear()
    zoomed = InstanceTask(seg, det, InstanceConfig(zoom_small=0.2))(TaskContext(image, 7, cache))
    # one box is below 0.2 x 256 px: [5, 5, 20, 30]; the others keep their masks
    assert zoomed.meta["zoomed"] == 1 and plain.meta["zoomed"] == 0
    assert plain.meta["zoom_small"] == 0.0 and zoomed.meta["zoom_small"] == 0.2
    assert len(seg.calls) == 2 and cache.encoder_calls == 2  # the image (cached) + the crop
    assert np.array_equal(seg.calls[1]["boxes"], [[5, 5, 20, 30]])  # the crop starts at (0, 0)
    i = int(np.flatnonzero(zoomed.boxes[:, 2] == 20)[0])
    dense, before = zoomed.masks.to_dense(), plain.masks.to_dense()
    others = np.arange(5) != i
    assert np.array_equal(dense[others], before[others])
    assert not dense[i, 75:].any() and not dense[i, :, 75:].any()  # inside the crop
    assert np.allclose(zoomed.extras["mask_box"][others], plain.extras["mask_box"][others])
    # the same settings again: the crop's embedding comes from the cache
    InstanceTask(seg, det, InstanceConfig(zoom_small=0.2))(TaskContext(image, 7, cache))
    assert cache.encoder_calls == 2
    for bad in ({"zoom_small": 1.5}, {"zoom_small": "on"}, {"zoom_context": 0.5},
                {"zoom_min_crop": 4}):
        with pytest.raises(ValueError):
            InstanceConfig(**bad)


def test_zoom_raises_composer_tiny_iou_on_small_coco_objects(coco_dir):
    """Real weights and data: the held-out COCO images' small objects (box side < 64 px)."""
    import composer
    from composer.data.coco import coco_subset

    ds = coco_subset(image_ids=coco_subset().image_ids[:3])
    seg = composer.load_segmenter("composer_tiny", device="cpu")
    ious: dict[float, list[float]] = {0.0: [], 0.1: []}
    for item in ds:
        gt = item.gt[~item.gt.extras["iscrowd"].astype(bool)]
        side = np.maximum(gt.boxes[:, 2] - gt.boxes[:, 0], gt.boxes[:, 3] - gt.boxes[:, 1])
        gt = gt[side < 0.1 * max(item.image_size)]
        cache = EmbeddingCache()
        det = FixedDetector(gt.boxes, np.ones(len(gt)), gt.labels)
        truth = gt.masks.to_dense()
        for z in ious:
            out = InstanceTask(seg, det, InstanceConfig(zoom_small=z))(
                TaskContext(item.load_image(), item.image_id, cache))
            order = np.argsort(-out.scores, kind="stable")  # equal scores: box order kept
            pred = out.masks.to_dense()
            for k, j in enumerate(order):
                inter = np.logical_and(pred[k], truth[j]).sum()
                ious[z].append(inter / max(np.logical_or(pred[k], truth[j]).sum(), 1))
    n = len(ious[0.0])
    before, after = float(np.mean(ious[0.0])), float(np.mean(ious[0.1]))
    # (here: 34 objects, mean IoU .047 -> .435)
    assert n >= 10 and after > before + 0.1, (n, before, after)


def test_zoom_auto_takes_the_segmenter_recommendation():
    import composer
    from composer.sam.composer_tiny import BOX_ZOOM

    det = FixedDetector(BOXES, SCORES, LABELS)
    tiny = composer.load_segmenter("composer_tiny", device="cpu")
    assert tiny.box_zoom == BOX_ZOOM == 0.35
    assert InstanceTask(tiny, det).zoom_fraction == 0.35  # "auto" is the default
    assert InstanceTask(tiny, det, InstanceConfig(zoom_small="off")).zoom_fraction == 0.0
    assert InstanceTask(tiny, det, InstanceConfig(zoom_small=0.1)).zoom_fraction == 0.1
    assert InstanceTask(CountingSam(), det).zoom_fraction == 0.0  # no recommendation: off


def test_instances_cli_zoom_small(tmp_path, capsys):
    import json

    from PIL import Image

    from composer.cli import main

    Image.fromarray(skimage.data.coffee()).save(tmp_path / "1.png")  # 400 x 600; image id 1
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([
        {"image_id": 1, "category_id": 47, "bbox": [200, 100, 40, 30], "score": 0.9},  # small
        {"image_id": 1, "category_id": 47, "bbox": [50, 50, 400, 300], "score": 0.8},
    ]))
    base = ["instances", str(tmp_path / "1.png"), "--model", "composer_tiny",
            "--detector", str(boxes), "--out", str(tmp_path / "out")]
    assert main(base) == 0
    meta = json.loads((tmp_path / "out" / "1.json").read_text())["meta"]
    assert meta["zoom_small"] == 0.35 and meta["zoomed"] == 1  # auto: composer_tiny's 0.35
    assert "segmented again in a crop" in capsys.readouterr().out
    assert main([*base, "--zoom-small", "off"]) == 0
    meta = json.loads((tmp_path / "out" / "1.json").read_text())["meta"]
    assert meta["zoom_small"] == 0.0 and meta["zoomed"] == 0
    capsys.readouterr()
    assert main([*base, "--zoom-small", "2"]) == 2
    err = capsys.readouterr().err
    assert "--zoom-small must be auto, off or a fraction" in err and "Traceback" not in err


def test_zoom_keeps_the_whole_image_mask_when_the_crop_decodes_nothing(image, monkeypatch):
    seg, cache = CountingSam(), EmbeddingCache()
    det = FixedDetector(BOXES, SCORES, LABELS)
    plain = InstanceTask(seg, det, InstanceConfig(zoom_small="off"))(TaskContext(image, 7, cache))
    task = InstanceTask(seg, det, InstanceConfig(zoom_small=0.2))
    decode = task._decode

    def empty_in_crops(emb, boxes):
        out = decode(emb, boxes)
        if emb.crop_box is not None:
            out.masks = type(out.masks).from_dense(np.zeros((len(boxes), *out.masks.image_size), bool))
        return out

    monkeypatch.setattr(task, "_decode", empty_in_crops)
    out = task(TaskContext(image, 7, cache))
    assert out.meta["zoomed"] == 0
    assert np.array_equal(out.masks.to_dense(), plain.masks.to_dense())
    assert np.allclose(out.extras["predicted_iou"], plain.extras["predicted_iou"])


@pytest.mark.parametrize("field", ["refine", "multimask"])
def test_instance_config_flags_must_be_bools(field: str) -> None:
    """predict refuses a flag that is not a bool (multimask='no' is truthy): a config with
    refine=1 or multimask='no' was accepted and then failed on every image of a run, naming
    predict's keep_low_res / multimask rather than the config's field."""
    for bad in (1, "no", None):
        with pytest.raises(TypeError, match=f"{field} must be a bool, got {bad!r}"):
            InstanceConfig(**{field: bad})
    assert getattr(InstanceConfig(**{field: np.bool_(True)}), field)
