"""Odd inputs of the output writers, the ONNX export, the instance task and the demo command:
each gets a result or a one-line error, and no stale or half-written file is left behind."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from composer.embedding import EmbeddingCache
from composer.io.image import load_image
from composer.io.visualize import overlay, write_detections
from composer.predictor import SamPredictor
from composer.sam import build_sam
from composer.structures import Detections, Masks
from tasks.base import TaskContext
from tasks.instances import InstanceConfig, InstanceTask


def _dets(h: int = 40, w: int = 60, n: int = 2) -> Detections:
    dense = np.zeros((n, h, w), bool)
    dense[:, 5:15, 10:30] = True
    return Detections(np.tile([10.0, 5, 30, 15], (n, 1)), np.full(n, 0.9), masks=Masks.from_dense(dense))


# ---------------------------------------------------------------------- writers
def test_a_rerun_removes_mask_pngs_numbered_past_999(tmp_path):
    image = np.full((40, 60, 3), 90, np.uint8)
    for name in ("img_mask1000.png", "img_mask12345.png", "img_maskabc.png", "img_mask_x.png"):
        (tmp_path / name).write_bytes(b"old")
    # the json of an earlier run, written before it listed its mask files
    (tmp_path / "img.json").write_text('{"image_size": [40, 60], "detections": []}')
    write_detections(_dets(n=1), image, tmp_path, stem="img")
    # an earlier run with more than 1000 masks left its four-digit ones beside the new mask
    names = sorted(p.name for p in tmp_path.glob("img_mask*.png"))
    assert names == ["img_mask000.png", "img_mask_x.png", "img_maskabc.png"]
    # the json lists what it wrote: the next run removes exactly those
    (tmp_path / "img_mask001.png").write_bytes(b"mine")
    write_detections(_dets(n=3), image, tmp_path, stem="img")
    write_detections(_dets(n=1), image, tmp_path, stem="img")
    names = sorted(p.name for p in tmp_path.glob("img_mask*.png"))
    assert names == ["img_mask000.png", "img_mask_x.png", "img_maskabc.png"]


def test_files_no_run_wrote_are_never_replaced_or_removed(tmp_path):
    """segment --out DS, where DS held photo.png, a LabelMe photo.json and hand-made mask
    PNGs: photo_mask007.png was deleted, photo_mask000.png and photo.json replaced."""
    image = np.full((40, 60, 3), 90, np.uint8)
    (tmp_path / "photo_mask000.png").write_bytes(b"mine")
    (tmp_path / "photo_mask007.png").write_bytes(b"mine")
    with pytest.raises(ValueError, match="photo_mask000.png exists and no earlier output"):
        write_detections(_dets(n=1), image, tmp_path, stem="photo")
    assert (tmp_path / "photo_mask000.png").read_bytes() == b"mine"
    assert (tmp_path / "photo_mask007.png").read_bytes() == b"mine"
    (tmp_path / "photo_mask000.png").unlink()
    (tmp_path / "photo.json").write_text('{"version": "5.2.1", "shapes": []}')  # LabelMe's
    with pytest.raises(ValueError, match="photo.json exists and is not an output of sam-composer"):
        write_detections(_dets(n=1), image, tmp_path, stem="photo")
    assert "shapes" in (tmp_path / "photo.json").read_text()
    (tmp_path / "photo.json").unlink()
    write_detections(_dets(n=1), image, tmp_path, stem="photo")  # mask000 free: written
    assert (tmp_path / "photo_mask007.png").read_bytes() == b"mine"
    # a folder-mode run's own folder: its outputs are its own even without their json
    (tmp_path / "photo.json").unlink()
    write_detections(_dets(n=1), image, tmp_path, stem="photo", owned=True)


def test_masks_of_another_size_are_refused_before_any_file_is_touched(tmp_path):
    (tmp_path / "img_mask000.png").write_bytes(b"earlier run")
    small = np.full((20, 20, 3), 90, np.uint8)
    with pytest.raises(ValueError, match="masks are 60x40, the image is 20x20"):
        write_detections(_dets(), small, tmp_path, stem="img")  # was an IndexError mid-write
    assert [p.name for p in tmp_path.iterdir()] == ["img_mask000.png"]
    with pytest.raises(ValueError, match=r"masks of shape \(2, 20, 30\) do not fit the 60x40"):
        overlay(np.zeros((40, 60, 3), np.uint8), np.ones((2, 20, 30), bool))


def test_overlay_converts_16_bit_float_and_gray_images():
    masks = np.zeros((1, 8, 10), bool)
    wide = np.full((8, 10, 3), 2000, np.uint16)  # 11-bit data: was drawn all white
    np.testing.assert_array_equal(overlay(wide, masks), load_image(wide))
    unit = np.full((8, 10, 3), 0.5, np.float32)  # float in [0, 1]: was drawn all black
    assert overlay(unit, masks)[0, 0].tolist() == [128, 128, 128]
    gray = np.full((8, 10), 70, np.uint8)  # was "operands could not be broadcast"
    assert overlay(gray, masks).shape == (8, 10, 3)


def test_overlay_skips_nan_and_infinite_prompts():
    image = np.full((40, 60, 3), 90, np.uint8)
    plain = overlay(image)
    # were "cannot convert float NaN to integer" / OverflowError
    np.testing.assert_array_equal(overlay(image, boxes=[[np.nan, 0, 10, 10]]), plain)
    np.testing.assert_array_equal(overlay(image, points=[[np.inf, 3]], point_labels=[1]), plain)
    # a far-off corner (was an OpenCV argument error) draws the edges that lie on the picture
    far = overlay(image, boxes=[[5, 5, 1e30, 1e30]])
    assert (far[5, 10:] != 90).all() and (far[30, 10:] == 90).all()  # no right edge


def test_load_image_refuses_a_url_without_fetching_it():
    with pytest.raises(ValueError, match=r"https://example\.com/a\.png is a URL"):
        load_image("https://example.com/a.png")  # was "image file not found: https:/example..."


# ---------------------------------------------------------------------- ONNX export
def test_a_failed_export_removes_its_temporary_graph(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from composer.export import export_onnx

    def full_disk(module, args, path, *a, **k):
        Path(path).write_bytes(b"half a graph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_onnx(SamPredictor(build_sam("vit_tiny_test")), tmp_path)
    assert list(tmp_path.iterdir()) == []  # encoder.onnx.tmp was left behind


def test_export_of_a_model_in_training_mode_leaves_it_untouched(tmp_path):
    pytest.importorskip("onnxruntime")
    from composer.export import export_onnx
    from composer.segmenters import load_segmenter

    seg = load_segmenter("composer_tiny", device="cpu")  # BatchNorm in its encoder
    seg.model.train()  # e.g. just fine-tuned
    state = {k: v.clone() for k, v in seg.model.state_dict().items()}
    # was "the exported graphs differ from the model by up to 6e+00", after the random
    # input had updated the caller's BatchNorm statistics and put its encoder in eval mode
    out = export_onnx(seg, tmp_path)
    assert max(out.meta["parity"].values()) < 1e-3
    assert all(m.training for m in seg.model.modules())
    for k, v in seg.model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=k)


# ---------------------------------------------------------------------- instances
class _Boxes:
    model_id = "fixed"

    def __init__(self, boxes: list[list[float]], scores: list[float]) -> None:
        self.boxes, self.scores = boxes, scores

    def __call__(self, image: np.ndarray) -> Detections:
        return Detections(np.asarray(self.boxes, np.float32), self.scores, np.ones(len(self.scores)))


@pytest.fixture(scope="module")
def toy_sam() -> SamPredictor:
    return SamPredictor(build_sam("vit_tiny_test"))


def test_instances_message_says_the_boxes_were_filtered_not_missing(toy_sam):
    image = np.full((48, 64, 3), 90, np.uint8)
    det = _Boxes([[30, 30, 5, 5], [np.nan, 0, 9, 9], [100, 100, 120, 120], [5, 5, 30, 30]],
                 [0.9, 0.9, 0.9, 0.1])  # x1 < x0, NaN, outside the image, below the threshold
    out = InstanceTask(toy_sam, det, InstanceConfig(score_threshold=0.5))(
        TaskContext(image, 3, EmbeddingCache()))
    assert len(out) == 0
    msg = out.meta["message"]
    assert "found no boxes" not in msg and "none of the detector fixed's 4 boxes" in msg
    assert "score >= 0.5" in msg
    empty = InstanceTask(toy_sam, _Boxes([], []))(TaskContext(image, 3, EmbeddingCache()))
    assert "the detector fixed found no boxes" in empty.meta["message"]


def test_instances_max_dets_must_be_a_whole_number(toy_sam):
    for bad in (1.5, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="max_dets must be an integer >= 1"):
            InstanceConfig(max_dets=bad)  # 1.5 failed mid-task: "slice indices must be integers"
    image = np.full((48, 64, 3), 90, np.uint8)
    det = _Boxes([[5, 5, 30, 30], [10, 10, 40, 40], [0, 0, 20, 20]], [0.9, 0.8, 0.7])
    out = InstanceTask(toy_sam, det, InstanceConfig(max_dets=2.0))(
        TaskContext(image, 0, EmbeddingCache()))
    assert out.scores.tolist() == pytest.approx([0.9, 0.8])


# ---------------------------------------------------------------------- demo
def test_demo_without_automatic_removes_an_earlier_runs_everything_outputs(tmp_path, monkeypatch,
                                                                           toy_sam):
    from composer.commands import demo

    monkeypatch.setattr(demo, "load_model", lambda args: toy_sam)
    monkeypatch.setattr(demo, "describe", lambda seg: "toy")
    for name in ("everything.json", "everything_overlay.png", "notes.txt"):
        (tmp_path / name).write_text("earlier run")
    args = argparse.Namespace(out=str(tmp_path), no_automatic=True)
    assert demo.run(args) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert "prompts.json" in names and "notes.txt" in names
    assert not names & {"everything.json", "everything_overlay.png"}
    # the json names its image, so `convert` of the folder calls it astronaut.png, not prompts
    import json

    assert json.loads((tmp_path / "prompts.json").read_text())["image_file"] == "astronaut.png"


def test_an_interrupted_png_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    """save_png wrote in place: an interruption left a truncated overlay or mask."""
    from PIL import Image

    from composer.io.visualize import save_png

    path = save_png(np.full((4, 5), 200, np.uint8), tmp_path / "m.png")
    real_save = Image.Image.save

    def interrupted(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        if hasattr(fp, "truncate"):  # an open file (the .part), or its path
            fp.truncate(10)  # half-written
        else:
            with open(fp, "r+b") as f:
                f.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_png(np.zeros((4, 5), np.uint8), path)
    monkeypatch.undo()
    assert np.asarray(Image.open(path)).tolist() == [[200] * 5] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]


def test_overlay_takes_one_mask_and_refuses_probabilities_and_bad_alpha():
    """A (H, W) mask was refused with "masks of shape (H, W) do not fit the WxH image", float
    probabilities were all drawn as foreground, and alpha 2 was taken."""
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    one = overlay(image, mask)
    assert (one[7, 7] != image[7, 7]).any() and (one[15, 25] == image[15, 25]).all()
    np.testing.assert_array_equal(overlay(image, mask.astype(np.float32)), one)
    with pytest.raises(ValueError, match="float masks must hold only 0 and 1"):
        overlay(image, mask * 0.3)
    for alpha in (2, -1, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="alpha must be a number in"):
            overlay(image, mask, alpha=alpha)


def test_numpy_scalars_in_meta_are_written(tmp_path):
    """A meta value holding a numpy scalar (image_id=np.int64(3)) was left out of the json."""
    import json

    dets = _dets(n=1)
    dets.meta["image_id"] = np.int64(3)
    dets.meta["scores"] = {"mean": np.float32(0.5), "n": [np.int32(1)]}
    dets.meta["array"] = np.zeros(3)  # not a scalar: still left out
    image = np.full((40, 60, 3), 90, np.uint8)
    written = write_detections(dets, image, tmp_path, stem="m", extra_meta={"k": np.bool_(True)})
    meta = json.loads(Path(written["json"]).read_text())["meta"]
    assert meta["image_id"] == 3 and meta["scores"] == {"mean": 0.5, "n": [1]}
    assert meta["k"] is True and "array" not in meta
