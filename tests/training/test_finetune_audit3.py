"""``sam-composer train`` on messy user data (helper audit hd): the report, the signals, the
records."""

from __future__ import annotations

import json

import pytest

from composer.cli import main
from composer.training.data import coco_items
from tests.test_atomic import record_fsync_and_replace

from .test_train_cli import _coco_dataset


def _argv(ann, images, out, *extra: str) -> list[str]:
    return ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(out), "--steps", "2", "--masks-per-image", "1",
            "--corrective", "0", "--val-fraction", "0", *extra]


def test_train_report_is_written_atomically(tmp_path, monkeypatch) -> None:
    """train_report.json goes through a .part file renamed over it, as run.json and model.pt
    do (it was written in place: a crash mid-write left a cut-off report)."""
    ann, images = _coco_dataset(tmp_path, n=2)
    calls = record_fsync_and_replace(monkeypatch)
    assert main(_argv(ann, images, tmp_path / "run")) == 0
    assert "replace train_report.json.part -> train_report.json" in calls
    assert json.loads((tmp_path / "run" / "train_report.json").read_text())["steps"] == 2


@pytest.mark.parametrize(
    ("value", "shown"), [("abc", "'abc'"), (None, "'None'"), (95.5, "'95.5'"), (True, "'True'")]
)
def test_an_image_size_that_is_not_a_whole_number_is_named(tmp_path, value, shown) -> None:
    """A record's width that is not a whole number makes its image unusable with a message
    that says so (it was Python's "invalid literal for int() with base 10: 'abc'" or "int()
    argument must be ... not 'NoneType'", and 95.5 was cut to 95 unsaid)."""
    ann, images = _coco_dataset(tmp_path, n=2)
    doc = json.loads(ann.read_text())
    doc["images"][1]["width"] = value
    ann.write_text(json.dumps(doc))
    failures: list[tuple[str, str]] = []
    items = list(coco_items(ann, images, failures=failures))
    assert [it.image_id for it in items] == ["coco/1"]
    assert failures == [("coco/2", f"COCO image 2 (001.png): width must be an integer, got {shown}")]


def test_a_flat_polygon_is_named_not_an_empty_mask(tmp_path) -> None:
    """A polygon written flat, [x0, y0, ...] instead of [[x0, y0, ...]], is an undecodable
    segmentation that training skips and names (it was read as one-number parts: an empty
    mask, and the object was dropped without a word)."""
    from composer.structures.masks import segmentation_rle
    from composer.training.data import SKIP_BAD_SEGMENTATION, SkippedAnnotation

    with pytest.raises(ValueError, match="a flat list of numbers"):
        segmentation_rle([10, 10, 80, 10, 80, 70, 10, 70], (96, 96))
    ann, images = _coco_dataset(tmp_path, n=1)
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["segmentation"] = [10, 10, 80, 10, 80, 70, 10, 70]
    ann.write_text(json.dumps(doc))
    skipped: list[SkippedAnnotation] = []
    items = list(coco_items(ann, images, skipped=skipped))
    assert len(items) == 1
    assert [(s.annotation_id, s.reason) for s in skipped] == [(1, SKIP_BAD_SEGMENTATION)]
    assert "a flat list of numbers" in skipped[0].message


def test_a_held_out_set_without_a_mask_to_score_is_said(tmp_path, capsys) -> None:
    """--val-data whose only masks are too small to score: the run says there is no held-out
    mIoU and why (it printed '1 held out' and then no mIoU line, unexplained)."""
    import numpy as np
    from PIL import Image

    ann, images = _coco_dataset(tmp_path, n=2)
    val_images = tmp_path / "val"
    val_images.mkdir()
    Image.fromarray(np.full((96, 96, 3), 90, np.uint8)).save(val_images / "v.png")
    val = {"images": [{"id": 1, "file_name": "v.png", "height": 96, "width": 96}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                            "segmentation": [[10, 10, 12, 10, 12, 12, 10, 12]], "area": 4.0,
                            "bbox": [10, 10, 2, 2]}],
           "categories": [{"id": 1, "name": "shape"}]}
    (tmp_path / "val.json").write_text(json.dumps(val))
    argv = _argv(ann, images, tmp_path / "run")[:-2]  # no --val-fraction with --val-data
    argv += ["--val-data", str(tmp_path / "val.json"), "--val-images", str(val_images)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "none of the 1 held-out image(s) has a mask to score" in text
    assert "no held-out mIoU before and after" in text


def test_an_image_folder_that_is_a_file_is_named_as_such(tmp_path, capsys) -> None:
    """--images naming a file (the json, an image) says it is a file, not 'image folder not
    found' for a path that exists."""
    ann, images = _coco_dataset(tmp_path, n=1)
    argv = _argv(ann, ann, tmp_path / "run")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the image folder {ann} is a file, not a folder" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("pack", [False, True])
def test_an_empty_mask_is_skipped_and_named(tmp_path, pack) -> None:
    """An annotation whose segmentation covers no pixel of the image (a polygon outside it,
    or in 0..1 coordinates) is skipped as an empty mask, named, and its place under the cap
    goes to the next (it was left out unsaid: neither skipped nor counted as too small)."""
    from composer.training.data import SKIP_EMPTY_MASK, SkippedAnnotation

    ann, images = _coco_dataset(tmp_path, n=1)
    doc = json.loads(ann.read_text())
    doc["annotations"].append({**doc["annotations"][0], "id": 1000})  # a good one, kept
    n = len(doc["annotations"])
    doc["annotations"][0].update(segmentation=[[200, 200, 300, 200, 300, 300]], area=1e6)
    ann.write_text(json.dumps(doc))
    skipped: list[SkippedAnnotation] = []
    (item,) = coco_items(ann, images, max_instances=n - 1, pack_layers=pack, skipped=skipped)
    assert [(s.annotation_id, s.reason) for s in skipped] == [(1, SKIP_EMPTY_MASK)]
    assert "covers no pixel of the image" in skipped[0].message
    # the n - 1 others all come, under a cap of n - 1
    assert sum(int(layer.max()) for layer in item.layers) == n - 1
