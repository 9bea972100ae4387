"""The evaluation runner on real data with test doubles (no model weights)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from composer.data.coco import coco_subset
from composer.data.interactive import GrabCut, InteractiveItem
from composer.embedding import EmbeddingCache, ImageEmbedding, image_hash
from composer.evaluation import (
    CocoEvaluator,
    ItemGroundTruth,
    PointEvaluator,
    ProposalEvaluator,
    point_targets,
    run,
)
from composer.structures import Detections, Masks
from tasks.base import Task, TaskContext

pytestmark = pytest.mark.data


class OracleSegmenter:
    """Segmenter test double that knows each image's ground truth (looked up by pixel hash).

    ``mode="oracle"`` returns the GT mask for every prompt; ``"empty"`` returns nothing.
    """

    def __init__(self, items: list[InteractiveItem], mode: str = "oracle") -> None:
        self.model_id = f"test-{mode}"
        self.mode = mode
        self._gt = {image_hash(it.load_image()): it.gt_mask for it in items}
        self.embed_calls = 0

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        self.embed_calls += 1
        gt = self._gt[image_hash(image)]
        h, w = gt.shape
        return ImageEmbedding(
            torch.zeros(1, 1, 1, 1),
            (h, w),
            (h, w),
            max(h, w),
            self.model_id,
            extras={"gt": torch.from_numpy(gt)},
        )

    def predict(
        self, embedding, points=None, labels=None, boxes=None, mask_input=None, multimask=True
    ):
        gt = embedding.extras["gt"].numpy()
        mask = gt if self.mode == "oracle" else np.zeros_like(gt)
        m = 3 if multimask else 1
        masks = Masks.from_dense(np.repeat(mask[None], m, 0))
        extras = {
            "prompt_index": np.zeros(m, np.int64),
            "mask_index": np.arange(m),
            "low_res_logits": np.zeros((m, 4, 4), np.float32),
        }
        return Detections.from_masks(masks, scores=np.linspace(0.9, 0.5, m), extras=extras)


@dataclasses.dataclass(frozen=True)
class GtTaskConfig:
    drop_crowd: bool = True


class GtTask:
    """A task double that returns the item's ground truth (and touches the shared cache)."""

    def __init__(self, segmenter=None) -> None:
        self.config = GtTaskConfig()
        self.segmenter = segmenter

    def __call__(self, context: TaskContext) -> Detections:
        gt = context.meta["item"].gt
        return gt[~gt.extras["iscrowd"]]


@pytest.fixture(scope="module")
def grabcut3(grabcut_dir) -> list[InteractiveItem]:
    return [GrabCut()[i] for i in range(3)]


def test_point_protocol_run_with_oracle(grabcut3, tmp_path):
    seg = OracleSegmenter(grabcut3)
    cache = EmbeddingCache()
    report = run(seg, grabcut3, PointEvaluator(max_clicks=5), cache=cache, out_dir=tmp_path)
    m = report["metrics"]
    assert m["points/mIoU@1"] == 1.0 and m["points/NoC@90"] == 1.0 and m["points/n_masks"] == 3
    meta = report["meta"]
    assert meta["mode"] == "points" and meta["model_id"] == "test-oracle"
    assert meta["n_images"] == 3 and meta["n_masks"] == 3 and meta["failures"] == []
    assert meta["cache"]["encoder_calls"] == 3 and meta["cache"]["misses"] == 3
    assert len(meta["timings"]["per_image"]) == 3 and meta["timings"]["mean_s_per_image"] > 0
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["metrics"] == m
    assert (tmp_path / "points_miou_vs_clicks.png").stat().st_size > 1000
    per_mask = json.loads((tmp_path / "points_per_mask.json").read_text())
    assert [r["image_id"] for r in per_mask] == [it.image_id for it in grabcut3]
    # a second run on the same cache embeds nothing
    again = run(seg, grabcut3, PointEvaluator(max_clicks=5), cache=cache)
    assert again["meta"]["cache"] == {"hits": 3, "misses": 0, "encoder_calls": 0, "disk_hits": 0}
    assert seg.embed_calls == 3


def test_point_protocol_failures_do_not_lose_results(grabcut3, tmp_path):
    seg = OracleSegmenter(grabcut3, mode="empty")
    bad = dataclasses.replace(grabcut3[1], path=tmp_path / "missing.jpg", image_id="broken")
    items = [grabcut3[0], bad, grabcut3[2]]
    report = run(seg, items, PointEvaluator(max_clicks=4), out_dir=tmp_path, limit=3)
    m, meta = report["metrics"], report["meta"]
    assert m["points/n_masks"] == 2 and m["points/NoF@85"] == 2 and m["points/NoC@85"] == 4
    assert meta["n_images"] == 2 and meta["n_failed"] == 1
    (failure,) = meta["failures"]
    assert failure["image_id"] == "broken" and failure["index"] == 1
    assert "ValueError" in failure["error"] and "missing.jpg" in failure["error"]
    assert json.loads((tmp_path / "report.json").read_text())["meta"]["n_failed"] == 1


def test_failures_log_one_line_without_verbose(grabcut3, tmp_path, caplog):
    """A failed image is one log line; its traceback is in the report (and the log at INFO)."""
    import logging

    seg = OracleSegmenter(grabcut3, mode="empty")
    bad = dataclasses.replace(grabcut3[1], path=tmp_path / "missing.jpg", image_id="broken")
    with caplog.at_level(logging.WARNING, logger="composer.evaluation.runner"):
        report = run(seg, [grabcut3[0], bad], PointEvaluator(max_clicks=1))
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert not record.exc_info and "missing.jpg" in record.getMessage()
    assert "Traceback" in report["meta"]["failures"][0]["traceback"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="composer.evaluation.runner"):
        run(seg, [bad], PointEvaluator(max_clicks=1))
    assert [bool(r.exc_info) for r in caplog.records if r.levelno == logging.ERROR] == [True]


def test_task_run_on_coco_feeds_all_evaluators(coco_dir, tmp_path):
    ds = coco_subset()
    task = GtTask()
    assert isinstance(task, Task)
    evs = [
        CocoEvaluator(ds.coco, iou_types=("segm",)),
        ProposalEvaluator(ds.coco, iou_types=("segm",)),
    ]
    report = run(task, ds, evs, limit=4, out_dir=tmp_path)
    m, meta = report["metrics"], report["meta"]
    assert m["segm/AP"] == pytest.approx(1.0) and m["proposals/AR@100"] == pytest.approx(1.0)
    assert evs[0].image_ids == sorted(ds.image_ids[:4])  # only the processed images count
    assert (
        meta["mode"] == "task"
        and meta["n_images"] == 4
        and meta["dataset"] == "coco_val2017_tiny80"
    )
    assert meta["config"] == {"drop_crowd": True} and meta["task"] == "GtTask"
    assert meta["evaluators"] == ["CocoEvaluator", "ProposalEvaluator"]
    assert (tmp_path / "report.json").is_file()


def test_an_earlier_runs_outputs_do_not_stay_beside_another_report(coco_dir, grabcut3, tmp_path):
    """Another evaluation into the same folder left the earlier run's results.json (or points
    plots) beside its report, unlisted, as if they were its own. What the earlier report.json
    listed and this run does not write is removed; other files stay."""
    ds = coco_subset()
    results = tmp_path / "results.json"
    run(GtTask(), ds, CocoEvaluator(ds.coco, iou_types=("segm",), results_file=results),
        limit=2, out_dir=tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["meta"]["files"] == [
        "results.json", "report.json"]
    (tmp_path / "notes.txt").write_text("mine")
    report = run(OracleSegmenter(grabcut3), grabcut3, PointEvaluator(max_clicks=2),
                 out_dir=tmp_path)
    assert not results.exists() and (tmp_path / "notes.txt").read_text() == "mine"
    assert report["meta"]["files"] == [
        "points_miou_vs_clicks.png", "points_per_mask.json", "report.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*report["meta"]["files"], "notes.txt"])
    # and back: the points files go, the new results.json is listed and kept
    run(GtTask(), ds, CocoEvaluator(ds.coco, iou_types=("segm",), results_file=results),
        limit=2, out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "report.json", "results.json"]


def test_task_exception_is_recorded(coco_dir):
    ds = coco_subset(image_ids=coco_subset().image_ids[:3])
    calls = []

    def flaky(ctx: TaskContext) -> Detections:
        calls.append(ctx.image_id)
        assert ctx.image.dtype == np.uint8 and ctx.image.shape[:2] == ctx.meta["item"].image_size
        if len(calls) == 2:
            raise RuntimeError("boom")
        gt = ctx.meta["item"].gt
        return gt[~gt.extras["iscrowd"]]

    report = run(flaky, ds, CocoEvaluator(ds.coco, iou_types=("bbox",)))
    assert report["metrics"]["bbox/AP"] == pytest.approx(1.0)
    assert (
        report["meta"]["n_failed"] == 1
        and "RuntimeError: boom" in report["meta"]["failures"][0]["error"]
    )


def test_mode_mismatch_and_bad_arguments(grabcut3, coco_dir):
    seg = OracleSegmenter(grabcut3)
    ds = coco_subset()
    with pytest.raises(ValueError, match="point protocol"):
        run(seg, grabcut3, CocoEvaluator(ds.coco))
    with pytest.raises(ValueError, match="needs a segmenter"):
        run(GtTask(), ds, PointEvaluator())
    with pytest.raises(ValueError, match="at least one evaluator"):
        run(GtTask(), ds, [])
    with pytest.raises(TypeError):
        run(42, ds, CocoEvaluator(ds.coco))
    with pytest.raises(ValueError, match="limit"):
        run(GtTask(), ds, CocoEvaluator(ds.coco), limit=-1)


def test_task_context_validates_image():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        TaskContext(np.zeros((4, 4), np.uint8), 1, EmbeddingCache())
    with pytest.raises(ValueError, match="uint8"):
        TaskContext(np.zeros((4, 4, 3), np.float32), 1, EmbeddingCache())


_CLASSIC = Path(__file__).resolve().parents[2] / "composer" / "segmenters" / "classic.py"


@pytest.mark.skipif(not _CLASSIC.is_file(), reason="composer/segmenters/classic.py not written yet")
def test_classic_segmenter_smoke_on_grabcut(grabcut3):
    spec = importlib.util.find_spec("composer.segmenters.classic")
    assert spec is not None
    from composer.segmenters.classic import ClassicSegmenter

    report = run(ClassicSegmenter(), grabcut3, PointEvaluator(max_clicks=3, report_clicks=(1, 3)))
    m = report["metrics"]
    assert report["meta"]["failures"] == []
    assert m["points/n_masks"] == 3
    assert 0.0 < m["points/mIoU@1"] <= 1.0 and m["points/mIoU@3"] > 0.0


def test_point_targets_of_coco_items_skip_crowd(coco_dir):
    ds = coco_subset()
    item = next(it for it in ds if it.gt.extras["iscrowd"].any())
    targets = point_targets(item)
    keep = ~item.gt.extras["iscrowd"]
    assert [t[0] for t in targets] == item.gt.extras["ann_id"][keep].tolist()
    for (_, mask, ignore), rle_area in zip(targets, item.gt.masks.area[keep], strict=True):
        assert mask.shape == item.image_size and mask.sum() == rle_area and ignore is None


class ThreeArgEvaluator:
    """Like the BSDS evaluator: process(image_id, prediction, ground_truth)."""

    def __init__(self) -> None:
        self.seen: list = []

    def reset(self) -> None:
        self.seen = []

    def process(self, image_id, prediction, gt) -> None:
        self.seen.append((image_id, len(prediction), len(gt)))

    def evaluate(self) -> dict[str, float]:
        return {"n": float(len(self.seen)), "already/prefixed": 1.0}


def test_item_ground_truth_adapter_feeds_gt_from_items(coco_dir):
    ds = coco_subset()
    inner = ThreeArgEvaluator()
    ev = ItemGroundTruth(inner, lambda item: item.gt, prefix="custom")
    report = run(GtTask(), ds, [ev, CocoEvaluator(ds.coco, iou_types=("bbox",))], limit=2)
    assert report["metrics"]["custom/n"] == 2.0 and report["metrics"]["already/prefixed"] == 1.0
    assert [s[0] for s in inner.seen] == ds.image_ids[:2]
    assert all(n_pred <= n_gt for _, n_pred, n_gt in inner.seen)  # crowd dropped from predictions
    with pytest.raises(TypeError, match="process_item"):
        ev.process(1, None)
    with pytest.raises(TypeError):
        ItemGroundTruth(object(), lambda item: item)


def test_points_cli_with_zoom_in_records_the_protocol(grabcut3, tmp_path):
    """``eval points --zoom-in`` on one real image with the classic segmenter: later clicks are
    predicted in crops (more encoder calls), and the report names the protocol."""
    from composer.cli import main

    out = tmp_path / "zoom"
    args = ["eval", "points", "--model", "classic", "--dataset", "grabcut", "--limit", "1"]
    assert main([*args, "--clicks", "3", "--zoom-in", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    (protocol,) = report["meta"]["protocols"]
    assert protocol["zoom_in"]["expansion"] == 1.4 and protocol["max_clicks"] == 3
    assert report["meta"]["failures"] == [] and 0.0 < report["metrics"]["points/mIoU@3"] <= 1.0
    per_mask = json.loads(next(out.glob("points_per_mask*.json")).read_text())
    assert per_mask
    # the crops' embeddings are counted (they are not the cache's: it counted only the image's)
    assert report["meta"]["cache"]["encoder_calls"] == 1
    assert report["meta"]["zoom_encoder_calls"] >= 1


@pytest.mark.parametrize("task", ["points", "instances", "edges", "proposals"])
def test_eval_limit_must_be_positive(task, tmp_path, capsys):
    """``--limit 0`` would write a report of zeros on no images: refused before any work."""
    from composer.cli import main

    for bad in ("0", "-3"):
        assert main(["eval", task, "--limit", bad, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "--limit must be >= 1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_eval_of_an_empty_dataset_is_refused(tmp_path, capsys):
    """A COCO json without images would report AP 0 on nothing: refused before any model."""
    from composer.cli import main

    empty = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    for task in ("instances", "proposals", "points"):
        args = ["eval", task, "--coco", str(tmp_path / "empty.json"), "--images", str(tmp_path),
                "--model", "classic", "--out", str(tmp_path / "o")]
        assert main(args) == 2
        assert "dataset 'empty' is empty: nothing to evaluate" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_failed_evaluator_is_not_a_success(tmp_path, capsys, monkeypatch):
    """An evaluator that raises leaves no metrics: the command says so and exits 1."""
    from PIL import Image

    from composer.cli import main

    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "a.jpg")
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 8],
                             "segmentation": [[5, 5, 15, 5, 15, 13, 5, 13]], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "gt.json").write_text(json.dumps(data))

    def boom(self):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(CocoEvaluator, "evaluate", boom)
    args = ["eval", "instances", "--coco", str(tmp_path / "gt.json"), "--images", str(tmp_path),
            "--boxes", "gt", "--model", "classic", "--out", str(tmp_path / "o")]
    assert main(args) == 1
    assert "evaluate:CocoEvaluator failed: RuntimeError: evaluation broke" in capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["meta"]["n_images"] == 1 and report["metrics"] == {}


def test_edges_cli_applies_the_models_guided_refinement(bsds_dir, tmp_path, capsys):
    """``eval edges`` on one real BSDS500 val image with the packaged composer_tiny: ``auto``
    uses the model's recommended guided filter, ``off`` the paper's procedure; a bad value is
    refused before any work."""
    from composer.cli import main
    from composer.sam.composer_tiny import EDGE_REFINE

    base = ["eval", "edges", "--model", "composer_tiny", "--split", "val", "--limit", "1",
            "--thresholds", "9", "--workers", "1", "--points-per-side", "6"]
    metrics = {}
    for how in ("auto", "off"):
        out = tmp_path / how
        assert main([*base, "--edge-refine", how, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        r, eps = EDGE_REFINE
        expected = f"guided filter r={r} eps={eps:g}" if how == "auto" else "edge refinement: off"
        assert expected in printed
        report = json.loads((out / "report.json").read_text())
        assert report["meta"]["n_failed"] == 0
        metrics[how] = report["metrics"]["edges/ODS"]
        assert 0.0 < metrics[how] <= 1.0
    assert metrics["auto"] != metrics["off"]
    for bad in ("8", "x,y"):  # a usage error: exit status 2 and one line, before any work
        assert main([*base, "--edge-refine", bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert "error: --edge-refine: refine must be 'auto', 'off' or 'RADIUS,EPS'" in err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    assert main(["eval", "edges", "--method", "sobel", "--edge-refine", "8", "--out",
                 str(tmp_path / "bad")]) == 2  # refused for a classical method too


def test_points_cli_mask_refine_switch(grabcut3, tmp_path, capsys):
    """``--mask-refine`` on one real GrabCut image with composer_tiny: auto takes the model's
    GrabCut refinement (printed, and recorded in the report), off turns it off, BAND,ITERS
    sets one; a bad value is refused."""
    from composer.cli import main
    from composer.commands.common import parse_mask_refine
    from composer.refine import GrabCutRefine
    from composer.sam.composer_tiny import MASK_REFINE

    assert parse_mask_refine("auto") == "auto" and parse_mask_refine("OFF") is None
    assert parse_mask_refine("8") == GrabCutRefine(8.0, GrabCutRefine.iters)
    assert parse_mask_refine("12,1") == GrabCutRefine(12.0, 1)
    for bad in ("x", "1,2,3", "0"):
        with pytest.raises(ValueError):
            parse_mask_refine(bad)
    base = ["eval", "points", "--model", "composer_tiny", "--dataset", "grabcut", "--limit", "1",
            "--clicks", "2"]
    reports = {}
    for how in ("auto", "off"):
        out = tmp_path / how
        assert main([*base, "--mask-refine", how, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert ("masks refined by GrabCut" in printed) == (how == "auto")
        reports[how] = json.loads((out / "report.json").read_text())
        assert reports[how]["meta"]["failures"] == []
    assert reports["auto"]["meta"]["mask_refine"] == dataclasses.asdict(MASK_REFINE)
    assert reports["off"]["meta"]["mask_refine"] is None
    assert reports["auto"]["metrics"]["points/mIoU@1"] != reports["off"]["metrics"]["points/mIoU@1"]
    assert main([*base, "--mask-refine", "bad", "--out", str(tmp_path / "bad")]) == 2


def test_points_cli_tta_switch(grabcut3, tmp_path, capsys):
    """``--tta`` on one real GrabCut image with composer_tiny: auto takes the model's flip TTA
    (printed, recorded in the report with its mirrored encoder pass), off turns it off."""
    from composer.cli import main

    base = ["eval", "points", "--model", "composer_tiny", "--dataset", "grabcut", "--limit", "1",
            "--clicks", "1", "--mask-refine", "off"]
    reports = {}
    for how in ("auto", "off"):
        out = tmp_path / how
        assert main([*base, "--tta", how, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert ("flip TTA" in printed) == (how == "auto")
        reports[how] = json.loads((out / "report.json").read_text())["meta"]
    assert reports["auto"]["flip_tta"] is True and reports["off"]["flip_tta"] is False
    assert reports["auto"]["mirror_encoder_calls"] == 1 and reports["off"]["mirror_encoder_calls"] == 0
    assert reports["auto"]["cache"]["encoder_calls"] == reports["off"]["cache"]["encoder_calls"] == 1
    with pytest.raises(SystemExit):
        main([*base, "--tta", "mirror", "--out", str(tmp_path / "bad")])


def test_points_cli_mask_rank_switch(grabcut3, tmp_path, capsys):
    """``--mask-rank`` on one real GrabCut image with composer_tiny: auto takes the model's
    contrast ranking (printed, recorded in the report), off ranks by predicted IoU alone, a
    number sets the weight; a bad value is refused."""
    from composer.cli import main
    from composer.commands.common import parse_mask_rank
    from composer.refine import ContrastRank
    from composer.sam.composer_tiny import MASK_RANK

    assert parse_mask_rank("AUTO") == "auto" and parse_mask_rank("off") is None
    assert parse_mask_rank("0.5") == ContrastRank(weight=0.5)
    for bad in ("x", "-1", "nan"):
        with pytest.raises(ValueError):
            parse_mask_rank(bad)
    base = ["eval", "points", "--model", "composer_tiny", "--dataset", "grabcut", "--limit", "1",
            "--clicks", "1", "--tta", "off"]
    reports = {}
    for how in ("auto", "off", "0.5"):
        out = tmp_path / how
        assert main([*base, "--mask-rank", how, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert ("boundary colour contrast" in printed) == (how != "off")
        reports[how] = json.loads((out / "report.json").read_text())["meta"]
        assert reports[how]["failures"] == []
    assert reports["auto"]["mask_rank"] == dataclasses.asdict(MASK_RANK)
    assert reports["off"]["mask_rank"] is None
    assert reports["0.5"]["mask_rank"]["weight"] == 0.5
    assert main([*base, "--mask-rank", "-2", "--out", str(tmp_path / "bad")]) == 2


def test_instances_cli_zoom_and_gt_boxes(coco_dir, tmp_path, capsys):
    """``eval instances --boxes gt`` runs InstanceTask on ground-truth boxes (scored by the
    predicted IoU), with the model's small-box zoom unless ``--zoom-small off``."""
    from composer.cli import main

    base = ["eval", "instances", "--model", "composer_tiny", "--dataset", "coco", "--boxes",
            "gt", "--limit", "1"]
    reports = {}
    for how in ("auto", "off"):
        out = tmp_path / how
        assert main([*base, "--zoom-small", how, "--out", str(out)]) == 0
        reports[how] = json.loads((out / "report.json").read_text())
        assert reports[how]["meta"]["failures"] == []
    assert reports["auto"]["meta"]["config"]["zoom_small"] == "auto"
    calls = {k: r["meta"]["cache"]["encoder_calls"] for k, r in reports.items()}
    assert calls["off"] == 1 and calls["auto"] > 1  # one crop per small box
    assert reports["auto"]["metrics"]["segm/AP"] > reports["off"]["metrics"]["segm/AP"]
    assert reports["off"]["metrics"]["bbox/AP"] < 1.0  # the masks' boxes, not the prompts'
    capsys.readouterr()
    for bad in (["--zoom-small", "x"], ["--slice", "400"]):
        assert main([*base, *bad, "--out", str(tmp_path / "bad")]) == 2
        assert "Traceback" not in capsys.readouterr().err


def test_the_click_plot_is_written_atomically(tmp_path, monkeypatch):
    """The mIoU-vs-clicks PNG was drawn straight into its file: a stop (or an error) while
    matplotlib wrote it left a cut-off PNG where the earlier run's plot was."""
    from matplotlib.figure import Figure

    from composer.evaluation.runner import plot_click_curves

    class Curves:
        iou_thresholds = (0.85,)
        traces = [None]

        def curves(self) -> dict[str, np.ndarray]:
            return {"mIoU": np.array([0.5, 0.7]), "oracle_mIoU": np.array([0.6, 0.8])}

    plot = tmp_path / "points_miou_vs_clicks.png"
    plot_click_curves(Curves(), plot)
    before = plot.read_bytes()
    assert before.startswith(b"\x89PNG")

    def cut_off(self: Figure, target: Any, **kwargs: Any) -> None:
        if isinstance(target, (str, os.PathLike)):
            Path(target).write_bytes(b"\x89PNG cut")
        else:
            target.write(b"\x89PNG cut")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", cut_off)
    with pytest.raises(KeyboardInterrupt):
        plot_click_curves(Curves(), plot)
    assert plot.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [plot.name]
