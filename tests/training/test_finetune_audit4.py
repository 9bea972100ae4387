"""``sam-composer train`` on messy user COCO data (helper audit he): categories, sizes, odd
polygons, Windows file names and the image counts."""

from __future__ import annotations

import json
import logging

import pytest

from composer.cli import main
from composer.data.coco import normalise_coco_dict
from composer.training.data import coco_items

from .test_train_cli import _coco_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _argv(ann, images, out, *extra: str) -> list[str]:
    return ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(out), "--steps", "1", "--masks-per-image", "1",
            "--corrective", "0", "--val-fraction", "0", *extra]


def _edit(ann, change) -> None:
    doc = json.loads(ann.read_text())
    change(doc)
    ann.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "warning"),
    [
        (lambda d: d.pop("categories"), "the json has no categories"),
        (lambda d: d["annotations"][1].update(category_id=7),
         "1 annotation(s) have no category_id, or one not among the categories"),
        (lambda d: d["annotations"][1].pop("category_id"),
         "1 annotation(s) have no category_id, or one not among the categories"),
        (lambda d: d.update(categories=[{"name": "shape"}]), "categories[0] has no integer id"),
    ],
)
def test_train_needs_no_categories(tmp_path, caplog, change, warning) -> None:
    """Training uses no category: a json without categories, or an annotation whose
    category_id is missing or unknown, is a warning and the run trains on every mask (the
    whole json was refused). eval's reader (the default) still refuses it: AP is per
    category."""
    ann, images = _coco_dataset(tmp_path, n=2)
    _edit(ann, change)
    with caplog.at_level(logging.WARNING, logger="composer.data.coco"):
        assert main(_argv(ann, images, tmp_path / "run")) == 0
    assert warning in caplog.text and "training does not use categories" in caplog.text
    report = json.loads((tmp_path / "run" / "train_report.json").read_text())
    assert report["train_images"] == 2 and report["skipped_annotations"] == []
    # the library's training reader too
    assert len(list(coco_items(ann, images))) == 2
    with pytest.raises(ValueError, match="categor"):
        normalise_coco_dict(json.loads(ann.read_text()))


def test_unknown_category_warning_names_a_few(caplog) -> None:
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
           "annotations": [{"id": i, "image_id": 1, "category_id": 9,
                            "segmentation": [[0, 0, 4, 0, 4, 4]]} for i in range(5)],
           "categories": [{"id": 1}]}
    with caplog.at_level(logging.WARNING, logger="composer.data.coco"):
        out = normalise_coco_dict(doc, source="x.json", need_categories=False)
    assert "x.json: 5 annotation(s) have no category_id" in caplog.text
    assert "e.g. annotation 0 of image 1, annotation 1 of image 1, annotation 2 of image 1" \
        in caplog.text
    assert [a["category_id"] for a in out["annotations"]] == [None] * 5


def test_a_polygon_of_an_odd_number_of_coordinates_is_named(tmp_path) -> None:
    """A polygon part of an odd number of coordinates: pycocotools dropped the last number
    unsaid (another polygon than the one written). Training skips it as an undecodable
    segmentation, named; eval's reader fails the image, naming the annotation (without a bbox
    in the json it said 'has no bbox')."""
    from composer.data.coco import CocoDataset
    from composer.structures.masks import segmentation_rle
    from composer.training.data import SKIP_BAD_SEGMENTATION, SkippedAnnotation

    with pytest.raises(ValueError, match=r"odd number of coordinates \(7\)"):
        segmentation_rle([[10, 10, 80, 10, 80, 70, 10]], (96, 96))
    assert segmentation_rle([[10, 10, 80, 10, 80, 70]], (96, 96))["size"] == [96, 96]
    ann, images = _coco_dataset(tmp_path, n=1)
    doc = json.loads(ann.read_text())
    doc["annotations"].append({**doc["annotations"][0], "id": 1000})  # a good one, kept
    doc["annotations"][0].update(segmentation=[[10, 10, 80, 10, 80, 70, 10, 70, 40]])
    del doc["annotations"][0]["bbox"]
    ann.write_text(json.dumps(doc))
    skipped: list[SkippedAnnotation] = []
    (item,) = coco_items(ann, images, skipped=skipped)
    assert [(s.annotation_id, s.reason) for s in skipped] == [(1, SKIP_BAD_SEGMENTATION)]
    assert "odd number of coordinates (9)" in skipped[0].message
    assert item.layers.max() >= 1
    with pytest.raises(ValueError, match=r"annotation 1: a polygon part has an odd number"):
        CocoDataset(ann, images)[0]


def test_the_image_counts_leave_out_images_without_a_mask(tmp_path, capsys) -> None:
    """An image whose masks are all too small is read but gives no sample: the line said
    "3 training images (4 samples)" as if all three were trained on; now it says how many
    have a mask (and the report counts them), for the held-out images too."""
    ann, images = _coco_dataset(tmp_path, n=4)

    def tiny(d) -> None:  # images 2 (training) and 3 (held out): one 2 x 2 mask each
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] not in (2, 3)]
        for i in (2, 3):
            d["annotations"].append({"id": 100 + i, "image_id": i, "category_id": 1,
                                     "iscrowd": 0, "area": 4.0,
                                     "segmentation": [[10, 10, 12, 10, 12, 12, 10, 12]]})

    _edit(ann, tiny)
    assert main(_argv(ann, images, tmp_path / "run")[:-2] + ["--val-fraction", "0.5"]) == 0
    text = capsys.readouterr().out  # holds out images 1 and 3
    assert "2 training images, 1 with a mask to train on (2 samples), 2 held out, 1 with a " \
        "mask to score;" in text
    report = json.loads((tmp_path / "run" / "train_report.json").read_text())
    assert (report["train_images"], report["train_images_with_masks"]) == (2, 1)
    assert (report["val_images"], report["val_images_with_masks"]) == (2, 1)


def test_a_windows_file_name_is_read_with_slashes(tmp_path) -> None:
    """A file_name written on Windows (``sub\\\\000.png``) was "image file not found" on a
    system whose separator is '/': it is read as ``sub/000.png`` where that file exists, by
    training and eval alike; where it does not, the error says the backslashes were also
    read as separators."""
    import os

    from composer.data.coco import CocoDataset

    if os.sep == "\\":
        pytest.skip("backslashes are separators here")
    ann, images = _coco_dataset(tmp_path, n=2)
    (images / "sub").mkdir()
    (images / "000.png").rename(images / "sub" / "000.png")
    _edit(ann, lambda d: d["images"][0].update(file_name="sub\\000.png"))
    items = list(coco_items(ann, images))
    assert [it.image_id for it in items] == ["coco/1", "coco/2"]
    ds = CocoDataset(ann, images)
    assert ds[0].path == images / "sub" / "000.png" and ds[0].load_image().shape == (96, 96, 3)
    (images / "sub" / "000.png").unlink()
    failures: list[tuple[str, str]] = []
    assert len(list(coco_items(ann, images, failures=failures))) == 1
    assert failures[0][0] == "coco/1"
    assert f"nor {images}/sub/000.png, reading its backslashes as folder separators" \
        in failures[0][1]
    with pytest.raises(ValueError, match="reading its backslashes as folder separators"):
        CocoDataset(ann, images)[0].load_image()


def test_train_reads_a_missing_image_size_from_the_file(tmp_path, capsys) -> None:
    """An image record without width/height (or with null) made its image unusable in
    train; the size is now read from the image file, with a note naming the records.
    coco_items without size_from_image, and eval's reader, still need the record's size."""
    from composer.data.coco import CocoDataset

    ann, images = _coco_dataset(tmp_path, n=3)

    def change(d) -> None:
        del d["images"][0]["width"], d["images"][0]["height"]
        d["images"][2]["height"] = None

    _edit(ann, change)
    assert main(_argv(ann, images, tmp_path / "run")) == 0
    text = capsys.readouterr().out
    assert "2 image record(s) of the run have no width/height (image 1 (000.png), image 3 " \
        "(002.png)); their size is read from the image file" in text
    assert "could not be used" not in text
    report = json.loads((tmp_path / "run" / "train_report.json").read_text())
    assert report["train_images"] == 3 and report["failures"] == []
    items = list(coco_items(ann, images, size_from_image=True))
    assert [it.layers.shape[1:] for it in items] == [(96, 96)] * 3
    with pytest.raises(ValueError, match=r"COCO image 1 \(000\.png\): no 'height'"):
        list(coco_items(ann, images))
    with pytest.raises(ValueError, match="needs integer height and width"):
        CocoDataset(ann, images)[0]
    # a size the record does give must be the file's
    _edit(ann, lambda d: d["images"][2].update(width=80))
    failures: list[tuple[str, str]] = []
    assert len(list(coco_items(ann, images, size_from_image=True, failures=failures))) == 2
    assert failures == [("coco/3", "COCO image 3 (002.png): the image file is 96x96 (WxH) but "
                                   "the json's width is 80")]


def test_a_dataset_read_without_categories_gives_its_ground_truth(tmp_path) -> None:
    """CocoDataset(need_categories=False) took a json without categories (or with an unknown
    category_id), leaving category_id None, but reading an image's ground truth then did
    int(None): a TypeError traceback. Such an annotation is labelled NO_CATEGORY (-1)."""
    from composer.data.coco import NO_CATEGORY, CocoDataset

    ann, images = _coco_dataset(tmp_path, n=1)
    _edit(ann, lambda d: d.pop("categories"))
    gt = CocoDataset(ann, images, need_categories=False)[0].gt
    assert len(gt) >= 1 and set(gt.labels.tolist()) == {NO_CATEGORY}
    _edit(ann, lambda d: d.update(categories=[{"id": 1, "name": "shape"}]))
    _edit(ann, lambda d: d["annotations"][0].update(category_id=9))
    gt = CocoDataset(ann, images, need_categories=False)[0].gt
    assert gt.labels[0] == NO_CATEGORY and set(gt.labels[1:].tolist()) <= {1}


def test_a_sizeless_record_keeps_its_largest_masks(tmp_path) -> None:
    """A record without width/height takes its file's size, but its annotations without area
    had none computed when the json was read (no size then): all counted 0, so the
    max_instances cap kept the json's first masks, not the largest."""
    import numpy as np
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(images / "a.png")
    small = [[2, 2, 6, 2, 6, 6, 2, 6]]
    large = [[10, 10, 50, 10, 50, 35, 10, 35]]
    doc = {"images": [{"id": 1, "file_name": "a.png"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": small},
                           {"id": 2, "image_id": 1, "category_id": 1, "segmentation": large}],
           "categories": [{"id": 1, "name": "shape"}]}
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(doc))
    (item,) = coco_items(ann, images, max_instances=1, size_from_image=True)
    assert item.layers.shape == (1, 40, 60)
    assert int((item.layers[0] > 0).sum()) > 500  # the large one, not the 4 x 4 square


def test_a_backslash_in_the_folder_is_no_windows_file_name(tmp_path) -> None:
    """The "nor ..., reading its backslashes as folder separators: a file_name written on
    Windows?" hint looked at the whole path: a missing a.png in a folder whose own name holds
    a backslash blamed the json, naming a path that was never tried. Where a file is named
    with the backslash and the slashed one exists too, the named one is read."""
    import os

    from composer.data.coco import check_image_file, image_file

    if os.sep == "\\":
        pytest.skip("backslashes are separators here")
    folder = tmp_path / "odd\\name"
    folder.mkdir()
    check_image_file(image_file(folder, "a.png"))  # no hint: the plain "not found" follows
    with pytest.raises(ValueError, match=r"nor .*/sub/a\.png, reading its backslashes"):
        check_image_file(image_file(folder, "sub\\a.png"))
    (folder / "sub").mkdir()
    (folder / "sub" / "a.png").write_bytes(b"slashed")
    assert image_file(folder, "sub\\a.png") == folder / "sub" / "a.png"
    (folder / "sub\\a.png").write_bytes(b"named")
    assert image_file(folder, "sub\\a.png") == folder / "sub\\a.png"
