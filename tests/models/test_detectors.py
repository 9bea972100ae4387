"""Detectors: the shipped SSD on a real photo, torchvision weights through the hub, stored boxes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import skimage.data
import torch

from composer.models.coco_names import COCO_CATEGORIES
from composer.models.detectors import (
    TORCHVISION_ARCHS,
    CocoJsonDetector,
    Detector,
    GroundTruthDetector,
    SsdMobileNetDetector,
    TorchvisionDetector,
    load_detector,
    register_detector_weights,
    torchvision_weights_name,
)
from composer.structures import Detections


@pytest.fixture(scope="module")
def ssd(ssd_files) -> SsdMobileNetDetector:
    return SsdMobileNetDetector(score_threshold=0.3)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / area)


def test_ssd_finds_the_astronaut_as_person(ssd):
    image = skimage.data.astronaut()  # (512, 512, 3) RGB, the astronaut fills the left 3/4
    dets = ssd(image, image_id="astronaut")
    assert isinstance(ssd, Detector)
    assert dets.labels is not None and dets.scores is not None
    assert np.all(np.diff(dets.scores) <= 0) and np.all(dets.scores >= 0.3)
    person = dets[dets.labels == 1]
    assert len(person) >= 1 and person.scores[0] > 0.6
    # the person box covers the astronaut (left ~370 px, full height), in original pixels
    assert _iou(person.boxes[0], np.array([0, 0, 370, 512], np.float32)) > 0.8
    assert dets.meta["class_names"][1] == "person" and dets.meta["image_id"] == "astronaut"
    assert set(dets.labels.tolist()) <= set(COCO_CATEGORIES)


def test_ssd_scales_boxes_to_the_original_image(ssd):
    image = skimage.data.astronaut()
    small = np.ascontiguousarray(image[::2, ::2])  # 256 x 256
    big, half = ssd(image), ssd(small)
    pb, ph = big[big.labels == 1].boxes[0], half[half.labels == 1].boxes[0]
    assert np.allclose(pb / 2, ph, atol=12)
    strict = SsdMobileNetDetector(score_threshold=0.99)(image)
    assert len(strict) == 0 and strict.boxes.shape == (0, 4)


def test_coco_category_ids_match_the_dataset_and_torchvision(coco_dir):
    import torchvision.models.detection as tvd

    ann = json.loads((coco_dir / "annotations" / "instances_val2017.json").read_text())
    assert {c["id"]: c["name"] for c in ann["categories"]} == COCO_CATEGORIES
    tv = tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert {i: n for i, n in enumerate(tv) if n not in ("N/A", "__background__")} == COCO_CATEGORIES


def test_torchvision_specs_name_the_official_files():
    import torchvision.models.detection as tvd

    from composer.hub import get_spec

    register_detector_weights()
    register_detector_weights()  # idempotent
    official = {
        "fasterrcnn_resnet50_fpn": tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
        "fasterrcnn_resnet50_fpn_v2": tvd.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
        "retinanet_resnet50_fpn": tvd.RetinaNet_ResNet50_FPN_Weights.COCO_V1,
        "retinanet_resnet50_fpn_v2": tvd.RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1,
        "fcos_resnet50_fpn": tvd.FCOS_ResNet50_FPN_Weights.COCO_V1,
        "maskrcnn_resnet50_fpn": tvd.MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
    }
    assert set(official) == set(TORCHVISION_ARCHS)
    for arch, w in official.items():
        spec = get_spec(torchvision_weights_name(arch))
        assert spec.url == w.url and spec.arch == arch
        assert w.url.endswith(f"-{spec.sha256}.pth")
        assert spec.metrics["coco_val2017_box_map"] == w.meta["_metrics"]["COCO-val2017"]["box_map"]


@pytest.fixture(scope="module")
def fcos_file(tmp_path_factory):
    import torchvision.models.detection as tvd

    torch.manual_seed(0)
    model = tvd.fcos_resnet50_fpn(weights=None, weights_backbone=None)
    folder = tmp_path_factory.mktemp("home")
    path = folder / TORCHVISION_ARCHS["fcos_resnet50_fpn"]
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_torchvision_random_weights_load_through_the_hub(fcos_file, monkeypatch):
    path, state = fcos_file
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(path.parent))
    kw = {"min_size": 128, "max_size": 128}
    det = load_detector("tv_fcos_resnet50_fpn_coco", score_threshold=0.0, model_kwargs=kw)
    assert isinstance(det, TorchvisionDetector) and det.weights_path == path
    loaded = det.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    image = skimage.data.astronaut()[::2, ::2]
    out = det(np.ascontiguousarray(image), image_id=3)
    assert isinstance(out, Detections) and out.meta["image_id"] == 3
    assert out.labels is not None and set(out.labels.tolist()) <= set(COCO_CATEGORIES)
    assert np.all(out.boxes >= 0) and np.all(out.boxes[:, [2, 3]] <= 256)


def test_detector_weights_take_the_arch_spelled_as_load_detector_reads_it(fcos_file):
    """--detector-weights needs a torchvision --detector; "FCOS_ResNet50_FPN " is one, as
    load_detector reads names (it was refused); the ssd and a results json are none."""
    import argparse

    from composer.commands.instances import load_detector_from_args

    path, _ = fcos_file

    def args(detector: str) -> argparse.Namespace:
        return argparse.Namespace(detector=detector, detector_weights=str(path),
                                  score_threshold=0.3, slice=None, slice_overlap=None)

    det = load_detector_from_args(args("FCOS_ResNet50_FPN "))
    assert isinstance(det, TorchvisionDetector) and det.weights_path == path
    assert det.model_id == load_detector_from_args(args("fcos_resnet50_fpn")).model_id
    for other in ("ssd", "boxes.json"):
        with pytest.raises(ValueError, match="--detector-weights needs"):
            load_detector_from_args(args(other))


def test_torchvision_missing_and_mismatched_weights(fcos_file, monkeypatch, tmp_path):
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="weights download tv_retinanet_resnet50_fpn_coco"):
        TorchvisionDetector("retinanet_resnet50_fpn")
    with pytest.raises(ValueError, match="missing keys"):
        TorchvisionDetector("retinanet_resnet50_fpn", weights=fcos_file[0])
    with pytest.raises(ValueError, match="unknown torchvision detector"):
        TorchvisionDetector("yolo")


def test_coco_json_detector(tmp_path):
    results = [
        {"image_id": 5, "category_id": 18, "bbox": [10, 20, 30, 40], "score": 0.4},
        {"image_id": 5, "category_id": 1, "bbox": [0, 0, 50, 60], "score": 0.9},
        {"image_id": 5, "category_id": 3, "bbox": [90, 90, 30, 30], "score": 0.05},
        {"image_id": 6, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.7},
    ]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(results))
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 5, "file_name": "000005.jpg"}],
                "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
            }
        )
    )
    image = np.zeros((100, 100, 3), np.uint8)
    det = CocoJsonDetector(path, score_threshold=0.1)
    out = det(image, image_id=5)
    assert out.labels.tolist() == [1, 18]  # sorted by score, the 0.05 one dropped
    assert np.allclose(out.boxes, [[0, 0, 50, 60], [10, 20, 40, 60]])
    assert np.allclose(out.scores, [0.9, 0.4])
    # the third box reaches past the 100x100 image: clipped
    all_boxes = CocoJsonDetector(path)(image, image_id=5)
    assert np.allclose(all_boxes.boxes[-1], [90, 90, 100, 100])
    # file names through an annotation json
    named = CocoJsonDetector(path, image_ids=ann)
    assert named(image, image_id="000005.jpg").labels.tolist() == [1, 18, 3]
    assert named(image, image_id="000005").labels.tolist() == [1, 18, 3]
    assert named.class_names == {1: "person", 18: "dog"}
    empty = det(image, image_id=99)
    assert len(empty) == 0 and "no boxes for image 99" in empty.meta["message"]
    unknown = named(image, image_id="cat.jpg")
    assert len(unknown) == 0 and "not in the results" in unknown.meta["message"]
    with pytest.raises(ValueError, match="not found"):
        CocoJsonDetector(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="lacks image_id or bbox"):
        CocoJsonDetector([{"score": 1.0}])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"score": "nan"}, "results entry 1: score must be a finite number, got 'nan'"),
        ({"score": float("nan")}, "score must be a finite number"),
        ({"score": "0.9"}, "score must be a finite number"),
        ({"bbox": [0, 0, float("inf"), 5]}, "bbox must be"),
        ({"bbox": [0, 0, -3, 5]}, "bbox must be"),
        ({"bbox": [0, 0, 5]}, "bbox must be"),
        ({"bbox": "0,0,5,5"}, "bbox must be"),
        ({"image_id": 1.5}, "image_id must be an integer"),
        ({"category_id": "dog"}, "category_id must be an integer"),
        ({"category_id": True}, "category_id must be an integer"),
    ],
)
def test_coco_results_with_nan_or_malformed_fields_are_refused(tmp_path, entry, message):
    """A NaN score (JSON NaN, or the string "nan" that float() reads as NaN) would fail the
    score filter and drop the detection without a word: the file is refused instead."""
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}
    path = tmp_path / "r.json"
    path.write_text(json.dumps([good, {**good, **entry}]))
    with pytest.raises(ValueError, match=re.escape(message)):
        CocoJsonDetector(path)
    # string ids that int() reads stay accepted, as before
    assert len(CocoJsonDetector([{**good, "image_id": "1"}])(np.zeros((20, 20, 3), np.uint8), 1)) == 1


def test_ground_truth_detector_skips_crowds(coco_dir):
    from composer.data.coco import coco_subset

    ds = coco_subset()
    crowded = next(i for i in ds.image_ids if ds.item(i).gt.extras["iscrowd"].any())
    item = ds.item(crowded)
    out = GroundTruthDetector(ds)(np.zeros((*item.image_size, 3), np.uint8), image_id=crowded)
    n_crowd = int(item.gt.extras["iscrowd"].sum())
    assert len(out) == len(item.gt) - n_crowd and np.all(out.scores == 1.0)
    with pytest.raises(ValueError, match="image_id"):
        GroundTruthDetector(ds)(np.zeros((4, 4, 3), np.uint8))


def test_load_detector_names(ssd_files):
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        load_detector("nope")
    # names are read as load_segmenter reads them (case and spaces do not matter), and the
    # model id the commands print ("detector: ssd_mobilenet_v2_coco_2018_03_29") is a name
    ssd_id = load_detector("ssd").model_id
    for name in ("SSD", " ssd ", ssd_id, ssd_id.upper()):
        assert isinstance(load_detector(name), SsdMobileNetDetector)
        assert load_detector(name).model_id == ssd_id


# ------------------------------------------------------------------------- sliced detection
class BlobDetector:
    """A toy detector with a small input: it sees the image at ``side`` px on the longest
    side and reports each white blob that keeps at least 2 x 2 px there (label 1), so small
    objects in a large image are missed unless the image is sliced."""

    model_id = "blobs"
    class_names = {1: "blob"}

    def __init__(self, side: int = 64) -> None:
        self.side = side
        self.calls: list[tuple[int, int]] = []

    def __call__(self, image, image_id=None):
        from skimage.measure import label, regionprops
        from skimage.transform import resize

        h, w = image.shape[:2]
        self.calls.append((h, w))
        s = self.side / max(h, w)
        small = resize(image[..., 0] > 127, (max(1, round(h * s)), max(1, round(w * s))),
                       order=0, anti_aliasing=False)
        boxes = []
        for r in regionprops(label(small)):
            y0, x0, y1, x1 = r.bbox
            if (y1 - y0) >= 2 and (x1 - x0) >= 2:
                boxes.append([x0 / s, y0 / s, x1 / s, y1 / s])
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        return Detections(boxes, np.full(len(boxes), 0.9, np.float32),
                          np.ones(len(boxes), np.int64), meta={"image_size": (h, w)})


def test_slice_windows_cover_the_image():
    from composer.models.detectors import slice_windows

    win = slice_windows((480, 640), 400, 0.2)
    assert win.tolist() == [[0, 0, 400, 400], [240, 0, 640, 400], [0, 80, 400, 480],
                            [240, 80, 640, 480]]
    win = slice_windows((1000, 3000), 256, 0.25)
    assert np.all(win[:, 2] - win[:, 0] == 256) and np.all(win[:, 3] - win[:, 1] == 256)
    covered = np.zeros((1000, 3000), bool)
    for x0, y0, x1, y1 in win:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = np.unique(win[:, 0])
    assert xs[-1] == 3000 - 256 and np.all(np.diff(xs) <= 192)  # step 256 * 0.75
    assert slice_windows((100, 50), 400, 0.2).tolist() == [[0, 0, 50, 100]]  # one tile
    with pytest.raises(ValueError, match="slice_size"):
        slice_windows((100, 100), 8, 0.2)
    with pytest.raises(ValueError, match="overlap"):
        slice_windows((100, 100), 64, 1.0)


def test_merge_boxes_nms_and_nmm():
    from composer.models.detectors import merge_boxes

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 4, 10], [50, 50, 60, 60],
                      [1, 1, 11, 11]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.3, 0.7], np.float32)
    labels = np.array([1, 1, 1, 1, 2])
    b, s, lab = merge_boxes(boxes, scores, labels, "iou", 0.5, "nms")
    # the 0.9 box takes the 0.5 one (IoU .68) but not the half box (IoU .36); class 2 stays
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.3]) and lab.tolist() == [1, 1, 2, 1]
    b, s, lab = merge_boxes(boxes, scores, labels, "ios", 0.5, "nms")
    assert s.tolist() == pytest.approx([0.9, 0.7, 0.3])  # the half box lies inside: taken
    b, s, lab = merge_boxes(boxes, scores, labels, "ios", 0.5, "nmm")
    assert b[0].tolist() == [0, 0, 11, 11]  # grown to the union of its group
    b, s, lab = merge_boxes(boxes, scores, labels, "iou", 0.5, "nms", class_agnostic=True)
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.3])
    assert merge_boxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0))[0].shape == (0, 4)
    with pytest.raises(ValueError, match="metric"):
        merge_boxes(boxes, scores, labels, "giou")
    with pytest.raises(ValueError, match="merge"):
        merge_boxes(boxes, scores, labels, merge="wbf")


def test_sliced_detector_finds_small_objects_once():
    from composer.models.detectors import SlicedDetector

    image = np.zeros((600, 1000, 3), np.uint8)
    image[100:112, 100:112] = 255  # 12 px: under 1 px at the toy detector's 64-px view
    image[300:312, 394:406] = 255  # straddles the border of the first two 400-px tiles
    image[210:500, 610:950] = 255  # large: whole in the full image and in one tile
    base = BlobDetector(64)
    whole = base(image)
    assert len(whole) == 1  # only the large one
    det = SlicedDetector(base, slice_size=400, overlap=0.2)
    base.calls.clear()
    out = det(image, image_id="toy")
    wins = out.meta["slices"]
    assert wins == 6 and len(base.calls) == wins + 1  # 3 x 2 tiles + the whole image
    assert out.meta["image_id"] == "toy" and out.meta["model_id"].startswith("blobs+sliced400")
    found = {tuple(np.round(b).astype(int)) for b in out.boxes}
    small = [b for b in out.boxes if (b[2] - b[0]) < 40]
    # each small square exactly once, where it is (the tile's 6.25-px grid: within 7 px)
    assert len(small) == 2, found
    truths = ([100, 100, 112, 112], [394, 300, 406, 312])
    for b, truth in zip(sorted(small, key=lambda b: b[0]), truths, strict=True):
        assert np.abs(b - np.array(truth)).max() <= 7
    big = [b for b in out.boxes if (b[2] - b[0]) > 200]
    assert len(big) >= 1 and _iou(big[0], np.array([610, 210, 950, 500], np.float32)) > 0.8
    # tiles only: other tiles cut the large square into parts; drop_cut leaves the whole one
    truth = np.array([610, 210, 950, 500], np.float32)

    def on_big(dets):
        return [b for b in dets.boxes if b[0] >= 600 and b[1] >= 200]

    kept = SlicedDetector(BlobDetector(64), 400, full_image=False, drop_cut=False)(image)
    assert kept.meta["slices"] == 6 and len(on_big(kept)) >= 2
    dropped = SlicedDetector(BlobDetector(64), 400, full_image=False)(image)
    assert len(on_big(dropped)) == 1 and _iou(on_big(dropped)[0], truth) > 0.8
    # an image no larger than a tile: one run, the whole image
    base.calls.clear()
    det(image[:300, :300])
    assert base.calls == [(300, 300)]


def test_sliced_detector_refuses_stored_boxes_and_bad_settings(tmp_path):
    from composer.models.detectors import SlicedDetector, count_windows, slice_windows

    path = tmp_path / "r.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="cannot be run on tiles"):
        SlicedDetector(CocoJsonDetector(path))
    with pytest.raises(ValueError, match="overlap"):
        SlicedDetector(BlobDetector(), overlap=-0.1)
    with pytest.raises(ValueError, match="slice_size"):
        SlicedDetector(BlobDetector(), slice_size=16)
    with pytest.raises(ValueError, match="merge"):
        SlicedDetector(BlobDetector(), merge="union")
    with pytest.raises(ValueError, match="max_tiles"):
        SlicedDetector(BlobDetector(), max_tiles=0)
    # too many tiles for the cap: refused before the detector runs, with a side that fits
    base = BlobDetector()
    capped = SlicedDetector(base, slice_size=64, overlap=0.5, max_tiles=20)
    image = np.zeros((400, 600, 3), np.uint8)
    with pytest.raises(ValueError, match=r"needs 216 tiles, more than max_tiles=20") as err:
        capped(image)
    assert base.calls == []
    side = int(str(err.value).rsplit("--slice ", 1)[1].split(")")[0])
    assert len(slice_windows((400, 600), side, 0.5)) <= 20
    for size, sl, ov in (((400, 600), 64, 0.5), ((1000, 3000), 256, 0.25), ((100, 50), 400, 0.2),
                         ((333, 1001), 32, 0.99), ((480, 640), 400, 0.2)):
        assert count_windows(size, sl, ov) == len(slice_windows(size, sl, ov))
    SlicedDetector(base, slice_size=side, overlap=0.5, max_tiles=20)(image)
    assert len(SlicedDetector(base, 64, 0.5, max_tiles=None)(image).meta) > 0


def test_sliced_ssd_finds_more_people_in_a_mosaic(ssd):
    """Real weights: 64 astronauts of 80 px in a 640-px mosaic are ~37 px at SSD's 300-px
    input; 240-px tiles show each at 100 px, and with 96 px of overlap each is whole in one."""
    from skimage.transform import resize

    from composer.models.detectors import SlicedDetector

    face = (resize(skimage.data.astronaut(), (80, 80), anti_aliasing=True) * 255).astype(np.uint8)
    mosaic = np.tile(face, (8, 8, 1))
    plain = ssd(mosaic)
    sliced = SlicedDetector(ssd, slice_size=240, overlap=0.4)(mosaic)
    n_plain, n_sliced = int((plain.labels == 1).sum()), int((sliced.labels == 1).sum())
    # (here: 1 person whole, 65 sliced)
    assert sliced.meta["slices"] == 16
    assert n_plain <= 16 and 56 <= n_sliced <= 72, (n_plain, n_sliced)
    assert sliced.boxes[:, 2].max() <= 640 and sliced.boxes[:, 3].max() <= 640


def test_instances_cli_slices(ssd_files, tmp_path, capsys):
    from PIL import Image

    from composer.cli import main

    img = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(img)
    out = tmp_path / "out"
    base = ["instances", str(img), "--model", "composer_tiny", "--out", str(out)]
    assert main([*base, "--slice", "256", "--slice-overlap", "0.25"]) == 0
    record = json.loads((out / "coffee.json").read_text())
    assert record["image_file"] == "coffee.png"  # convert names the image file by it
    meta = record["meta"]
    assert meta["detector"].startswith("ssd_mobilenet_v2_coco_2018_03_29+sliced256o0.25")
    capsys.readouterr()
    for extra, message in ((["--slice-overlap", "0.3"], "--slice-overlap needs --slice"),
                           (["--slice-overlap", "0.2"], "--slice-overlap needs --slice"),
                           (["--score-threshold", "1.5"], "--score-threshold must be in"),
                           (["--score-threshold", "nan"], "--score-threshold must be in"),
                           (["--slice", "8"], "slice_size must be >= 32"),
                           (["--slice", "400", "--slice-overlap", "1"], "overlap must be in"),
                           (["--slice", "400", "--detector", str(tmp_path / "b.json")],
                            "cannot be run on tiles")):
        if "--detector" in extra:
            (tmp_path / "b.json").write_text("[]")
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    # flags of the detector strategy are refused with the clip strategy; worker flags by name
    text = ["text", str(img), "a cup", "--model", "composer_tiny", "--out", str(out)]
    for extra, message in ((["--strategy", "clip", "--zoom-small", "0.5"],
                            "--zoom-small needs --strategy detector"),
                           (["--strategy", "clip", "--slice-overlap", "0.3"],
                            "--slice-overlap needs --strategy detector"),
                           (["--strategy", "clip", "--detector", "ssd"],
                            "--detector needs --strategy detector"),
                           (["--strategy", "clip", "--score-threshold", "0.5"],
                            "--score-threshold needs --strategy detector"),
                           # given explicitly at its default value: refused too (was accepted)
                           (["--strategy", "clip", "--score-threshold", "0.3"],
                            "--score-threshold needs --strategy detector"),
                           (["--strategy", "clip", "--zoom-small", "auto"],
                            "--zoom-small needs --strategy detector"),
                           (["--max-masks", "0"], "--max-masks must be >= 1, got 0"),
                           (["--workers", "0"], "--workers must be >= 1"),
                           (["--threads-per-worker", "0"], "--threads-per-worker must be >= 1")):
        assert main([*text, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_a_detector_file_is_known_by_its_content_and_names_are_read_strictly(tmp_path):
    """A results file edited in place (or another file of the same name) kept its id, so a
    folder run resumed with the old boxes' outputs; "Dir/Odd.JSON" was lower-cased to a path
    that does not exist; "2_1" was read as image 21."""
    entry = {"image_id": 21, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9}
    path = tmp_path / "Odd.JSON"
    path.write_text(json.dumps([entry]))
    first = load_detector(str(path))
    assert first.model_id.startswith("coco-json:Odd.JSON#")
    path.write_text(json.dumps([{**entry, "bbox": [2, 2, 5, 5]}]))
    assert load_detector(str(path)).model_id != first.model_id
    image = np.zeros((10, 10, 3), np.uint8)
    assert len(first(image, "2_1")) == 0 and len(first(image, "21")) == 1
    assert len(first(image, np.int64(21))) == 1 and len(first(image, "000021")) == 1


def test_slicing_that_cuts_no_tile_returns_the_detector_output():
    """With no tile the boxes still went through the merge's NMS, dropping overlapping boxes
    the detector kept."""
    from composer.models.detectors import SlicedDetector

    class Overlapping:
        model_id = "overlap"
        class_names = {1: "thing"}

        def __call__(self, image, image_id=None):
            boxes = np.array([[0, 0, 50, 50], [5, 5, 55, 55]], np.float32)  # IoU 0.68
            return Detections(boxes, np.array([0.9, 0.8], np.float32), np.ones(2, np.int64),
                              meta={"image_size": image.shape[:2]})

    sliced = SlicedDetector(Overlapping(), slice_size=1000)
    dets = sliced(np.zeros((100, 100, 3), np.uint8))
    assert dets.meta["slices"] == 0 and len(dets) == 2


def test_a_dataset_json_as_detector_skips_crowds_and_unknown_gt_ids_are_named(tmp_path, coco_dir):
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
          "categories": [{"id": 1, "name": "person"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9],
                           "iscrowd": 1}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dets = CocoJsonDetector(tmp_path / "gt.json")(np.zeros((10, 10, 3), np.uint8), "a.jpg")
    assert len(dets) == 1
    from composer.data.coco import coco_subset

    det = GroundTruthDetector(coco_subset())
    with pytest.raises(ValueError, match="image id 123456789 is not an image of the dataset"):
        det(np.zeros((10, 10, 3), np.uint8), 123456789)


def test_negative_scores_in_a_results_json_are_named(tmp_path, caplog):
    """They sit below every score floor, so they were dropped without a word (logits?)."""
    entries = [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "score": s}
               for s in (-1.5, -0.2, 0.7)]
    (tmp_path / "r.json").write_text(json.dumps(entries))
    with caplog.at_level("WARNING"):
        det = CocoJsonDetector(tmp_path / "r.json")
    assert "2 of 3 entries have negative scores" in caplog.text
    assert len(det(np.zeros((10, 10, 3), np.uint8), 1)) == 1


def test_a_dataset_json_detector_reads_an_int_as_the_id(tmp_path, caplog):
    """With 0-based digit file names (0.jpg is id 1, 1.jpg is id 2), the int id 1 gave the
    boxes of the image whose stem is "1" (id 2). An int is the id; a digit stem the json gives
    to another file's id is no id; a results entry without category_id is an "object", not a
    person; category ids outside the class names are warned about."""
    import json
    import logging

    ds = {"images": [{"id": 1, "file_name": "0.jpg", "height": 20, "width": 20},
                     {"id": 2, "file_name": "1.jpg", "height": 20, "width": 20}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 18, "bbox": [1, 1, 5, 5],
                           "area": 25, "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 17, "bbox": [9, 9, 5, 5],
                           "area": 25, "iscrowd": 0}],
          "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    det = load_detector(str(path))
    image = np.zeros((20, 20, 3), np.uint8)
    for key in (1, np.int64(1), "0", "0.jpg"):
        assert det(image, image_id=key).labels.tolist() == [18], key  # the dog of image 1
    assert det(image, image_id="1").labels.tolist() == [17]
    assert len(det(image, image_id="2")) == 0  # "2.jpg" is not listed; id 2 is 1.jpg's
    with caplog.at_level(logging.WARNING):
        plain = CocoJsonDetector([{"image_id": 5, "bbox": [1, 1, 5, 5]},
                                  {"image_id": 5, "bbox": [2, 2, 5, 5], "category_id": 0}])
    found = plain(image, image_id=5)
    assert found.labels.tolist() == [0, 0] and found.meta["class_names"][0] == "object"
    assert "category ids" not in caplog.text  # 0 named "object" since entries lack one
    with caplog.at_level(logging.WARNING):
        CocoJsonDetector([{"image_id": 5, "bbox": [1, 1, 5, 5], "category_id": 95}])
    assert "category ids [95] are not among the" in caplog.text


def test_a_users_file_name_map_still_finds_a_digit_stem() -> None:
    """A caller's map keyed by file names ({"1.jpg": 1}) with the CLI's stem "1" found no id
    after the digit rule learnt to refuse ids mapped to other files: "1" is that file's stem."""
    det = CocoJsonDetector([{"image_id": 1, "bbox": [1, 1, 5, 5], "category_id": 18}],
                           image_ids={"1.jpg": 1, "0.jpg": 2})
    assert det.coco_id("1") == 1 and det.coco_id("0") == 2 and det.coco_id("2") is None


def test_stored_boxes_without_a_class_are_warned_of_against_given_categories(caplog):
    """Boxes without category_id are objects of class 0: against the caller's categories
    (eval instances --coco FILE --boxes RESULTS names them by the json's), which lack 0, they
    counted in no category's AP without a word, while an unknown category id was warned of."""
    import logging

    from composer.models.stored_detectors import CocoJsonDetector

    entries = [{"image_id": 1, "bbox": [0, 0, 4, 4], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.8}]
    with caplog.at_level(logging.WARNING, logger="composer.models.stored_detectors"):
        CocoJsonDetector(entries, class_names={1: "thing"})
    assert ("coco-json: 1 of 2 entries have no category_id; they are objects of class 0, which "
            "is not among the 1 categories given, so their boxes count in no category's AP"
            ) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="composer.models.stored_detectors"):
        CocoJsonDetector(entries, class_names={0: "object", 1: "thing"})
        CocoJsonDetector(entries)  # COCO's names: class 0 is the default "object", as before
    assert "no category_id" not in caplog.text


def test_stored_boxes_find_a_windows_file_name(tmp_path):
    """A ground-truth-style --boxes json whose file_name was written on Windows (sub\\\\a.png)
    mapped only 'sub\\\\a.png' and its POSIX stem 'sub\\\\a': the folder's a.png (the CLI passes
    its stem) got no boxes, while the COCO readers read that file_name as sub/a.png."""
    from composer.models.stored_detectors import CocoJsonDetector

    doc = {"images": [{"id": 7, "file_name": "sub\\a.png", "height": 8, "width": 8}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 4, 4]}],
           "categories": [{"id": 1, "name": "thing"}]}
    det = CocoJsonDetector(_as_path(tmp_path, doc))
    assert det.coco_id("a") == det.coco_id("a.png") == det.coco_id("sub/a.png") == 7
    assert det.coco_id("sub\\a.png") == 7
    assert len(det(np.zeros((8, 8, 3), np.uint8), "a")) == 1


def _as_path(tmp_path, doc):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    return path
