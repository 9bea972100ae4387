"""Run a segmenter or a task over a dataset, feed evaluators, and write a report.

Two modes, chosen by what is passed:

- a **Segmenter** (``model_id``, ``embed``, ``predict``): the point protocol. Every ground-truth
  object of every image is clicked with :func:`~composer.evaluation.points.simulate_clicks`
  (each PointEvaluator's own settings) on one cached embedding per image. Objects are the
  item's ``gt_mask`` (GrabCut, Berkeley) or the non-crowd masks of its ``gt`` Detections
  (COCO/LVIS).
- a **Task** (any callable ``task(TaskContext) -> Detections | EdgeMap``): the output of each
  image goes to every evaluator's ``process(image_id, output)``, or to
  ``process_item(item, output)`` where an evaluator has it (see ``ItemGroundTruth``).

Dataset items need ``image_id`` and either ``load_image()``, ``image`` or ``path``. A failing
image is logged and recorded under ``meta["failures"]``; the run goes on, so the results
already computed are never lost. A failed image counts in no evaluator's metrics: evaluators
that processed it before another one failed on it give it back (``discard(image_id)``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write
from .._tasks_import import tasks_import
from ..embedding import EmbeddingCache
from ..io.image import load_image
from ..io.visualize import write_json
from ..structures import Detections
from .base import Evaluator, threshold_name

logger = logging.getLogger(__name__)

_CACHE_KEYS = ("hits", "misses", "encoder_calls", "disk_hits")


def _is_segmenter(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("model_id", "embed", "predict"))


def _is_point_evaluator(ev: Any) -> bool:
    return hasattr(ev, "run_clicks")


def _item_image(item: Any) -> np.ndarray:
    if hasattr(item, "load_image"):
        return item.load_image()
    image = getattr(item, "image", None)  # may be a property that reads the file
    if isinstance(image, np.ndarray):
        return load_image(image)
    if getattr(item, "path", None) is not None:
        return load_image(item.path)
    raise ValueError(f"dataset item {type(item).__name__} has no load_image(), image or path")


def point_targets(item: Any) -> list[tuple[Hashable, np.ndarray, np.ndarray | None]]:
    """The objects of one item to click: ``[(mask_id, gt (H, W) bool, ignore (H, W) bool | None)]``.

    Uses ``item.gt_mask`` / ``item.ignore`` when present, else the non-crowd, non-empty masks
    of ``item.gt`` (Detections; ``mask_id`` = ``extras["ann_id"]`` when present).

    Raises:
        ValueError: the item has neither.
    """
    if getattr(item, "gt_mask", None) is not None:
        return [(item.image_id, np.asarray(item.gt_mask, bool), getattr(item, "ignore", None))]
    gt = getattr(item, "gt", None)
    if isinstance(gt, Detections) and gt.masks is not None:
        keep = ~np.asarray(gt.extras.get("iscrowd", np.zeros(len(gt), bool)), bool)
        keep &= gt.masks.area > 0
        sel = gt[keep]
        ids = sel.extras.get("ann_id", np.flatnonzero(keep))
        dense = sel.masks.to_dense() if sel.masks is not None else np.zeros((0, 1, 1), bool)
        return [(int(i), m, None) for i, m in zip(ids, dense, strict=True)]
    raise ValueError(
        f"dataset item {type(item).__name__} has no gt_mask or gt Detections with masks"
    )


def _identity(x: Any) -> Any:
    return x


def _protocol(ev: Any) -> dict[str, Any]:
    """The click-protocol settings of a point evaluator, for the report."""
    zoom = getattr(ev, "zoom_in", None)
    return {
        "max_clicks": getattr(ev, "max_clicks", None),
        "use_prev_logits": getattr(ev, "use_prev_logits", None),
        "multimask_after_first": getattr(ev, "multimask_after_first", None),
        "zoom_in": None if zoom is None else dataclasses.asdict(zoom),
    }


def _iter_items(dataset: Any, limit: int | None) -> Iterator[tuple[int, Callable[[], Any]]]:
    """Yield (index, fetch) pairs so that a failing item read is caught per item."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        n = len(dataset) if limit is None else min(limit, len(dataset))
        for i in range(n):
            yield i, functools.partial(dataset.__getitem__, i)
        return
    for i, item in enumerate(dataset):
        if limit is not None and i >= limit:
            return
        yield i, functools.partial(_identity, item)


def _evaluator_settings(ev: Any) -> Any:
    """An evaluator's ``settings()`` (or that of the evaluator it wraps), as JSON; None."""
    for obj in (ev, getattr(ev, "evaluator", None)):
        settings = getattr(obj, "settings", None)
        if callable(settings):
            return _jsonable(settings())
    return None


def _code_version() -> dict[str, Any]:
    """The package version and, for a git checkout, its commit and whether it had changes."""
    from .. import __version__

    out: dict[str, Any] = {"version": __version__}
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        import subprocess

        try:
            git = ["git", "-C", str(root)]
            out["git_commit"] = subprocess.run(
                [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                check=True).stdout.strip()
            out["git_dirty"] = bool(subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                text=True, timeout=10, check=True).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass  # no git here: the version stands alone
    return out


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 64 else f"ndarray{obj.shape}"
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _model_id(runner: Any) -> str | None:
    for obj in (runner, getattr(runner, "segmenter", None), getattr(runner, "config", None)):
        mid = getattr(obj, "model_id", None)
        if isinstance(mid, str):
            return mid
    return None


def _segmenter_attr(runner: Any, name: str) -> Any:
    """``name`` of the run's promptable segmenter (the runner itself or its ``segmenter``),
    or None when neither has it set."""
    for obj in (runner, getattr(runner, "segmenter", None)):
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _mirror_calls(runner: Any) -> int:
    """The segmenter's ``mirror_encoder_calls`` so far (0 without a promptable segmenter)."""
    return int(_segmenter_attr(runner, "mirror_encoder_calls") or 0)


def _withdraw(evs: Sequence[Any], image_id: Hashable) -> list[str]:
    """Take a failed image back from the evaluators that already processed it.

    An image that fails in one evaluator's ``process`` would otherwise count in the metrics of
    the evaluators before it while the report lists it as failed (and the metrics would depend
    on the evaluators' order).

    Returns:
        The names of evaluators without ``discard(image_id)`` (they keep the image; the failure
        record says so).
    """
    kept = []
    for ev in evs:
        discard = getattr(ev, "discard", None)
        try:
            if not callable(discard):
                raise NotImplementedError
            discard(image_id)
        except NotImplementedError:
            kept.append(type(ev).__name__)
            logger.warning(
                "%s keeps failed image %r (it has no discard())", type(ev).__name__, image_id
            )
    return kept


def _write_json(path: Path, data: Any) -> None:
    write_json(path, _jsonable(data), indent=2)  # NaN (e.g. an undefined R50) -> null


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a signal the CLI turns into one) stopped :func:`run` after the images it
    finished were evaluated and, with ``out_dir``, written: ``report`` is that report (its
    ``meta["interrupted"]`` True). A KeyboardInterrupt, so callers that catch that still do."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__()
        self.report = report


def run(
    task_or_segmenter: Any,
    dataset: Iterable[Any],
    evaluators: Evaluator | Sequence[Evaluator],
    *,
    cache: EmbeddingCache | None = None,
    limit: int | None = None,
    out_dir: str | os.PathLike | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a segmenter (point protocol) or a task on a dataset.

    Args:
        task_or_segmenter: a Segmenter (point protocol; evaluators must be PointEvaluators) or a
            task callable ``(TaskContext) -> Detections | EdgeMap``.
        dataset: items with ``image_id`` and an image (see module docstring); indexable
            datasets are read item by item inside the per-image error guard.
        evaluators: one evaluator or several; each is ``reset()`` first.
        cache: shared embedding cache (default: a new in-memory one).
        limit: evaluate only the first ``limit`` items.
        out_dir: when given, write ``report.json`` (standard JSON: NaN metrics become null)
            and plots (and per-mask click records for the point protocol) there.
        extra_meta: more entries for ``meta`` (the CLI records its command line and the
            settings it resolved).

    Returns:
        ``{"metrics": {flat key: float}, "meta": {...}}``; meta holds ``model_id``, ``task``,
        ``config``, ``dataset``, ``n_images``, ``n_failed``, ``timings`` (seconds per image),
        ``cache`` (hits/misses/encoder_calls during this run), ``failures`` and ``files``.

    Raises:
        ValueError: no evaluators, a bad ``limit``, or evaluators that do not fit the mode
            (PointEvaluator with a task, any other evaluator with a bare segmenter).
        TypeError: ``task_or_segmenter`` is neither a segmenter nor callable.
        EvaluationInterrupted: Ctrl-C during the images: what was processed is evaluated
            (and written) first, and the report rides on the exception; Ctrl-C while an
            evaluator computes its metrics: the report is written without those of that
            evaluator and the ones after it (each a ``meta.failures`` entry with ``stage``).
    """
    with tasks_import():
        from tasks.base import TaskContext  # tasks sit above composer; import late

    evs: list[Any] = [evaluators] if hasattr(evaluators, "evaluate") else list(evaluators)  # type: ignore[arg-type]
    if not evs:
        raise ValueError("run needs at least one evaluator")
    if limit is not None and int(limit) < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    points_mode = _is_segmenter(task_or_segmenter)
    if not points_mode and not callable(task_or_segmenter):
        raise TypeError(
            f"expected a Segmenter or a task callable, got {type(task_or_segmenter).__name__}"
        )
    for ev in evs:
        if points_mode and not _is_point_evaluator(ev):
            raise ValueError(
                f"a bare segmenter runs the point protocol only; {type(ev).__name__} needs a task"
            )
        if not points_mode and _is_point_evaluator(ev):
            raise ValueError(f"{type(ev).__name__} needs a segmenter (point protocol), not a task")
    cache = EmbeddingCache() if cache is None else cache
    out_path = None if out_dir is None else Path(out_dir)
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    dataset_name = getattr(dataset, "name", type(dataset).__name__)
    for ev in evs:
        ev.reset()

    cache_start = {k: int(getattr(cache, k, 0)) for k in _CACHE_KEYS}
    mirror_start = _mirror_calls(task_or_segmenter)
    per_image: list[list[Any]] = []
    failures: list[dict[str, Any]] = []
    n_masks = 0
    zoom_calls = 0  # zoom-in crop embeddings (ClickSession.encoder_calls; outside the cache)
    interrupted = False
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t_run = time.perf_counter()
    ids = getattr(dataset, "image_ids", None)  # names an item whose read fails (COCO)
    for index, fetch in _iter_items(dataset, None if limit is None else int(limit)):
        image_id: Any = ids[index] if isinstance(ids, list) and index < len(ids) else None
        t0 = time.perf_counter()
        fed: list[Any] = []  # evaluators that already took this image
        try:
            item = fetch()
            image_id = item.image_id
            image = _item_image(item)
            if points_mode:
                emb = cache.get(image, task_or_segmenter)
                traces: dict[int, list[Any]] = {id(ev): [] for ev in evs}
                for mask_id, gt, ignore in point_targets(item):
                    for ev in evs:
                        tr = ev.run_clicks(
                            task_or_segmenter, emb, gt, ignore, image_id=image_id, image=image
                        )
                        tr.meta["mask_id"] = mask_id
                        zoom_calls += int(tr.meta.get("encoder_calls", 0))
                        traces[id(ev)].append(tr)
                for ev in evs:
                    ev.process(image_id, traces[id(ev)])
                    fed.append(ev)
                n_masks += len(traces[id(evs[0])])
            else:
                ctx = TaskContext(image, image_id, cache, {"dataset": dataset_name, "item": item})
                output = task_or_segmenter(ctx)
                for ev in evs:
                    if hasattr(ev, "process_item"):  # evaluators that need the item's GT
                        ev.process_item(item, output)
                    else:
                        ev.process(image_id, output)
                    fed.append(ev)
        except KeyboardInterrupt:
            interrupted = True
            _withdraw(fed, image_id)
            logger.warning("run interrupted at item %d; evaluating what was processed", index)
            break
        except Exception as exc:  # one bad image must not lose the rest of the run
            # one line; the traceback goes to meta["failures"] (and the log with --verbose)
            logger.error("image %r (item %d) failed: %s: %s", image_id, index,
                         type(exc).__name__, exc, exc_info=logger.isEnabledFor(logging.INFO))
            failure = {
                "index": index,
                "image_id": image_id,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=-4),
                "seconds": round(time.perf_counter() - t0, 6),
            }
            # a failed image must count in no evaluator: take it back from those that took it
            kept = _withdraw(fed, image_id)
            if kept:
                failure["kept_by"] = kept
            failures.append(failure)
            continue
        per_image.append([image_id, round(time.perf_counter() - t0, 6)])
        if (index + 1) % 10 == 0:
            logger.info(
                "%s: %d images done (%.2f s/image)",
                dataset_name,
                index + 1,
                (time.perf_counter() - t_run) / (index + 1),
            )

    metrics: dict[str, float] = {}
    for i, ev in enumerate(evs):
        try:
            result = ev.evaluate()
        except KeyboardInterrupt:
            # the images' work is done: a stop while the metrics are computed (COCOeval on a
            # large json takes minutes) still writes the report, and an evaluator's results
            # file (results.json) that it wrote before, instead of losing every image
            interrupted = True
            logger.warning("run interrupted while %s computed its metrics; writing the report "
                           "without them", type(ev).__name__)
            failures.extend({"stage": f"evaluate:{type(e).__name__}", "image_id": None,
                             "error": "interrupted before its metrics were computed",
                             "traceback": ""} for e in evs[i:])
            break
        except Exception as exc:
            logger.error("evaluator %s failed: %s: %s", type(ev).__name__, type(exc).__name__, exc,
                         exc_info=logger.isEnabledFor(logging.INFO))
            failures.append(
                {
                    "stage": f"evaluate:{type(ev).__name__}",
                    "image_id": None,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=-4),
                }
            )
            continue
        for k, v in result.items():
            key = k
            if key in metrics:
                key = f"{k}#{type(ev).__name__}"
                logger.warning("metric %s reported twice; the second is stored as %s", k, key)
            metrics[key] = float(v)

    secs = np.asarray([s for _, s in per_image], np.float64)
    total = time.perf_counter() - t_run
    # a task of automatic masks (edges, proposals) decodes its grid without the segmenter's
    # predict-time settings: they did not make its numbers
    prompted = getattr(task_or_segmenter, "uses_predict_settings", True)
    meta: dict[str, Any] = {
        "mode": "points" if points_mode else "task",
        "model_id": _model_id(task_or_segmenter),
        # predict-time mask refinement (as JSON) and flip TTA; None without a promptable segmenter
        "mask_refine": (_jsonable(_segmenter_attr(task_or_segmenter, "mask_refine"))
                        if prompted else None),
        # how multimask outputs are ranked (ContrastRank as JSON, None: predicted IoU alone)
        "mask_rank": (_jsonable(_segmenter_attr(task_or_segmenter, "mask_rank"))
                      if prompted else None),
        "flip_tta": (None if (flip := _segmenter_attr(task_or_segmenter, "flip_tta")) is None
                     or not prompted else bool(flip)),
        # where the network ran (timings depend on it); None without a promptable segmenter
        "device": (None if (dev := _segmenter_attr(task_or_segmenter, "device")) is None
                   else str(dev)),
        "task": getattr(task_or_segmenter, "task_name", None) or type(task_or_segmenter).__name__,
        "config": _jsonable(getattr(task_or_segmenter, "config", None)),
        # what a number needs to be reproduced: the data (split, files), the evaluators'
        # settings (e.g. the boundary benchmark's thresholds), the code
        "dataset": dataset_name,
        "dataset_split": _jsonable(getattr(dataset, "split", None)),
        "dataset_files": {k: str(v) for k in ("root", "ann_file", "image_dir")
                          if (v := getattr(dataset, k, None)) is not None},
        "evaluator_settings": [_evaluator_settings(ev) for ev in evs],
        "code": _code_version(),
        "dataset_size": len(dataset) if hasattr(dataset, "__len__") else None,  # type: ignore[arg-type]
        "limit": limit,
        "evaluators": [type(ev).__name__ for ev in evs],
        "protocols": [_protocol(ev) for ev in evs if _is_point_evaluator(ev)],
        "n_images": len(per_image),
        "n_failed": len([f for f in failures if "index" in f]),
        "interrupted": interrupted,
        "started_at": started,
        "timings": {
            "total_s": round(total, 6),
            "mean_s_per_image": float(secs.mean()) if secs.size else 0.0,
            "median_s_per_image": float(np.median(secs)) if secs.size else 0.0,
            "max_s_per_image": float(secs.max()) if secs.size else 0.0,
            "per_image": per_image,
        },
        "cache": {k: int(getattr(cache, k, 0)) - cache_start[k] for k in _CACHE_KEYS},
        # flip TTA's mirrored-image encoder passes (outside the cache)
        "mirror_encoder_calls": _mirror_calls(task_or_segmenter) - mirror_start,
        "failures": failures,
        "files": [],
    }
    if points_mode:
        meta["n_masks"] = n_masks
        meta["zoom_encoder_calls"] = zoom_calls
    meta.update(_jsonable(dict(extra_meta or {})))
    report = {"metrics": metrics, "meta": meta}
    if out_path is not None:
        _write_outputs(report, evs, out_path)
    if interrupted:
        raise EvaluationInterrupted(report)
    return report


def _write_outputs(report: dict[str, Any], evs: Sequence[Any], out_dir: Path) -> None:
    files: list[str] = report["meta"]["files"]
    for i, ev in enumerate(evs):
        if not _is_point_evaluator(ev):
            continue
        suffix = "" if i == 0 else f"_{i}"
        try:
            plot = out_dir / f"points_miou_vs_clicks{suffix}.png"
            plot_click_curves(
                ev, plot, title=f"{report['meta']['model_id']} on {report['meta']['dataset']}"
            )
            files.append(plot.name)
            per_mask = out_dir / f"points_per_mask{suffix}.json"
            _write_json(per_mask, ev.per_mask())
            files.append(per_mask.name)
        except Exception:  # a plot must never cost the report
            logger.exception("could not write point-protocol plots for %s", type(ev).__name__)
    for ev in evs:  # the results files evaluators wrote beside the report
        for obj in (ev, getattr(ev, "evaluator", None)):
            written = getattr(obj, "results_file", None)
            if written is not None and Path(written).is_file():
                path = Path(written).resolve()
                inside = path.is_relative_to(out_dir.resolve())
                files.append(str(path.relative_to(out_dir.resolve()) if inside else path))
    files.append("report.json")
    _remove_stale_outputs(out_dir, files)
    _write_json(out_dir / "report.json", report)


def _remove_stale_outputs(out_dir: Path, files: Sequence[str]) -> None:
    """Remove what an earlier report in ``out_dir`` listed as its files (``meta.files``) and
    this run does not write again: an ``eval instances`` ``results.json`` or a points plot must
    not sit beside another run's report as if it were that run's. Only names inside
    ``out_dir`` that the earlier report lists are removed, never other files."""
    try:
        old = json.loads((out_dir / "report.json").read_text())
        listed = old["meta"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not isinstance(listed, list):
        return
    root = out_dir.resolve()
    for name in listed:
        if not isinstance(name, str) or name in files or Path(name).is_absolute():
            continue
        path = (out_dir / name).resolve()
        if path.parent == root and path.is_file():
            path.unlink()


def plot_click_curves(evaluator: Any, path: str | os.PathLike, title: str = "") -> Path:
    """Save mIoU vs number of clicks (most confident and oracle) of a PointEvaluator as PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = evaluator.curves()
    k = np.arange(1, len(curves["mIoU"]) + 1)
    fig = Figure(figsize=(5.0, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(k, 100 * curves["mIoU"], marker="o", ms=3, label="most confident mask")
    ax.plot(
        k, 100 * curves["oracle_mIoU"], marker="s", ms=3, ls="--", label="oracle (best of returned)"
    )
    for thr in getattr(evaluator, "iou_thresholds", ()):
        ax.axhline(100 * thr, color="grey", lw=0.6, ls=":")
        ax.text(0.6, 100 * thr, f"{threshold_name(thr)}%", va="bottom", fontsize=7, color="grey")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0.5, k[-1] + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    n = len(getattr(evaluator, "traces", []))
    ax.set_title(f"{title} ({n} masks)" if title else f"{n} masks", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    # atomically, as the reports: a stop or an error while it is drawn (a second Ctrl-C after
    # an interrupted run) leaves the earlier plot whole, not a cut-off PNG
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png")
    return out
