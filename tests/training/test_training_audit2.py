"""Second training/data audit: label alignment of prepared samples, BSDS annotator layers."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import scipy.io

from composer.sam.composer_tiny import build_composer_tiny
from composer.training.data import (
    SegmentationItem,
    Variant,
    load_bsds_item,
    prepare_sample,
)
from composer.training.features import FeatureCache

from .test_training import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _stripe_item(a: int, b: int, h: int = 321, w: int = 481) -> SegmentationItem:
    """A BSDS-sized image whose columns a..b-1 are white and labelled 1."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, a:b] = 255
    layers = np.zeros((1, h, w), np.uint16)
    layers[0, :, a:b] = 1
    return SegmentationItem("stripe", img, layers)


@pytest.mark.parametrize("img_size,low_res", [(512, 64), (1024, 256)])
def test_prepared_masks_sit_on_the_image(img_size: int, low_res: int) -> None:
    """A low-res mask pixel is on where the image under its centre is in the object: the
    masks (and so the loss, the first points and the corrective clicks) were half a low-res
    pixel right of the object (OpenCV's nearest resize samples the top-left corner)."""
    s_px = img_size / low_res
    errors = []
    for a in range(100, 140):
        b = a + 101
        s = prepare_sample(_stripe_item(a, b), Variant(), img_size, low_res, min_area=1)
        assert s.image is not None
        xs = np.flatnonzero(s.layers[0, 0])
        mask_centre = (xs.min() + xs.max() + 1) / 2 * s_px  # input-frame pixels
        image_centre = (a + b) / 2 * s.input_size[1] / 481
        errors.append(mask_centre - image_centre)
    # before: +0.5 low-res pixel (4 input px at 512/64, 2 at SAM's 1024/256)
    assert abs(np.mean(errors)) < 0.15 * s_px, np.mean(errors)


def test_feature_cache_entries_keep_their_format(tmp_path) -> None:
    """The cache still stores corner-sampled layers (what its loader's f // 2 subsampling
    expects, and what the shipped recipe's entries hold): loaded at half the stored side
    they sit on the image, like prepare_sample's."""
    cfg = dataclasses.replace(TINY, hires=False, click_maps=False)
    model = build_composer_tiny(config=cfg, pretrained_backbone=False)
    item = _stripe_item(37, 91, h=96, w=128)
    cache = FeatureCache("t", root=tmp_path)
    (path,) = cache.build(model, [item], lambda _: [Variant()], low_res=64)
    with np.load(path) as z:
        stored = z["layers"]
    legacy = cv2.resize(item.layers[0], (64, 48), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(stored[0, :48, :64], legacy)
    loaded = cache.load(path, min_area=1, low_res=32)
    direct = prepare_sample(item, Variant(), 128, 32, min_area=1)
    assert np.array_equal(loaded.layers, direct.layers)


def _write_bsds(root, cell_shape: tuple[int, int], segs: list[np.ndarray]) -> None:
    h, w = segs[0].shape
    (root / "bsds500" / "images" / "train").mkdir(parents=True)
    (root / "bsds500" / "groundTruth" / "train").mkdir(parents=True)
    cv2.imwrite(str(root / "bsds500" / "images" / "train" / "1.jpg"), np.zeros((h, w, 3), np.uint8))
    dt = [("Segmentation", "O"), ("Boundaries", "O")]
    cell = np.empty(cell_shape, dtype=object)
    for k, seg in enumerate(segs):
        s = np.empty((1, 1), dtype=dt)
        s[0, 0]["Segmentation"] = seg
        s[0, 0]["Boundaries"] = np.zeros(seg.shape, np.uint8)
        cell.flat[k] = s
    scipy.io.savemat(
        str(root / "bsds500" / "groundTruth" / "train" / "1.mat"), {"groundTruth": cell}
    )


def test_bsds_item_has_every_annotator_of_a_column_cell(tmp_path) -> None:
    """Each annotator is a layer also when the groundTruth cell is N x 1 (it kept one)."""
    segs = [np.full((8, 10), k + 1, np.uint16) for k in range(3)]
    segs[1][:, 5:] = 7
    _write_bsds(tmp_path, (3, 1), segs)
    item = load_bsds_item("train", "1", data_root=tmp_path)
    assert item.layers.shape == (3, 8, 10)
    assert np.array_equal(item.layers[1], segs[1])


def test_bsds_item_refuses_region_ids_that_collide_with_the_ignore_label(tmp_path) -> None:
    seg = np.ones((8, 10), np.uint16)
    seg[0, 0] = 65535  # would read as an ignored pixel
    _write_bsds(tmp_path, (1, 1), [seg])
    with pytest.raises(ValueError, match="region ids"):
        load_bsds_item("train", "1", data_root=tmp_path)


def test_a_cpu_run_resumes_where_the_scaler_is_enabled(tmp_path) -> None:
    """A CPU run saves the disabled GradScaler's state, {}; resumed on CUDA the scaler is on,
    and torch's GradScaler.load_state_dict({}) raises ("The source state dict is empty")."""
    import torch

    from composer.sam import build_sam
    from composer.training.data import synthetic_shapes
    from composer.training.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    model = build_sam("vit_tiny_test", checkpoint=None)
    size, low = model.image_encoder.img_size, model.prompt_encoder.mask_input_size[0]
    samples = [prepare_sample(it, Variant(), size, low) for it in synthetic_shapes(2, 64, seed=1)]
    cfg = TrainConfig(steps=2, masks_per_image=1, num_corrective=1, no_point_rounds=1,
                      freeze=("image_encoder",), checkpoint_dir=str(tmp_path), warmup_steps=1)
    first = Trainer(model, cfg, samples)
    first.fit()
    state = first.state_dict()
    assert state["scaler"] == {}

    class EnabledScaler:  # what torch.amp.GradScaler("cuda") does when it is enabled
        loaded = None

        def is_enabled(self) -> bool:
            return True

        def load_state_dict(self, sd) -> None:
            if not sd:
                raise RuntimeError("The source state dict is empty, possibly because it was "
                                   "saved from a disabled instance of GradScaler.")
            self.loaded = sd

    again = Trainer(build_sam("vit_tiny_test", checkpoint=None), cfg, samples)
    again.scaler = EnabledScaler()  # type: ignore[assignment]
    again.load_state_dict(state)
    assert again.step == 2 and again.scaler.loaded is None


def test_train_refuses_held_out_images_that_are_training_images(tmp_path, capsys) -> None:
    """--val-data overlapping --data (here the same images under other names and ids) would
    report a held-out mIoU measured on trained images."""
    import json
    import shutil

    from composer.cli import main

    from .test_train_cli import _coco_dataset

    ann, images = _coco_dataset(tmp_path / "train", n=3)
    val_dir = tmp_path / "val"
    (val_dir / "images").mkdir(parents=True)
    doc = json.loads(ann.read_text())
    for im in doc["images"]:  # image 2 again, renamed and renumbered; the others new
        shutil.copy(images / im["file_name"], val_dir / "images" / f"v{im['file_name']}")
        im["file_name"] = f"v{im['file_name']}"
    keep = {2}
    doc["images"] = [im for im in doc["images"] if im["id"] in keep]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    (val_dir / "v.json").write_text(json.dumps(doc))
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(tmp_path / "run"), "--steps", "1",
            "--val-data", str(val_dir / "v.json"), "--val-images", str(val_dir / "images")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 of the 1 --val-data images are also in --data" in err


def test_train_accepts_held_out_images_of_their_own(tmp_path, capsys) -> None:
    import json

    import numpy as np
    from PIL import Image

    from composer.cli import main

    from .test_train_cli import _coco_dataset

    ann, images = _coco_dataset(tmp_path / "train", n=3)
    doc = json.loads(ann.read_text())
    val_images = tmp_path / "val_images"
    val_images.mkdir()
    for im in doc["images"]:  # the same scenes with one pixel changed: other images
        pixels = np.array(Image.open(images / im["file_name"]))
        pixels[0, 0] = 255 - pixels[0, 0]
        Image.fromarray(pixels).save(val_images / im["file_name"])
    argv = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(tmp_path / "run"), "--steps", "1",
            "--masks-per-image", "2", "--corrective", "1",
            "--val-data", str(ann), "--val-images", str(val_images)]
    assert main(argv) == 0
    assert "3 held out" in capsys.readouterr().out
