"""Detectors: the shipped SSD on a real photo, torchvision weights through the hub, stored boxes."""

from __future__ import annotations

import json

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


def test_load_detector_names():
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        load_detector("nope")
