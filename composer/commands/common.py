"""Arguments and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_args(p: argparse.ArgumentParser, prompted: bool = True) -> None:
    """``--model``, ``--checkpoint``, ``--device`` and, for commands that prompt the segmenter
    (``prompted``), its predict-time settings ``--mask-refine``, ``--tta``, ``--mask-rank``:
    automatic mask generation (everything, edges, proposals) decodes its grid without them, so
    there they are not offered (they were accepted and ignored)."""
    p.add_argument("--model", default=None,
                   help="segmenter: vit_b, vit_l, vit_h, vit_t, composer_tiny, classic, onnx "
                        "(default: the best one available here)")
    p.add_argument("--checkpoint", default=None,
                   help="weights file or registered weights name (see `sam-composer weights "
                        "list`); for --model onnx, the folder `sam-composer export` wrote")
    if prompted:
        p.add_argument("--mask-refine", default="auto", metavar="auto|off|BAND[,ITERS]",
                       help="GrabCut refinement of returned masks in a band around their boundary: "
                            "the model's recommendation (auto, default), off, or the band's "
                            "half-width in pixels at a 512-px image side and GrabCut iterations")
        p.add_argument("--tta", default="auto", choices=("auto", "flip", "off"),
                       help="test-time augmentation of prompts without a previous mask (first "
                            "clicks, boxes): average with the mirrored image's output (flip), none "
                            "(off), or the model's recommendation (auto, default)")
        p.add_argument("--mask-rank", default="auto", metavar="auto|off|WEIGHT",
                       help="how a multimask prompt's masks are scored: predicted IoU plus WEIGHT "
                            "times the colour contrast at each mask's boundary, predicted IoU alone "
                            "(off), or the model's recommendation (auto, default)")
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help="where the network runs: CUDA when torch sees a GPU, else the CPU "
                        "(auto, default), or the device named; the classic backend always "
                        "runs on the CPU")


def parse_mask_refine(text: str) -> Any:
    """``--mask-refine``: "auto", None (off) or a GrabCutRefine."""
    from ..refine import GrabCutRefine

    text = str(text).strip().lower()
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    parts = text.replace(":", ",").split(",")
    try:
        if len(parts) > 2:
            raise ValueError(text)
        band = float(parts[0])
        iters = int(parts[1]) if len(parts) == 2 else GrabCutRefine.iters
    except ValueError:
        raise ValueError(f"--mask-refine must be auto, off or BAND[,ITERS], got {text!r}") from None
    try:
        return GrabCutRefine(band=band, iters=iters)
    except ValueError as exc:  # its own checks name the field ("band ..."), not the flag
        raise ValueError(f"--mask-refine {text}: {exc}") from None


def parse_mask_rank(text: str) -> Any:
    """``--mask-rank``: "auto", None (off) or a ContrastRank of that weight."""
    from ..refine import ContrastRank

    text = str(text).strip().lower()
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    try:
        return ContrastRank(weight=float(text))
    except ValueError:
        raise ValueError(f"--mask-rank must be auto, off or a weight >= 0, got {text!r}") from None


def load_model(args: argparse.Namespace) -> Any:
    from ..segmenters import load_segmenter

    seg = load_segmenter(
        args.model, checkpoint=args.checkpoint, device=getattr(args, "device", "auto")
    )
    refine = parse_mask_refine(getattr(args, "mask_refine", "auto"))
    if refine != "auto":
        seg.mask_refine = refine
    rank = parse_mask_rank(getattr(args, "mask_rank", "auto"))
    if rank != "auto":
        seg.mask_rank = rank
    tta = getattr(args, "tta", "auto")
    if tta != "auto":
        seg.flip_tta = tta == "flip"
    return seg


def segmenter_device(segmenter: Any) -> str:
    """The device a segmenter's network runs on ("cpu" for the classic backend)."""
    return str(getattr(segmenter, "device", "cpu"))


def describe(segmenter: Any, prompted: bool = True) -> str:
    """One line naming the backend and weights that ran, printed by every command; with
    ``prompted`` False (automatic masks, which the decoder scores itself) without the
    predict-time settings, which do not apply."""
    desc = getattr(segmenter, "description", None)
    line = f"segmenter: {segmenter.model_id}" + (f" ({desc})" if desc else "")
    line += f"; on {segmenter_device(segmenter)}"
    if not prompted:
        return line
    refine = getattr(segmenter, "mask_refine", None)
    if refine is not None:
        line += (f"; masks refined by GrabCut (band {refine.band:g} px at {refine.ref_size}, "
                 f"{refine.iters} iterations)")
    if getattr(segmenter, "flip_tta", False):
        line += "; first prompts averaged with the mirrored image (flip TTA)"
    rank = getattr(segmenter, "mask_rank", None)
    if rank is not None:
        line += f"; masks ranked by predicted IoU + {rank.weight:g} x boundary colour contrast"
    return line


def score_text(dets: Any, i: int) -> str:
    """"score S" of item ``i`` of ``dets``, with its predicted IoU when the score is a contrast
    ranking's (``mask_rank``: predicted IoU + weight x contrast)."""
    import numpy as np

    text = f"score {float(np.asarray(dets.scores)[i]):.3f}"
    extras = getattr(dets, "extras", None) or {}
    if "contrast" in extras and "predicted_iou" in extras:
        text += (f" (predicted IoU {float(extras['predicted_iou'][i]):.3f}, "
                 f"contrast {float(extras['contrast'][i]):.3f})")
    return text


def add_overwrite_arg(p: argparse.ArgumentParser) -> None:
    """``--overwrite`` of resumable folder runs (instances, text)."""
    p.add_argument(
        "--overwrite", action="store_true",
        help="folder mode: recompute every image instead of resuming an earlier run in --out "
             "(needed when the model or settings changed)",
    )


def add_worker_args(p: argparse.ArgumentParser) -> None:
    """``--workers``, ``--engine``, ``--threads-per-worker``, ``--ray-address`` of folder mode
    (see :func:`engine_from_args`)."""
    p.add_argument("--workers", type=int, default=1,
                   help="folder mode: images segmented in parallel, each worker with its own "
                        "copy of the model (default 1: this process)")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="folder mode: worker processes on this machine (local, default) or "
                        "Ray actors (ray; needs the ray extra; --ray-address for a cluster)")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="torch/OpenCV threads of each worker (default: 1 with several "
                        "workers or with --engine ray, else unchanged); with --engine ray "
                        "also the CPUs each worker reserves on one Ray node")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address for --engine ray (default: a local Ray instance)")


def engine_from_args(args: argparse.Namespace) -> Any:
    """The ``composer.runner`` engine of :func:`add_worker_args`' flags (one torch/OpenCV thread
    per worker unless ``--threads-per-worker`` says otherwise, when there are several workers or
    Ray actors).

    Raises:
        ValueError: ``--workers`` or ``--threads-per-worker`` < 1, or ``--ray-address`` without
            ``--engine ray``.
    """
    from ..runner import make_engine

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.threads_per_worker is not None and args.threads_per_worker < 1:
        raise ValueError(f"--threads-per-worker must be >= 1, got {args.threads_per_worker}")
    threads = args.threads_per_worker
    if threads is None and (args.workers > 1 or args.engine == "ray"):
        threads = 1
    return make_engine(args.engine, args.workers, threads, args.ray_address)


def runs_here(engine: Any) -> bool:
    """Whether ``engine`` (None: none) maps its function in this process (one local worker)."""
    from ..runner import LocalEngine

    return engine is None or (isinstance(engine, LocalEngine) and engine.workers == 1)


def zoom_small_setting(segmenter: Any, value: float | str) -> tuple[float, list[str]]:
    """``--zoom-small`` as a folder run records it: the fraction it resolves to for
    ``segmenter`` (0: off), and the spellings ("auto", "off") that resolve to the same, which a
    resumed run accepts in an earlier log (:class:`composer.runner.records.RecordLog`'s
    ``aliases``)."""
    from .._tasks_import import tasks_import

    with tasks_import():
        from tasks.instances import resolve_zoom_small

    fraction = resolve_zoom_small(segmenter, value)
    return fraction, [s for s in ("auto", "off") if resolve_zoom_small(segmenter, s) == fraction]


def parse_zoom_small(text: str) -> float | str:
    """``--zoom-small`` of box-prompted instance segmentation: "auto", "off" or a fraction in
    [0, 1] (``tasks.instances.InstanceConfig.zoom_small``).

    Raises:
        ValueError: anything else.
    """
    text = str(text).strip()
    if text in ("auto", "off"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--zoom-small must be auto, off or a fraction in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--zoom-small must be auto, off or a fraction in [0, 1], got {text!r}")
    return value
