"""Segment everything, SA-1B style, and annotate a folder of images into a COCO json.

The SA-1B generation settings (SAM paper, Appendix B; official notebook's "more masks"
example): 32x32 grid on the full image plus crops (``crop_n_layers`` 1 or 2, points per side
halved per layer), predicted IoU > 0.88, stability >= 0.92, small components and holes under
100 px removed, and masks covering more than 95% of the image dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from composer.automatic import AmgConfig, AutomaticMaskGenerator
from composer.embedding import EmbeddingCache
from composer.io.image import IMAGE_SUFFIXES, load_image
from composer.io.visualize import json_finite, write_json
from composer.runner import LocalEngine, error_text
from composer.runner.records import (
    RecordLog,
    RunInterrupted,
    finished_message,
    interrupted_message,
    json_normal,
    log_path,
    resume_message,
)
from composer.structures import Detections

from .base import TaskContext

logger = logging.getLogger(__name__)

#: SA-1B-style automatic mask generation settings: the paper's grid, cleanup and big-mask
#: filter with the official notebook's one crop layer and stability 0.92 (the paper's SA-1B
#: run, App. B: two crop layers, 2x2 and 4x4 windows, and stability 0.95).
SA1B_CONFIG = AmgConfig(
    points_per_side=32,
    pred_iou_thresh=0.88,
    stability_score_thresh=0.92,
    crop_n_layers=1,
    crop_n_points_downscale_factor=2,
    min_mask_region_area=100,
    max_mask_area_fraction=0.95,
)



class EverythingTask:
    """All masks of an image with SA-1B-style settings.

    Args:
        segmenter: any ``PromptableSegmenter``.
        config: AMG settings (default :data:`SA1B_CONFIG` with the segmenter's recommended
            quality thresholds, see ``AmgConfig.for_segmenter``; ``crop_n_layers=2`` is closer
            to the paper's 2x2 + 4x4 crops at about 3x the cost).
    """

    #: automatic masks are decoded without the segmenter's predict-time settings (mask
    #: refinement, flip TTA, contrast ranking); reports record them as not applied
    uses_predict_settings = False

    def __init__(self, segmenter: Any, config: AmgConfig | None = None) -> None:
        self.segmenter = segmenter
        self.config = AmgConfig.for_segmenter(segmenter, SA1B_CONFIG) if config is None else config
        if not isinstance(self.config, AmgConfig):
            raise TypeError(f"config must be an AmgConfig, got {type(self.config).__name__}")

    @property
    def model_id(self) -> str:
        return str(self.segmenter.model_id)

    def __call__(self, context: TaskContext | Any) -> Detections:
        """Masks of ``context.image``: Detections as from :class:`AutomaticMaskGenerator`."""
        if not isinstance(context, TaskContext):
            context = TaskContext(load_image(context), None, EmbeddingCache())
        dets = AutomaticMaskGenerator(self.segmenter, self.config, cache=context.cache).generate(
            context.image
        )
        dets.meta["image_id"] = context.image_id
        return dets


def detections_to_annotations(
    dets: Detections, image_id: int, first_id: int
) -> list[dict[str, Any]]:
    """COCO annotation records (SA-1B fields) of one image's masks.

    Boxes and crop boxes are XYWH in image pixels; ``segmentation`` is compressed RLE with
    ``counts`` as str; ``point_coords`` is ``[[x, y]]``; a NaN ``predicted_iou`` or
    ``stability_score`` is None (JSON null).
    """
    if dets.masks is None:
        raise ValueError("detections_to_annotations needs masks")
    rles = dets.masks.to_coco_rles()
    areas = dets.masks.area
    out = []
    for i in range(len(dets)):
        x0, y0, x1, y1 = (float(v) for v in dets.boxes[i])
        ann: dict[str, Any] = {
            "id": first_id + i,
            "image_id": image_id,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": rles[i],
            "area": int(areas[i]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
        }
        ex = dets.extras
        if "predicted_iou" in ex:
            ann["predicted_iou"] = json_finite(float(ex["predicted_iou"][i]))
        if "stability_score" in ex:
            ann["stability_score"] = json_finite(float(ex["stability_score"][i]))
        if "point_coords" in ex:
            ann["point_coords"] = [[float(v) for v in ex["point_coords"][i]]]
        if "crop_box" in ex:
            cx0, cy0, cx1, cy1 = (float(v) for v in ex["crop_box"][i])
            ann["crop_box"] = [cx0, cy0, cx1 - cx0, cy1 - cy0]
        out.append(ann)
    return out


#: Settings that logs of older versions hold and that do not decide the masks: the segmenter's
#: predict-time settings (mask refinement, mask ranking, flip TTA), which the generator never
#: used (it decodes its grid raw), and which `everything` no longer takes as flags.
_NOT_SETTINGS = (("segmenter",),)


def run_settings(task: EverythingTask) -> dict[str, Any]:
    """What decides the masks of an annotate_folder run, as stored in its record log.

    The model id and the AMG config (explicit point grids as a digest; ``points_per_batch`` and
    ``keep_low_res_logits`` left out: they do not change the masks). Not the segmenter's
    predict-time settings (mask refinement, mask ranking, flip TTA): automatic masks never
    use them. JSON-normal (lists, not tuples).
    """
    config = dataclasses.asdict(task.config)
    for key in ("points_per_batch", "keep_low_res_logits"):
        config.pop(key, None)
    if config.get("point_grids") is not None:
        digest = hashlib.sha1(json.dumps(config["point_grids"]).encode()).hexdigest()[:16]
        config["point_grids"] = f"sha1:{digest}"
    settings: dict[str, Any] = json_normal({"model_id": task.model_id, "config": config})
    return settings


@dataclasses.dataclass
class _FolderState:
    """A worker's state in :func:`annotate_folder`: the task and the embedding cache."""

    task: EverythingTask
    cache: EmbeddingCache | None
    own_cache: bool = True


@dataclasses.dataclass(frozen=True)
class _FolderSetup:
    """Picklable recipe of a worker's state: its own task on a copy of the segmenter."""

    segmenter: Any
    config: AmgConfig

    def __call__(self) -> _FolderState:
        return _FolderState(EverythingTask(self.segmenter, self.config), None)


def _annotate_pending(engine: Any, setup: Callable[[], _FolderState],
                      pending: list[tuple[int, str]], stamps: dict[str, int | None],
                      log: Any, write_every: int, write: Callable[[], Any]) -> None:
    """Run the pending images on ``engine``, logging each as it finishes and calling ``write``
    after every ``write_every`` new ones."""
    new = 0
    for k, rec, error in engine.imap(setup, _annotate_one, pending):
        path = Path(pending[k][1])
        if error is not None:  # the worker itself failed (died, or its setup failed)
            rec = {"file_name": path.name, "error": error}
        if "error" in rec:
            logger.warning("annotate_folder: %s failed: %s", path.name, rec["error"])
            if rec.get("traceback"):
                logger.info("annotate_folder: %s failed:\n%s", path.name, rec["traceback"])
        else:
            rec = {**rec, "mtime_ns": stamps[path.name]}
        log.append(rec)
        new += 1
        if new % write_every == 0:
            write()


def _mtime_ns(path: Path) -> int | None:
    """The file's modification time; None when it cannot be read (a broken link), so the
    image is tried and fails with its own error."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _annotate_one(state: _FolderState, item: tuple[int, str]) -> dict[str, Any]:
    """One image's record for the log: size and annotations, or the error and a traceback
    (an unreadable image or a failed generation is that image's failure, not the run's)."""
    image_id, name = item
    path = Path(name)
    cache = state.cache if state.cache is not None else EmbeddingCache()
    try:
        image = load_image(path)
        dets = state.task(TaskContext(image, image_id, cache, {"path": str(path)}))
        return {
            "file_name": path.name,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "annotations": detections_to_annotations(dets, image_id, 1),
        }
    except Exception as exc:  # one bad image must not stop the folder
        return {"file_name": path.name, "error": error_text(exc),
                "traceback": traceback.format_exc(limit=-3)}
    finally:
        if state.own_cache:
            cache.clear()


def annotate_folder(
    folder: str | os.PathLike[str],
    segmenter: Any,
    out_json: str | os.PathLike[str],
    *,
    config: AmgConfig | None = None,
    cache: EmbeddingCache | None = None,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    limit: int | None = None,
    resume: bool = True,
    write_every: int = 10,
    engine: Any = None,
    progress: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Segment every image of a folder and write one COCO-style annotation json.

    Each image's result is appended (and fsync'ed) to ``<out_json>.records.jsonl`` as soon as it
    is computed, and ``out_json`` is rewritten atomically (temporary file + rename) every
    ``write_every`` images and at the end, so an interruption never loses finished images.
    The log starts with the run's settings (the resolved input folder and
    :func:`run_settings`: model id and AMG config). With ``resume`` an
    existing record log is read back: finished images are skipped unless their file changed
    since (its modification time is logged with its masks), failed ones are retried; a log
    written with other settings, another folder's included, is refused (its masks would be
    mislabelled). A failing image is logged on one line at WARNING (traceback at
    INFO, shown with -v) and listed under ``"failures"``.

    Args:
        folder: folder of images (not recursive; hidden files skipped), processed in sorted
            file-name order; image ids are 1-based positions in that order.
        segmenter: any ``PromptableSegmenter``.
        out_json: output path.
        config: AMG settings (default as in :class:`EverythingTask`).
        cache: embedding cache (default: a new one, cleared after each image).
        suffixes: image file suffixes to include (case-insensitive).
        limit: process only the first ``limit`` (>= 1) images.
        resume: reuse the record log of an earlier run with the same settings; False starts
            afresh (the old log is deleted, ``out_json`` rewritten).
        write_every: rewrite ``out_json`` after this many new images.
        engine: where the images are segmented (``composer.runner``): None (this process), a
            ``LocalEngine(workers, threads)`` or a ``RayEngine``. With several workers each
            gets a copy of ``segmenter`` (pickled once) and its own embedding cache (``cache``
            is then unused); results are logged here as they finish, in any order, and the
            json is the same as a sequential run's.
        progress: where the run's lines for a person go (the CLI passes ``print``; None: the
            log at INFO): on resuming, how many images an earlier run finished
            ("resuming LOG: N of M images done earlier, K to go"); on Ctrl-C, how many images
            are done and failed and the json that lists them ("N of M images done, F failed
            (interrupted) -> OUT_JSON").

    Returns:
        The written COCO dict: ``info``, ``images`` (id, file_name, height, width),
        ``annotations`` (id, image_id, category_id, segmentation (RLE), area, bbox (XYWH),
        predicted_iou, stability_score, point_coords, crop_box (XYWH)), ``categories`` and
        ``failures`` (file_name, error).

    Raises:
        ValueError: ``folder`` is not a directory or has no images, ``limit`` or
            ``write_every`` < 1, or (``resume``) the log holds another run's settings.
        RunInterrupted: Ctrl-C (a KeyboardInterrupt), after the json of the images finished
            so far was written; its ``message`` says how many are done, of them how many by
            earlier runs, and how many failed ("interrupted: N of M images done (E earlier), F
            failed; run the same command to resume"; the CLI prints it on standard error).
    """
    src = Path(folder)
    if not src.is_dir():
        raise ValueError(f"not a folder: {src}")
    if write_every < 1:
        raise ValueError(f"write_every must be >= 1, got {write_every}")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    out_path = Path(out_json)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    wanted = {s.lower() for s in suffixes}
    files = sorted(
        p for p in src.iterdir()
        if p.suffix.lower() in wanted and not p.name.startswith(".") and not p.is_dir()
    )
    if not files:
        raise ValueError(f"no images ({', '.join(suffixes)}) in {src}")
    if limit is not None:
        files = files[: int(limit)]
    task = EverythingTask(segmenter, config)
    # the input folder is a setting: another folder's images of the same names are not done
    settings = {"input": str(src.resolve()), **run_settings(task)}
    log = RecordLog(log_path(out_path), settings, resume=resume,
                    overwrite_hint="--overwrite on the command line, resume=False in Python",
                    dropped=_NOT_SETTINGS)
    records = log.records
    own_cache = cache is None
    cache = EmbeddingCache() if cache is None else cache
    info: dict[str, Any] = {
        "description": "sam-composer annotate_folder (SA-1B-style automatic masks)",
        "model_id": task.model_id,
        "config": {
            k: (v if not isinstance(v, tuple) else "explicit grids")
            for k, v in dataclasses.asdict(task.config).items()
        },
        "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    def assemble() -> dict[str, Any]:
        images: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for image_id, path in enumerate(files, start=1):
            rec = records.get(path.name)
            if rec is None:
                continue
            if "error" in rec:
                failures.append({"file_name": path.name, "error": rec["error"]})
                continue
            if rec.get("mtime_ns") != stamps.get(path.name):
                continue  # the masks of a file replaced since, not redone yet (a run cut short)
            images.append(
                {
                    "id": image_id,
                    "file_name": path.name,
                    "height": rec["height"],
                    "width": rec["width"],
                }
            )
            for a in rec["annotations"]:
                anns.append({**a, "id": len(anns) + 1, "image_id": image_id})
        return {
            "info": info,
            "images": images,
            "annotations": anns,
            "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
            "failures": failures,
        }

    # each image's modification time is logged with its masks: one replaced since is redone
    stamps = {path.name: _mtime_ns(path) for path in files}
    pending = [
        (image_id, str(path))
        for image_id, path in enumerate(files, start=1)
        if path.name not in records or "error" in records[path.name]
        or records[path.name].get("mtime_ns") != stamps[path.name]
    ]
    say = progress if progress is not None else logger.info
    if len(pending) < len(files):
        say(resume_message(log.path, len(files) - len(pending), len(files)))
    engine = LocalEngine(1) if engine is None else engine
    setup: Callable[[], _FolderState]
    if isinstance(engine, LocalEngine) and engine.workers == 1:
        # this process: the caller's segmenter and cache, nothing pickled
        def setup() -> _FolderState:
            return _FolderState(task, cache, own_cache)
    else:
        setup = _FolderSetup(segmenter, task.config)
    with log:
        try:
            _annotate_pending(engine, setup, pending, stamps, log, write_every,
                              lambda: write_json(out_path, assemble(), fsync=True))
        except KeyboardInterrupt:
            # Ctrl-C: the json of the images finished so far (the log has them too), marked
            info["interrupted"] = True
            cut = assemble()
            write_json(out_path, cut, fsync=True)
            say(finished_message(len(cut["images"]), len(files), len(cut["failures"]),
                                 out_path, interrupted=True))
            raise RunInterrupted(interrupted_message(
                len(cut["images"]), len(files), len(cut["failures"]),
                len(files) - len(pending))) from None
    result = assemble()
    write_json(out_path, result, fsync=True)
    n_masks = len(result["annotations"])
    logger.info(
        "annotate_folder: %d images, %d masks, %d failures -> %s",
        len(result["images"]),
        n_masks,
        len(result["failures"]),
        out_path,
    )
    return result
