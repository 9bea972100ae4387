"""Folder mode of `sam-composer instances`, `text` and `everything`: bad images are per-item
failures (exit 1), unusable input is exit 2, colliding stems get distinct outputs, resume
refuses another run's settings, and no NaN reaches the JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _toy_segmenter import ToySegmenter, toy_scene
from PIL import Image

from composer.automatic import AmgConfig
from composer.cli import main
from composer.commands.instances import image_files, output_stems, write_result
from composer.io.image import IMAGE_SUFFIXES, load_image
from composer.segmenters.base import MaskLogits
from composer.structures import Detections, Masks
from tasks.everything import annotate_folder

TOY = AmgConfig(points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.3)


def _strict_json(path: str | Path) -> Any:
    """The file's JSON; NaN or Infinity in it fail the test."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{path} holds {name}: invalid JSON")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


@pytest.fixture()
def mixed_folder(tmp_path: Path, grabcut_dir: Path) -> tuple[Path, Path]:
    """A folder of a real photo as 1.jpg and 1.png (one stem), a truncated JPEG, a text file
    named .png and a sub-folder named .jpg; and a COCO results json with a box for image 1."""
    photo = sorted((grabcut_dir / "data_GT").glob("*.jpg"))[0]
    src = tmp_path / "images"
    src.mkdir()
    data = photo.read_bytes()
    (src / "1.jpg").write_bytes(data)
    Image.open(photo).save(src / "1.png")
    (src / "2.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
    (src / "3.png").write_text("not an image")
    (src / "4.jpg").mkdir()  # a folder named like an image
    boxes = tmp_path / "boxes.json"
    entry = {"image_id": 1, "category_id": 1, "bbox": [40, 40, 200, 200], "score": 0.9}
    boxes.write_text(json.dumps([entry]))
    return src, boxes


# ---------------------------------------------------------------------- file listing
def test_every_listed_suffix_is_read_by_load_image(tmp_path):
    for s in (".gif", ".webp", ".bmp", ".tif", ".tiff", ".jpeg", ".png"):
        assert s in IMAGE_SUFFIXES
    for i, suffix in enumerate(IMAGE_SUFFIXES):
        Image.fromarray(toy_scene()).convert("RGB").save(tmp_path / f"im{i:02d}{suffix}")
    (tmp_path / "notes.txt").write_text("not an image")
    files = image_files(tmp_path)
    assert [f.suffix for f in files] == list(IMAGE_SUFFIXES)
    for f in files:
        assert load_image(f).shape == (72, 96, 3), f.name


def test_image_files_skips_folders_and_checks_limit(tmp_path):
    (tmp_path / "a.jpg").mkdir()
    with pytest.raises(ValueError, match="no images"):
        image_files(tmp_path)
    Image.fromarray(toy_scene()).save(tmp_path / "b.png")
    Image.fromarray(toy_scene()).save(tmp_path / "c.png")
    # hidden files (macOS's ._b.png metadata next to b.png) are no images: they were failures
    (tmp_path / "._b.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert [f.name for f in image_files(tmp_path)] == ["b.png", "c.png"]
    assert [f.name for f in image_files(tmp_path, 1)] == ["b.png"]
    for bad in (0, -1):
        with pytest.raises(ValueError, match="--limit must be >= 1"):
            image_files(tmp_path, bad)


def test_output_stems_are_unique():
    files = [Path(n) for n in ("x.jpg", "x.png", "X.tif", "y.png", "summary.png", "x_jpg.png")]
    assert output_stems(files, ("summary",)) == [
        "x_jpg", "x_png", "X_tif", "y", "summary_png", "x_jpg_png"
    ]
    clash = [Path("x.jpg"), Path("x.png"), Path("x_jpg.gif"), Path("x_jpg.bmp")]
    stems = output_stems(clash)
    assert len({s.lower() for s in stems}) == 4
    assert output_stems([Path("a.jpg"), Path("b.png")]) == ["a", "b"]  # no clash: plain stems


# ---------------------------------------------------------------------- instances / text CLI
def test_instances_folder_goes_on_past_bad_images(mixed_folder, tmp_path, capsys):
    src, boxes = mixed_folder
    out = tmp_path / "out"
    base = ["--model", "composer_tiny", "--detector", str(boxes), "--out", str(out)]
    assert main(["instances", str(src), *base]) == 1
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    failed = [line for line in cap.err.splitlines() if ": failed: " in line]
    assert [line.split(":")[0] for line in failed] == ["2.jpg", "3.png"]
    assert "2 failed" in cap.out.splitlines()[-1]
    summary = _strict_json(out / "summary.json")
    assert [f["file_name"] for f in summary["failures"]] == ["2.jpg", "3.png"]
    assert [(i["file_name"], i["output"]) for i in summary["images"]] == [
        ("1.jpg", "1_jpg"), ("1.png", "1_png")
    ]
    for stem in ("1_jpg", "1_png"):  # one stem, two images: both outputs kept
        assert len(_strict_json(out / f"{stem}.json")["detections"]) == 1
        assert (out / f"{stem}_overlay.png").is_file()
    # all good: exit 0; a single bad image: one-line error, exit 2; single images keep stems
    assert main(["instances", str(src), "--limit", "2", *base]) == 0
    assert main(["instances", str(src / "2.jpg"), *base]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["instances", str(src / "1.png"), *base]) == 0
    assert (out / "1.json").is_file() and (out / "1_overlay.png").is_file()


@pytest.mark.parametrize("command", ["instances", "text", "everything"])
def test_unusable_input_is_exit_2(command, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "x.jpg").mkdir(parents=True)
    prompt = ["person"] if command == "text" else []
    base = ["--model", "composer_tiny", "--out", str(tmp_path / "out")]
    assert main([command, str(empty), *prompt, *base]) == 2
    assert "no images" in capsys.readouterr().err
    Image.fromarray(toy_scene()).save(empty / "a.png")
    for limit in ("0", "-1"):
        assert main([command, str(empty), *prompt, *base, "--limit", limit]) == 2
        err = capsys.readouterr().err
        assert "--limit must be >= 1" in err and len(err.strip().splitlines()) == 1


def test_text_folder_goes_on_past_bad_images(mixed_folder, tmp_path, capsys):
    src, boxes = mixed_folder
    out = tmp_path / "out"
    args = ["text", str(src), "person", "--model", "composer_tiny", "--detector", str(boxes)]
    assert main([*args, "--out", str(out)]) == 1
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err and cap.err.count(": failed: ") == 2
    summary = _strict_json(out / "summary.json")
    assert summary["command"] == "text" and len(summary["failures"]) == 2
    assert (out / "1_jpg.json").is_file() and (out / "1_png.json").is_file()
    assert main([*args, "--out", str(out), "--limit", "1"]) == 0


def test_nan_scores_are_written_as_null(tmp_path):
    image = toy_scene()
    masks = np.zeros((2, 72, 96), bool)
    masks[0, 10:40, 8:44] = masks[1, 48:66, 20:50] = True
    dets = Detections(
        boxes=np.array([[8, 10, 44, 40], [20, 48, 50, 66]], np.float32),
        scores=np.array([np.nan, 0.5], np.float32),
        labels=np.array([1, 1]),
        masks=Masks.from_dense(masks),
        extras={"predicted_iou": np.array([np.inf, 0.7], np.float32)},
        meta={"class_names": {1: "person"}, "threshold": float("nan")},
    )
    written = write_result(dets, image, tmp_path, "toy")
    record = _strict_json(written["json"])
    assert [d["score"] for d in record["detections"]] == [None, 0.5]
    assert record["detections"][0]["predicted_iou"] is None


# ---------------------------------------------------------------------- everything
class NanToy(ToySegmenter):
    """Predicted IoUs all NaN."""

    def decode(self, embedding, prompts, multimask=True):
        out = super().decode(embedding, prompts, multimask)
        return MaskLogits(out.logits, torch.full_like(out.iou_pred, float("nan")))


def test_annotate_folder_writes_no_nan(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(toy_scene()).save(src / "a.png")
    cfg = AmgConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.3)
    out = tmp_path / "ann.json"
    result = annotate_folder(src, NanToy(), out, config=cfg)
    assert result["annotations"]
    assert all(a["predicted_iou"] is None for a in _strict_json(out)["annotations"])
    for line in out.with_name(out.name + ".records.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in the record log"))


class OtherToy(ToySegmenter):
    model_id = "toy-colour-v2"


def test_annotate_folder_refuses_to_resume_other_settings(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(toy_scene()).save(src / "a.png")
    (src / ".hidden.png").write_bytes(b"not an image")  # skipped, not a failure
    out = tmp_path / "out" / "ann.json"
    first = annotate_folder(src, ToySegmenter(), out, config=TOY)
    assert [im["file_name"] for im in first["images"]] == ["a.png"] and not first["failures"]
    with pytest.raises(ValueError, match=r"model_id 'toy-colour-v1' \(now 'toy-colour-v2'\).*--out"):
        annotate_folder(src, OtherToy(), out, config=TOY)
    other_cfg = AmgConfig(points_per_side=4, pred_iou_thresh=0.6, stability_score_thresh=0.3)
    with pytest.raises(ValueError, match=r"pred_iou_thresh 0.5 \(now 0.6\).*--overwrite"):
        annotate_folder(src, ToySegmenter(), out, config=other_cfg)
    # same settings resume; resume=False recomputes under the new settings
    assert annotate_folder(src, ToySegmenter(), out, config=TOY) == json.loads(out.read_text())
    again = annotate_folder(src, OtherToy(), out, config=TOY, resume=False)
    assert again["info"]["model_id"] == "toy-colour-v2"
    assert annotate_folder(src, OtherToy(), out, config=TOY)["images"]  # now resumable
    # a log from before settings were recorded is refused too
    log = out.with_name(out.name + ".records.jsonl")
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[1:]))
    with pytest.raises(ValueError, match="without recorded settings"):
        annotate_folder(src, OtherToy(), out, config=TOY)


def test_annotate_folder_resumes_whatever_the_predict_time_settings(tmp_path):
    """Automatic masks decode their grid raw: the segmenter's mask refinement, mask ranking and
    flip TTA change none of them, so they are no settings of the run (a change was refused),
    and a log of an older version, which recorded them, resumes under any of them."""
    from composer.refine import ContrastRank, GrabCutRefine

    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(toy_scene()).save(src / "a.png")
    Image.fromarray(np.roll(toy_scene(), 5, axis=1)).save(src / "b.png")
    out = tmp_path / "ann.json"
    log = out.with_name(out.name + ".records.jsonl")
    first = annotate_folder(src, ToySegmenter(), out, config=TOY)
    seg = ToySegmenter()
    seg.flip_tta, seg.mask_refine, seg.mask_rank = True, GrabCutRefine(), ContrastRank(1.0)
    # the masks are the same: a run with these settings resumes the other's
    assert annotate_folder(src, seg, tmp_path / "other.json", config=TOY)["annotations"] == \
        first["annotations"]
    lines = log.read_text().splitlines()
    assert annotate_folder(src, seg, out, config=TOY)["annotations"] == first["annotations"]
    assert log.read_text().splitlines() == lines  # nothing recomputed
    assert "segmenter" not in json.loads(lines[0])["settings"]
    # as versions before 2026-11-25 wrote it, with b.png not done yet
    head = json.loads(lines[0])
    head["settings"]["segmenter"] = {"mask_refine": None, "mask_rank": None, "flip_tta": False}
    log.write_text("\n".join([json.dumps(head), lines[1]]) + "\n")
    assert annotate_folder(src, seg, out, config=TOY)["annotations"] == first["annotations"]
    assert [json.loads(x)["file_name"] for x in log.read_text().splitlines()[1:]] == \
        ["a.png", "b.png"]
    with pytest.raises(ValueError, match="model_id"):  # a real change is still refused
        annotate_folder(src, OtherToy(), out, config=TOY)


def test_annotate_folder_limit_and_empty_folder(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    with pytest.raises(ValueError, match="no images"):
        annotate_folder(tmp_path, ToySegmenter(), tmp_path / "o.json", config=TOY)
    Image.fromarray(toy_scene()).save(tmp_path / "a.png")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="limit must be >= 1"):
            annotate_folder(tmp_path, ToySegmenter(), tmp_path / "o.json", config=TOY, limit=bad)


def test_everything_folder_failures_exit_1_and_resume_checks(mixed_folder, tmp_path, capsys,
                                                           caplog):
    src, _ = mixed_folder
    out = tmp_path / "out"
    args = ["everything", str(src), "--model", "composer_tiny", "--points-per-side", "4",
            "--out", str(out)]
    with caplog.at_level(logging.INFO, logger="tasks.everything"):
        assert main(args) == 1
    assert "2 failed" in capsys.readouterr().out
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(": ")[1].split()[0] for r in warnings] == ["2.jpg", "3.png"]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in warnings)
    assert any(r.levelno == logging.INFO and "Traceback" in r.getMessage() for r in caplog.records)
    coco = _strict_json(out / "annotations.json")
    assert [i["file_name"] for i in coco["images"]] == ["1.jpg", "1.png"]
    # other settings on the same --out: refused (exit 2) until --overwrite
    assert main([*args, "--pred-iou-thresh", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "pred_iou_thresh" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--pred-iou-thresh", "0.3", "--overwrite"]) == 1
    assert _strict_json(out / "annotations.json")["info"]["config"]["pred_iou_thresh"] == 0.3
    assert main([*args, "--limit", "1", "--pred-iou-thresh", "0.3"]) == 0  # all good: exit 0
