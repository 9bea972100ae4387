"""What the folder commands say when resumed or stopped: each run over a folder of images
(`instances`, `text`, `everything`, `eval`) stopped by Ctrl-C or SIGTERM prints how many images
it finished and where they are listed, ends with a line on stderr that counts them (those of
earlier runs too) and says whether a rerun resumes, and exits 130 / 143; a resumed one (the
record-log commands) prints how many images were done earlier. Interrupted on the second image by a
patched per-image step (no timing); the toy segmenter, or classic for box prompts."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _toy_segmenter import ToySegmenter, toy_scene
from PIL import Image
from pycocotools import mask as mask_utils

import composer.commands.instances as instances
import composer.commands.text as text
from composer.cli import main

NAMES = ("1.png", "2.png", "3.png")
AMG = ["--points-per-side", "4", "--pred-iou-thresh", "0.5", "--stability-thresh", "0.3"]
#: what each command lists its images in
LISTS = {"instances": "summary.json", "text": "summary.json", "everything": "annotations.json",
         "eval": "report.json"}


@pytest.fixture()
def data(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three toy scenes, a COCO results json with a person box in each (the detector) and a
    COCO dataset of them (eval)."""
    src = tmp_path / "images"
    src.mkdir()
    boxes, images, anns = [], [], []
    for i, name in enumerate(NAMES, start=1):
        scene = np.roll(toy_scene(), 4 * i, axis=1)
        Image.fromarray(scene).save(src / name)
        h, w = scene.shape[:2]
        boxes.append({"image_id": i, "category_id": 1, "bbox": [10, 8, 40, 30], "score": 0.9})
        images.append({"id": i, "file_name": name, "height": h, "width": w})
        m = np.zeros((h, w), np.uint8, order="F")
        m[8:38, 10:50] = 1
        rle = mask_utils.encode(m)
        rle["counts"] = rle["counts"].decode()
        anns.append({"id": i, "image_id": i, "category_id": 1, "segmentation": rle,
                     "area": float(m.sum()), "bbox": [10.0, 8.0, 40.0, 30.0], "iscrowd": 0})
    detector = tmp_path / "boxes.json"
    detector.write_text(json.dumps(boxes))
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "person"}]}))
    return src, detector, coco


def _argv(command: str, data: tuple[Path, Path, Path], out: Path) -> list[str]:
    src, detector, coco = data
    if command == "eval":
        return ["eval", "proposals", "--coco", str(coco), "--images", str(src), "--out", str(out),
                "--points-per-side", "4"]
    if command == "everything":
        return ["everything", str(src), "--out", str(out), *AMG]
    prompt = ["person"] if command == "text" else []
    return [command, str(src), *prompt, "--model", "classic", "--detector", str(detector),
            "--out", str(out)]


class Stop:
    """Stops the run on image ``at`` (a file name), as Ctrl-C or SIGTERM would."""

    def __init__(self) -> None:
        self.at: str | None = None
        self.how = "ctrl-c"

    def __call__(self, name: str) -> None:
        if name != self.at:
            return
        if self.how == "sigterm":  # the CLI's own handler turns it into KeyboardInterrupt
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop the run")
        raise KeyboardInterrupt


@pytest.fixture()
def stop(monkeypatch: pytest.MonkeyPatch) -> Stop:
    """Each command's per-image step, patched to call the Stop first."""
    import tasks.everything as everything
    from tasks.proposals import ProposalTask

    monkeypatch.setattr("composer.models.text.load_text_encoder", lambda *a, **k: None)
    monkeypatch.setattr("composer.commands.everything.load_model", lambda args: ToySegmenter())
    monkeypatch.setattr("composer.commands.eval.load_model", lambda args: ToySegmenter())
    hook = Stop()

    def stopping(build: Any) -> Any:
        def wrapped(args: Any) -> Any:
            one, header = build(args)

            def step(path: Path, stem: str) -> dict[str, Any]:
                hook(path.name)
                return one(path, stem)

            return step, header

        return wrapped

    monkeypatch.setattr(instances, "build_processor", stopping(instances.build_processor))
    monkeypatch.setattr(text, "build_processor", stopping(text.build_processor))
    real_one = everything._annotate_one

    def annotate_one(state: Any, item: tuple[int, str]) -> dict[str, Any]:
        hook(Path(item[1]).name)
        return real_one(state, item)

    monkeypatch.setattr(everything, "_annotate_one", annotate_one)
    real_call = ProposalTask.__call__

    def call(self: Any, context: Any) -> Any:
        hook(NAMES[int(context.image_id) - 1])
        return real_call(self, context)

    monkeypatch.setattr(ProposalTask, "__call__", call)
    return hook


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """The command as its own process runs it (main() without argv: SIGTERM handled), from
    a fresh process's default stop signals (an earlier test of this worker process may have
    left a handler, e.g. Ray's, which the CLI keeps as a caller's own)."""
    monkeypatch.setattr(sys, "argv", ["sam-composer", *argv])
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return main()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
@pytest.mark.parametrize("command", ["instances", "text", "everything", "eval"])
def test_interrupted_and_resumed_runs_say_how_many_images_and_where(
    command, how, data, stop, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    listed = out / LISTS[command]
    stop.at, stop.how = "2.png", how
    status = _run(_argv(command, data, out), monkeypatch)
    assert status == (130 if how == "ctrl-c" else 128 + signal.SIGTERM)
    cap = capsys.readouterr()
    assert cap.out.splitlines()[-1] == f"1 of 3 images done, 0 failed (interrupted) -> {listed}"
    assert "Traceback" not in cap.err
    # the last line on stderr: the count, and what a rerun does
    hint = ("a rerun starts afresh (this run does not resume)" if command == "eval"
            else "run the same command to resume")
    assert cap.err.splitlines()[-1] == f"interrupted: 1 of 3 images done, 0 failed; {hint}"
    doc = json.loads(listed.read_text())
    assert (doc.get("interrupted") or doc.get("info", doc.get("meta", {})).get("interrupted"))
    if command == "eval":
        return  # an evaluation is not resumed: a rerun starts afresh
    stop.at = "3.png"  # resumed, and stopped again: the images of the earlier run are named
    assert _run(_argv(command, data, out), monkeypatch) == status
    cap = capsys.readouterr()
    log = listed.with_name(listed.name + ".records.jsonl")
    assert f"resuming {log}: 1 of 3 images done earlier, 2 to go" in cap.out.splitlines()
    assert cap.err.splitlines()[-1] == (
        "interrupted: 2 of 3 images done (1 earlier), 0 failed; run the same command to resume")
    stop.at = None
    assert _run(_argv(command, data, out), monkeypatch) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"resuming {log}: 2 of 3 images done earlier, 1 to go" in lines


@pytest.mark.parametrize("command", ["instances", "text", "everything"])
def test_ctrl_c_while_an_image_is_logged_keeps_it_listed_and_counted(
    command, data, stop, tmp_path, capsys, monkeypatch
):
    """Ctrl-C that lands while an image's record goes to disk (its fsync takes milliseconds):
    the log held the image, but the stopped run left it out of what it listed and counted
    ("1 of 3 images done" with two in the log; the test of a real Ctrl-C, which waits for the
    log's line, failed so now and then). What the log holds is listed."""
    import os

    out = tmp_path / "out"
    listed = out / LISTS[command]
    log = listed.with_name(listed.name + ".records.jsonl")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if log.is_file() and os.path.samestat(os.fstat(fd), log.stat()):
            last = json.loads(log.read_text().splitlines()[-1])
            if last.get("file_name") == "2.png":  # its line is in the file: then the Ctrl-C
                raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", fsync)
    assert _run(_argv(command, data, out), monkeypatch) == 130
    cap = capsys.readouterr()
    assert [json.loads(x)["file_name"] for x in log.read_text().splitlines()[1:]] == \
        ["1.png", "2.png"]
    assert [im["file_name"] for im in json.loads(listed.read_text())["images"]] == \
        ["1.png", "2.png"]
    assert cap.out.splitlines()[-1] == f"2 of 3 images done, 0 failed (interrupted) -> {listed}"
    assert cap.err.splitlines()[-1] == (
        "interrupted: 2 of 3 images done, 0 failed; run the same command to resume")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _run(_argv(command, data, out), monkeypatch) == 0
    assert f"resuming {log}: 2 of 3 images done earlier, 1 to go" in \
        capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_eval_stopped_after_its_report_was_written_says_the_report_is_whole(
    how, data, stop, tmp_path, capsys, monkeypatch
):
    """A stop that landed after report.json was written (while the table printed) ended with
    a bare "interrupted" (exit 143 for SIGTERM): the user could not tell whether the report
    was written, nor of how many images; now the same two lines as a stop during the images,
    the last one saying that the report is whole."""
    import composer.commands.eval as eval_command

    out = tmp_path / "out"
    real_finish = eval_command._finish

    def finish(*args: Any, **kwargs: Any) -> int:
        stop.at, stop.how = "report", how
        stop("report")  # report.json is written: the table was about to print
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(eval_command, "_finish", finish)
    status = _run(_argv("eval", data, out), monkeypatch)
    assert status == (130 if how == "ctrl-c" else 128 + signal.SIGTERM)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    assert cap.out.splitlines()[-1] == f"3 of 3 images done, 0 failed -> {out / 'report.json'}"
    assert cap.err.splitlines()[-1] == ("interrupted: 3 of 3 images done, 0 failed; the report "
                                        "was written in full before the stop")
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["n_images"] == 3 and meta["interrupted"] is False


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_eval_stopped_while_computing_metrics_keeps_the_images_work(
    how, data, stop, tmp_path, capsys, monkeypatch
):
    """A stop while COCOeval ran (minutes on a large json), after every image was done, wrote
    nothing (no report.json) and said a bare "interrupted": all the images' work was lost.
    Now the report is written without the metrics that were not computed (a failure with the
    evaluator's stage, the run marked interrupted), beside the proposals already written."""
    from composer.evaluation.coco_ap import CocoResults

    out = tmp_path / "out"
    real_cocoeval = CocoResults.cocoeval

    def cocoeval(self: Any, *args: Any, **kwargs: Any) -> Any:
        stop.at, stop.how = "metrics", how
        stop("metrics")  # results.json is written: COCOeval was about to run
        return real_cocoeval(self, *args, **kwargs)

    monkeypatch.setattr(CocoResults, "cocoeval", cocoeval)
    status = _run(_argv("eval", data, out), monkeypatch)
    assert status == (130 if how == "ctrl-c" else 128 + signal.SIGTERM)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    report = out / "report.json"
    assert cap.out.splitlines()[-1] == f"3 of 3 images done, 0 failed (interrupted) -> {report}"
    err = cap.err.splitlines()
    assert err[-2] == ("sam-composer eval: evaluate:ProposalEvaluator: interrupted before its "
                       "metrics were computed")
    assert err[-1] == ("interrupted: 3 of 3 images done, 0 failed; a rerun starts afresh "
                       "(this run does not resume)")
    doc = json.loads(report.read_text())
    assert doc["metrics"] == {}
    meta = doc["meta"]
    assert meta["n_images"] == 3 and meta["interrupted"] is True
    assert [f["stage"] for f in meta["failures"]] == ["evaluate:ProposalEvaluator"]
    assert sorted(meta["files"]) == ["report.json", "results.json"]
    assert {e["image_id"] for e in json.loads((out / "results.json").read_text())} == {1, 2, 3}
