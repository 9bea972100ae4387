"""``sam-composer instances IMAGE|DIR --out DIR``: detector boxes -> instance masks."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._tasks_import import tasks_import
from ..io.image import IMAGE_SUFFIXES
from ..io.visualize import write_json
from ..runner import LocalEngine, error_text
from ..runner.records import (
    RecordLog,
    RunInterrupted,
    finished_message,
    interrupted_message,
    read_log,
    resume_message,
)
from ..runner.records import log_path as record_log_path
from .common import (
    add_model_args,
    add_overwrite_arg,
    add_worker_args,
    describe,
    engine_from_args,
    load_model,
    parse_zoom_small,
    runs_here,
    zoom_small_setting,
)

logger = logging.getLogger(__name__)


#: Folder mode writes ``<out>/summary.json``; an image with this stem gets a suffixed name.
SUMMARY_STEM = "summary"

#: ``--out`` help of the per-image commands (instances, text).
OUT_HELP = (
    "output folder: <stem>_overlay.png and <stem>.json per image; in folder mode images "
    "sharing a stem (x.jpg, x.png) are named <stem>_<ext> (x_jpg, x_png), and summary.json "
    "lists every image's outputs and the failed images (the input folder itself is refused)"
)

#: Exit statuses of folder mode, for the command descriptions.
EXIT_HELP = (
    "Folder mode: each image is logged as it finishes (summary.json.records.jsonl in --out, "
    "with the input folder, models and settings), so a rerun with the same settings resumes: "
    "finished images whose outputs are still there (and whose file has the logged time and size) "
    "are skipped, "
    "failed ones retried; an unreadable image is reported and skipped; Ctrl-C writes "
    "summary.json of the images finished so far and says how many (those of earlier runs "
    "too); exit "
    "status 0 when every image succeeded, 1 when some failed, 2 for unusable input (no images, "
    "bad flags, a log of other settings without --overwrite), 130 when interrupted (143: "
    "SIGTERM)."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "instances",
        help="instance masks from detector boxes (an image or a folder)",
        description="Boxes from a detector (default: the shipped SSD-MobileNet-v2 "
        "COCO) prompt the segmenter; all boxes of an image in one call. " + EXIT_HELP,
    )
    p.add_argument("input", help="image file or folder of images")
    add_model_args(p)
    add_detector_args(p)
    p.add_argument("--refine", action="store_true", help="one refinement pass (SAM paper App. D.4)")
    p.add_argument(
        "--zoom-small", default="auto", metavar="auto|off|FRACTION",
        help="boxes smaller than this fraction of the image's longer side are segmented again "
        "in a crop 3x their size, embedded on its own (auto, default: the model's "
        "recommendation, composer_tiny 0.35; off for SAM)",
    )
    p.add_argument("--max-dets", type=int, default=100, help="boxes per image (default 100)")
    p.add_argument("--limit", type=int, default=None, help="folder mode: only the first N images")
    p.add_argument("--out", required=True, help=OUT_HELP)
    add_overwrite_arg(p)
    add_worker_args(p)
    p.set_defaults(func=run)


def add_detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detector",
        default=None,
        help="ssd (default, shipped), a torchvision arch (fasterrcnn_resnet50_fpn_v2 ...; "
        "weights via `sam-composer weights`), or a COCO results .json",
    )
    p.add_argument("--detector-weights", default=None, help="torchvision detector weights file")
    p.add_argument(
        "--score-threshold", type=float, default=0.3,
        help="detector score floor, in [0, 1] (default 0.3)",
    )
    p.add_argument(
        "--slice", type=int, default=None, metavar="PIXELS",
        help="also run the detector on overlapping tiles of this side (>= 32) and merge the boxes "
        "(SAHI-style sliced detection, for small objects and large images; 400 was chosen "
        "for SSD on COCO photos; default: whole image only)",
    )
    p.add_argument(
        "--slice-overlap", type=float, default=None,
        help="fraction of a tile shared with its neighbour, in [0, 1) (default 0.2; needs --slice)",
    )


def load_detector_from_args(args: argparse.Namespace) -> Any:
    from ..models.detectors import TORCHVISION_ARCHS, SlicedDetector, load_detector

    kw: dict[str, Any] = {"score_threshold": args.score_threshold}
    if args.detector_weights:
        # spelled as load_detector reads it: "FCOS_ResNet50_FPN" is fcos_resnet50_fpn
        if str(args.detector).strip().lower() not in TORCHVISION_ARCHS:
            raise ValueError("--detector-weights needs --detector set to a torchvision arch")
        kw["weights"] = args.detector_weights
    check_slice_args(args)
    slice_size = getattr(args, "slice", None)
    if slice_size is None:
        return load_detector(args.detector, **kw)
    overlap = 0.2 if args.slice_overlap is None else args.slice_overlap
    return SlicedDetector(load_detector(args.detector, **kw), slice_size, overlap)


def check_slice_args(args: argparse.Namespace) -> None:
    """``--slice`` / ``--slice-overlap`` (call before loading models).

    Raises:
        ValueError: ``--slice-overlap`` without ``--slice``, or bad values of these or of
            ``--score-threshold`` (named by flag).
    """
    from ..models.detectors import SlicedDetector

    threshold = getattr(args, "score_threshold", None)
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:  # also NaN
        raise ValueError(f"--score-threshold must be in [0, 1], got {threshold}")
    slice_size = getattr(args, "slice", None)
    overlap = getattr(args, "slice_overlap", None)
    if slice_size is None:
        if overlap is not None:
            raise ValueError("--slice-overlap needs --slice")
        return
    overlap = 0.2 if overlap is None else overlap
    try:
        SlicedDetector.check(slice_size, overlap)
    except ValueError as exc:
        raise ValueError(f"--slice {slice_size} --slice-overlap {overlap}: {exc}") from None


def check_limit(limit: int | None) -> None:
    """``--limit`` must be None (all images) or >= 1.

    Raises:
        ValueError: ``limit`` is 0 or negative.
    """
    if limit is not None and int(limit) < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")


def image_files(src: Path, limit: int | None = None) -> list[Path]:
    """The image itself, or the image files (:data:`IMAGE_SUFFIXES`) of a folder, sorted.

    Sub-folders are skipped even when named like images, and so are hidden files (names
    starting with "."; e.g. macOS's ``._photo.jpg`` metadata); a broken link is listed (its
    image then fails, named, rather than vanishing without a word); ``limit`` keeps the
    first N.

    Raises:
        ValueError: a folder without images, or ``limit`` < 1.
        FileNotFoundError: ``src`` does not exist.
    """
    check_limit(limit)
    if src.is_dir():
        files = sorted(
            f for f in src.iterdir()
            if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and not f.is_dir()
        )
        if not files:
            nested = any(f.is_dir() and not f.name.startswith(".") for f in src.iterdir())
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {src}"
                             + (" (its sub-folders are not read)" if nested else ""))
        return files[:limit] if limit is not None else files
    if not src.is_file():
        raise FileNotFoundError(f"no such image or folder: {src}")
    return [src]


_OVERLAY_OUTPUTS = ("its outputs (<stem>_overlay.png, <stem>.json) would overwrite input "
                    "images of those names and be read as images by the next run")


def check_out_not_input(src: Path, out: Path, why: str = _OVERLAY_OUTPUTS) -> None:
    """Folder mode must not write into the input folder (no folder command does): the
    ``<stem>_overlay.png`` files of ``instances`` and ``text`` would be read as images by the
    next run and would overwrite input images of that name; ``everything``'s
    ``annotations.json`` would replace a dataset's json of that name kept beside its images.

    Args:
        why: what writing there would do, for the message.

    Raises:
        ValueError: ``src`` is a folder and ``out`` is that folder.
    """
    if src.is_dir() and out.resolve() == src.resolve():
        raise ValueError(f"--out {out} is the input folder: {why}; choose another folder")


def output_stems(files: Sequence[Path], reserved: Sequence[str] = ()) -> list[str]:
    """Output-name stems of a folder's images, one per file, all distinct.

    ``path.stem``, except for images whose stem another image shares (case-insensitively, so
    the names stay distinct on any file system) or is in ``reserved``: those keep their suffix,
    ``x.jpg`` -> ``x_jpg``. A number is appended where a name still collides (``x_jpg_2``).
    """
    taken = {r.lower() for r in reserved}
    counts = Counter(f.stem.lower() for f in files)
    stems: list[str] = []
    for f in files:
        stem = f.stem
        if counts[stem.lower()] > 1 or stem.lower() in taken:
            stem = f"{f.stem}_{f.suffix.lstrip('.')}"
        base, n = stem, 1
        while stem.lower() in taken:
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def write_result(dets: Any, image: Any, out: Path, stem: str,
                 image_file: str | None = None, owned: bool = False) -> dict[str, Any]:
    """Overlay (masks and detector boxes) and JSON with class names, via write_detections
    (``owned``: a folder-mode run's own output folder).

    NaN scores are written as null, so the JSON stays valid.
    """
    import numpy as np

    from ..io.visualize import write_detections

    names = dets.meta.get("class_names", {})
    if dets.labels is not None:
        dets.extras["class_name"] = np.array(
            [str(names.get(int(c), c)) for c in dets.labels], dtype=object
        )
    dets.extras.pop("low_res_logits", None)
    return write_detections(
        dets,
        image,
        out,
        stem=stem,
        prompt_boxes=dets.boxes if len(dets) else None,
        extra_meta={"class_names": {str(k): v for k, v in names.items()}},
        mask_pngs=False,
        image_file=image_file,
        owned=owned,
    )


#: A folder-mode command's work on one image: ``process(path, output_stem)`` -> its summary
#: entry (``count``, ``json``, ``overlay``); it prints the image's progress line.
ImageFn = Callable[[Path, str], dict[str, Any]]

#: Builds a command's models once and gives its :data:`ImageFn` and the lines that name the
#: models (printed once by the command).
BuildFn = Callable[[argparse.Namespace], tuple[ImageFn, list[str]]]


@dataclasses.dataclass
class _FolderState:
    """A worker's state in folder mode: the image function, and whether to collect what it
    prints (worker processes: the main process prints it) or let it print (this process)."""

    process: ImageFn
    capture: bool


@dataclasses.dataclass(frozen=True)
class FolderWorker:
    """Picklable recipe of a folder-mode worker: ``build`` (a module-level function) on the
    command's flags, run once in each worker, so every worker loads its own models (the SSD
    detector, a ``cv2.dnn`` net, cannot be pickled) and reuses them for all its images."""

    build: BuildFn
    args: dict[str, Any]

    @classmethod
    def from_args(cls, build: BuildFn, args: argparse.Namespace) -> FolderWorker:
        return cls(build, {k: v for k, v in vars(args).items() if k != "func"})

    def __call__(self) -> _FolderState:
        process, _ = self.build(argparse.Namespace(**self.args))
        return _FolderState(process, capture=True)


def _process_one(state: _FolderState, item: tuple[str, str]) -> dict[str, Any]:
    """One image: ``{"result": ...}`` or ``{"error": "Type: message", "traceback": ...}``, and
    what it printed (``"output"``, when captured); an exception is this image's failure."""
    path, stem = Path(item[0]), item[1]
    buf = io.StringIO()
    redirect = contextlib.redirect_stdout(buf) if state.capture else contextlib.nullcontext()
    try:
        with redirect:
            result = state.process(path, stem)
    except Exception as exc:  # one bad image must not stop the folder
        return {"error": error_text(exc), "traceback": traceback.format_exc(),
                "output": buf.getvalue()}
    return {"result": result, "output": buf.getvalue()}


def process_images(
    command: str,
    src: Path,
    files: Sequence[Path],
    out: Path,
    process: ImageFn | None,
    *,
    engine: Any = None,
    setup: FolderWorker | None = None,
    settings: dict[str, Any] | None = None,
    resume: bool = True,
    aliases: Mapping[tuple[str, ...], Sequence[Any]] | None = None,
    dropped: Sequence[tuple[str, ...]] = (),
) -> int:
    """Run ``process(path, output_stem)`` on each image; the exit status of the command.

    A single image (``src`` a file) is named by its stem and any error propagates (the CLI
    prints it on one line, exit status 2). In folder mode an image that fails is reported on
    one line (the traceback is logged at INFO, shown with -v) and skipped;
    ``<out>/summary.json`` lists each image's outputs (``process``'s dict) and the failures
    (file_name, error), both in input order.

    With ``settings`` (what decides the outputs; ``command`` is added) the run is resumable:
    each image's summary entry (or failure) is appended, fsync'ed, to
    ``<out>/summary.json.records.jsonl`` as it finishes (:class:`composer.runner.records.RecordLog`,
    first line the settings). With ``resume`` a rerun of the same settings skips the images
    that log lists as done under the same output stem whose ``<stem>.json`` and
    ``<stem>_overlay.png`` still exist and whose image file has the modification time and
    size the log recorded for it (records of older versions, which logged none: outputs not
    older than the image), retries the failed ones, and writes the summary of all;
    a log of other settings is refused (ValueError naming what changed; ``aliases``: other
    spellings of a recorded value that an earlier log may hold, ``dropped``: settings that do
    not decide this run's outputs, see :class:`~composer.runner.records.RecordLog`).
    ``resume=False`` deletes the log and the per-image outputs it lists, and recomputes every
    image.

    ``engine`` (``composer.runner``; None: this process) runs the images: with one local worker
    ``process`` runs here; otherwise each worker builds its own from ``setup`` and the images
    are spread over the workers, each one's progress printed (and logged) here as it finishes.
    The summary and the per-image outputs are the same as a one-process run's.

    On Ctrl-C the summary lists the images finished so far (with ``"interrupted": true``)
    and the log keeps them; then :class:`~composer.runner.records.RunInterrupted` (a
    KeyboardInterrupt) is raised, its message the line the CLI prints on standard error
    ("interrupted: N of M images done (E earlier), F failed; run the same command to resume").

    Returns:
        0 when every image succeeded, 1 when some failed.

    Raises:
        ValueError: (folder mode, ``resume``) the record log holds another run's settings.
        RunInterrupted: (folder mode) Ctrl-C, after the summary was written.
    """
    if not src.is_dir():
        if process is None:
            raise ValueError("process_images: a single image needs process")
        process(files[0], files[0].stem)
        return 0
    stems = output_stems(files, (SUMMARY_STEM,))
    summary = out / f"{SUMMARY_STEM}.json"
    if settings is not None and not resume:
        # --overwrite starts afresh: the earlier run's per-image outputs go with its log (they
        # stayed, and `convert` of the folder read them as this run's images)
        _, old_records = read_log(record_log_path(summary))
        for rec in old_records.values():
            stem = rec.get("output")
            if isinstance(stem, str) and stem and Path(stem).name == stem:
                _remove_outputs(out, stem)
    log = None if settings is None else RecordLog(
        record_log_path(summary), {"command": command, **settings}, resume=resume,
        aliases=aliases, dropped=dropped,
    )
    # done[k]: image k's summary entry {"file_name", "output", **result} or its failure
    done: dict[int, dict[str, Any]] = {}
    stamps = {k: _stamp(path) for k, path in enumerate(files)}
    for k, (path, stem) in enumerate(zip(files, stems, strict=True)):
        rec = None if log is None else log.records.get(path.name)
        if rec is not None and _finished(rec, out, stem, path, stamps[k]):
            done[k] = _in_folder({key: v for key, v in rec.items() if key not in _STAMP_KEYS},
                                 out)
        elif rec is not None and isinstance(rec.get("output"), str) and rec["output"] != stem \
                and rec["output"] not in stems:
            # the image's outputs moved to another stem (x.jpg is x_jpg once x.png came):
            # the old ones would be read as one more image by convert
            _remove_outputs(out, rec["output"])
    pending = [k for k in range(len(files)) if k not in done]
    earlier = len(done)
    if done and log is not None:
        print(resume_message(log.path, len(done), len(files)))
    items = [(str(files[k]), stems[k]) for k in pending]
    worker: Callable[[], _FolderState]
    if runs_here(engine):
        if process is None:
            raise ValueError("process_images: one worker in this process needs process")
        here = process

        def worker() -> _FolderState:
            return _FolderState(here, capture=False)
    else:
        if setup is None:
            raise ValueError("process_images: several workers need setup")
        worker = setup
    out.mkdir(parents=True, exist_ok=True)
    interrupted = False
    with log if log is not None else contextlib.nullcontext():
        try:
            for j, rec, error in (engine or LocalEngine(1)).imap(worker, _process_one, items):
                k = pending[j]
                name = files[k].name
                if error is not None:  # the worker itself failed (died, or its setup failed)
                    rec = {"error": error}
                if rec.get("output"):
                    sys.stdout.write(rec["output"])
                    sys.stdout.flush()
                entry = {"file_name": name, "output": stems[k]}
                if "error" in rec:
                    if rec.get("traceback"):
                        logger.info("%s: %s failed\n%s", command, name, rec["traceback"].rstrip())
                    print(f"{name}: failed: {rec['error']}", file=sys.stderr)
                    entry["error"] = rec["error"]
                else:
                    entry.update(rec["result"])
                # done before it is logged: a Ctrl-C while the log's line goes to disk must
                # not leave an image the log holds out of the summary and the count
                done[k] = entry
                if log is not None:  # with the file's stamp, which a resume compares
                    log.append({**entry, **stamps[k]} if stamps[k] else entry)
        except KeyboardInterrupt:
            # Ctrl-C: the images done so far keep their outputs, so the summary lists them
            interrupted = True
    images: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for k, path in enumerate(files):
        if interrupted and k not in done:
            continue  # never started or cut off: neither done nor failed
        rec = done.get(k, {"error": "RuntimeError: no result"})
        if "error" in rec:
            failures.append({"file_name": path.name, "error": rec["error"]})
        else:
            images.append(rec)
    record: dict[str, Any] = {"command": command, "input": str(src), "images": images,
                              "failures": failures}
    if interrupted:
        record["interrupted"] = True
    write_json(summary, record, fsync=True)
    print(finished_message(len(images), len(files), len(failures), summary, interrupted))
    if interrupted:
        raise RunInterrupted(interrupted_message(len(images), len(files), len(failures),
                                                 earlier, resumable=log is not None))
    return 1 if failures else 0


_STAMP_KEYS = ("mtime_ns", "bytes")


def _in_folder(rec: dict[str, Any], out: Path) -> dict[str, Any]:
    """A logged record with its output paths (``json``, ``overlay``, ``masks``) in ``out``:
    a folder moved or copied since logged them elsewhere."""
    rec = dict(rec)
    for key in ("json", "overlay"):
        if isinstance(rec.get(key), str):
            rec[key] = str(out / Path(rec[key]).name)
    if isinstance(rec.get("masks"), list):
        rec["masks"] = [str(out / Path(m).name) if isinstance(m, str) else m
                        for m in rec["masks"]]
    return rec


def _remove_outputs(out: Path, stem: str) -> None:
    """Delete ``out``'s outputs of output stem ``stem``: ``<stem>.json``,
    ``<stem>_overlay.png`` and ``<stem>_maskNNN.png``."""
    from ..io.visualize import mask_png_files

    for old in [out / f"{stem}.json", out / f"{stem}_overlay.png", *mask_png_files(out, stem)]:
        old.unlink(missing_ok=True)


def _stamp(image: Path) -> dict[str, int]:
    """The image file's modification time and size, as the record log keeps them ({} when
    it cannot be read: the image then fails in its turn)."""
    try:
        st = image.stat()
    except OSError:
        return {}
    return {"mtime_ns": st.st_mtime_ns, "bytes": st.st_size}


def _finished(rec: dict[str, Any], out: Path, stem: str, image: Path,
              stamp: dict[str, int]) -> bool:
    """Whether a logged record is an image finished under output stem ``stem`` whose outputs
    (``<stem>.json``, ``<stem>_overlay.png``) are still in ``out``, and whose file is the one
    it was computed from: the same modification time and size (``stamp``) as logged. An
    image replaced under the same name since is recomputed, also when the copy kept an older
    time (``cp -p``, ``rsync -a``, an unpacked archive). Records logged before stamps were
    kept count when their outputs are not older than the image."""
    if "error" in rec or rec.get("output") != stem:
        return False
    outputs = (out / f"{stem}.json", out / f"{stem}_overlay.png")
    try:
        if not all(p.is_file() for p in outputs):
            return False
        if "mtime_ns" in rec:
            return bool(stamp) and all(rec.get(key) == stamp[key] for key in _STAMP_KEYS)
        return min(p.stat().st_mtime_ns for p in outputs) >= image.stat().st_mtime_ns
    except OSError:  # gone since
        return False


def build_processor(args: argparse.Namespace) -> tuple[ImageFn, list[str]]:
    """The models of ``args`` (segmenter, detector) and the per-image function on them.

    What decides the outputs is recorded in ``args.run_settings`` (the folder run's settings):
    the segmenter's model id (weights fingerprint) and mask settings, the detector's id (with
    its slicing) and score floor, and the task config (refine, max boxes, zoom ...).
    """
    with tasks_import():
        from tasks.base import TaskContext
        from tasks.instances import InstanceConfig, InstanceTask

    from ..embedding import EmbeddingCache
    from ..io.image import load_image
    from ..runner.records import segmenter_settings

    seg = load_model(args)
    detector = load_detector_from_args(args)
    header = [describe(seg), f"detector: {detector.model_id}"]
    cfg = InstanceConfig(refine=args.refine, max_dets=args.max_dets,
                         zoom_small=parse_zoom_small(args.zoom_small))
    task = InstanceTask(seg, detector, cfg)
    config = dataclasses.asdict(cfg)
    config["zoom_small"], spellings = zoom_small_setting(seg, cfg.zoom_small)
    args.run_settings = {
        "model_id": seg.model_id,
        "segmenter": segmenter_settings(seg),
        "detector": {"model_id": detector.model_id, "score_threshold": args.score_threshold},
        "config": config,
    }
    args.run_settings_aliases = {("config", "zoom_small"): spellings}
    if task.zoom_fraction:
        header.append(f"small boxes (longer side < {task.zoom_fraction:g} of the image's) "
                      "segmented again in a crop")
    cache = EmbeddingCache()
    out = Path(args.out)

    def one(path: Path, stem: str) -> dict[str, Any]:
        cache.clear()  # each image comes once: the last one's embeddings would only fill memory
        image = load_image(path)
        dets = task(TaskContext(image, path.stem, cache))
        written = write_result(dets, image, out, stem, image_file=path.name,
                               owned=Path(args.input).is_dir())
        if len(dets) == 0:
            print(f"{path.name}: {dets.meta.get('message', 'no detections')}")
        else:
            counts = Counter(dets.extras["class_name"].tolist())
            summary = ", ".join(f"{n} {c}" for c, n in counts.most_common())
            print(f"{path.name}: {len(dets)} instances ({summary}) -> {written['overlay']}, "
                  f"{written['json']}")
        return {"count": len(dets), "json": written["json"], "overlay": written["overlay"]}

    return one, header


def run_folder_command(command: str, build_fn: BuildFn, args: argparse.Namespace) -> int:
    """``instances``/``text``: check the input and worker flags, load the models here (bad flags
    fail before any worker starts) and print what loaded, then :func:`process_images`.

    The run's settings are the input folder (resolved) and what ``build_fn`` recorded in
    ``args.run_settings`` (model ids and every option that changes the outputs), so a folder
    run resumes only its own settings on its own images (``--overwrite``: recompute every
    image)."""
    src = Path(args.input)
    files = image_files(src, args.limit)
    check_out_not_input(src, Path(args.out))
    engine = engine_from_args(args)  # single-image mode checks the flags and ignores them
    process: ImageFn | None
    process, header = build_fn(args)
    print("\n".join(header))
    if src.is_dir() and not runs_here(engine):
        process = None  # each worker loads its own models: free this copy
    # the input folder is a setting: another folder's images of the same names are not done
    settings = {"input": str(src.resolve()), **(getattr(args, "run_settings", None) or {})}
    return process_images(command, src, files, Path(args.out), process, engine=engine,
                          setup=FolderWorker.from_args(build_fn, args), settings=settings,
                          resume=not getattr(args, "overwrite", False),
                          aliases=getattr(args, "run_settings_aliases", None),
                          dropped=getattr(args, "run_settings_dropped", ()))


def run(args: argparse.Namespace) -> int:
    parse_zoom_small(args.zoom_small)  # bad values fail before the models load
    check_slice_args(args)
    if args.max_dets < 1:
        raise ValueError(f"--max-dets must be >= 1, got {args.max_dets}")
    return run_folder_command("instances", build_processor, args)
