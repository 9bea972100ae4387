"""``sam-composer train`` on messy user data (helper audit hd): the report, the signals, the
records."""

from __future__ import annotations

import json

from composer.cli import main
from tests.test_atomic import record_fsync_and_replace

from .test_train_cli import _coco_dataset


def _argv(ann, images, out, *extra: str) -> list[str]:
    return ["train", "--data", str(ann), "--images", str(images), "--model", "vit_tiny_test",
            "--random-init", "--out", str(out), "--steps", "2", "--masks-per-image", "1",
            "--corrective", "0", "--val-fraction", "0", *extra]


def test_train_report_is_written_atomically(tmp_path, monkeypatch) -> None:
    """train_report.json goes through a .part file renamed over it, as run.json and model.pt
    do (it was written in place: a crash mid-write left a cut-off report)."""
    ann, images = _coco_dataset(tmp_path, n=2)
    calls = record_fsync_and_replace(monkeypatch)
    assert main(_argv(ann, images, tmp_path / "run")) == 0
    assert "replace train_report.json.part -> train_report.json" in calls
    assert json.loads((tmp_path / "run" / "train_report.json").read_text())["steps"] == 2
