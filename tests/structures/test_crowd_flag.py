"""``iscrowd`` read as a flag: the string "0" is no crowd region (a truthiness test took it for
one), and values that are neither 0 nor 1 are refused with the annotation named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from composer.data.coco import load_coco, normalise_coco_dict
from composer.io.formats import convert
from composer.structures import Masks
from composer.structures.masks import crowd_flag


@pytest.mark.parametrize(("value", "flag"), [
    (None, False), (0, False), (1, True), (False, False), (True, True), (0.0, False),
    (np.int64(1), True), ("0", False), ("1", True), (" 0 ", False), ("false", False),
    ("True", True),
])
def test_crowd_flag_values(value, flag):
    assert crowd_flag(value) is flag


@pytest.mark.parametrize("value", ["yes", "", 2, -1, float("nan"), [0], {"a": 1}])
def test_crowd_flag_refuses(value):
    with pytest.raises(ValueError, match="iscrowd must be 0 or 1"):
        crowd_flag(value)


def dataset(crowd) -> dict:
    dense = np.zeros((2, 20, 30), bool)
    dense[0, 2:8, 3:12] = True
    dense[1, 10:18, 15:28] = True
    rles = Masks.from_dense(dense).to_coco_rles()
    return {"images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": 5 + i, "image_id": 1, "category_id": 1, "iscrowd": crowd[i],
                             "segmentation": rles[i], "bbox": [0, 0, 1, 1], "area": 1.0}
                            for i in range(2)]}


def test_normalise_reads_string_flags():
    out = normalise_coco_dict(dataset(["0", "1"]))
    assert [a["iscrowd"] for a in out["annotations"]] == [0, 1]
    coco = load_coco(dataset(["0", "true"]))
    assert [coco.anns[k]["iscrowd"] for k in (5, 6)] == [0, 1]


def test_normalise_refuses_odd_flags():
    with pytest.raises(ValueError, match=r"annotations\[1\] \(id 6\).*iscrowd"):
        normalise_coco_dict(dataset([0, "yes"]))


def test_yolo_keeps_string_zero_instances(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(dataset(["0", "0"])))
    stats = convert(tmp_path / "c.json", tmp_path / "yolo", "yolo")
    assert stats["crowd"] == 0 and stats["objects"] == 2


def test_png_masks_column_reads_string_flags(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(dataset(["0", "1"])))
    stats = convert(tmp_path / "c.json", tmp_path / "png", "png-masks")
    assert stats["crowd"] == 1
    rows = (tmp_path / "png" / "a" / "metadata.csv").read_text().splitlines()
    assert [r.rsplit(",", 1)[1] for r in rows[1:]] == ["0", "1"]


def test_polygons_out_writes_ints(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(dataset(["0", "1"])))
    stats = convert(tmp_path / "c.json", tmp_path / "out.json", "coco-polygons")
    assert stats["crowd"] == 1
    data = json.loads((tmp_path / "out.json").read_text())
    assert [a["iscrowd"] for a in data["annotations"]] == [0, 1]


def test_convert_names_odd_flag(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(dataset([0, "maybe"])))
    with pytest.raises(ValueError, match=r"mask 1: iscrowd must be 0 or 1"):
        convert(tmp_path / "c.json", tmp_path / "yolo", "yolo")
    assert not (tmp_path / "yolo").exists() or not any((tmp_path / "yolo").rglob("*.txt"))
