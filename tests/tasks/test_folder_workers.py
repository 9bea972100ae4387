"""Folder mode of `sam-composer instances` and `text` on worker processes (``--workers``): the
same summary.json and per-image outputs as one process, a bad image is still one failure, and
a worker that cannot start fails its images, not the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _toy_segmenter import toy_scene
from PIL import Image

from composer.cli import main
from composer.commands.instances import FolderWorker, process_images
from composer.runner import LocalEngine


@pytest.fixture()
def one_thread():
    """One torch thread here, as in each worker, so both runs compute the same floats."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """Two small scenes (1.png, 2.png), a corrupt 3.jpg, and a COCO results json with boxes of
    a person (both images) and a car (image 1)."""
    src = tmp_path / "images"
    src.mkdir()
    Image.fromarray(toy_scene()).save(src / "1.png")
    Image.fromarray(np.ascontiguousarray(toy_scene()[:, ::-1])).save(src / "2.png")
    (src / "3.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    boxes = tmp_path / "boxes.json"
    entries = [
        {"image_id": 1, "category_id": 1, "bbox": [8, 10, 36, 30], "score": 0.9},
        {"image_id": 1, "category_id": 3, "bbox": [56, 10, 28, 28], "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": [52, 10, 36, 30], "score": 0.7},
    ]
    boxes.write_text(json.dumps(entries))
    return src, boxes


def _outputs(out: Path) -> dict[str, Any]:
    """Every JSON of ``out`` by name, with the folder's own path replaced."""
    return {p.name: json.loads(p.read_text().replace(str(out), "OUT"))
            for p in sorted(out.glob("*.json"))}


@pytest.mark.parametrize("command", ["instances", "text"])
def test_workers_give_the_one_process_outputs(command, folder, tmp_path, capsys, monkeypatch,
                                              one_thread):
    src, boxes = folder
    if command == "text":
        # "person" is matched exactly: no sentence encoder needed here (workers never load it)
        monkeypatch.setattr("composer.models.text.load_text_encoder", lambda *a, **k: None)
    prompt = ["person"] if command == "text" else []
    base = [command, str(src), *prompt, "--model", "composer_tiny", "--device", "cpu",
            "--detector", str(boxes)]
    runs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}"
        assert main([*base, "--workers", workers, "--out", str(out)]) == 1
        cap = capsys.readouterr()
        runs[workers] = _outputs(out)
        # each image's progress line, and the failure on one line
        for name in ("1.png", "2.png"):
            assert any(line.startswith(f"{name}: ") for line in cap.out.splitlines()), cap.out
        assert [line.split(":")[0] for line in cap.err.splitlines() if ": failed: " in line] \
            == ["3.jpg"]
        assert "Traceback" not in cap.err
        assert cap.out.splitlines()[-1].startswith("2 of 3 images done, 1 failed")
    assert runs["1"] == runs["2"]
    summary = runs["2"]["summary.json"]
    assert [i["file_name"] for i in summary["images"]] == ["1.png", "2.png"]  # input order
    assert [i["count"] for i in summary["images"]] == ([2, 1] if command == "instances"
                                                       else [1, 1])
    assert [f["file_name"] for f in summary["failures"]] == ["3.jpg"]
    assert sorted(runs["2"]) == ["1.json", "2.json", "summary.json"]


def test_worker_flags_in_single_image_mode_and_bad_flags(folder, tmp_path, capsys):
    src, boxes = folder
    base = ["instances", "--model", "composer_tiny", "--device", "cpu", "--detector", str(boxes),
            "--out", str(tmp_path / "out")]
    # a single image runs here: the worker flags are checked, then ignored (as `everything`)
    assert main([*base[:1], str(src / "1.png"), *base[1:], "--workers", "2"]) == 0
    assert (tmp_path / "out" / "1.json").is_file()
    capsys.readouterr()
    for bad, message in ((["--workers", "0"], "--workers must be >= 1"),
                         (["--threads-per-worker", "0"], "--threads-per-worker must be >= 1"),
                         (["--ray-address", "auto"], "address is for the Ray engine")):
        assert main([*base[:1], str(src), *base[1:], *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_a_worker_that_cannot_start_fails_its_images(folder, tmp_path, capsys):
    src, _ = folder
    files = sorted(src.iterdir())
    out = tmp_path / "out"
    # a build that fails in the worker (json.loads of a Namespace: TypeError), taken from a
    # module the worker imports at once (this test module would import torch first; so would
    # a thread count)
    setup = FolderWorker(json.loads, {})  # type: ignore[arg-type]
    assert process_images("instances", src, files, out, None, engine=LocalEngine(2),
                          setup=setup) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == []
    assert [f["file_name"] for f in summary["failures"]] == ["1.png", "2.png", "3.jpg"]
    assert capsys.readouterr().err.count(": failed: ") == 3
