"""Third audit of the ``sam-composer`` command line: options that were accepted and then
ignored, option combinations that silently conflicted, outputs written over inputs, and
results lost on Ctrl-C. Each is now a one-line error (exit status 2) or kept."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from composer.cli import main


def _image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    img = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    img[10:30, 15:45] = (200, 40, 40)  # an object
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def _coco(root: Path) -> tuple[Path, Path]:
    """A one-image COCO dataset (40 x 60, one rectangle) made here: no shared data needed."""
    images = root / "images"
    _image(images / "a.png")
    m = np.zeros((40, 60), np.uint8, order="F")
    m[10:30, 15:45] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle,
                         "area": float(m.sum()), "bbox": [15.0, 10.0, 30.0, 20.0],
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann = root / "instances.json"
    ann.write_text(json.dumps(doc))
    return ann, images


def _boxes(root: Path) -> Path:
    """COCO results with one box for the image of stem "a": a detector that loads nothing."""
    path = root / "boxes.json"
    path.write_text(json.dumps([{"image_id": "a", "category_id": 1, "bbox": [15, 10, 30, 20],
                                 "score": 0.9}]))
    return path


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------- instances / text
def test_folder_mode_refuses_to_write_into_the_input_folder(tmp_path, capsys):
    """instances/text wrote <stem>_overlay.png beside the inputs: a rerun segmented its own
    overlays (a_overlay.png, a_overlay_overlay.png ...), and an input image named
    a_overlay.png was overwritten by a.png's overlay."""
    src = tmp_path / "photos"
    _image(src / "a.png")
    _image(src / "a_overlay.png", seed=1)
    before = (src / "a_overlay.png").read_bytes()
    argv = ["instances", str(src), "--model", "classic", "--detector", str(_boxes(tmp_path)),
            "--out", str(src)]
    assert main(argv) == 2
    assert "is the input folder" in _err(capsys)
    assert (src / "a_overlay.png").read_bytes() == before
    assert sorted(p.name for p in src.iterdir()) == ["a.png", "a_overlay.png"]
    # the same folder by another spelling is the same folder
    assert main([*argv[:-1], str(src / ".." / "photos")]) == 2
    assert "is the input folder" in _err(capsys)


def test_everything_refuses_to_write_into_the_input_folder(tmp_path, capsys):
    """everything DIR --out DIR was accepted (instances and text refuse it) and replaced a
    dataset's own annotations.json kept beside its images with the masks' json."""
    src = tmp_path / "photos"
    _image(src / "a.png")
    own = src / "annotations.json"
    own.write_text('{"images": [], "annotations": [], "categories": []}')
    before = sorted(p.name for p in src.iterdir())
    argv = ["everything", str(src), "--model", "classic", "--points-per-side", "2",
            "--out", str(src / ".." / "photos")]
    assert main(argv) == 2
    err = _err(capsys)
    assert "is the input folder" in err and "annotations.json" in err
    assert own.read_text() == '{"images": [], "annotations": [], "categories": []}'
    assert sorted(p.name for p in src.iterdir()) == before
    # another folder is fine (and a single image may still write beside itself)
    assert main([*argv[:-1], str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "annotations.json").is_file()


def test_ctrl_c_in_folder_mode_keeps_the_summary_of_finished_images(tmp_path, capsys,
                                                                   monkeypatch):
    """Ctrl-C after some images: their outputs were on disk but summary.json, the list of
    them, was never written."""
    import composer.commands.instances as instances

    src = tmp_path / "photos"
    for i, stem in enumerate("abc"):
        _image(src / f"{stem}.png", seed=i)
    out = tmp_path / "out"

    def build(args):
        def one(path, stem):
            if path.name == "b.png":
                raise KeyboardInterrupt
            return {"count": 1, "json": f"{stem}.json", "overlay": f"{stem}_overlay.png"}

        return one, ["header"]

    monkeypatch.setattr(instances, "build_processor", build)
    assert main(["instances", str(src), "--model", "classic", "--out", str(out)]) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert [im["file_name"] for im in summary["images"]] == ["a.png"]
    assert summary["failures"] == [] and summary["interrupted"] is True
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--clip-weights", "x.pt"], ["--clip-arch", "RN50"],
                                  ["--download"]])
def test_text_detector_strategy_refuses_clip_flags(tmp_path, capsys, flag):
    """The detector strategy (the default) loads no CLIP model: --clip-weights, --clip-arch and
    --download were silently ignored (the clip strategy already refused detector flags)."""
    img = _image(tmp_path / "a.png")
    argv = ["text", str(img), "thing", "--model", "classic", "--detector",
            str(_boxes(tmp_path)), "--out", str(tmp_path / "o"), *flag]
    assert main(argv) == 2
    assert f"{flag[0]} needs --strategy clip" in _err(capsys)


# ---------------------------------------------------------------------- eval
def test_eval_points_zoom_expansion_needs_zoom_in(tmp_path, capsys):
    """--zoom-expansion without --zoom-in was ignored (NaN included); with it, inf was taken."""
    ann, images = _coco(tmp_path)
    base = ["eval", "points", "--coco", str(ann), "--images", str(images), "--model", "classic",
            "--clicks", "1", "--out", str(tmp_path / "o")]
    assert main([*base, "--zoom-expansion", "2"]) == 2
    assert "--zoom-expansion needs --zoom-in" in _err(capsys)
    assert main([*base, "--zoom-in", "--zoom-expansion", "inf"]) == 2
    assert "--zoom-expansion must be a finite number >= 1, got inf" in _err(capsys)
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_eval_refuses_a_dataset_and_a_coco_json_together(tmp_path, capsys):
    """--dataset berkeley --coco x.json evaluated the json, silently dropping --dataset."""
    ann, images = _coco(tmp_path)
    argv = ["eval", "points", "--dataset", "berkeley", "--coco", str(ann), "--images",
            str(images), "--model", "classic", "--clicks", "1", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--dataset berkeley and --coco" in _err(capsys)


def test_eval_points_on_a_coco_json_still_runs(tmp_path, capsys):
    """The defaults (dataset, zoom expansion) still resolve when no flag names them."""
    ann, images = _coco(tmp_path)
    argv = ["eval", "points", "--coco", str(ann), "--images", str(images), "--model", "classic",
            "--clicks", "1", "--zoom-in", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    assert "expansion=1.4" in capsys.readouterr().out
    assert (tmp_path / "o" / "report.json").is_file()


def test_eval_instances_detector_needs_boxes_detector(tmp_path, capsys):
    """--boxes gt --detector ssd evaluated ground-truth boxes, ignoring --detector."""
    ann, images = _coco(tmp_path)
    argv = ["eval", "instances", "--coco", str(ann), "--images", str(images), "--model",
            "classic", "--boxes", "gt", "--detector", "ssd", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--detector needs --boxes detector" in _err(capsys)


def test_eval_instances_boxes_file_is_named_by_the_ground_truths_categories(tmp_path, capsys,
                                                                             caplog):
    """--boxes FILE with --coco: the boxes were named by COCO's 80 classes, so a user's own
    category (200) was warned about as "not among the 80 class names (are they 0-based ...?)"
    while a box of a category the json lacks (7, a COCO class) was scored in no AP unsaid."""
    ann, images = _coco(tmp_path)
    doc = json.loads(ann.read_text())
    doc["categories"].append({"id": 200, "name": "gadget"})
    ann.write_text(json.dumps(doc))
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps([
        {"image_id": 1, "category_id": 1, "bbox": [15, 10, 30, 20], "score": 0.9},
        {"image_id": 1, "category_id": 200, "bbox": [0, 0, 10, 10], "score": 0.5},
        {"image_id": 1, "category_id": 7, "bbox": [40, 20, 10, 10], "score": 0.4}]))
    out = tmp_path / "o"
    argv = ["eval", "instances", "--coco", str(ann), "--images", str(images), "--model",
            "classic", "--boxes", str(boxes), "--out", str(out)]
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    _err(capsys)
    warned = [r.getMessage() for r in caplog.records if "category ids" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "category ids [7] are not among the 2 categories given (1, 200)" in warned[0]
    assert "count in no category's AP" in warned[0]
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["category_id"] for r in results) == [1, 7, 200]


def test_eval_instances_refuses_boxes_of_no_image_of_the_json(tmp_path, capsys, monkeypatch):
    """--boxes RESULTS of another json (other image ids, or 0-based ones) gave every image no
    boxes: AP 0 and exit status 0 without a word. Refused before the model loads."""
    import composer.commands.eval as eval_command

    ann, images = _coco(tmp_path)
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps([
        {"image_id": i, "category_id": 1, "bbox": [15, 10, 30, 20], "score": 0.9}
        for i in (0, 2)]))

    def no_model(args):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(eval_command, "load_model", no_model)
    out = tmp_path / "o"
    argv = ["eval", "instances", "--coco", str(ann), "--images", str(images), "--model",
            "classic", "--boxes", str(boxes), "--out", str(out)]
    assert main(argv) == 2
    err = _err(capsys).strip()
    assert err == (f"sam-composer eval: error: --boxes {boxes}: none of its image ids (e.g. 0, "
                   "2) is an image id of instances (e.g. 1); are the boxes another dataset's?")
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("flag", [["--points-per-side", "8"], ["--edge-refine", "off"],
                                  ["--model", "classic"], ["--device", "cpu"]])
def test_eval_edges_classical_method_refuses_segmenter_flags(tmp_path, capsys, flag):
    """--method sobel runs no segmenter: its grid, refinement and model flags were ignored."""
    argv = ["eval", "edges", "--method", "sobel", "--limit", "1", "--thresholds", "3",
            "--out", str(tmp_path / "o"), *flag]
    assert main(argv) == 2
    assert f"{flag[0]} needs --method segmenter" in _err(capsys)


# ---------------------------------------------------------------------- convert
def _detections_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    img = _image(tmp_path / "a.png")
    assert main(["segment", str(img), "--model", "classic", "--box", "15,10,45,30",
                 "--out", str(tmp_path / "seg")]) == 0
    capsys.readouterr()
    return tmp_path / "seg" / "a.json"


def test_convert_refuses_to_overwrite_its_input(tmp_path, capsys):
    """--out naming the input json replaced the detections by COCO polygons (data loss)."""
    src = _detections_json(tmp_path, capsys)
    before = src.read_bytes()
    for out in (src, src.parent / "x" / ".." / "a.json"):
        assert main(["convert", str(src), "--to", "coco-polygons", "--out", str(out)]) == 2
        assert "would overwrite the input" in _err(capsys)
    # a folder of detection jsons: one of them as --out
    assert main(["convert", str(src.parent), "--to", "coco-polygons", "--out", str(src)]) == 2
    assert "would overwrite the input" in _err(capsys)
    assert src.read_bytes() == before
    # a new file beside the inputs is fine
    assert main(["convert", str(src.parent), "--to", "coco-polygons",
                 "--out", str(src.parent / "polygons.json")]) == 0


@pytest.mark.parametrize("to, flag, message", [
    ("yolo", ["--holes", "fill"], "--holes applies to coco-polygons only"),
    ("png-masks", ["--holes", "rle"], "--holes applies to coco-polygons only"),
    ("png-masks", ["--tolerance", "2"], "--tolerance applies to coco-polygons and yolo"),
])
def test_convert_refuses_flags_of_other_formats(tmp_path, capsys, to, flag, message):
    src = _detections_json(tmp_path, capsys)
    assert main(["convert", str(src), "--to", to, "--out", str(tmp_path / "c"), *flag]) == 2
    assert message in _err(capsys)
    assert not (tmp_path / "c").exists()


def test_convert_to_a_folder_format_over_a_file_names_the_flag(tmp_path, capsys):
    """It said "[Errno 20] Not a directory: '.../img.png/labels'"."""
    src = _detections_json(tmp_path, capsys)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["convert", str(src), "--to", "yolo", "--out", str(afile)]) == 2
    assert f"--out {afile} exists and is not a folder" in _err(capsys)


# ---------------------------------------------------------------------- train
def test_train_refuses_conflicting_start_and_validation_flags(tmp_path, capsys):
    """--random-init was ignored beside --checkpoint, and --val-fraction beside --val-data."""
    ann, images = _coco(tmp_path)
    base = ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--out", str(tmp_path / "o")]
    assert main([*base, "--random-init", "--checkpoint", str(tmp_path / "w.pt")]) == 2
    assert "--random-init and --checkpoint conflict" in _err(capsys)
    assert main([*base, "--random-init", "--val-data", str(ann), "--val-images", str(images),
                 "--val-fraction", "0.5"]) == 2
    assert "--val-fraction splits --data; with --val-data nothing is split" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_train_records_the_default_val_fraction_as_before(tmp_path, monkeypatch):
    """run.json of earlier runs holds val_fraction 0.1: a rerun without the flag must match
    it to resume."""
    import composer.commands.train as train

    seen = {}

    def stop(out, run_id):
        seen.update(run_id)
        raise ValueError("stop")

    monkeypatch.setattr(train, "_check_same_run", stop)
    ann, images = _coco(tmp_path)
    main(["train", "--data", str(ann), "--images", str(images), "--out", str(tmp_path / "o")])
    assert seen["val_fraction"] == 0.1


@pytest.mark.parametrize("flag", [["--tta", "flip"], ["--mask-refine", "32,5"],
                                  ["--mask-rank", "2"]])
@pytest.mark.parametrize("command", [["eval", "edges", "--limit", "1"],
                                     ["eval", "proposals", "--limit", "1"], ["everything", "x.png"]])
def test_automatic_mask_commands_do_not_take_predict_settings(tmp_path, capsys, flag, command):
    """Automatic masks are decoded without refinement, flip TTA or contrast ranking: the flags
    were accepted, changed nothing, and the report recorded them as applied."""
    with pytest.raises(SystemExit) as exc:
        main([*command, "--out", str(tmp_path / "o"), *flag])
    assert exc.value.code == 2
    assert f"unrecognized arguments: {' '.join(flag)}" in _err(capsys)


def test_an_edges_report_records_no_predict_settings(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["eval", "edges", "--limit", "1", "--thresholds", "3", "--workers", "1",
                 "--points-per-side", "4", "--out", str(out)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("segmenter:"))
    assert "GrabCut" not in line and "TTA" not in line and "ranked" not in line
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["mask_refine"] is None and meta["mask_rank"] is None and meta["flip_tta"] is None


def test_a_closed_output_pipe_ends_quietly():
    """`sam-composer ... | head` printed "error: [Errno 32] Broken pipe" and exited 2."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "composer", "weights", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err


def test_segment_checks_its_prompts_before_the_model_loads(tmp_path, capsys):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["segment", str(tmp_path / "a.png"), "--point=-5,-5", "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "points outside the 50x40 image" in captured.err and "segmenter:" not in captured.out


def test_eval_instances_score_threshold_is_checked_before_loading(tmp_path, capsys):
    """The detector's floor was fixed at 0.05: the recipes' 0.2 rows could not be reproduced
    from the command line."""
    base = ["eval", "instances", "--limit", "1", "--out", str(tmp_path / "o")]
    assert main([*base, "--boxes", "gt", "--score-threshold", "0.2"]) == 2
    assert "--score-threshold needs --boxes detector" in _err(capsys)
    for bad in ("1.5", "nan", "-0.1"):
        assert main([*base, "--score-threshold", bad]) == 2
        assert "--score-threshold must be in [0, 1]" in _err(capsys)


def test_instances_max_dets_is_checked_before_loading(tmp_path, capsys):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["instances", str(tmp_path / "a.png"), "--max-dets", "0", "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "--max-dets must be >= 1, got 0" in captured.err and "segmenter:" not in captured.out


def test_everything_no_masks_hint_names_the_filters_that_ran(tmp_path, capsys):
    """A 1 x 1 image with --sa1b keeps no mask: the hint named the IoU filter as ">=" (it is
    ">", as SAM's) and left out --sa1b's area filter, the one that dropped the mask."""
    from PIL import Image

    from composer.cli import main

    img = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(img)
    assert main(["everything", str(img), "--model", "classic", "--points-per-side", "2",
                 "--sa1b", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "no mask passed the quality filters (predicted IoU > " in err
    assert "area at most 0.95 of the image" in err


def test_eval_instances_warns_of_boxes_numbered_otherwise(tmp_path, capsys):
    """--boxes RESULTS whose ids are numbered from 0 against a json's 1, 2, ...: the results
    share an id with the json, so the run went on unsaid, each image scored with another
    image's boxes and the last with none. A warning names a few ids of each; results that
    cover every image evaluated (a larger json's, e.g. all of val2017) say nothing."""
    ann, images = _coco(tmp_path)
    doc = json.loads(ann.read_text())
    _image(images / "b.png")
    doc["images"].append({**doc["images"][0], "id": 2, "file_name": "b.png"})
    doc["annotations"].append({**doc["annotations"][0], "id": 2, "image_id": 2})
    ann.write_text(json.dumps(doc))
    boxes = tmp_path / "dets.json"

    def run(ids, *extra: str) -> str:
        boxes.write_text(json.dumps([
            {"image_id": i, "category_id": 1, "bbox": [15, 10, 30, 20], "score": 0.9}
            for i in ids]))
        argv = ["eval", "instances", "--coco", str(ann), "--images", str(images), "--model",
                "classic", "--boxes", str(boxes), "--out", str(tmp_path / "o"), *extra]
        assert main(argv) == 0
        return _err(capsys)

    err = run([0, 1])
    assert (f"sam-composer eval: warning: --boxes {boxes} has boxes for 1 image id(s) that are "
            "not images of instances (e.g. 0; their boxes are not used) while 1 image(s) to "
            "evaluate have none (e.g. 2): are its ids numbered otherwise (from 0)?") in err
    assert "warning" not in run([1, 2, 3])  # a larger json's results
    assert "warning" not in run([1])  # a detector that found nothing in image 2
    assert "warning" not in run([0, 1], "--limit", "1")  # image 2 is not evaluated
