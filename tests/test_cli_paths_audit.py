"""`sam-composer` on a practitioner's own files: odd paths (spaces, unicode, "~" the shell left
alone), output folders that cannot be written or already hold another folder's run, images
replaced since an earlier run, and the messages that name what went wrong.

Tiny synthetic images, the classic segmenter and a COCO results json as the detector: no
weights, no network."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import composer.commands.instances as instances
from composer.cli import main
from composer.io.image import load_image


def _image(path: Path, seed: int, size: int = 32) -> None:
    rng = np.random.default_rng(seed)
    img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
    img[8 + seed : 22, 6 : 20 + seed] = (200, 40, 40)  # an object
    Image.fromarray(img).save(path)


def _boxes(path: Path, stems: tuple[str, ...]) -> Path:
    """A COCO results json with a person box in each image (image ids are the stems)."""
    path.write_text(json.dumps([
        {"image_id": int(s), "category_id": 1, "bbox": [5, 7, 16, 15], "score": 0.9}
        for s in stems
    ]))
    return path


def _folder(root: Path, name: str, seeds: tuple[int, ...]) -> Path:
    src = root / name
    src.mkdir()
    for i, seed in enumerate(seeds, 1):
        _image(src / f"{i}.png", seed)
    return src


@pytest.fixture()
def seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The images `instances`' per-image function runs on (in this process)."""
    calls: list[str] = []
    build = instances.build_processor

    def counting(args: Any) -> Any:
        one, header = build(args)

        def counted(path: Path, stem: str) -> dict[str, Any]:
            calls.append(path.name)
            return one(path, stem)

        return counted, header

    monkeypatch.setattr(instances, "build_processor", counting)
    return calls


def _instances(src: Path, boxes: Path, out: Path, *extra: str) -> int:
    return main(["instances", str(src), "--model", "classic", "--detector", str(boxes),
                 "--out", str(out), *extra])


def test_a_rerun_on_another_folder_is_refused_not_resumed(tmp_path, seen, capsys, monkeypatch):
    """Another folder's 1.png, 2.png into the same --out were "done earlier": the summary
    listed them with the first folder's masks (of another size)."""
    boxes = _boxes(tmp_path / "boxes.json", ("1", "2"))
    first = _folder(tmp_path, "first", (0, 1))
    other = _folder(tmp_path, "other", (2, 3))
    out = tmp_path / "out"
    assert _instances(first, boxes, out) == 0
    assert seen == ["1.png", "2.png"]
    capsys.readouterr()
    assert _instances(other, boxes, out) == 2
    err = capsys.readouterr().err
    assert "input" in err and str(other.resolve()) in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert seen == ["1.png", "2.png"]
    # the same folder by another spelling resumes
    monkeypatch.chdir(tmp_path)
    assert _instances(Path("first/"), boxes, out) == 0
    assert seen == ["1.png", "2.png"]
    assert _instances(other, boxes, out, "--overwrite") == 0
    assert seen[2:] == ["1.png", "2.png"]


def test_an_image_replaced_since_the_run_is_recomputed(tmp_path, seen):
    boxes = _boxes(tmp_path / "boxes.json", ("1", "2"))
    src = _folder(tmp_path, "images", (0, 1))
    out = tmp_path / "out"
    assert _instances(src, boxes, out) == 0
    for path in (out / "1.json", out / "1_overlay.png", out / "2.json", out / "2_overlay.png"):
        then = path.stat().st_mtime - 3600  # outputs of long ago: their age decides nothing
        os.utime(path, (then, then))
    _image(src / "2.png", 5, size=40)  # another picture under the same name
    assert _instances(src, boxes, out) == 0
    assert seen == ["1.png", "2.png", "2.png"]
    assert json.loads((out / "2.json").read_text())["image_size"] == [40, 40]
    assert _instances(src, boxes, out) == 0  # now up to date
    assert seen == ["1.png", "2.png", "2.png"]


def test_a_non_image_file_error_names_the_file_once(tmp_path):
    bad = tmp_path / "notes é.jpg"
    bad.write_text("not an image")
    with pytest.raises(ValueError) as info:
        load_image(bad)
    assert str(bad) in str(info.value) and "BufferedReader" not in str(info.value)


def test_out_that_cannot_be_written_fails_before_any_work(tmp_path, monkeypatch, capsys):
    img = tmp_path / "a.png"
    _image(img, 0)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path: Any, mode: int, **kw: Any) -> bool:  # a folder of another user (as root)
        return False if Path(path) == locked else real_access(path, mode, **kw)

    def never(*a: Any, **k: Any) -> Any:
        raise AssertionError("the image was read before --out was checked")

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr("composer.io.image.load_image", never)
    for out in (locked, locked / "new" / "deeper"):
        assert main(["segment", str(img), "--point", "5,5", "--model", "classic",
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"cannot write in {locked}" in err
    # a file where a folder above --out is needed
    assert main(["segment", str(img), "--point", "5,5", "--out", str(img / "sub")]) == 2
    assert f"{img} is a file, not a folder" in capsys.readouterr().err
    # a broken symbolic link where --out or a folder above it should be (was: "File exists")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    for out in (tmp_path / "dangling", tmp_path / "dangling" / "sub"):
        assert main(["segment", str(img), "--point", "5,5", "--out", str(out)]) == 2
        assert "dangling is a broken symbolic link" in capsys.readouterr().err


def test_tilde_the_shell_left_is_the_home_folder(tmp_path, monkeypatch, capsys):
    """``--out=~/x`` reaches the program with its "~" (bash expands it only in assignments):
    it made a folder named "~" in the working directory."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    _image(home / "a b.png", 0)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert main(["segment", "~/a b.png", "--point", "5,5", "--model", "classic",
                 "--out=~/seg é"]) == 0
    assert not (work / "~").exists()
    assert (home / "seg é" / "a b.json").is_file()


def test_segment_outputs_agree_on_odd_names(tmp_path, capsys):
    """Spaces, accents, CJK and emoji in the image's and the output folder's names: the JSON
    loads, names the image, and its RLE masks equal the mask PNGs."""
    src = tmp_path / "dir é 中文 😀"
    src.mkdir()
    img = src / "pic é 中文 😀.PNG"
    _image(img, 1)
    out = tmp_path / "out 😀"
    assert main(["segment", str(img), "--point", "12,14", "--multimask", "--model", "classic",
                 "--out", str(out)]) == 0
    record = json.loads((out / "pic é 中文 😀.json").read_text())
    assert record["image_file"] == img.name and record["image_size"] == [32, 32]
    pngs = sorted(out.glob("pic é 中文 😀_mask*.png"))
    assert len(pngs) == len(record["detections"]) == 3
    for png, det in zip(pngs, record["detections"], strict=True):
        rle = dict(det["segmentation"], counts=det["segmentation"]["counts"].encode())
        m = mask_utils.decode(rle).astype(bool)
        assert np.array_equal(np.asarray(Image.open(png)) > 0, m)
        assert int(m.sum()) == det["area"]
    assert f"wrote 3 mask PNGs, {out}" in capsys.readouterr().out


def test_export_prints_a_command_that_runs_as_printed(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "onnx é 中"
    folder.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        (folder / name).write_bytes(b"x")
    fake = SimpleNamespace(meta={"model_id": "m"}, directory=folder,
                           encoder=folder / "encoder.onnx", decoder=folder / "decoder.onnx")
    monkeypatch.setattr("composer.export.export_onnx", lambda *a, **k: fake)
    assert main(["export", "--out", str(folder), "--no-check"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("use it:"))
    words = shlex.split(line.removeprefix("use it: "))
    assert f"--checkpoint={folder}" in words


def test_flag_errors_name_the_flag(tmp_path, capsys):
    img = tmp_path / "a.png"
    _image(img, 0)
    assert main(["segment", str(img), "--point", "5,5", "--mask-refine", "-1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--mask-refine" in capsys.readouterr().err
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    assert main(["everything", str(tmp_path / "photos"), "--out", str(tmp_path / "o")]) == 2
    assert "sub-folders are not read" in capsys.readouterr().err


def test_everything_says_why_it_found_no_mask(tmp_path, capsys):
    """classic under SAM's official thresholds (the default) keeps nothing of a flat image:
    "0 masks" and exit 0 said nothing of the thresholds."""
    img = tmp_path / "flat.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(img)
    assert main(["everything", str(img), "--model", "classic", "--points-per-side", "4",
                 "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1].startswith("0 masks")
    assert "--pred-iou-thresh" in captured.err and "0.88" in captured.err
    assert "classic" in captured.err
