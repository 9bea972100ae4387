"""The scripts of ``recipes/`` and ``benchmarks/``: bad arguments end with one line before any work.

Every test stops a script early: either at argument checking, or at a stand-in (``_Started``)
patched over the first expensive call, so that a script that would go on to load a model or
run a benchmark fails the test instead of running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from _modules import REPO, load_file, load_recipe


class _Started(Exception):
    """Raised by a stand-in for work the script should not have reached."""


def _started(*_args: Any, **_kwargs: Any) -> Any:
    raise _Started


def _main(module: Any, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``module.main()`` with ``argv`` as the command line (some mains take no argv)."""
    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    return module.main()


def _exit_2(module: Any, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exc:
        _main(module, argv, monkeypatch)
    assert exc.value.code == 2


def _bench(stem: str) -> Any:
    return load_file(REPO / "benchmarks" / f"{stem}.py", f"audit_{stem}")


# --- recipes: a ValueError of the library is one line and exit status 2 ----------------------


def _value_error_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    missing = str(tmp / "missing.json")
    return [
        ("calibrate_amg", ["--model", "nosuch"]),
        ("edges_bsds500", ["--model", "nosuch", "--limit", "1"]),
        ("proposals_coco", ["--ann", missing, "--images", str(tmp)]),
        ("instances_coco", ["--coco", missing, "--images", str(tmp)]),
        ("text_to_mask_coco", ["--coco", missing, "--images", str(tmp)]),
        ("edges_classic_bsds500", ["--root", str(tmp / "nobsds"), "--out", str(tmp / "o")]),
        ("choose_slices", ["--settings", "off;400,0.2,nmx,iou,0.5"]),
        ("choose_mask_refine", ["--settings", "abc", "--out", str(tmp / "o")]),
        ("first_click_slots", ["--mask-refine", "abc", "--out", str(tmp / "o")]),
        ("choose_mask_rank", ["--bins", "0", "--out", str(tmp / "o")]),
        ("choose_click_centrality", ["--model", "nosuch", "--out", str(tmp / "o")]),
        ("click_honour", ["--model", "nosuch"]),
        ("lowres_ceiling", []),  # no datasets under SAM_COMPOSER_DATA
        ("train_default", ["--eval-only", "--output", str(tmp / "no.pt"), "--work-dir", str(tmp)]),
        ("data_engine", ["--weights", str(tmp / "no.pt"), "--work-dir", str(tmp / "w")]),
    ]


@pytest.mark.parametrize("index", range(15))
def test_recipe_value_error_is_one_line_error_and_exit_2(index, tmp_path, monkeypatch, capsys):
    stem, argv = _value_error_cases(tmp_path)[index]
    monkeypatch.setenv("SAM_COMPOSER_DATA", str(tmp_path / "no_data"))
    recipe = load_recipe(stem)
    _exit_2(recipe, argv, monkeypatch)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_recipe_command_line_prints_no_traceback(tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SAM_COMPOSER_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "edges_bsds500.py"), "--model", "nosuch"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown segmenter 'nosuch'"), proc.stderr
    assert proc.stderr.count("\n") == 1


# --- recipes: values refused before the work they would spoil ----------------------------------


def test_calibrate_amg_refuses_limit_0_before_loading_the_model(monkeypatch, capsys) -> None:
    import composer

    recipe = load_recipe("calibrate_amg")
    monkeypatch.setattr(composer, "load_segmenter", _started)  # was: ZeroDivisionError at the end
    _exit_2(recipe, ["--limit", "0"], monkeypatch)
    assert "--limit must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_edges_classic_refuses_limit_below_1(limit, tmp_path, monkeypatch, capsys) -> None:
    recipe = load_recipe("edges_classic_bsds500")
    monkeypatch.setattr(recipe, "BSDS500", _started)  # 0 ran the whole split, -1 dropped images
    _exit_2(recipe, ["--limit", limit, "--out", str(tmp_path / "out")], monkeypatch)
    assert "--limit must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("stem", "argv", "message"),
    [
        ("edges_classic_bsds500", ["--workers", "0"], "--workers must be >= 1"),
        ("text_to_mask_coco", ["--max-masks", "0"], "--max-masks must be >= 1"),
        ("text_to_mask_coco", ["--threads", "0"], "--threads must be >= 1"),
        ("text_to_mask_coco", ["--limit", "-1"], "--limit must be >= 1"),
        ("text_to_mask_coco", ["--strategy", "clip"], "needs --clip-weights"),
        ("instances_coco", ["--threads", "0"], "--threads must be >= 1"),
        ("instances_coco", ["--zoom-small", "big"], "zoom"),
        ("proposals_coco", ["--limit", "-2"], "--limit must be >= 1"),
        ("edges_bsds500", ["--nms-sweep", "0.5,x"], "--nms-sweep takes comma-separated numbers"),
        ("choose_mask_refine", ["--settings", ";", "--out", "OUT"], "--settings names no setting"),
        ("choose_mask_refine", ["--mask-rank", "x", "--out", "OUT"], "--mask-rank"),
        ("choose_mask_refine", ["--clicks", "0", "--out", "OUT"], "--clicks must be >= 1"),
        ("choose_slices", ["--settings", "off;400,0.2"], "'400,0.2'"),
        ("click_honour", ["--clicks", "0"], "--clicks must be >= 1"),
    ],
)
def test_recipe_refuses_bad_values_before_any_work(stem, argv, message, tmp_path, monkeypatch,
                                                   capsys) -> None:
    import composer
    import composer.segmenters

    recipe = load_recipe(stem)
    for name in ("coco_subset", "CocoDataset", "BSDS500", "bsds_heldout", "coco_tune",
                 "load_segmenter"):
        if hasattr(recipe, name):
            monkeypatch.setattr(recipe, name, _started)
    monkeypatch.setattr(composer, "load_segmenter", _started)
    monkeypatch.setattr(composer.segmenters, "load_segmenter", _started)
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    if "--out" not in argv and stem == "edges_classic_bsds500":
        argv += ["--out", str(tmp_path / "out")]
    _exit_2(recipe, argv, monkeypatch)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("stem", "flag"),
    [
        ("text_to_mask_coco", "--out"),
        ("instances_coco", "--out"),
        ("proposals_coco", "--out"),
        ("edges_bsds500", "--out"),
        ("edges_classic_bsds500", "--out"),
        ("choose_slices", "--out"),
        ("choose_mask_refine", "--out"),
        ("first_click_slots", "--out"),
        ("choose_mask_rank", "--out"),
        ("choose_click_centrality", "--out"),
        ("data_engine", "--work-dir"),
        ("train_default", "--work-dir"),
    ],
)
def test_recipe_refuses_an_output_folder_that_is_a_file(stem, flag, tmp_path, monkeypatch,
                                                        capsys) -> None:
    import composer
    import composer.segmenters

    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    recipe = load_recipe(stem)
    for name in ("coco_subset", "CocoDataset", "BSDS500", "bsds_heldout", "coco_tune",
                 "load_segmenter", "build_composer_tiny", "build_cache", "automatic_stage",
                 "unlabelled_folder", "per_set_arrays"):
        if hasattr(recipe, name):
            monkeypatch.setattr(recipe, name, _started)
    monkeypatch.setattr(composer, "load_segmenter", _started)
    monkeypatch.setattr(composer.segmenters, "load_segmenter", _started)
    argv = [flag, str(taken)]
    if stem == "data_engine":
        argv += ["--images", str(tmp_path)]
    _exit_2(recipe, argv, monkeypatch)
    assert f"{flag} {taken} exists and is not a folder" in capsys.readouterr().err


def test_proposals_points_per_side_applies_with_single_output(monkeypatch) -> None:
    import composer

    recipe = load_recipe("proposals_coco")
    seen: dict[str, Any] = {}

    def fake_evaluate(segmenter, dataset, limit, cfg, out):
        seen["cfg"] = cfg
        raise _Started

    monkeypatch.setattr(recipe, "coco_subset", lambda: SimpleNamespace(name="subset"))
    monkeypatch.setattr(composer, "load_segmenter", lambda *a, **k: SimpleNamespace())
    monkeypatch.setattr(recipe, "evaluate_proposals", fake_evaluate)
    with pytest.raises(_Started):
        _main(recipe, ["--single-output", "--points-per-side", "16"], monkeypatch)
    cfg = seen["cfg"]
    assert cfg.points_per_side == 16  # was: 128, the flag silently ignored
    assert cfg.multimask is False and cfg.box_nms_thresh == 0.95
    with pytest.raises(_Started):
        _main(recipe, ["--single-output"], monkeypatch)
    assert seen["cfg"].points_per_side == 128
    with pytest.raises(_Started):
        _main(recipe, [], monkeypatch)
    assert seen["cfg"].points_per_side == 64 and seen["cfg"].multimask


def test_choose_slices_parses_every_default_setting() -> None:
    recipe = load_recipe("choose_slices")
    parsed = [recipe.parse_setting(t) for t in recipe.DEFAULT_SETTINGS.split(";")]
    assert parsed[0] is None and len(parsed) == 20
    assert parsed[-1]["drop_cut"] and not parsed[1]["drop_cut"]
    with pytest.raises(ValueError, match="'400,0.2,nms,iou,0.5,x'"):
        recipe.parse_setting("400,0.2,nms,iou,0.5,x")


# --- benchmarks: bad values refused before any timing runs -------------------------------------


def _patch_work(monkeypatch: pytest.MonkeyPatch, bench: Any) -> None:
    """Stand-ins for the first expensive call of every benchmark."""
    import composer
    import composer.data.bsds
    import composer.data.paths
    import composer.sam.composer_tiny
    import composer.segmenters

    for name in ("_run_worker", "Berkeley", "vit_b_decoder", "_maps", "_image"):
        if hasattr(bench, name):
            monkeypatch.setattr(bench, name, _started)
    monkeypatch.setattr(composer, "load_segmenter", _started)
    monkeypatch.setattr(composer.segmenters, "load_segmenter", _started)
    monkeypatch.setattr(composer.data.paths, "dataset_dir", _started)
    monkeypatch.setattr(composer.data.bsds, "BSDS500", _started)
    monkeypatch.setattr(composer.sam.composer_tiny, "build_composer_tiny", _started)


@pytest.mark.parametrize(
    ("stem", "argv", "message"),
    [
        ("bench_amg", ["--image", "/nonexistent/x.jpg"], "--image /nonexistent/x.jpg is not a file"),
        ("bench_amg", ["--points-per-side", "0"], "--points-per-side must be >= 1"),
        ("bench_batch", ["--images", "0"], "--images must be >= 1"),
        ("bench_batch", ["--cores", "0"], "--cores must be >= 1"),
        ("bench_classic", ["--clicks", "0"], "--clicks must be >= 1"),
        ("bench_classic", ["--step", "0"], "--step must be >= 1"),
        ("bench_click", ["--images", "0"], "--images must be >= 1"),
        ("bench_decoder", ["--images", "0"], "--images must be >= 1"),
        ("bench_edges", ["--images", "0"], "--images must be >= 1"),
        ("bench_edges", ["--maps", "sobell"], "invalid choice: 'sobell'"),
        ("bench_encoder", ["--skip", "vitb"], "invalid choice: 'vitb'"),
        ("bench_encoder", ["--repeats", "0"], "--repeats must be >= 1"),
        ("bench_folder_workers", ["--cores", "0"], "--cores must be >= 1"),
        ("bench_gpu", ["--archs", "vit_x"], "invalid choice: 'vit_x'"),
        ("bench_large_image", ["--scale", "0"], "--scale must be >= 1"),
        ("bench_large_image", ["--images", "0"], "nothing to time"),
        ("bench_onnx", ["--images", "0"], "--images must be >= 1"),
        ("bench_onnx", ["--prompts", "0"], "--prompts must be >= 1"),
        ("bench_onnx_int8", ["--repeats", "0"], "--repeats must be >= 1"),
        ("bench_polygons", ["--annotations", "/nonexistent/a.json"], "no annotation file at"),
        ("bench_train", ["--steps", "3"], "--steps must be >= 4"),
    ],
)
def test_benchmark_refuses_bad_values_before_any_work(stem, argv, message, monkeypatch,
                                                      capsys) -> None:
    bench = _bench(stem)
    _patch_work(monkeypatch, bench)
    _exit_2(bench, argv, monkeypatch)
    assert message in capsys.readouterr().err


def test_benchmark_json_target_checked_before_the_run(tmp_path, monkeypatch, capsys) -> None:
    bench = _bench("bench_encoder")
    _patch_work(monkeypatch, bench)
    _exit_2(bench, ["--json", str(tmp_path)], monkeypatch)
    assert f"--json {tmp_path} is a folder" in capsys.readouterr().err
    # a missing folder is made now: written after the timings, the numbers were lost
    target = tmp_path / "new" / "encoders.json"
    with pytest.raises(_Started):
        _main(bench, ["--json", str(target)], monkeypatch)
    assert target.parent.is_dir()


def test_large_image_amg_without_masks_still_reports(monkeypatch) -> None:
    import composer.automatic
    import composer.embedding

    bench = _bench("bench_large_image")

    class NoMasks:
        masks = None

        def __len__(self) -> int:
            return 0

    class Generator:
        def __init__(self, *_args: Any, **_kwargs: Any) -> None:
            pass

        def generate(self, _image: Any) -> NoMasks:
            return NoMasks()

    class Cache:
        def get(self, *_args: Any) -> None:
            return None

    monkeypatch.setattr(composer.automatic, "AutomaticMaskGenerator", Generator)
    monkeypatch.setattr(composer.embedding, "EmbeddingCache", Cache)
    data = [SimpleNamespace(load_image=lambda: np.zeros((8, 8, 3), np.uint8))]
    out = bench._amg(object(), data, SimpleNamespace(amg_images=1, scale=1))
    assert out["amg max_side 1024"]["masks"] == 0  # was: np.min of no IoUs raised at the end
    assert out["amg max_side 1024"]["mean_best_iou"] is None


# --- docstring commands match the flags -------------------------------------------------------


class _Parsed(Exception):
    def __init__(self, args: Any) -> None:
        super().__init__()
        self.args_ = args


def _docstring_commands() -> list[tuple[str, str, list[str]]]:
    """(folder, stem, argv) of every ``python <folder>/<stem>.py ...`` line of the scripts'
    docstrings (continuation lines joined, comments dropped)."""
    import ast
    import re
    import shlex

    out = []
    for folder in ("recipes", "benchmarks"):
        for path in sorted((REPO / folder).glob("[!_]*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            text = re.sub(r"\\\s*\n\s*", " ", doc)
            for line in text.splitlines():
                m = re.search(rf"python\S* {folder}/{path.stem}\.py(.*)", line)
                if m:
                    argv = shlex.split(m.group(1).split("#")[0])
                    out.append((folder, path.stem, argv))
    return out


@pytest.mark.parametrize(("folder", "stem", "argv"), _docstring_commands())
def test_docstring_command_parses_with_the_scripts_flags(folder, stem, argv, monkeypatch) -> None:
    import argparse

    from composer.segmenters import BACKENDS

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    module = load_file(REPO / folder / f"{stem}.py", f"audit_doc_{stem}")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed) as parsed:  # SystemExit(2): a flag or value the script refuses
        _main(module, argv, monkeypatch)
    model = getattr(parsed.value.args_, "model", None)
    if folder == "recipes" and model is not None:  # was: --model sam_vit_h, not a segmenter
        assert model in BACKENDS, f"{stem}: --model {model}"


def test_bench_amg_match_says_when_nothing_was_compared(tmp_path):
    """The AMG benchmark's random weights keep no mask at the official thresholds: its "same
    masks" compared nothing and said nothing. The match now records that (``vacuous``) and
    compares both ways (an extra mask of ours was not noticed)."""
    import json

    import numpy as np
    from pycocotools import mask as mask_utils

    match = _bench("bench_amg")._match

    def rles(*boxes):
        out = []
        for y0, y1, x0, x1 in boxes:
            m = np.zeros((20, 20), np.uint8, order="F")
            m[y0:y1, x0:x1] = 1
            r = mask_utils.encode(m)
            out.append({"size": r["size"], "counts": r["counts"].decode()})
        return out

    def files(a, b):
        pa, pb = tmp_path / "a.json", tmp_path / "b.json"
        pa.write_text(json.dumps(a))
        pb.write_text(json.dumps(b))
        return str(pa), str(pb)

    none = match(*files([], []))
    assert none["vacuous"] and none["same"]
    one, two = rles((0, 5, 0, 5)), rles((0, 5, 0, 5), (10, 15, 10, 15))
    same = match(*files(one, one))
    assert same["same"] and not same["vacuous"] and same["min_best_iou_ours"] == 1.0
    extra = match(*files(one, two))  # every official mask is in ours, not the other way
    assert extra["min_best_iou"] == 1.0 and extra["min_best_iou_ours"] == 0.0
    assert not extra["same"] and not extra["vacuous"]
