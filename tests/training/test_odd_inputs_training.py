"""Odd and bad input to training: COCO records, thin images, samples without masks, NaN
losses, errors mid-run, odd checkpoint paths, and the train CLI's and recipes' numbers.

Each case gets a one-line ``ValueError`` naming what is wrong (the CLI: ``error: ...``, exit 2)
and never loses the steps already trained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from composer.cli import main
from composer.sam.build import build_sam
from composer.training.data import (
    SegmentationItem,
    Variant,
    coco_items,
    prepare_sample,
    synthetic_shapes,
)
from composer.training.trainer import TrainConfig, Trainer
from tests._modules import load_recipe
from tests.training.test_train_cli import _coco_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- COCO records
def _one_step_argv(ann: Path, images: Path, out: Path, val_fraction: str) -> list[str]:
    """A one-step `sam-composer train` of the tiny test model from random weights."""
    return ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(out), "--steps", "1", "--masks-per-image", "1",
            "--corrective", "0", "--val-fraction", val_fraction]


def _edit(ann: Path, change) -> None:
    doc = json.loads(ann.read_text())
    change(doc)
    ann.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["images"][0].pop("height"), r"COCO image 1 \(000\.png\): no 'height'"),
        (lambda d: d["images"][0].update(file_name=None), r"COCO image 1 .*file_name"),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [10, 10], "counts": "PP"}),
            r"COCO image 1 \(000\.png\), annotation 1: RLE size",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [96, 96], "counts": 5}),
            r"COCO image 1 \(000\.png\), annotation 1: ",
        ),
        (lambda d: d["annotations"][0].update(area=None), r"COCO image 1 .*annotation 1"),
    ],
)
def test_coco_items_name_the_bad_record(tmp_path, change, message) -> None:
    ann, images = _coco_dataset(tmp_path, n=2)
    _edit(ann, change)
    with pytest.raises(ValueError, match=message):
        list(coco_items(ann, images))


def test_coco_items_check_the_image_file_and_need_no_bbox(tmp_path) -> None:
    ann, images = _coco_dataset(tmp_path, n=2)
    # training needs no bbox: records without one load
    _edit(ann, lambda d: [a.pop("bbox") for a in d["annotations"]])
    assert len(list(coco_items(ann, images))) == 2
    # an image whose size differs from its record is named, not a shape error of the layers
    Image.open(images / "001.png").resize((80, 96)).save(images / "001.png")
    with pytest.raises(ValueError, match=r"COCO image 2 \(001\.png\): .*80x96 .* 96x96"):
        list(coco_items(ann, images))


def test_train_command_reports_a_bad_record_without_a_traceback(tmp_path, capsys) -> None:
    """Every image unusable: a one-line error naming one of them. (A record without a width
    no longer makes its image unusable: train reads the file's size, test_finetune_audit4.)"""
    ann, images = _coco_dataset(tmp_path, n=2)
    _edit(ann, lambda d: [im.update(width="wide") for im in d["images"]])
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(tmp_path / "o"), "--steps", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "none of the 2 training images could be used (e.g. COCO image 1 (000.png): width " \
        "must be an integer, got 'wide')" in err and len(err.strip().splitlines()) == 1


def test_train_command_leaves_out_unusable_images_and_names_them(tmp_path, capsys) -> None:
    """A record with a bad size, a file missing on disk: the run stopped at the first such
    image with an error, after embedding the images before it; now each is left out, named,
    and listed in train_report.json, as eval lists the images it cannot read. An image that a
    bad record hides from the held-out set is not counted as held out. A box-only annotation
    (no segmentation) left its image out too, with its good masks; it is now skipped alone."""
    ann, images = _coco_dataset(tmp_path, n=6)

    def change(d) -> None:
        d["images"][1]["width"] = "wide"  # image 2
        (images / d["images"][3]["file_name"]).unlink()  # image 4: held out below
        d["annotations"].append({**d["annotations"][-1], "id": 99, "image_id": 5})
        d["annotations"][-1].pop("segmentation")  # image 5: a box-only annotation

    _edit(ann, change)
    out = tmp_path / "o"
    argv = _one_step_argv(ann, images, out, "0.34")  # holds out images 1 and 4
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "1 training and 1 held-out image(s) could not be used" in text
    assert "COCO image 2 (001.png): width must be an integer, got 'wide'" in text
    assert "3 training images (6 samples), 1 held out" in text
    assert "1 annotation(s) supply no mask and are skipped (1 of training, 0 of held-out " \
        "images; no segmentation: 1)" in text
    report = json.loads((out / "train_report.json").read_text())
    assert report["train_images"] == 3 and report["val_images"] == 1
    failures = {f["image_id"]: f for f in report["failures"]}
    assert sorted(failures) == ["coco/2", "coco/4"]
    assert failures["coco/4"]["held_out"] and "image file not found" in failures["coco/4"]["error"]
    assert report["skipped_annotations"] == [{
        "image_id": "coco/5", "annotation_id": 99, "held_out": False,
        "reason": "no segmentation",
        "error": "COCO image 5 (004.png), annotation 99: no segmentation",
    }]
    # the library reader still raises without a failures list
    with pytest.raises(ValueError, match=r"COCO image 2 \(001\.png\): width must be"):
        list(coco_items(ann, images))


def test_an_unusable_image_lists_no_skipped_annotation(tmp_path, capsys) -> None:
    """An image left out whole (its file missing) kept the annotations of it skipped before
    the file was read in the skipped list: the run said they "supply no mask and are skipped;
    the images' other masks are used" and listed them in train_report.json beside the image's
    failure. The failure alone names the image."""
    ann, images = _coco_dataset(tmp_path, n=3)

    def change(d) -> None:
        d["annotations"].append({**d["annotations"][0], "id": 98})
        d["annotations"][-1].pop("segmentation")  # image 1: a box-only annotation
        (images / d["images"][0]["file_name"]).unlink()  # and no image file

    _edit(ann, change)
    skipped: list = []
    failures: list[tuple[str, str]] = []
    items = list(coco_items(ann, images, failures=failures, skipped=skipped))
    assert [it.image_id for it in items] == ["coco/2", "coco/3"]
    assert [item_id for item_id, _ in failures] == ["coco/1"] and skipped == []
    with pytest.raises(ValueError, match=r"COCO image 1 \(000\.png\): image file not found"):
        list(coco_items(ann, images, skipped=skipped))
    assert skipped == []
    out = tmp_path / "o"
    argv = _one_step_argv(ann, images, out, "0")
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "1 training and 0 held-out image(s) could not be used" in text
    assert "supply no mask" not in text
    report = json.loads((out / "train_report.json").read_text())
    assert [f["image_id"] for f in report["failures"]] == ["coco/1"]
    assert report["skipped_annotations"] == [] and report["skipped_annotations_by_reason"] == {}


@pytest.mark.parametrize("cap", [-1, 0, 2.5, True, "64"])
def test_coco_items_refuse_a_bad_max_instances(tmp_path, cap) -> None:
    """A negative cap made every image unusable ("negative dimensions are not allowed"), 0
    yielded no image at all, 2.5 was read as 2: each is a ValueError naming the value."""
    from composer.training.data import coco_item_refs

    ann, images = _coco_dataset(tmp_path, n=2)
    failures: list[tuple[str, str]] = []
    with pytest.raises(ValueError, match=r"max_instances must be a whole number >= 1, got "):
        list(coco_items(ann, images, max_instances=cap, failures=failures))
    assert failures == []
    with pytest.raises(ValueError, match=r"max_instances must be a whole number >= 1"):
        list(coco_item_refs(ann, images, max_instances=cap))
    assert len(list(coco_items(ann, images, max_instances=np.int64(1)))) == 2


def _defective_annotations(tmp_path):
    """A 4-image dataset whose images 1, 2 and 4 gain annotations that supply no mask, of each
    kind (image 1 is held out by --val-fraction 0.25), and whose image 3 has box-only ones
    only; with the json without them (and without image 3's)."""
    ann, images = _coco_dataset(tmp_path, n=4)
    clean = json.loads(ann.read_text())
    doc = json.loads(ann.read_text())
    first = {a["image_id"]: a for a in reversed(doc["annotations"])}
    bad = [
        ({"id": 90, "image_id": 1}, "segmentation"),  # box-only
        ({"id": 91, "image_id": 1, "segmentation": {"size": [10, 10], "counts": "PP"}}, None),
        ({"id": 92, "image_id": 2, "segmentation": {"size": [96, 96], "counts": 5}}, None),
        ({"id": 94, "image_id": 2, "area": None}, None),
        ({"id": 95, "image_id": 4, "segmentation": "a mask"}, None),
    ]
    for extra, drop in bad:
        a = {**first[extra["image_id"]], **extra}
        if drop:
            a.pop(drop)
        doc["annotations"].append(a)
    for a in doc["annotations"]:
        if a["image_id"] == 3:
            a.pop("segmentation")  # every instance of image 3 is box-only
    clean["annotations"] = [a for a in clean["annotations"] if a["image_id"] != 3]
    ann.write_text(json.dumps(doc))
    (tmp_path / "clean.json").write_text(json.dumps(clean))
    n3 = sum(1 for a in doc["annotations"] if a["image_id"] == 3)
    return ann, tmp_path / "clean.json", images, n3


def test_coco_items_skip_annotations_that_supply_no_mask(tmp_path) -> None:
    """Given a skipped list, an annotation without a usable mask is skipped, with its reason,
    and the image's good masks still come; without it the image is refused as before, and the
    evaluation's ground truth still refuses it too (it must not lose ground truth)."""
    from composer.data.coco import CocoDataset
    from composer.training.data import SkippedAnnotation

    ann, clean, images, n3 = _defective_annotations(tmp_path)
    skipped: list[SkippedAnnotation] = []
    items = {it.image_id: it for it in coco_items(ann, images, skipped=skipped, pack_layers=True)}
    expected = {it.image_id: it for it in coco_items(clean, images, pack_layers=True)}
    assert sorted(items) == ["coco/1", "coco/2", "coco/3", "coco/4"]
    for image_id in ("coco/1", "coco/2", "coco/4"):
        assert _masks(items[image_id]) == _masks(expected[image_id]) != []
    assert items["coco/3"].layers.shape == (0, 96, 96)  # every instance skipped
    reasons = {(s.item_id, s.annotation_id): s.reason for s in skipped}
    assert reasons == {
        ("coco/1", 90): "no segmentation", ("coco/1", 91): "undecodable segmentation",
        ("coco/2", 92): "undecodable segmentation", ("coco/2", 94): "unreadable area", ("coco/4", 95): "undecodable segmentation",
        **{("coco/3", a): "no segmentation" for a in _ann_ids(ann, 3)},
    }
    assert len(skipped) == 5 + n3
    message = {s.annotation_id: s.message for s in skipped}
    assert message[94] == (
        "COCO image 2 (001.png), annotation 94: area must be a finite number >= 0, got None")
    assert message[91].startswith("COCO image 1 (000.png), annotation 91: RLE size")
    # without a skipped list: the image is refused (or listed under failures), as before
    failures: list[tuple[str, str]] = []
    assert [it.image_id for it in coco_items(ann, images, failures=failures)] == []
    assert [f[0] for f in failures] == ["coco/1", "coco/2", "coco/3", "coco/4"]
    with pytest.raises(ValueError, match=r"COCO image 1 \(000\.png\), annotation 9[01]: "):
        list(coco_items(ann, images))
    with pytest.raises(ValueError, match="annotation 90 has no segmentation"):
        CocoDataset(ann, images).item(1)


def _ann_ids(ann: Path, image_id: int) -> list[int]:
    return [a["id"] for a in json.loads(ann.read_text())["annotations"]
            if a["image_id"] == image_id]


def test_train_command_skips_annotations_that_supply_no_mask(tmp_path, capsys) -> None:
    """The images with a box-only or an undecodable annotation were left out whole, their
    good masks lost; the run now trains on them, and says, and reports, how many annotations
    it skipped, per reason."""
    ann, _, images, n3 = _defective_annotations(tmp_path)
    out = tmp_path / "o"
    argv = _one_step_argv(ann, images, out, "0.25")  # holds out image 1
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "could not be used" not in text
    n = 5 + n3
    assert (f"{n} annotation(s) supply no mask and are skipped ({n - 2} of training, 2 of "
            f"held-out images; no segmentation: {1 + n3}, undecodable segmentation: 3, "
            "unreadable area: 1)") in text
    # image 3: no mask (the line said "3 training images (4 samples)")
    assert "3 training images, 2 with a mask to train on (4 samples), 1 held out" in text
    report = json.loads((out / "train_report.json").read_text())
    assert report["failures"] == [] and report["train_images"] == 3
    assert report["skipped_annotations_by_reason"] == {
        "no segmentation": 1 + n3, "undecodable segmentation": 3, "unreadable area": 1,
    }
    entries = {e["annotation_id"]: e for e in report["skipped_annotations"]}
    assert len(entries) == n and entries[90]["held_out"] and not entries[92]["held_out"]
    assert entries[92]["image_id"] == "coco/2" and entries[92]["error"].startswith(
        "COCO image 2 (001.png), annotation 92: ")


def _masks(item) -> list[bytes]:
    """The item's masks (each positive label of each layer), as sorted packed bits."""
    out = []
    for layer in item.layers:
        for k in np.unique(layer):
            if k:
                out.append(np.packbits(layer == k).tobytes())
    return sorted(out)


def _crowded_image(tmp_path: Path, n: int = 70) -> tuple[Path, Path]:
    """Image 1 (96 x 96) with ``n`` small disjoint boxes, annotation k + 1 the k-th largest by
    its area (more than the 64 that sam-composer train keeps) and the largest undecodable;
    image 2 with one large box."""
    from pycocotools import mask as mask_utils

    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.png")
    doc: dict = {"images": [{"id": 1, "file_name": "a.png", "height": 96, "width": 96}],
                 "annotations": [], "categories": [{"id": 1, "name": "box"}]}
    for k in range(n):
        m = np.zeros((96, 96), np.uint8, order="F")
        y, x = divmod(k, 9)
        m[y * 10 : y * 10 + 5, x * 10 : x * 10 + 5 + k % 3] = 1
        rle = mask_utils.encode(m)
        rle["counts"] = rle["counts"].decode()
        doc["annotations"].append({"id": k + 1, "image_id": 1, "category_id": 1,
                                   "segmentation": rle, "area": 1000.0 - k, "iscrowd": 0,
                                   "bbox": [x * 10, y * 10, 5 + k % 3, 5]})
    doc["annotations"][0]["segmentation"] = {"size": [10, 10], "counts": "PP"}  # the largest
    # image 2: one mask large enough to train on (image 1's are below the low-res minimum)
    Image.fromarray(pixels[::-1].copy()).save(images / "b.png")
    doc["images"].append({"id": 2, "file_name": "b.png", "height": 96, "width": 96})
    big = np.zeros((96, 96), np.uint8, order="F")
    big[20:70, 10:60] = 1
    rle = mask_utils.encode(big)
    rle["counts"] = rle["counts"].decode()
    doc["annotations"].append({"id": 100, "image_id": 2, "category_id": 1, "segmentation": rle,
                               "area": 2500.0, "iscrowd": 0, "bbox": [10, 20, 50, 50]})
    ann = tmp_path / "crowded.json"
    ann.write_text(json.dumps(doc))
    return ann, images


def test_an_undecodable_annotation_leaves_its_place_under_the_cap(tmp_path, capsys) -> None:
    """The cap took the 64 largest annotations before decoding them: an undecodable one among
    them was skipped and the image trained on 63 masks while 69 decode, and the run said 6
    masks were beyond the cap (it counted the undecodable one). The 64 largest that decode
    are kept, and 5 are beyond the cap."""
    ann, images = _crowded_image(tmp_path)
    skipped: list = []
    item, _ = coco_items(ann, images, skipped=skipped, pack_layers=True)
    assert [(s.annotation_id, s.reason) for s in skipped] == [(1, "undecodable segmentation")]
    assert len(_masks(item)) == 64
    # the 64 kept are annotations 2..65: the one just beyond the old cap is in
    assert int(item.layers.max()) == 64 and item.layers[0][72, 12] > 0  # annotation 65
    assert item.layers[0][72, 22] == 0  # annotation 66: beyond the cap
    out = tmp_path / "o"
    argv = _one_step_argv(ann, images, out, "0")
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "5 training mask(s) beyond the 64 largest of their image are not used" in text
    assert "1 annotation(s) supply no mask and are skipped" in text


def test_held_out_masks_beyond_the_cap_are_counted(tmp_path, capsys) -> None:
    """The held-out images are read under the same cap of 64 masks per image, but only the
    training images' masks beyond it were counted: a held-out mIoU left masks out unsaid."""
    ann, images = _crowded_image(tmp_path)
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(tmp_path / "o"), "--steps", "1",
            "--masks-per-image", "1", "--corrective", "0", "--val-fraction", "0.5"]
    assert main(argv) == 0  # image 1 (70 annotations, one undecodable) is held out
    text = capsys.readouterr().out
    assert "1 training images (2 samples), 1 held out" in text
    assert "5 held-out mask(s) beyond the 64 largest of their image are not scored" in text
    assert "training mask(s) beyond" not in text


@pytest.mark.parametrize("area", [float("nan"), float("inf"), -3.0])
def test_a_nan_or_negative_area_is_skipped_and_named(tmp_path, area) -> None:
    """A NaN or negative ``area`` (json's NaN loads as a float) was compared as too small: its
    annotation was left out unnamed, and an image with no other annotation was not listed at
    all, while eval scores the mask. It is skipped as an unreadable area, and named."""
    from composer.training.data import coco_item_ids

    ann, images = _coco_dataset(tmp_path, n=2)
    doc = json.loads(ann.read_text())
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] == 1 or a["id"] == 99
                          ] + [{**next(a for a in doc["annotations"] if a["image_id"] == 2),
                                "id": 99, "area": area}]
    ann.write_text(json.dumps(doc))
    assert coco_item_ids(ann, images) == [1, 2]
    skipped: list = []
    items = {it.image_id: it for it in coco_items(ann, images, skipped=skipped)}
    assert sorted(items) == ["coco/1", "coco/2"] and items["coco/2"].layers.shape[0] == 0
    assert [(s.item_id, s.annotation_id, s.reason) for s in skipped] == [
        ("coco/2", 99, "unreadable area")]
    assert "annotation 99: area must be a finite number >= 0, got " in skipped[0].message
    with pytest.raises(ValueError, match=r"COCO image 2 \(001\.png\), annotation 99: area"):
        list(coco_items(ann, images))


def test_packed_coco_layers_hold_the_same_masks(tmp_path, monkeypatch, capsys) -> None:
    """One full-resolution uint16 layer per instance: 64 instances of a 24 Mpx photo took
    3 GB for one image (train peaked at 4.2 GB, 1.1 GB packed). Packed, instances that do not
    overlap share a layer; the masks are the same, less the empty ones."""
    ann, images = _coco_dataset(tmp_path, n=3)
    square = np.zeros((96, 96), np.uint8, order="F")
    square[20:60, 20:60] = 1  # overlaps image 1's shapes
    from pycocotools import mask as mask_utils

    def change(d) -> None:
        rle = mask_utils.encode(square)
        rle["counts"] = rle["counts"].decode()
        empty = mask_utils.encode(np.zeros((96, 96), np.uint8, order="F"))
        empty["counts"] = empty["counts"].decode()
        tiny = np.zeros((96, 96), np.uint8, order="F")
        tiny[0:2, 0:2] = 1  # below the size trained on: the masks count is printed
        tiny_rle = mask_utils.encode(tiny)
        tiny_rle["counts"] = tiny_rle["counts"].decode()
        for k, seg in enumerate((rle, empty, tiny_rle)):
            d["annotations"].append({**d["annotations"][0], "id": 90 + k, "image_id": 1,
                                     "segmentation": seg, "area": 1600.0 - k})

    _edit(ann, change)
    plain = list(coco_items(ann, images))
    packed = list(coco_items(ann, images, pack_layers=True))
    assert [it.image_id for it in plain] == [it.image_id for it in packed]
    for a, b in zip(plain, packed, strict=True):
        empty = np.packbits(np.zeros((96, 96), bool)).tobytes()
        assert [m for m in _masks(a) if m != empty] == _masks(b)
        assert sum(int(layer.max()) for layer in b.layers) == len(_masks(b))
        assert a.layers.dtype == b.layers.dtype == np.uint16
    # image 1: its shapes, the square over them, an empty and a tiny mask; packed: 2 layers
    assert plain[0].layers.shape[0] > 2 and packed[0].layers.shape[0] == 2
    # the train command reads its images packed
    import composer.training.data as data

    real, calls = data.coco_items, []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("pack_layers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "coco_items", spy)
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(tmp_path / "o"), "--steps", "1", "--masks-per-image",
            "1", "--corrective", "0", "--val-fraction", "0"]
    assert main(argv) == 0
    assert calls == [True, True]
    n_masks = sum(len(_masks(it)) for it in packed)  # not the empty one
    assert f"of the {n_masks} training masks are trained on" in capsys.readouterr().out


def test_a_one_pixel_high_image_prepares() -> None:
    """A side that rounds to 0 px at the input size stays 1 px (cv2.resize refused 0)."""
    item = SegmentationItem("thin", np.zeros((1, 3000, 3), np.uint8), np.ones((1, 1, 3000), np.uint16))
    s = prepare_sample(item, Variant(), 128, 32)
    assert s.input_size == (1, 128) and s.image is not None and s.image.shape == (1, 128, 3)


# --------------------------------------------------------------------------- the trainer
def _tiny(tmp_path: Path, **kw) -> Trainer:
    torch.manual_seed(0)
    model = build_sam("vit_tiny_test", checkpoint=None)
    size, low = model.image_encoder.img_size, model.prompt_encoder.mask_input_size[0]
    samples = [prepare_sample(it, Variant(), size, low) for it in synthetic_shapes(3, 64, seed=1)]
    cfg = dict(steps=6, masks_per_image=2, num_corrective=1, no_point_rounds=1,
               freeze=("image_encoder",), checkpoint_dir=str(tmp_path), checkpoint_every=4,
               warmup_steps=1)
    cfg.update(kw)
    return Trainer(model, TrainConfig(**cfg), samples)  # type: ignore[arg-type]


def _nan_embedding_from(trainer: Trainer, step: int) -> None:
    real = trainer.embed

    def embed(sample):
        emb = real(sample)
        return emb * float("nan") if trainer.step >= step else emb

    trainer.embed = embed  # type: ignore[method-assign]


def test_nan_loss_stops_with_an_error_and_keeps_the_good_steps(tmp_path) -> None:
    t = _tiny(tmp_path)
    _nan_embedding_from(t, 2)
    with pytest.raises(ValueError, match=r"step 3: loss is nan on sample shapes/1/"):
        t.fit()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 2 and len(state["history"]) == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())
    # the weights in memory were not updated by the NaN step either
    assert all(bool(torch.isfinite(p).all()) for p in t.model.parameters())
    again = _tiny(tmp_path)
    assert again.resume() and again.step == 2


def test_nan_weights_never_overwrite_the_last_checkpoint(tmp_path) -> None:
    t = _tiny(tmp_path, steps=8, checkpoint_every=2)
    t.fit()  # last.pt at step 8
    t2 = _tiny(tmp_path, steps=10, checkpoint_every=2)
    assert t2.resume() and t2.step == 8
    with torch.no_grad():  # weights gone bad in memory since the last checkpoint
        next(t2.model.mask_decoder.parameters()).fill_(float("nan"))
    # The loss itself is NaN with torch 2.1; torch 2.14's CPU attention kernel returns finite
    # values for NaN queries, so there only the gradient norm is NaN. Either guard stops the step.
    with pytest.raises(ValueError, match=r"step 9: (loss|gradient norm) is nan .*before the update"):
        t2.fit()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 8
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


def test_an_error_mid_run_keeps_the_finished_steps(tmp_path) -> None:
    t = _tiny(tmp_path, steps=20, checkpoint_every=1000)

    def fail(trainer: Trainer, _stats: object) -> None:
        if trainer.step == 3:
            raise RuntimeError("validation crashed")

    with pytest.raises(RuntimeError, match="validation crashed"):
        t.fit(on_step=fail)
    again = _tiny(tmp_path, steps=20, checkpoint_every=1000)
    assert again.resume() and again.step == 3


def test_a_sample_without_masks_is_named(tmp_path) -> None:
    t = _tiny(tmp_path)
    item = synthetic_shapes(1, 64, seed=1)[0]
    empty = SegmentationItem("blank", item.image, np.zeros_like(item.layers))
    t.samples = [prepare_sample(empty, Variant(), t.img_size, t.low_res)]
    with pytest.raises(ValueError, match="sample blank@.* has no mask"):
        t.train_step()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"time_budget_s": float("nan")}, "time_budget_s must be positive"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_train_config_refuses_odd_numbers(kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


def test_resume_refuses_a_folder_named_like_the_checkpoint(tmp_path) -> None:
    (tmp_path / "last.pt").mkdir()
    t = _tiny(tmp_path)
    with pytest.raises(ValueError, match="last.pt is not a file"):
        t.resume()


@pytest.mark.parametrize("keep", [10_000, 300_000])
def test_resume_names_a_cut_off_checkpoint(tmp_path, keep) -> None:
    """A last.pt cut short (a full disk, a copy interrupted) ended the train command with
    "error: [Errno 22] Invalid argument" (torch.load's OSError for some lengths), naming no
    file."""
    t = _tiny(tmp_path, steps=2, checkpoint_every=2)
    t.fit()
    data = (tmp_path / "last.pt").read_bytes()
    assert len(data) > keep
    (tmp_path / "last.pt").write_bytes(data[:keep])
    damaged = r"last\.pt cannot be read as a training state .*: it is damaged"
    with pytest.raises(ValueError, match=damaged):
        _tiny(tmp_path).resume()


def test_resume_does_not_call_an_unreadable_checkpoint_damaged(tmp_path, monkeypatch) -> None:
    """Catching torch.load's OSError for cut-off files also turned a last.pt that cannot be
    read (no permission: root reads through chmod, hence the stand-in) into "not a training
    state ... delete it", advice that throws away a good training state."""
    t = _tiny(tmp_path, steps=2, checkpoint_every=2)
    t.fit()

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "last.pt"))

    monkeypatch.setattr(torch, "load", unreadable)
    with pytest.raises(PermissionError, match="Permission denied"):
        _tiny(tmp_path).resume()


# --------------------------------------------------------------------------- the CLI
def test_train_command_nan_loss_exits_2_and_keeps_last_pt(tmp_path, capsys, monkeypatch) -> None:
    ann, images = _coco_dataset(tmp_path, n=3)
    real = Trainer.embed

    def embed(self, sample):
        emb = real(self, sample)
        return emb * float("nan") if self.step >= 2 else emb

    monkeypatch.setattr(Trainer, "embed", embed)
    out = tmp_path / "run"
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(out), "--steps", "6", "--masks-per-image", "2",
            "--corrective", "1", "--val-fraction", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: step 3: loss is nan" in err
    assert not (out / "model.pt").exists()  # no NaN weights written as the result
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


def test_train_command_refuses_a_negative_seed_and_a_folder_as_data(tmp_path, capsys) -> None:
    ann, images = _coco_dataset(tmp_path, n=2)
    base = ["train", "--images", str(images), "--model", "vit_tiny_test", "--random-init",
            "--out", str(tmp_path / "o"), "--steps", "1"]
    assert main([*base, "--data", str(ann), "--seed", "-1"]) == 2
    assert "--seed must be >= 0, got -1" in capsys.readouterr().err
    assert main([*base, "--data", str(images)]) == 2
    assert f"--data {images} is a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- recipes
class _Started(Exception):
    """The recipe went past its argument checks."""


def _started(*_args, **_kwargs):
    raise _Started


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--time-budget-min", "0"], "--time-budget-min must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--variants", "0"], "--variants must be >= 1"),
        (["--no-point-rounds", "3"], "--no-point-rounds must be 0, 1 or 2"),
    ],
)
def test_train_default_checks_numbers_before_building_anything(argv, message, monkeypatch, capsys) -> None:
    recipe = load_recipe("train_default")
    monkeypatch.setattr(recipe, "build_composer_tiny", _started)
    monkeypatch.setattr(recipe, "build_cache", _started)
    monkeypatch.setattr(sys, "argv", ["train_default.py", *argv])
    with pytest.raises(SystemExit) as exc:
        recipe.main()
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--points-per-side", "0"], "--points-per-side must be >= 1"),
    ],
)
def test_data_engine_checks_numbers_before_the_automatic_stage(
    argv, message, tmp_path, monkeypatch, capsys
) -> None:
    recipe = load_recipe("data_engine")
    monkeypatch.setattr(recipe, "automatic_stage", _started)
    monkeypatch.setattr(recipe, "unlabelled_folder", _started)
    monkeypatch.setattr(
        sys, "argv", ["data_engine.py", "--work-dir", str(tmp_path), "--images", str(tmp_path), *argv]
    )
    with pytest.raises(SystemExit) as exc:
        recipe.main()
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_data_engine_names_its_own_remedy_for_a_log_of_other_settings(tmp_path) -> None:
    """The automatic stage's folder log of other settings (e.g. one written before the model
    id named the input size) was refused with the CLI's advice, '--out' / '--overwrite',
    flags this recipe does not have."""
    import argparse

    from composer.io.records import log_path
    from composer.sam.composer_tiny import PACKAGED_WEIGHTS

    recipe = load_recipe("data_engine")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / "a.png")
    args = argparse.Namespace(work_dir=tmp_path / "w", weights=PACKAGED_WEIGHTS, points_per_side=2,
                              pred_iou_thresh=None, stability_thresh=None, limit=None)
    args.work_dir.mkdir()
    recipe.automatic_stage(args, images)
    args.points_per_side = 3
    log = log_path(args.work_dir / "automatic.json")
    with pytest.raises(ValueError, match="holds outputs of other settings") as exc:
        recipe.automatic_stage(args, images)
    assert str(exc.value).endswith(
        f"with this recipe: delete {log} to annotate every image afresh, or use another --work-dir"
    )
    assert log.is_file()


@pytest.mark.parametrize(
    ("raised", "line"),
    [
        (
            "run",
            "interrupted: 3 of 9 images done (0 earlier), 1 failed; run the same command to resume",
        ),
        ("plain", "interrupted"),
    ],
)
def test_data_engine_ctrl_c_is_one_line_not_a_traceback(
    raised, line, tmp_path, monkeypatch, capsys
) -> None:
    """Ctrl-C in the automatic stage (annotate_folder's RunInterrupted, after it wrote the
    images finished so far) or later (a plain KeyboardInterrupt, e.g. in the fine-tuning,
    after its checkpoint) went out of the recipe as a traceback; now its one line, exit 130."""
    from composer.runner.records import RunInterrupted

    recipe = load_recipe("data_engine")
    monkeypatch.delenv("SAM_COMPOSER_TRACEBACK", raising=False)

    def stopped(args, images):
        raise RunInterrupted(line) if raised == "run" else KeyboardInterrupt

    monkeypatch.setattr(recipe, "automatic_stage", stopped)
    weights = tmp_path / "start.pt"
    weights.write_bytes(b"w")
    with pytest.raises(SystemExit) as exc:
        try:
            recipe.main(["--weights", str(weights), "--work-dir", str(tmp_path / "w"),
                         "--images", str(tmp_path)])
        except KeyboardInterrupt:  # not pytest's own Ctrl-C: the old code let it out
            pytest.fail("Ctrl-C went out of the recipe (a traceback on the command line)")
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == line


def test_data_engine_names_an_unreadable_photo_on_one_line(tmp_path, monkeypatch, caplog) -> None:
    """An unreadable photo in --images is a per-item failure: one WARNING line, listed under
    "failures". The recipe logs at INFO, where annotate_folder also logged its traceback
    (some twenty lines per bad photo, read as a crash); the stages after are stubbed."""
    import logging

    recipe = load_recipe("data_engine")
    monkeypatch.delenv("SAM_COMPOSER_TRACEBACK", raising=False)
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / "a.png")
    (images / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    real_stage = recipe.automatic_stage
    done = []

    def stage_then_stop(args, folder):
        done.append(real_stage(args, folder))
        raise _Started

    monkeypatch.setattr(recipe, "automatic_stage", stage_then_stop)
    item_log = logging.getLogger(recipe.annotate_folder.__module__)
    before = list(item_log.filters)
    try:
        with caplog.at_level(logging.INFO), pytest.raises(_Started):
            recipe.main(["--work-dir", str(tmp_path / "w"), "--images", str(images),
                         "--points-per-side", "2"])
    finally:
        item_log.filters[:] = before
    doc = json.loads(done[0].read_text())
    assert [f["file_name"] for f in doc["failures"]] == ["b.jpg"]
    assert [i["file_name"] for i in doc["images"]] == ["a.png"]
    failed = [r for r in caplog.records if "b.jpg" in r.getMessage()]
    assert [r.levelname for r in failed] == ["WARNING"]
    assert "\n" not in failed[0].getMessage()
    assert not any("Traceback" in r.getMessage() for r in caplog.records)
