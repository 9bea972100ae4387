"""``sam-composer eval edges|proposals|instances|points``: the harness from the command line.

Prints a table and writes ``report.json`` (flat metric keys) and, for mask tasks,
``results.json`` in COCO-results format under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .._tasks_import import tasks_import
from .common import add_model_args, describe, load_model, parse_zoom_small
from .instances import check_limit

DATASETS = ("bsds500", "grabcut", "berkeley", "coco")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a task on a dataset with the paper's protocols",
        description="Evaluate a task on a dataset with the paper's protocols; report.json goes "
        "to --out, with the detections or proposals (results.json) and, for points, the "
        "mIoU-vs-clicks plot. An image that fails (unreadable, bad annotations) is recorded in "
        "report.json's meta.failures and the others are scored. Exit status 0 when every image "
        "was scored, 1 when some failed (the metrics cover the others) or an evaluator failed, "
        "2 for unusable input, 130 when interrupted (143: SIGTERM): Ctrl-C writes report.json of "
        "the images evaluated so far and says how many.")
    esub = p.add_subparsers(dest="task", metavar="TASK")
    esub.required = True

    def common(q: argparse.ArgumentParser, datasets: tuple[str, ...], default: str,
               coco: bool = True, also: str = "") -> None:
        # None until _open_dataset: a --dataset given with --coco is refused, not ignored
        q.add_argument("--dataset", choices=datasets, default=None, help=f"dataset (default {default})")
        q.set_defaults(default_dataset=default)
        if coco:  # edges need boundary annotations, which COCO jsons do not have
            q.add_argument("--coco", default=None, help="COCO-format annotation json (instead of --dataset; not "
                           "both)")
            q.add_argument("--images", default=None, help="image folder for --coco")
        else:
            q.set_defaults(coco=None, images=None)
        if "bsds500" in datasets:
            q.add_argument("--split", default=None, help="BSDS500 split (default test)")
        else:  # COCO has no splits here: offering the flag only to refuse it misled
            q.set_defaults(split=None)
        q.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
        q.add_argument("--out", required=True, help=f"output folder for report.json{also}; what an "
                       "earlier report there listed and this run does not write is removed")

    e = esub.add_parser("edges", help="BSDS500 boundary benchmark (ODS/OIS/AP/R50)")
    common(e, ("bsds500",), "bsds500", coco=False)
    add_model_args(e, prompted=False)
    e.add_argument("--method", default="segmenter", choices=("segmenter", "sobel", "canny", "felzhutt"),
                   help="edge method: SAM-style edges from the segmenter (default) or a classical baseline "
                        "(runs no segmenter: the segmenter flags are refused with it)")
    e.add_argument("--thresholds", type=int, default=99, help="benchmark thresholds (default 99)")
    e.add_argument("--workers", type=int, default=2,
                   help="processes for the boundary matcher (default 2; 0 or 1: in this process)")
    e.add_argument("--points-per-side", type=int, default=None,
                   help="grid of the segmenter edge task (--method segmenter; default 16, the "
                        "paper's)")
    e.add_argument("--edge-refine", default=None, metavar="auto|off|R,EPS",
                   help="--method segmenter: guided-filter refinement of the mask maps before the "
                        "Sobel filter: the "
                        "model's recommendation (auto, default), off (the paper's procedure) or "
                        "radius,eps")
    e.set_defaults(func=run_edges)

    pr = esub.add_parser("proposals", help="class-agnostic mask proposals, AR@10/100/1000")
    common(pr, ("coco",), "coco", also=" and the proposals (results.json)")
    add_model_args(pr, prompted=False)
    pr.add_argument("--points-per-side", type=int, default=64, help="grid (default 64, the paper's)")
    pr.set_defaults(func=run_proposals)

    ins = esub.add_parser("instances", help="mask AP of box-prompted instance segmentation")
    common(ins, ("coco",), "coco", also=" and the detections (results.json)")
    add_model_args(ins)
    ins.add_argument("--boxes", default="detector",
                     help="'gt' (ground-truth boxes), 'detector' (default: --detector's boxes, those "
                          "scoring >= 0.05) or a COCO results json")
    ins.add_argument("--detector", default=None, help="detector name (needs --boxes detector)")
    ins.add_argument("--score-threshold", type=float, default=None,
                     help="--boxes detector: keep boxes scoring at least this (default 0.05: AP "
                          "rewards low-confidence detections; the recipes' Table 5 rows use 0.2)")
    ins.add_argument("--refine", action="store_true", help="one refinement pass (paper App. D.4)")
    ins.add_argument("--zoom-small", default="auto", metavar="auto|off|FRACTION",
                     help="boxes smaller than this fraction of the image's longer side are segmented "
                          "again in a crop (default auto: the model's recommendation)")
    ins.add_argument("--slice", type=int, default=None, metavar="PIXELS",
                     help="--boxes detector: also detect on overlapping tiles of this side")
    ins.set_defaults(func=run_instances)

    pt = esub.add_parser("points", help="point-prompt mIoU@k and NoC@85/90")
    common(pt, ("grabcut", "berkeley", "coco", "bsds500"), "grabcut",
           also=", the mIoU-vs-clicks plot and points_per_mask.json")
    add_model_args(pt)
    pt.add_argument("--clicks", type=int, default=20, help="maximum clicks per object (default 20)")
    pt.add_argument("--zoom-in", action="store_true",
                    help="after the first click, predict in a crop around the object (RITM's zoom-in)")
    pt.add_argument("--zoom-expansion", type=float, default=None,
                    help="zoom-in crop expansion, >= 1 (default 1.4; needs --zoom-in)")
    pt.set_defaults(func=run_points)


# ---------------------------------------------------------------------- datasets
def _coco_dataset(args: argparse.Namespace) -> Any:
    from ..data.coco import CocoDataset, coco_subset

    if args.coco:
        if not args.images:
            raise ValueError("--coco needs --images DIR")
        return CocoDataset(args.coco, args.images)
    return coco_subset()


def _dataset(args: argparse.Namespace) -> Any:
    """The dataset the flags name.

    Raises:
        ValueError: it is missing, unreadable or empty (its metrics would be meaningless).
    """
    dataset = _open_dataset(args)
    if len(dataset) == 0:
        raise ValueError(f"dataset {getattr(dataset, 'name', args.dataset)!r} is empty: "
                         "nothing to evaluate")
    return dataset


def _open_dataset(args: argparse.Namespace) -> Any:
    """The dataset the flags name, without the emptiness check.

    Raises:
        ValueError: ``--images`` without ``--coco`` (the images would be ignored unseen) or
            ``--split`` for a dataset without splits (only BSDS500 has them), or the
            dataset's own errors.
    """
    if args.images and not args.coco:
        raise ValueError(f"--images {args.images} needs --coco ANNOTATIONS.json")
    if args.coco and args.dataset is not None:  # even --dataset coco would be ignored
        raise ValueError(f"--dataset {args.dataset} and --coco {args.coco} name two datasets; "
                         "give one")
    if args.dataset is None:
        args.dataset = getattr(args, "default_dataset", "coco")
    split_of = "a --coco json" if args.coco else args.dataset
    if args.split is not None and split_of != "bsds500":
        raise ValueError(f"--split applies to --dataset bsds500 only; {split_of} has no splits")
    split = "test" if args.split is None else args.split
    if args.coco or args.dataset == "coco":
        return _coco_dataset(args)
    if args.dataset == "grabcut":
        from ..data.interactive import GrabCut

        return GrabCut()
    if args.dataset == "berkeley":
        from ..data.interactive import Berkeley

        return Berkeley()
    if args.dataset == "bsds500":
        if args.task == "points":
            from ..data.regions import BSDSRegions

            return BSDSRegions(split)
        from ..data.bsds import BSDS500

        return BSDS500(split)
    raise ValueError(f"unknown dataset {args.dataset!r}")


# ---------------------------------------------------------------------- output
def _finish(report: dict[str, Any], args: argparse.Namespace, title: str) -> int:
    metrics = report["metrics"]
    meta = report["meta"]
    print(f"{title} on {meta.get('dataset')} ({meta.get('n_images')} images"
          + (f", {meta['n_failed']} failed" if meta.get("n_failed") else "") + ")")
    width = max((len(k) for k in metrics), default=10)
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    t = meta.get("timings", {})
    if t:
        print(f"  {'s/image':<{width}}  {t.get('mean_s_per_image', 0):.3f}")
    cache = meta.get("cache")
    if cache:
        print(f"  cache: {cache}")
    if meta.get("mirror_encoder_calls"):
        print(f"  mirrored-image encoder calls (flip TTA, outside the cache): {meta['mirror_encoder_calls']}")
    print(f"report: {Path(args.out) / 'report.json'}")
    # an evaluator that failed has no metrics in the report: not a success
    stages = [f for f in meta.get("failures", []) if "stage" in f]
    for f in stages:
        print(f"sam-composer eval: {f['stage']} failed: {f['error']}", file=sys.stderr)
    if meta.get("n_failed"):
        # the metrics are not the whole dataset's: a script reading the exit status must know
        print(f"sam-composer eval: {meta['n_failed']} image(s) failed; the metrics cover the "
              f"{meta.get('n_images', 0)} others (report.json: meta.failures)", file=sys.stderr)
    return 1 if stages or meta.get("n_failed") else 0


def _evaluate(args: argparse.Namespace, *what: Any, extra_meta: dict[str, Any], title: str) -> int:
    """``composer.evaluation.run`` of ``what`` (task or segmenter, dataset, evaluators) with
    ``--limit`` and ``--out``, then the table (:func:`_finish`); returns the exit status.

    On Ctrl-C (or SIGTERM) it first says how many images were evaluated and where their report
    is, as the folder commands do, and raises :class:`~composer.runner.records.RunInterrupted`
    with the line for standard error (an evaluation does not resume: a rerun starts afresh).
    A stop that lands after ``report.json`` was written (while the table prints) says the same
    two lines, the last one telling that the report is whole (its ``meta.interrupted`` is
    false): a bare "interrupted" left the user to guess whether it was written.
    """
    from ..evaluation import EvaluationInterrupted, run
    from ..runner.records import RunInterrupted, finished_message, interrupted_message

    path = Path(args.out) / "report.json"
    try:
        report = run(*what, limit=args.limit, out_dir=args.out, extra_meta=extra_meta)
    except EvaluationInterrupted as exc:
        meta = exc.report["meta"]
        done, total, failed = _counts(meta, args.limit)
        print(finished_message(done, total, failed, path, interrupted=True))
        # stopped while the metrics were computed: the images are done, some metrics are not
        for f in meta.get("failures", []):
            if "stage" in f:
                print(f"sam-composer eval: {f['stage']}: {f['error']}", file=sys.stderr)
        raise RunInterrupted(interrupted_message(done, total, failed, resumable=False)) from exc
    try:
        return _finish(report, args, title)
    except KeyboardInterrupt:
        done, total, failed = _counts(report["meta"], args.limit)
        print(finished_message(done, total, failed, path))
        raise RunInterrupted(f"interrupted: {done} of {total} images done, {failed} failed; "
                             "the report was written in full before the stop") from None


def _counts(meta: dict[str, Any], limit: int | None) -> tuple[int, int, int]:
    """(images evaluated, images the run was to evaluate, images failed) of a report's meta;
    the run was to evaluate the dataset's images, or ``--limit`` of them."""
    done, failed = int(meta.get("n_images") or 0), int(meta.get("n_failed") or 0)
    sizes = [int(v) for v in (meta.get("dataset_size"), limit) if v is not None]
    return done, (min(sizes) if sizes else done + failed), failed


class _ImageTask:
    """Adapts a classical edge method (image -> EdgeMap) to the task interface."""

    def __init__(self, task: Any, name: str) -> None:
        self.task = task
        self.config = getattr(task, "config", None)
        self.task_name = f"edges:{name}"  # report.json's meta.task

    def __call__(self, context: Any) -> Any:
        return self.task(context.image)


def _command_meta(args: argparse.Namespace) -> dict[str, Any]:
    """report.json's record of how it was made: the command line."""
    argv = getattr(args, "argv", None)
    return {"command": None if argv is None else ["sam-composer", *map(str, argv)]}


# ---------------------------------------------------------------------- commands
def run_edges(args: argparse.Namespace) -> int:
    check_limit(args.limit)  # before any model or data loads
    _check_grid(args.points_per_side)
    with tasks_import():
        from tasks.edges import parse_refine

    from ..evaluation import ItemGroundTruth
    from ..evaluation.edges_bsds import BoundaryEvaluator

    if args.method != "segmenter":
        # a classical method runs no segmenter: these flags would be ignored
        for flag, value, unset in (("--points-per-side", args.points_per_side, None),
                                   ("--edge-refine", args.edge_refine, None),
                                   ("--model", args.model, None),
                                   ("--checkpoint", args.checkpoint, None),
                                   ("--device", args.device, "auto")):
            if value != unset:
                raise ValueError(f"{flag} needs --method segmenter (--method {args.method} "
                                 "runs no segmenter)")
    if args.points_per_side is None:
        args.points_per_side = 16
    try:
        refine = parse_refine("auto" if args.edge_refine is None else args.edge_refine)
    except ValueError as e:
        raise ValueError(f"--edge-refine: {e}") from None
    dataset = _dataset(args)
    if args.method == "segmenter":
        with tasks_import():
            from tasks.edges import EdgeConfig, EdgeTask

        seg = load_model(args)
        print(describe(seg, prompted=False))
        cfg = EdgeConfig(points_per_side=args.points_per_side, refine=refine)
        setting = cfg.refine_setting(seg)
        how = "off" if setting is None else f"guided filter r={setting[0]} eps={setting[1]:g}"
        print(f"edge refinement: {how}")
        task: Any = EdgeTask(seg, cfg)
    else:
        with tasks_import():
            from tasks.edges_classic import make_classic_task

        # Canny's soft map encodes one hysteresis result per benchmark threshold: the same
        # grid, so a threshold t scores exactly Canny(high=t) (99 levels suit only 9 or 99)
        overrides = {"levels": args.thresholds} if args.method == "canny" else {}
        task = _ImageTask(make_classic_task(args.method, **overrides), args.method)
    ev = BoundaryEvaluator(thresholds=args.thresholds, workers=args.workers or None)
    wrapped = ItemGroundTruth(ev, lambda s: s.boundaries, prefix="edges")
    extra = _command_meta(args)
    if args.method == "segmenter":
        extra["edge_refine"] = setting  # "auto" resolved for this model
    return _evaluate(args, task, dataset, [wrapped], extra_meta=extra,
                     title=f"edges ({args.method})")


def _check_grid(points_per_side: int | None) -> None:
    """``--points-per-side`` >= 1, checked before any model or data loads."""
    if points_per_side is not None and points_per_side < 1:
        raise ValueError(f"--points-per-side must be >= 1, got {points_per_side}")


def run_proposals(args: argparse.Namespace) -> int:
    check_limit(args.limit)  # before any model or data loads
    _check_grid(args.points_per_side)
    with tasks_import():
        from tasks.proposals import ProposalConfig, ProposalTask

    from ..evaluation import ProposalEvaluator

    dataset = _dataset(args)
    seg = load_model(args)
    print(describe(seg, prompted=False))
    task = ProposalTask(seg, ProposalConfig(points_per_side=args.points_per_side))
    results = Path(args.out) / "results.json"
    ev = ProposalEvaluator(dataset.coco, results_file=results)
    return _evaluate(args, task, dataset, [ev], extra_meta=_command_meta(args),
                     title="proposals")


def run_instances(args: argparse.Namespace) -> int:
    check_limit(args.limit)  # before any model or data loads
    with tasks_import():
        from tasks.instances import InstanceConfig, InstanceTask, ScoredByPredictedIoU

    from ..evaluation import CocoEvaluator
    from ..models.detectors import (
        CocoJsonDetector,
        GroundTruthDetector,
        SlicedDetector,
        load_detector,
    )

    zoom = parse_zoom_small(args.zoom_small)
    if args.score_threshold is not None:
        if args.boxes != "detector":
            raise ValueError(f"--score-threshold needs --boxes detector (--boxes {args.boxes} "
                             "uses no detector)")
        if not 0.0 <= args.score_threshold <= 1.0:  # NaN fails too
            raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.detector is not None and args.boxes != "detector":
        raise ValueError(f"--detector needs --boxes detector (--boxes {args.boxes} uses no detector)")
    if args.slice is not None:
        if args.boxes != "detector":
            raise ValueError("--slice needs --boxes detector (stored boxes cannot be sliced)")
        try:
            SlicedDetector.check(args.slice, 0.2)
        except ValueError as exc:
            raise ValueError(f"--slice {args.slice}: {exc}") from None
    dataset = _dataset(args)
    stored = None
    if args.boxes not in ("gt", "detector"):  # read (and checked) before the model loads
        # named by the ground truth's categories, not COCO's: a user's json has its own ids,
        # and a box of a category it lacks is scored in none (a warning says so)
        stored = CocoJsonDetector(args.boxes, class_names=dataset.class_names)
        _check_boxes_match(stored.result_image_ids, dataset, args.boxes, args.limit)
    seg = load_model(args)
    print(describe(seg))
    detector: Any
    if args.boxes == "gt":
        detector = GroundTruthDetector(dataset)
    elif args.boxes == "detector":
        # AP rewards low-confidence detections: keep them (box AP 31.6 at 0.05 vs 28.3 at 0.3)
        floor = 0.05 if args.score_threshold is None else args.score_threshold
        detector = load_detector(args.detector, score_threshold=floor)
        if args.slice is not None:
            detector = SlicedDetector(detector, args.slice)
    else:
        detector = stored
    print(f"detector: {detector.model_id}")
    task: Any = InstanceTask(seg, detector, InstanceConfig(refine=args.refine, zoom_small=zoom))
    if args.boxes == "gt":
        task = ScoredByPredictedIoU(task)
    results = Path(args.out) / "results.json"
    ev = CocoEvaluator(dataset.coco, iou_types=("segm", "bbox"), results_file=results)
    return _evaluate(args, task, dataset, [ev], extra_meta=_command_meta(args),
                     title=f"instances (boxes: {args.boxes})")


def _check_boxes_match(with_boxes: frozenset[int], dataset: Any, boxes: str,
                       limit: int | None = None) -> None:
    """``--boxes RESULTS`` must have boxes for some image of the dataset: a results file of
    another json (other ids, or 0-based ones) gave every image no boxes, and AP 0, unsaid.
    Results that match only in part, with boxes for ids the dataset lacks while images to be
    evaluated (the first ``limit``) have none, are a warning naming a few of each: ids
    numbered from 0 against a json's 1, 2, ... match all but one image, each the wrong one.

    Raises:
        ValueError: the results have entries and none is for an image of the dataset.
    """
    ids = getattr(dataset, "image_ids", None)
    if not with_boxes or ids is None:
        return
    name = getattr(dataset, "name", "the dataset")
    if with_boxes & set(ids):
        foreign = sorted(with_boxes - set(ids))
        boxless = sorted(set(ids[:limit]) - with_boxes)
        if foreign and boxless:
            print(f"sam-composer eval: warning: --boxes {boxes} has boxes for "
                  f"{len(foreign)} image id(s) that are not images of {name} (e.g. "
                  f"{', '.join(map(str, foreign[:3]))}; their boxes are not used) while "
                  f"{len(boxless)} image(s) to evaluate have none (e.g. "
                  f"{', '.join(map(str, boxless[:3]))}): are its ids numbered otherwise "
                  "(from 0)?", file=sys.stderr)
        return
    theirs = ", ".join(map(str, sorted(with_boxes)[:3]))
    ours = ", ".join(map(str, sorted(ids)[:3]))
    raise ValueError(f"--boxes {boxes}: none of its image ids (e.g. {theirs}) is an image id "
                     f"of {name} (e.g. {ours}); are the boxes another dataset's?")


def run_points(args: argparse.Namespace) -> int:
    check_limit(args.limit)  # before any model or data loads
    from ..evaluation import PointEvaluator

    if args.clicks < 1:
        raise ValueError(f"--clicks must be >= 1, got {args.clicks}")
    if args.zoom_expansion is not None and not args.zoom_in:
        raise ValueError("--zoom-expansion needs --zoom-in")
    zoom = None
    if args.zoom_in:  # built (and its expansion checked) before any model or data loads
        from ..interactive import ZoomIn

        expansion = ZoomIn.expansion if args.zoom_expansion is None else args.zoom_expansion
        if not (math.isfinite(expansion) and expansion >= 1.0):
            raise ValueError(f"--zoom-expansion must be a finite number >= 1, got {expansion}")
        zoom = ZoomIn(expansion=expansion)
    dataset = _dataset(args)
    seg = load_model(args)
    print(describe(seg))
    report_clicks = tuple(k for k in (1, 2, 3, 5, 9, 20) if k <= args.clicks)
    if zoom is not None:
        print(f"zoom-in: {zoom}")
    ev = PointEvaluator(max_clicks=args.clicks, report_clicks=report_clicks, zoom_in=zoom)
    return _evaluate(args, seg, dataset, [ev], extra_meta=_command_meta(args),
                     title="points")


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report.json written by any eval command."""
    return json.loads(Path(path).read_text())
