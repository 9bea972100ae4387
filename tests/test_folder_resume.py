"""Resumable folder runs of `sam-composer instances` and `text`: each finished image is logged
(``summary.json.records.jsonl``, first line the run's settings), a rerun of the same settings
skips finished images whose outputs exist and retries failed ones, a log of other settings is
refused until --overwrite, and an interrupted run resumed gives the uninterrupted summary.

Tiny synthetic images, the classic segmenter and a COCO results json as the detector: no
weights, no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import composer.commands.instances as instances
import composer.commands.text as text
from composer.cli import main
from composer.commands.instances import process_images
from composer.models.text import SYNONYMS
from composer.runner.records import NOT_RECORDED, RecordLog, read_log, settings_diff

STEMS = ("1", "2", "3")


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = (rng.random((32, 32, 3)) * 60).astype(np.uint8)
    img[8 + seed : 22, 6 : 20 + seed] = (200, 40, 40)  # an object
    Image.fromarray(img).save(path)


@pytest.fixture()
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """1.png, 2.png, 3.png (32 x 32) and a COCO results json with a person box in each."""
    src = tmp_path / "images"
    src.mkdir()
    for seed, stem in enumerate(STEMS):
        _image(src / f"{stem}.png", seed)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(
        json.dumps(
            [
                {
                    "image_id": int(stem),
                    "category_id": 1,
                    "bbox": [5 + i, 7, 16, 15],
                    "score": 0.9 - i / 10,
                }
                for i, stem in enumerate(STEMS)
            ]
        )
    )
    return src, boxes


class Calls:
    """The images each run's per-image function was called on; ``interrupt``: file names on
    which it raises KeyboardInterrupt (Ctrl-C) instead."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.interrupt: set[str] = set()

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Counts the per-image calls of both commands (in this process: one worker)."""
    monkeypatch.setattr("composer.models.text.load_text_encoder", lambda *a, **k: None)
    record = Calls()

    def counting(build: Any) -> Any:
        def wrapped(args: Any) -> Any:
            one, header = build(args)

            def counted(path: Path, stem: str) -> dict[str, Any]:
                if path.name in record.interrupt:
                    raise KeyboardInterrupt
                record.seen.append(path.name)
                return one(path, stem)

            return counted, header

        return wrapped

    monkeypatch.setattr(instances, "build_processor", counting(instances.build_processor))
    monkeypatch.setattr(text, "build_processor", counting(text.build_processor))
    return record


def _argv(command: str, src: Path, boxes: Path, out: Path, *extra: str) -> list[str]:
    prompt = ["person"] if command == "text" else []
    return [
        command,
        str(src),
        *prompt,
        "--model",
        "classic",
        "--detector",
        str(boxes),
        "--out",
        str(out),
        *extra,
    ]


def _summary(out: Path) -> dict[str, Any]:
    """summary.json with ``out`` itself replaced, comparable across output folders."""
    return json.loads((out / "summary.json").read_text().replace(str(out), "OUT"))


def _log_lines(out: Path) -> list[dict[str, Any]]:
    """The record log's lines, ``out`` replaced as in :func:`_summary`."""
    log = (out / "summary.json.records.jsonl").read_text().replace(str(out), "OUT")
    return [json.loads(line) for line in log.splitlines()]


COMMANDS = pytest.mark.parametrize("command", ["instances", "text"])


@COMMANDS
def test_rerun_skips_finished_images(command, folder, tmp_path, calls, capsys):
    src, boxes = folder
    out = tmp_path / "out"
    assert main(_argv(command, src, boxes, out)) == 0
    assert calls.take() == ["1.png", "2.png", "3.png"]
    first = _summary(out)
    lines = _log_lines(out)
    settings = lines[0]["settings"]
    assert settings["command"] == command and settings["model_id"].startswith("classic")
    assert settings["detector"]["model_id"].startswith("coco-json:boxes.json#")
    assert [rec["file_name"] for rec in lines[1:]] == ["1.png", "2.png", "3.png"]
    # a record is the image's summary entry, with its file's time and size
    assert all(set(rec) >= {"mtime_ns", "bytes"} for rec in lines[1:])
    stamps = ("mtime_ns", "bytes")
    assert [{k: v for k, v in rec.items() if k not in stamps} for rec in lines[1:]] == first["images"]
    capsys.readouterr()
    # flags that do not change outputs are no settings: same run, nothing recomputed
    assert main(_argv(command, src, boxes, out, "--threads-per-worker", "1")) == 0
    assert calls.take() == []
    assert "3 of 3 images done earlier, 0 to go" in capsys.readouterr().out
    assert _summary(out) == first
    assert len(_log_lines(out)) == 4  # nothing appended


@COMMANDS
def test_other_settings_are_refused_until_overwrite(command, folder, tmp_path, calls, capsys):
    src, boxes = folder
    out = tmp_path / "out"
    assert main(_argv(command, src, boxes, out)) == 0
    calls.take()
    before = (out / "summary.json.records.jsonl").read_text()
    changes = [
        (["--score-threshold", "0.5"], "score_threshold 0.3 (now 0.5)"),
        (["--refine"], "refine False (now True)"),
        (["--zoom-small", "0.2"], "zoom_small 0.0 (now 0.2)"),  # classic: "auto" is off
        (["--mask-rank", "0.5"], "mask_rank None (now 'ContrastRank("),
    ]
    changes.append(
        (["--max-dets", "5"], "max_dets 100 (now 5)")
        if command == "instances"
        else (["--max-masks", "5"], "max_masks 100 (now 5)")
    )
    for flags, named in changes:
        assert main(_argv(command, src, boxes, out, *flags)) == 2, flags
        err = capsys.readouterr().err
        assert named in err and "--overwrite" in err, (flags, err)
        assert len(err.strip().splitlines()) == 1
    assert calls.take() == []
    assert (out / "summary.json.records.jsonl").read_text() == before  # log kept as it was
    # --overwrite recomputes every image under the new settings; they then resume
    assert main(_argv(command, src, boxes, out, "--refine", "--overwrite")) == 0
    assert calls.take() == ["1.png", "2.png", "3.png"]
    assert _log_lines(out)[0]["settings"]["config"]["refine"] is True
    assert len(_log_lines(out)) == 4  # the old log was started afresh
    assert main(_argv(command, src, boxes, out, "--refine")) == 0
    assert calls.take() == []


@COMMANDS
def test_a_zoom_spelled_otherwise_resumes(command, folder, tmp_path, calls, capsys):
    """--zoom-small is recorded as the fraction it resolves to: "auto", "off" and "0" are one
    setting for classic (no recommended zoom), and a log of an older version, which recorded
    the spelling "auto", resumes too."""
    src, boxes = folder
    out = tmp_path / "out"
    assert main(_argv(command, src, boxes, out)) == 0
    assert calls.take() == ["1.png", "2.png", "3.png"]
    assert _log_lines(out)[0]["settings"]["config"]["zoom_small"] == 0.0
    for spelled in ("off", "0", "auto"):
        assert main(_argv(command, src, boxes, out, "--zoom-small", spelled)) == 0, spelled
        assert calls.take() == []
    log = out / "summary.json.records.jsonl"
    lines = log.read_text().splitlines()
    old = json.loads(lines[0])
    old["settings"]["config"]["zoom_small"] = "auto"  # as versions before 2026-11-24 wrote it
    if command == "text":  # and SAM's proposal thresholds, unused by the detector strategy
        old["settings"]["config"].update(pred_iou_thresh=0.7, stability_score_thresh=0.8)
    log.write_text("\n".join([json.dumps(old), *lines[1:]]) + "\n")
    assert main(_argv(command, src, boxes, out, "--zoom-small", "off")) == 0
    assert calls.take() == []
    capsys.readouterr()
    assert main(_argv(command, src, boxes, out, "--zoom-small", "0.3")) == 2  # a real change
    assert "zoom_small 'auto' (now 0.3)" in capsys.readouterr().err


def test_text_prompt_and_segmenter_settings_are_settings(folder, tmp_path, calls, capsys):
    src, boxes = folder
    out = tmp_path / "out"
    argv = _argv("text", src, boxes, out)
    assert main(argv) == 0
    calls.take()
    other_prompt = [*argv[:2], "car", *argv[3:]]
    assert main(other_prompt) == 2
    assert "prompt 'person' (now 'car')" in capsys.readouterr().err
    assert main([*argv, "--tta", "flip"]) == 2
    assert "flip_tta" in capsys.readouterr().err
    assert calls.take() == []


class WordEncoder:
    """A sentence encoder of one-hot words: each text its own direction, ``same`` (text ->
    text) sharing another's."""

    model_id = "word-encoder"

    def __init__(self, same: dict[str, str]) -> None:
        self.same, self.index = same, {}

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 256), np.float32)
        for i, t in enumerate(texts):
            out[i, self.index.setdefault(self.same.get(t, t), len(self.index))] = 1.0
        return out


def test_text_matcher_is_a_setting_only_where_the_prompt_needs_it(
    folder, tmp_path, calls, capsys, monkeypatch
):
    """A prompt that names a class ("person", by its name or a synonym) matches it before a
    sentence encoder is asked: a run with the encoder (where it loads) and one without it
    (another machine, offline) are one run, and resume each other (refused: text_matcher).
    A prompt only the encoder matches is another run without it."""
    src, boxes = folder
    encoder = WordEncoder({"xyzzy": "person"})
    for prompt in ("person", "xyzzy"):
        out = tmp_path / prompt
        argv = [*_argv("text", src, boxes, out)[:2], prompt, *_argv("text", src, boxes, out)[3:]]
        monkeypatch.setattr("composer.models.text.load_text_encoder", lambda *a, **k: encoder)
        assert main(argv) == 0
        assert calls.take() == ["1.png", "2.png", "3.png"]
        assert _log_lines(out)[0]["settings"]["text_matcher"] == "word-encoder"
        assert all(im["count"] for im in _summary(out)["images"])  # both matched person
        monkeypatch.setattr("composer.models.text.load_text_encoder", lambda *a, **k: None)
        capsys.readouterr()
        if prompt == "person":
            assert main(argv) == 0
            assert "3 of 3 images done earlier, 0 to go" in capsys.readouterr().out
        else:  # without the encoder "xyzzy" matches nothing: a real change
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "text_matcher 'word-encoder' (now 'names and synonyms only')" in err
        assert calls.take() == []


def test_what_the_prompt_matched_is_a_setting(folder, tmp_path, calls, capsys, monkeypatch):
    """The text matcher is no setting where the prompt matches lexically, but what it matched
    is: a release whose synonym table sends the prompt to another class (here "xyzzy" from
    person to car) does not resume the earlier run's outputs of the other class."""
    src, boxes = folder
    out = tmp_path / "out"
    argv = [*_argv("text", src, boxes, out)[:2], "xyzzy", *_argv("text", src, boxes, out)[3:]]
    monkeypatch.setitem(SYNONYMS, "person", (*SYNONYMS["person"], "xyzzy"))
    assert main(argv) == 0
    assert calls.take() == ["1.png", "2.png", "3.png"]
    assert _log_lines(out)[0]["settings"]["prompt_match"] == {
        "matched_class": "person", "matched_id": 1, "match_method": "synonym"}
    assert main(argv) == 0  # the same match: resumed
    assert calls.take() == []
    monkeypatch.setitem(SYNONYMS, "person", tuple(SYNONYMS["person"][:-1]))
    monkeypatch.setitem(SYNONYMS, "car", (*SYNONYMS.get("car", ()), "xyzzy"))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "matched_class 'person' (now 'car')" in err and "text_matcher" not in err
    assert calls.take() == []


def test_a_log_without_the_recorded_match_resumes_only_a_lexical_match(
    folder, tmp_path, calls, capsys, monkeypatch
):
    """Logs of versions that did not record what the prompt matched: one of a prompt that
    names a class (matched lexically, as then) resumes; one of a prompt only the sentence
    encoder matched is refused, as its match cannot be checked."""
    src, boxes = folder
    encoder = WordEncoder({"xyzzy": "person"})
    monkeypatch.setattr("composer.models.text.load_text_encoder", lambda *a, **k: encoder)
    for prompt in ("person", "xyzzy"):
        out = tmp_path / prompt
        argv = [*_argv("text", src, boxes, out)[:2], prompt, *_argv("text", src, boxes, out)[3:]]
        assert main(argv) == 0
        assert calls.take() == ["1.png", "2.png", "3.png"]
        log = out / "summary.json.records.jsonl"
        lines = log.read_text().splitlines()
        old = json.loads(lines[0])
        del old["settings"]["prompt_match"]  # as versions before 2026-11-25 wrote it
        log.write_text("\n".join([json.dumps(old), *lines[1:]]) + "\n")
        capsys.readouterr()
        if prompt == "person":
            assert main(argv) == 0
            assert "3 of 3 images done earlier, 0 to go" in capsys.readouterr().out
            assert main(argv) == 0  # the log keeps its first line: resumed again
        else:
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "matched_class not recorded (now 'person')" in err
        assert calls.take() == []


@COMMANDS
def test_a_deleted_output_is_recomputed(command, folder, tmp_path, calls):
    src, boxes = folder
    out = tmp_path / "out"
    assert main(_argv(command, src, boxes, out)) == 0
    first = _summary(out)
    calls.take()
    (out / "2.json").unlink()
    (out / "3_overlay.png").unlink()
    assert main(_argv(command, src, boxes, out)) == 0
    assert calls.take() == ["2.png", "3.png"]
    assert (out / "2.json").is_file() and (out / "3_overlay.png").is_file()
    assert _summary(out) == first


@COMMANDS
def test_an_image_replaced_with_an_older_time_is_recomputed(command, folder, tmp_path, calls):
    """``cp -p`` / ``rsync -a`` / an unpacked archive give a replaced image an older time than
    its outputs: it was skipped, its outputs those of the old image. A log written before the
    stamps were kept still resumes by the outputs' age."""
    import os

    src, boxes = folder
    out = tmp_path / "out"
    assert main(_argv(command, src, boxes, out)) == 0
    calls.take()
    old = (src / "2.png").stat()
    Image.fromarray(np.full((40, 56, 3), 200, np.uint8)).save(src / "2.png")
    os.utime(src / "2.png", ns=(old.st_atime_ns, old.st_mtime_ns - 10**9))
    assert main(_argv(command, src, boxes, out)) == 0
    assert calls.take() == ["2.png"]
    assert json.loads((out / "2.json").read_text())["image_size"] == [40, 56]
    # the log of an earlier version: no stamps, outputs newer than the images
    log = out / "summary.json.records.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({k: v for k, v in rec.items() if k not in ("mtime_ns", "bytes")}) + "\n"
                           for rec in lines))
    assert main(_argv(command, src, boxes, out)) == 0
    assert calls.take() == []


@COMMANDS
def test_failed_images_are_retried(command, folder, tmp_path, calls, capsys):
    src, boxes = folder
    out = tmp_path / "out"
    good = (src / "3.png").read_bytes()
    (src / "3.png").write_bytes(b"not an image")
    assert main(_argv(command, src, boxes, out)) == 1
    assert [f["file_name"] for f in _summary(out)["failures"]] == ["3.png"]
    assert _log_lines(out)[-1]["file_name"] == "3.png" and "error" in _log_lines(out)[-1]
    calls.take()
    assert main(_argv(command, src, boxes, out)) == 1  # still broken: tried again, fails again
    assert calls.take() == ["3.png"]
    (src / "3.png").write_bytes(good)
    capsys.readouterr()
    assert main(_argv(command, src, boxes, out)) == 0
    assert calls.take() == ["3.png"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("3 of 3 images done, 0 failed")
    summary = _summary(out)
    assert [i["file_name"] for i in summary["images"]] == ["1.png", "2.png", "3.png"]
    assert summary["failures"] == []
    # the same as a run that never failed
    fresh = tmp_path / "fresh"
    assert main(_argv(command, src, boxes, fresh)) == 0
    assert _summary(fresh) == summary


@COMMANDS
def test_interrupted_run_resumes_to_the_uninterrupted_summary(
    command, folder, tmp_path, calls, capsys
):
    src, boxes = folder
    whole = tmp_path / "whole"
    assert main(_argv(command, src, boxes, whole)) == 0
    calls.take()
    out = tmp_path / "out"
    calls.interrupt = {"2.png"}  # Ctrl-C on the second image
    assert main(_argv(command, src, boxes, out)) == 130
    assert calls.take() == ["1.png"]
    cut = _summary(out)
    assert cut["interrupted"] is True and [i["file_name"] for i in cut["images"]] == ["1.png"]
    assert [rec["file_name"] for rec in _log_lines(out)[1:]] == ["1.png"]
    calls.interrupt = set()
    capsys.readouterr()
    assert main(_argv(command, src, boxes, out)) == 0
    assert calls.take() == ["2.png", "3.png"]
    assert "1 of 3 images done earlier, 2 to go" in capsys.readouterr().out
    assert _summary(out) == _summary(whole)
    for stem in STEMS:  # the per-image outputs too
        assert json.loads(
            (out / f"{stem}.json").read_text().replace(str(out), "OUT")
        ) == json.loads((whole / f"{stem}.json").read_text().replace(str(whole), "OUT"))


def test_a_torn_last_record_is_recomputed(folder, tmp_path, calls):
    """A crash in the middle of a record's write leaves half a line: that image is redone."""
    src, boxes = folder
    out = tmp_path / "out"
    assert main(_argv("instances", src, boxes, out)) == 0
    first = _summary(out)
    calls.take()
    log = out / "summary.json.records.jsonl"
    text_ = log.read_text()
    log.write_text(text_[: len(text_) - 20])  # 3.png's record cut short
    assert main(_argv("instances", src, boxes, out)) == 0
    assert calls.take() == ["3.png"]
    assert _summary(out) == first
    # its new record went on a line of its own (it was glued to the torn one, and the next
    # run dropped both and redid 3.png once more)
    assert main(_argv("instances", src, boxes, out)) == 0
    assert calls.take() == []


def test_stems_stay_stable_and_a_changed_stem_is_recomputed(tmp_path, calls):
    """5.jpg and 5.png share a stem: named 5_jpg and 5_png on every run. With --limit 1 only
    5.jpg is listed (output stem 5); the full run then names it 5_jpg and recomputes it."""
    src = tmp_path / "images"
    src.mkdir()
    _image(src / "5.png", 0)
    Image.open(src / "5.png").save(src / "5.jpg", quality=95)
    _image(src / "6.png", 1)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(
        json.dumps(
            [
                {"image_id": s, "category_id": 1, "bbox": [5, 7, 16, 15], "score": 0.9}
                for s in (5, 6)
            ]
        )
    )
    out = tmp_path / "out"
    assert main(_argv("instances", src, boxes, out, "--limit", "1")) == 0
    assert calls.take() == ["5.jpg"]
    assert [i["output"] for i in _summary(out)["images"]] == ["5"]
    assert main(_argv("instances", src, boxes, out)) == 0
    assert calls.take() == ["5.jpg", "5.png", "6.png"]
    assert [i["output"] for i in _summary(out)["images"]] == ["5_jpg", "5_png", "6"]
    # the outputs under the old stem are gone (convert would read them as a fourth image)
    assert not (out / "5.json").exists() and not (out / "5_overlay.png").exists()
    assert sorted(p.name for p in out.glob("*.json")) == ["5_jpg.json", "5_png.json", "6.json",
                                                           "summary.json"]
    assert main(_argv("instances", src, boxes, out)) == 0
    assert calls.take() == []
    assert [i["output"] for i in _summary(out)["images"]] == ["5_jpg", "5_png", "6"]


def test_workers_resume_and_log_in_the_parent(folder, tmp_path, monkeypatch):
    """--workers 2 after an interrupted one-process run: the workers get only the images left,
    the parent appends their records, and the summary is the uninterrupted one."""
    monkeypatch.setattr("composer.models.text.load_text_encoder", lambda *a, **k: None)
    src, boxes = folder
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert main(_argv("text", src, boxes, whole)) == 0
    assert main(_argv("text", src, boxes, out, "--limit", "1")) == 0  # 1.png done
    assert main(_argv("text", src, boxes, out, "--workers", "2")) == 0
    logged = [rec["file_name"] for rec in _log_lines(out)[1:]]
    # the workers' records come in the order they finish (either may be first)
    assert logged[0] == "1.png" and sorted(logged[1:]) == ["2.png", "3.png"]
    assert _summary(out) == _summary(whole)


def test_process_images_resumes_only_with_settings(folder, tmp_path):
    """process_images itself: with settings a second call skips the finished images; without
    (a direct call that is no resumable run) no log is kept and every image is redone."""
    src, _ = folder
    files = sorted(src.iterdir())
    seen: list[str] = []

    def one(path: Path, stem: str) -> dict[str, Any]:
        seen.append(path.name)
        (out / f"{stem}.json").write_text("{}")
        (out / f"{stem}_overlay.png").write_bytes(b"")
        return {"count": 0}

    out = tmp_path / "resumable"
    out.mkdir()
    for _ in range(2):
        assert process_images("instances", src, files, out, one, settings={"k": 1}) == 0
    assert seen == ["1.png", "2.png", "3.png"]
    assert _log_lines(out)[0] == {"settings": {"command": "instances", "k": 1}}
    seen.clear()
    out = tmp_path / "plain"
    out.mkdir()
    for _ in range(2):
        assert process_images("instances", src, files, out, one) == 0
    assert seen == ["1.png", "2.png", "3.png"] * 2
    assert not (out / "summary.json.records.jsonl").exists()


def test_record_log_refuses_other_settings_and_names_them(tmp_path):
    path = tmp_path / "summary.json.records.jsonl"
    with RecordLog(path, {"command": "text", "prompt": "a", "config": {"max_masks": 3}}) as log:
        log.append({"file_name": "1.png", "output": "a", "count": 1})
    settings, records = read_log(path)
    assert settings == {"command": "text", "prompt": "a", "config": {"max_masks": 3}}
    assert list(records) == ["1.png"]
    with pytest.raises(ValueError, match=r"max_masks 3 \(now 4\).*--overwrite"):
        RecordLog(path, {"command": "text", "prompt": "a", "config": {"max_masks": 4}})
    fresh = RecordLog(path, {"command": "text", "prompt": "b"}, resume=False)
    assert fresh.records == {} and not path.exists()
    # aliases: spellings of a recorded value that an earlier log may hold
    aliased = {("config", "max_masks"): ["auto"]}
    with RecordLog(path, {"command": "text", "config": {"max_masks": "auto"}}, resume=False) as log:
        log.append({"file_name": "1.png", "output": "a", "count": 1})
    assert list(RecordLog(path, {"command": "text", "config": {"max_masks": 3}},
                          aliases=aliased).records) == ["1.png"]
    with pytest.raises(ValueError, match=r"max_masks 'auto' \(now 3\)"):
        RecordLog(path, {"command": "text", "config": {"max_masks": 3}})
    with pytest.raises(ValueError, match=r"command 'text' \(now 'x'\)"):
        RecordLog(path, {"command": "x", "config": {"max_masks": 3}}, aliases=aliased)
    # dropped: settings that do not decide this run's outputs, on either side, still written
    dropped = [("config", "max_masks"), ("matcher",)]
    kept = RecordLog(path, {"command": "text", "config": {"max_masks": 5}, "matcher": "m"},
                     dropped=dropped)
    assert list(kept.records) == ["1.png"] and kept.settings["matcher"] == "m"
    with pytest.raises(ValueError, match=r"command 'text' \(now 'x'\)") as err:
        RecordLog(path, {"command": "x", "config": {"max_masks": 5}}, dropped=dropped)
    assert "max_masks" not in str(err.value)
    # NOT_RECORDED: a log without the setting reads as holding this run's value
    with RecordLog(path, {"command": "text"}, resume=False) as log:
        log.append({"file_name": "1.png", "output": "a", "count": 1})
    with pytest.raises(ValueError, match=r"matcher not recorded \(now 'm'\)"):
        RecordLog(path, {"command": "text", "matcher": "m"})
    assert list(RecordLog(path, {"command": "text", "matcher": "m"},
                          aliases={("matcher",): [NOT_RECORDED]}).records) == ["1.png"]
    with pytest.raises(ValueError, match=r"matcher 'm' \(now 'n'\)"):  # recorded: compared
        with RecordLog(path, {"command": "text", "matcher": "m"}, resume=False) as log:
            log.append({"file_name": "1.png", "output": "a", "count": 1})
        RecordLog(path, {"command": "text", "matcher": "n"}, aliases={("matcher",): [NOT_RECORDED]})
    assert settings_diff({"a": None}, {}) == ["a None (now not recorded)"]
    assert settings_diff(
        {"model_id": "m", "detector": {"model_id": "d"}},
        {"model_id": "m", "detector": {"model_id": "e"}},
    ) == ["detector.model_id 'd' (now 'e')"]


def test_a_moved_output_folder_resumes_with_its_own_paths(folder, tmp_path, calls):
    """After a resume in a moved (or copied) --out, summary.json listed the earlier images'
    outputs under the old folder."""
    import shutil

    src, boxes = folder
    assert main(_argv("instances", src, boxes, tmp_path / "first")) == 0
    shutil.copytree(tmp_path / "first", tmp_path / "moved")
    calls.take()
    assert main(_argv("instances", src, boxes, tmp_path / "moved")) == 0
    assert calls.take() == []
    images = json.loads((tmp_path / "moved" / "summary.json").read_text())["images"]
    assert [Path(im["json"]).parent for im in images] == [tmp_path / "moved"] * 3
    assert all(Path(im["overlay"]).is_file() for im in images)


def test_overwrite_removes_the_earlier_runs_outputs_and_convert_reads_the_runs_jsons(
        folder, tmp_path, calls, caplog):
    """--overwrite "starts afresh", yet the earlier run's per-image outputs stayed, and
    `convert` of the folder read them as images of the new run (person masks in a "bear"
    dataset). They now go with the old log; and `convert` of a folder run reads only the
    per-image jsons its record log lists as done (all invocations of the run: --limit is no
    setting), so a json that its run did not write is left out with a warning."""
    import logging
    import shutil

    from composer.io.formats import read_annotations

    src, boxes = folder
    out = tmp_path / "out"
    assert main(_argv("instances", src, boxes, out)) == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["1.json", "2.json", "3.json",
                                                           "summary.json"]
    assert main(_argv("instances", src, boxes, out, "--overwrite", "--limit", "1")) == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["1.json", "summary.json"]
    assert not (out / "2_overlay.png").exists()
    assert [im.name for im in read_annotations(out).images] == ["1"]
    # the whole run, then a shorter invocation of it: convert still reads all three
    assert main(_argv("instances", src, boxes, out)) == 0
    assert main(_argv("instances", src, boxes, out, "--limit", "1")) == 0
    assert len(json.loads((out / "summary.json").read_text())["images"]) == 1
    assert [im.name for im in read_annotations(out).images] == ["1", "2", "3"]
    shutil.copy(out / "1.json", out / "9.json")  # not this run's
    with caplog.at_level(logging.WARNING):
        names = [im.name for im in read_annotations(out).images]
    assert names == ["1", "2", "3"] and "skipping 1 json(s) that its run did not write" in caplog.text
