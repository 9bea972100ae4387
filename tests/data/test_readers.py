"""COCO/LVIS, GrabCut and Berkeley readers on the shared real data."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from composer.data.coco import CocoDataset, coco_subset, load_coco, normalise_coco_dict
from composer.data.interactive import Berkeley, GrabCut

pytestmark = pytest.mark.data


def image_hw(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:  # header only; no decode
        return im.height, im.width


# ---------------------------------------------------------------- COCO
def test_coco_tiny80_items(coco_dir):
    ds = coco_subset()
    assert len(ds) == 80 and ds.name == "coco_val2017_tiny80"
    assert len(ds.class_names) == 80 and ds.class_names[1] == "person"
    n_anns = n_crowd = 0
    for item in ds:
        assert item.path.is_file()
        assert image_hw(item.path) == item.image_size
        gt = item.gt
        assert gt.image_size == item.image_size and gt.meta["image_id"] == item.image_id
        assert gt.labels is not None and set(gt.labels.tolist()) <= set(ds.class_names)
        assert (
            len(gt.masks) == len(gt.boxes) == len(gt.extras["iscrowd"]) == len(gt.extras["ann_id"])
        )
        n_anns += len(gt)
        n_crowd += int(gt.extras["iscrowd"].sum())
        # decoded mask areas match the stored areas (COCO polygons: within a few percent)
        rel = np.abs(gt.masks.area - gt.extras["area"]) / np.maximum(gt.extras["area"], 1)
        assert np.median(rel) < 0.05
    assert (n_anns, n_crowd) == (815, 11)
    first = ds[0]
    img = first.load_image()
    assert img.shape == (*first.image_size, 3) and img.dtype == np.uint8


def test_coco_item_boxes_are_xyxy(coco_dir):
    ds = coco_subset()
    item = ds[0]
    ann = ds.coco.loadAnns(int(item.gt.extras["ann_id"][0]))[0]
    x, y, w, h = ann["bbox"]
    np.testing.assert_allclose(item.gt.boxes[0], [x, y, x + w, y + h], rtol=1e-6)


def test_coco_subset_by_ids_and_errors(coco_dir):
    ids = coco_subset().image_ids[:3][::-1]
    sub = coco_subset(image_ids=ids)
    assert [it.image_id for it in sub] == ids
    with pytest.raises(ValueError, match="not in the annotations"):
        coco_subset(image_ids=[123])
    with pytest.raises(ValueError, match="image folder not found"):
        CocoDataset(coco_dir / "annotations" / "instances_val2017.json", coco_dir / "nope")
    with pytest.raises(ValueError, match="annotation file not found"):
        load_coco(coco_dir / "missing.json")
    with pytest.raises(IndexError):
        sub[3]


def test_lvis_style_records(coco_dir, tmp_path):
    data = json.loads((coco_dir / "annotations" / "instances_val2017.json").read_text())
    for a in data["annotations"]:
        del a["iscrowd"]
    for im in data["images"]:
        del im["file_name"]
    path = tmp_path / "lvis_v1_like.json"
    path.write_text(json.dumps(data))
    ds = CocoDataset(path, coco_dir / "val2017")
    assert len(ds) == 80 and ds.name == "lvis_v1_like"
    item = ds[0]
    assert item.path.is_file() and item.path.name == f"{item.image_id:012d}.jpg"
    assert not item.gt.extras["iscrowd"].any()
    assert all(a["iscrowd"] == 0 for a in ds.coco.dataset["annotations"])
    assert "iscrowd" not in data["annotations"][0]  # the input dict is not modified
    with pytest.raises(ValueError, match="neither file_name nor coco_url"):
        normalise_coco_dict({"images": [{"id": 1}], "annotations": [], "categories": []})
    with pytest.raises(ValueError, match="needs key"):
        normalise_coco_dict({"images": []})



def test_malformed_coco_json_is_a_one_line_error(tmp_path):
    """Records pycocotools would index with a KeyError, non-object json, undecodable bytes and
    string image ids are ValueErrors naming the problem."""
    good = {"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],
                             "segmentation": [[0, 0, 1, 0, 1, 1]]}],
            "categories": [{"id": 1, "name": "x"}]}
    cases = [
        ([{"a": 1}, {"b": 2}], "must be an object with images"),
        ({"images": 1, "annotations": [], "categories": []}, "'images' must be a list"),
        ({**good, "images": ["a.jpg"]}, r"images\[0\] is not an object"),
        ({**good, "annotations": [{"id": 7, "category_id": 1}]}, r"annotations\[0\] has no image_id"),
        ({**good, "categories": [{"name": "x"}]}, r"categories\[0\] has no id"),
    ]
    for data, msg in cases:
        with pytest.raises(ValueError, match=msg):
            normalise_coco_dict(data)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ValueError, match="bin.json is not valid json"):
        load_coco(tmp_path / "bin.json")
    bad_id = {**good, "images": [{**good["images"][0], "id": "abc"}],
              "annotations": [{**good["annotations"][0], "image_id": "abc"}]}
    (tmp_path / "s.json").write_text(json.dumps(bad_id))
    with pytest.raises(ValueError, match=r"images\[0\] id must be an integer, got 'abc'"):
        CocoDataset(tmp_path / "s.json", tmp_path)
# ---------------------------------------------------------------- GrabCut
def test_grabcut_items(grabcut_dir):
    ds = GrabCut()
    assert len(ds) == 50
    with_ignore = 0
    for item in ds:
        assert item.path.is_file() and item.path.parent.name == "data_GT"
        assert image_hw(item.path) == item.image_size == item.gt_mask.shape == item.ignore.shape
        assert item.gt_mask.dtype == bool and item.ignore.dtype == bool
        assert item.gt_mask.any() and not (item.gt_mask & item.ignore).any()
        with_ignore += int(item.ignore.any())
    assert with_ignore == 42
    item = ds[0]
    raw = np.asarray(Image.open(item.mask_path))
    raw = raw.max(axis=2) if raw.ndim == 3 else raw
    np.testing.assert_array_equal(item.gt_mask, raw == 255)
    np.testing.assert_array_equal(item.ignore, raw == 128)
    assert item.load_image().shape == (*item.image_size, 3)


# ---------------------------------------------------------------- Berkeley
def test_berkeley_items(berkeley_dir):
    ds = Berkeley()
    assert len(ds) == 100
    items = list(ds)
    assert len({it.path for it in items}) == 96
    assert len({it.image_id for it in items}) == 100
    by_id = {it.image_id: it for it in items}
    for base in ("189011", "239007"):
        paths = {by_id[base + s].path for s in ("", "a", "b")}
        assert paths == {berkeley_dir / "images" / f"{base}.jpg"}
        assert not np.array_equal(by_id[base + "a"].gt_mask, by_id[base + "b"].gt_mask)
    for it in items:
        assert image_hw(it.path) == it.gt_mask.shape
        assert it.gt_mask.any() and not it.ignore.any()
        frac = it.gt_mask.mean()
        assert 0.005 < frac < 0.7


# ---------------------------------------------------------------- missing data
def test_missing_dataset_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM_COMPOSER_DATA", str(tmp_path))
    for make, name in (
        (GrabCut, "grabcut"),
        (Berkeley, "berkeley"),
        (coco_subset, "coco_val2017_tiny80"),
    ):
        with pytest.raises(ValueError, match=str(tmp_path / name)):
            make()
    (tmp_path / "grabcut").mkdir()
    with pytest.raises(ValueError, match="data_GT"):
        GrabCut()
    with pytest.raises(ValueError, match="not found"):
        Berkeley(tmp_path / "elsewhere")


def test_bsds_regions_of_a_ground_truth_without_annotators(tmp_path):
    """An empty ``groundTruth`` cell is a ValueError naming the file, not a modulo by zero."""
    import scipy.io

    from composer.data.regions import BSDSRegions

    (tmp_path / "images" / "test").mkdir(parents=True)
    (tmp_path / "groundTruth" / "test").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "test" / "1.jpg")
    scipy.io.savemat(tmp_path / "groundTruth" / "test" / "1.mat",
                     {"groundTruth": np.empty((1, 0), dtype=object)})
    with pytest.raises(ValueError, match=r"1\.mat has no annotators"):
        BSDSRegions("test", root=tmp_path)[0]


def test_coco_json_is_read_as_utf8_whatever_the_locale(tmp_path):
    """A json with a non-ASCII file_name loads under an ASCII locale (it was decoded with the
    locale's encoding: refused there, garbled under Windows' cp1252), and a UTF-8 byte-order
    mark, as Windows tools write, is accepted (it was 'not valid json')."""
    import subprocess
    import sys

    doc = {"images": [{"id": 1, "file_name": "caf\u00e9/\u00f1.jpg", "height": 4, "width": 4}],
           "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    path = tmp_path / "a.json"
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode("utf-8"))
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_coco(bom).imgs[1]["file_name"] == "caf\u00e9/\u00f1.jpg"
    code = ("import sys; from composer.data.coco import load_coco; "
            "print(ascii(load_coco(sys.argv[1]).imgs[1]['file_name']))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONUTF8"))}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == ascii("caf\u00e9/\u00f1.jpg")


def test_dropped_annotations_are_named_in_the_warning(caplog):
    """The warnings for annotations left out (a polygon of fewer than 3 points, an unknown
    image_id) name them by id and image, a few of them: the count alone did not say which."""
    import logging

    doc = {"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
           "annotations": [
               {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 1, 1]]},
               {"id": 6, "image_id": 1, "category_id": 1, "segmentation": []},
               {"id": 8, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]]},
               {"id": 9, "image_id": 42, "category_id": 1, "segmentation": [[0, 0, 2, 0, 2, 2]]},
           ],
           "categories": [{"id": 1, "name": "x"}]}
    with caplog.at_level(logging.WARNING, logger="composer.data.coco"):
        out = normalise_coco_dict(doc)
    assert [a["id"] for a in out["annotations"]] == [8, 9]
    assert "1 annotation(s) name an image_id that is not among the images; they are not used " \
        "(annotation 9 of image 42)" in caplog.text
    assert "2 annotation(s) have no polygon of 3 or more points (an empty segmentation); they " \
        "are left out (annotation 5 of image 1, annotation 6 of image 1)" in caplog.text


def test_a_bad_json_file_is_named_in_its_errors_and_warnings(tmp_path, caplog):
    """With two jsons (train --data and --val-data) an error or warning of one names its file
    (it began "COCO json annotations[0] ...", which did not say which file)."""
    import logging

    doc = {"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],
           "annotations": [{"id": 5, "image_id": 1, "category_id": 7, "segmentation": []}],
           "categories": [{"id": 1, "name": "x"}]}
    path = tmp_path / "val.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: COCO json annotations\[0\] "
                                         r"\(id 5\) has category_id 7"):
        load_coco(path)
    doc["annotations"][0]["category_id"] = 1
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="composer.data.coco"):
        load_coco(path)
    assert f"{path}: 1 annotation(s) have no polygon of 3 or more points" in caplog.text


def test_a_coco_json_in_a_legacy_encoding_is_said_not_utf8(tmp_path):
    """A json written as cp1252/Latin-1 (an accented file_name) is refused saying it is not
    UTF-8 and how to fix it (it was "not valid json: 'utf-8' codec can't decode byte 0xe9")."""
    doc = {"images": [{"id": 1, "file_name": "caf\u00e9.jpg", "height": 4, "width": 4}],
           "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json is not valid json: it is not UTF-8 "
                                         r"text, as json must be \(.*\); save it as UTF-8"):
        load_coco(path)
    path.write_bytes(b'{"images": [')  # cut off: still "not valid json"
    with pytest.raises(ValueError, match=r"latin1\.json is not valid json"):
        load_coco(path)
