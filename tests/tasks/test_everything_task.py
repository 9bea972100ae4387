"""EverythingTask (SA-1B style) and annotate_folder on a toy segmenter."""

from __future__ import annotations

import json

import numpy as np
from _toy_segmenter import ToySegmenter, toy_scene
from PIL import Image
from pycocotools import mask as mask_utils

from composer.automatic import AmgConfig
from tasks.everything import SA1B_CONFIG, EverythingTask, annotate_folder

SMALL = AmgConfig(
    points_per_side=8,
    pred_iou_thresh=0.5,
    stability_score_thresh=0.3,
    crop_n_layers=1,
    crop_n_points_downscale_factor=2,
    min_mask_region_area=20,
    max_mask_area_fraction=0.95,
)


class CountingToy(ToySegmenter):
    calls = 0

    def embed(self, image):
        CountingToy.calls += 1
        return super().embed(image)


def test_sa1b_settings():
    c = SA1B_CONFIG
    assert (
        c.points_per_side,
        c.pred_iou_thresh,
        c.stability_score_thresh,
        c.crop_n_layers,
        c.crop_n_points_downscale_factor,
        c.min_mask_region_area,
    ) == (32, 0.88, 0.92, 1, 2, 100)


def test_everything_task():
    image = toy_scene()
    dets = EverythingTask(ToySegmenter(), SMALL)(image)
    assert len(dets) > 0
    assert (dets.masks.area <= 0.95 * image.shape[0] * image.shape[1]).all()
    assert len({tuple(b) for b in dets.extras["crop_box"].tolist()}) > 1  # crops contributed


def test_annotate_folder_incremental_and_resumable(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(toy_scene()).save(src / "a.png")
    Image.fromarray(toy_scene()[::-1].copy()).save(src / "b.jpg")
    (src / "broken.png").write_bytes(b"not an image")
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out" / "ann.json"
    result = annotate_folder(src, ToySegmenter(), out, config=SMALL, write_every=1)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    assert [im["file_name"] for im in data["images"]] == ["a.png", "b.jpg"]
    assert [f["file_name"] for f in data["failures"]] == ["broken.png"]
    anns = data["annotations"]
    assert anns and [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    for a in anns[:5]:
        assert {
            "segmentation",
            "area",
            "bbox",
            "predicted_iou",
            "stability_score",
            "point_coords",
            "crop_box",
            "image_id",
        } <= set(a)
        rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        assert int(mask_utils.area(rle)) == a["area"]
        assert len(a["bbox"]) == 4 and len(a["crop_box"]) == 4 and len(a["point_coords"][0]) == 2
    # resume: finished images are not recomputed; the broken one is retried and fails again
    CountingToy.calls = 0
    again = annotate_folder(src, CountingToy(), out, config=SMALL)
    assert CountingToy.calls == 0
    assert len(again["annotations"]) == len(anns) and len(again["failures"]) == 1
    # a torn last record (crash mid-write) is ignored
    log = out.with_name(out.name + ".records.jsonl")
    with open(log, "a") as f:
        f.write('{"file_name": "a.p')
    assert len(annotate_folder(src, ToySegmenter(), out, config=SMALL)["images"]) == 2
    assert np.isfinite([a["stability_score"] for a in anns]).all()


def test_annotate_folder_resumes_only_its_own_folder_and_unchanged_images(tmp_path):
    """A rerun into the same json took another folder's a.png, or a photo replaced under the
    same name, as done and kept the old masks (and sizes) for it."""
    import os

    import pytest

    src, other = tmp_path / "images", tmp_path / "other"
    src.mkdir()
    other.mkdir()
    Image.fromarray(toy_scene()).save(src / "a.png")
    Image.fromarray(toy_scene()[:40].copy()).save(other / "a.png")
    out = tmp_path / "ann.json"
    annotate_folder(src, ToySegmenter(), out, config=SMALL)
    with pytest.raises(ValueError, match="input"):
        annotate_folder(other, ToySegmenter(), out, config=SMALL)
    # the same folder through another spelling of its path resumes
    CountingToy.calls = 0
    annotate_folder(tmp_path / "." / "images", CountingToy(), out, config=SMALL)
    assert CountingToy.calls == 0
    # a.png replaced by a smaller picture: redone, with the new size
    Image.fromarray(toy_scene()[:40].copy()).save(src / "a.png")
    stat = (src / "a.png").stat()
    os.utime(src / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = annotate_folder(src, CountingToy(), out, config=SMALL)
    assert CountingToy.calls > 0  # one image, embedded once per crop
    assert again["images"][0]["height"] == 40


def test_everything_cli_uses_the_models_thresholds(tmp_path, capsys):
    """`sam-composer everything IMAGE --model composer_tiny` finds the object with the model's
    calibrated thresholds; explicit thresholds on the command line still apply."""
    import cv2

    from composer.cli import main

    rng = np.random.default_rng(0)
    image = (200 + rng.integers(0, 20, (300, 400, 3))).astype(np.uint8)
    cv2.circle(image, (250, 140), 70, (30, 60, 160), -1)
    path = tmp_path / "disk.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    out = tmp_path / "out"
    args = [
        "everything",
        str(path),
        "--out",
        str(out),
        "--model",
        "composer_tiny",
        "--points-per-side",
        "8",
    ]
    assert main(args) == 0
    assert (out / "disk.json").is_file() and (out / "disk_overlay.png").is_file()
    assert int(capsys.readouterr().out.splitlines()[-1].split()[0]) >= 1
    assert main([*args, "--pred-iou-thresh", "1.5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("0 masks")
    # --max-side: the 400-px image processed at 200 px, the masks written at 400 x 300
    import json

    assert main([*args, "--max-side", "200", "--out", str(tmp_path / "small")]) == 0
    assert int(capsys.readouterr().out.splitlines()[-1].split()[0]) >= 1
    record = json.loads((tmp_path / "small" / "disk.json").read_text())
    assert record["image_size"] == [300, 400]
    assert record["meta"]["max_side"] == {"max_side": 200, "processed_size": [150, 200]}


def test_everything_cli_sa1b_takes_the_grid_crop_and_cleanup_flags(tmp_path, monkeypatch):
    """`--sa1b` sets SA-1B's settings, and the grid, crop and cleanup flags given override
    them (they were silently ignored); without `--sa1b` the official defaults apply."""
    from composer.automatic import AutomaticMaskGenerator
    from composer.cli import main
    from tasks.everything import SA1B_CONFIG

    seen = []
    original = AutomaticMaskGenerator.generate

    def spy(self, *args, **kwargs):
        seen.append(self.config)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AutomaticMaskGenerator, "generate", spy)
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(path)
    base = ["everything", str(path), "--model", "composer_tiny", "--out", str(tmp_path / "o")]
    assert main([*base, "--sa1b", "--points-per-side", "2", "--min-region-area", "7"]) == 0
    assert main([*base, "--sa1b", "--points-per-side", "2"]) == 0
    assert main([*base, "--points-per-side", "2"]) == 0
    a, b, c = seen
    assert (a.points_per_side, a.crop_n_layers, a.min_mask_region_area) == (2, 1, 7)
    assert a.max_mask_area_fraction == SA1B_CONFIG.max_mask_area_fraction
    assert (b.points_per_side, b.crop_n_layers, b.min_mask_region_area) == (2, 1, 100)
    assert (c.points_per_side, c.crop_n_layers, c.min_mask_region_area) == (2, 0, 0)
