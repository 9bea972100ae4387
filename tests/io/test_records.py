"""The record log reader shared by the runner (resume) and ``convert`` of a folder run's
output (``composer.io.records``): both read every kind of bad line the same way."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from composer.io import records as io_records
from composer.io.formats import read_annotations
from composer.io.visualize import write_detections
from composer.runner import records as runner_records
from composer.runner.records import RecordLog
from composer.structures import Detections, Masks

SETTINGS = {"command": "instances", "input": "/photos"}


def _log(path, *lines: bytes) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _rec(name: str, output: str, **extra) -> bytes:
    return json.dumps({"file_name": name, "output": output, "count": 1, **extra}).encode()


BAD_LINES = [
    b'{"file_name": "torn.png", "outp',  # a crash mid-write
    b"\xff\xfe not utf-8",  # a corrupt block
    b"[1, 2]",  # JSON, but no object
    b'"settings and file_name"',
    b"null",
    b'{"output": "x", "count": 1}',  # no file_name
    b'{"file_name": 3, "output": "x"}',  # not a name
    b'{"settings": ["not", "a", "dict"], "file_name": "s.png", "output": "s"}',
]


def test_read_log_skips_every_bad_line_with_a_warning(tmp_path, caplog):
    path = tmp_path / "summary.json.records.jsonl"
    _log(path, json.dumps({"settings": SETTINGS}).encode(), _rec("a.png", "a"), *BAD_LINES,
         b"", _rec("b.png", "b", error="ValueError: x"), _rec("a.png", "a2"))
    with caplog.at_level(logging.WARNING):
        settings, records = runner_records.read_log(path)
    assert settings == SETTINGS
    assert records == {"a.png": json.loads(_rec("a.png", "a2")),  # the later record of a file
                       "b.png": json.loads(_rec("b.png", "b", error="ValueError: x"))}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == len(BAD_LINES) and all(str(path) in w for w in warned)
    assert runner_records.read_log is io_records.read_log  # the runner's name, re-exported
    assert runner_records.log_path is io_records.log_path
    assert runner_records.LOG_SUFFIX == ".records.jsonl"


def test_read_log_without_a_log_and_with_an_unreadable_one(tmp_path):
    assert io_records.read_log(tmp_path / "none.records.jsonl") == (None, {})
    folder = tmp_path / "dir.records.jsonl"
    folder.mkdir()
    with pytest.raises(OSError):
        io_records.read_log(folder)


def test_a_settings_line_that_is_no_dict_counts_as_none(tmp_path):
    """The settings compared on resume: a log whose header is no dict was written without
    recorded settings (the resume is refused with that message, not a crash in the diff)."""
    path = tmp_path / "summary.json.records.jsonl"
    _log(path, b'{"settings": "x"}', _rec("a.png", "a"))
    assert io_records.read_log(path)[0] is None
    with pytest.raises(ValueError, match="was written without recorded settings"):
        RecordLog(path, SETTINGS)


def test_resume_keeps_the_good_records_of_a_log_with_bad_lines(tmp_path):
    """A line that is JSON but no record (a list, an object without file_name) stopped the
    resume with a TypeError/KeyError; it is skipped like a torn line."""
    path = tmp_path / "summary.json.records.jsonl"
    _log(path, json.dumps({"settings": SETTINGS}).encode(), _rec("a.png", "a"), *BAD_LINES)
    with RecordLog(path, SETTINGS) as log:
        assert list(log.records) == ["a.png"]
        log.append(json.loads(_rec("c.png", "c")))
    assert list(io_records.read_log(path)[1]) == ["a.png", "c.png"]


def test_convert_reads_the_same_records_as_a_resume(tmp_path):
    """``convert`` of a folder run lists the jsons its record log lists as done, through the
    same reader: a corrupt line no longer stops it with a codec error."""
    out = tmp_path / "out"
    dense = np.zeros((1, 20, 30), bool)
    dense[0, 5:15, 5:20] = True
    masks = Masks.from_dense(dense)
    dets = Detections(boxes=masks.boxes(), masks=masks, scores=np.array([0.9]))
    for stem in ("a", "b", "stale"):
        write_detections(dets, np.zeros((20, 30, 3), np.uint8), out, stem=stem,
                         mask_pngs=False, image_file=f"{stem}.png")
    (out / "summary.json").write_text(json.dumps({"command": "instances", "images": []}))
    _log(io_records.log_path(out / "summary.json"), json.dumps({"settings": SETTINGS}).encode(),
         _rec("a.png", "a"), *BAD_LINES, _rec("b.png", "b"))
    names = [im.name for im in read_annotations(out).images]
    assert names == ["a", "b"]  # stale.json: not this run's
    # a log that cannot be read is an error, as on resume (it fell back to summary.json,
    # which lists only the last invocation's images)
    log = io_records.log_path(out / "summary.json")
    log.unlink()
    log.mkdir()
    with pytest.raises(OSError):
        read_annotations(out)
