"""``sam-composer instances IMAGE|DIR --out DIR``: detector boxes -> instance masks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io.image import IMAGE_SUFFIXES
from ..io.visualize import write_json
from ..runner import error_text
from .common import add_model_args, describe, load_model

logger = logging.getLogger(__name__)


#: Folder mode writes ``<out>/summary.json``; an image with this stem gets a suffixed name.
SUMMARY_STEM = "summary"

#: ``--out`` help of the per-image commands (instances, text).
OUT_HELP = (
    "output folder: <stem>_overlay.png and <stem>.json per image; in folder mode images "
    "sharing a stem (x.jpg, x.png) are named <stem>_<ext> (x_jpg, x_png), and summary.json "
    "lists every image's outputs and the failed images"
)

#: Exit statuses of folder mode, for the command descriptions.
EXIT_HELP = (
    "Folder mode: an unreadable image is reported and skipped; exit status 0 when every image "
    "succeeded, 1 when some failed, 2 for unusable input (no images, bad flags)."
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
    p.add_argument("--max-dets", type=int, default=100, help="boxes per image (default 100)")
    p.add_argument("--limit", type=int, default=None, help="folder mode: only the first N images")
    p.add_argument("--out", required=True, help=OUT_HELP)
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
        "--score-threshold", type=float, default=0.3, help="detector score floor (default 0.3)"
    )


def load_detector_from_args(args: argparse.Namespace) -> Any:
    from ..models.detectors import TORCHVISION_ARCHS, load_detector

    kw: dict[str, Any] = {"score_threshold": args.score_threshold}
    if args.detector_weights:
        if args.detector not in TORCHVISION_ARCHS:
            raise ValueError("--detector-weights needs --detector set to a torchvision arch")
        kw["weights"] = args.detector_weights
    return load_detector(args.detector, **kw)


def check_limit(limit: int | None) -> None:
    """``--limit`` must be None (all images) or >= 1.

    Raises:
        ValueError: ``limit`` is 0 or negative.
    """
    if limit is not None and int(limit) < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")


def image_files(src: Path, limit: int | None = None) -> list[Path]:
    """The image itself, or the image files (:data:`IMAGE_SUFFIXES`) of a folder, sorted.

    Sub-folders are skipped even when named like images; ``limit`` keeps the first N.

    Raises:
        ValueError: a folder without images, or ``limit`` < 1.
        FileNotFoundError: ``src`` does not exist.
    """
    check_limit(limit)
    if src.is_dir():
        files = sorted(
            f for f in src.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
        )
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {src}")
        return files[:limit] if limit is not None else files
    if not src.is_file():
        raise FileNotFoundError(f"no such image or folder: {src}")
    return [src]


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


def write_result(dets: Any, image: Any, out: Path, stem: str) -> dict[str, Any]:
    """Overlay (masks and detector boxes) and JSON with class names, via write_detections.

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
    )


def process_images(
    command: str,
    src: Path,
    files: Sequence[Path],
    out: Path,
    process: Callable[[Path, str], dict[str, Any]],
) -> int:
    """Run ``process(path, output_stem)`` on each image; the exit status of the command.

    A single image (``src`` a file) is named by its stem and any error propagates (the CLI
    prints it on one line, exit status 2). In folder mode an image that fails is reported on
    one line (the traceback is logged at INFO, shown with -v) and skipped; ``<out>/summary.json`` lists each
    image's outputs (``process``'s dict) and the failures (file_name, error).

    Returns:
        0 when every image succeeded, 1 when some failed.
    """
    if not src.is_dir():
        process(files[0], files[0].stem)
        return 0
    images: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for path, stem in zip(files, output_stems(files, (SUMMARY_STEM,)), strict=True):
        try:
            images.append({"file_name": path.name, "output": stem, **process(path, stem)})
        except Exception as exc:  # one bad image must not stop the folder
            logger.info("%s: %s failed", command, path.name, exc_info=True)
            failures.append({"file_name": path.name, "error": error_text(exc)})
            print(f"{path.name}: failed: {failures[-1]['error']}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / f"{SUMMARY_STEM}.json"
    write_json(summary, {"command": command, "input": str(src), "images": images,
                         "failures": failures})
    print(f"{len(images)} of {len(files)} images done, {len(failures)} failed -> {summary}")
    return 1 if failures else 0


def run(args: argparse.Namespace) -> int:
    from tasks.base import TaskContext
    from tasks.instances import InstanceConfig, InstanceTask

    from ..embedding import EmbeddingCache
    from ..io.image import load_image

    src = Path(args.input)
    files = image_files(src, args.limit)
    seg = load_model(args)
    detector = load_detector_from_args(args)
    print(describe(seg))
    print(f"detector: {detector.model_id}")
    task = InstanceTask(seg, detector, InstanceConfig(refine=args.refine, max_dets=args.max_dets))
    cache = EmbeddingCache()
    out = Path(args.out)

    def one(path: Path, stem: str) -> dict[str, Any]:
        image = load_image(path)
        dets = task(TaskContext(image, path.stem, cache))
        written = write_result(dets, image, out, stem)
        if len(dets) == 0:
            print(f"{path.name}: {dets.meta.get('message', 'no detections')}")
        else:
            counts = Counter(dets.extras["class_name"].tolist())
            summary = ", ".join(f"{n} {c}" for c, n in counts.most_common())
            print(f"{path.name}: {len(dets)} instances ({summary}) -> {written['overlay']}, "
                  f"{written['json']}")
        return {"count": len(dets), "json": written["json"], "overlay": written["overlay"]}

    return process_images("instances", src, files, out, one)
