"""Automatic mask generation: the official ``SamAutomaticMaskGenerator`` against ours.

Same seeded random ViT-B weights (``segment_anything.build_sam_vit_b()`` with no checkpoint,
``torch.manual_seed(seed)`` before building), same image, same settings (official defaults
unless overridden). Each generator runs once, in its own fresh subprocess, so peak memory is
not shared: the peak resident set size (``VmHWM`` from ``/proc/self/status``, reset with
``/proc/self/clear_refs`` just before ``generate``) and Python-heap peak (tracemalloc) are
measured around ``generate`` only. The time spent inside the image encoder and the mask
decoder is recorded too, so the post-processing cost can be read off.

Command (BSDS500 test image 100007, official defaults, 32x32 grid)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_amg.py --points-per-side 32
    python benchmarks/bench_amg.py --points-per-side 32 --device cuda   # on a GPU machine

Prints one row per generator and the ratios official / ours; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class _Timer:
    """Accumulates the wall time spent inside a wrapped callable."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn: Any) -> Any:
        # functools.wraps keeps fn's signature visible (SamPredictor looks for ``min_iou``)
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            _sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync()  # CUDA runs asynchronously: time the kernels, not their launch
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        return inner


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _build_model(seed: int, kind: str) -> Any:
    import torch
    from segment_anything import build_sam_vit_b

    torch.manual_seed(seed)
    model = build_sam_vit_b(checkpoint=None).eval()
    if kind == "composer":
        from composer.sam import build_sam

        ours = build_sam("vit_b", meta=False)
        ours.load_state_dict(model.state_dict(), strict=True)
        model = ours.eval()
    return model


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run one generator once in this process and return its measurements."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from composer.io.image import load_image

    image = load_image(args.image)
    model = _build_model(args.seed, args.model if args.impl == "ours" else "official")
    model = model.to(args.device)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # both sides in IEEE float32
        torch.backends.cudnn.allow_tf32 = False
        with torch.no_grad():  # warm-up: CUDA context, kernels, allocator (not timed)
            model.image_encoder(torch.zeros(1, 3, 1024, 1024, device=args.device))
        torch.cuda.reset_peak_memory_stats()
    enc, dec = _Timer(), _Timer()
    model.image_encoder.forward = enc.wrap(model.image_encoder.forward)
    model.mask_decoder.forward = dec.wrap(model.mask_decoder.forward)
    settings: dict[str, Any] = {"points_per_side": args.points_per_side}
    if args.no_filters:
        settings.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    if args.impl == "official":
        from segment_anything import SamAutomaticMaskGenerator

        gen = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **settings)
    else:
        from composer.automatic import AutomaticMaskGenerator
        from composer.predictor import SamPredictor

        predictor = SamPredictor(model)
        if args.no_iou_gate:
            predictor.skips_low_iou = False  # every prompt's masks are upscaled
        gen = AutomaticMaskGenerator(predictor, **settings)
    base_rss = _status_kb("VmRSS")
    reset = _reset_peak_rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = gen.generate(image)
    _sync()
    seconds = time.perf_counter() - t0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if args.impl == "official":
        rles = [a["segmentation"] for a in out]
    else:
        rles = out.masks.to_coco_rles()
    if args.masks_out:
        Path(args.masks_out).write_text(json.dumps(rles))
    return {
        "impl": args.impl,
        "model": args.model if args.impl == "ours" else "official",
        "seconds": seconds,
        "encoder_s": enc.seconds,
        "decoder_s": dec.seconds,
        "decoder_calls": dec.calls,
        "other_s": seconds - enc.seconds - dec.seconds,
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
        "peak_rss_reset": reset,
        "rss_before_mb": base_rss / 1024,
        "python_heap_peak_mb": py_peak / 2**20,
        "n_masks": len(rles),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "cuda_peak_mb": (torch.cuda.max_memory_allocated() / 2**20
                         if args.device.startswith("cuda") else None),
        "image_size": list(np.asarray(image).shape[:2]),
    }


def _run_worker(impl: str, args: argparse.Namespace, masks_out: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        impl,
        "--points-per-side",
        str(args.points_per_side),
        "--seed",
        str(args.seed),
        "--image",
        str(args.image),
        "--model",
        args.model,
        "--masks-out",
        masks_out,
        "--device",
        args.device,
    ]
    if args.no_filters:
        cmd.append("--no-filters")
    if args.no_iou_gate:
        cmd.append("--no-iou-gate")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _match(official_file: str, ours_file: str) -> dict[str, Any]:
    import numpy as np
    from pycocotools import mask as mask_utils

    a = json.loads(Path(official_file).read_text())
    b = json.loads(Path(ours_file).read_text())
    out: dict[str, Any] = {"official_masks": len(a), "ours_masks": len(b)}
    if a and b:
        iou = np.asarray(mask_utils.iou(a, b, [0] * len(b)))
        out["min_best_iou"] = float(iou.max(axis=1).min())  # each official mask in ours
        out["min_best_iou_ours"] = float(iou.max(axis=0).min())  # each of ours in official
    # with no mask on either side "same masks" says nothing (seeded random ViT-B weights keep
    # none at the official thresholds: their predicted IoUs stay below 0.1)
    out["vacuous"] = not a and not b
    out["same"] = len(a) == len(b) and (not a or min(out["min_best_iou"],
                                                      out["min_best_iou_ours"]) > 0.99)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--image", default=None, help="default: BSDS500 test/100007.jpg")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model",
        choices=("official", "composer"),
        default="official",
        help="network under our generator: the official modules (default) or "
        "composer.sam with the same weights loaded",
    )
    parser.add_argument(
        "--no-filters",
        action="store_true",
        help="pred_iou_thresh=0 and stability_score_thresh=0 for both (every mask "
        "is post-processed, as in the edge and proposal protocols)",
    )
    parser.add_argument(
        "--no-iou-gate",
        action="store_true",
        help="ours decodes the masks of every prompt (the decoder's min_iou gate off; same "
        "masks, the cost a model whose prompts all pass pred_iou_thresh would pay)",
    )
    parser.add_argument(
        "--only", choices=("official", "ours"), default=None, help="run one side only"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda: where both networks run"
    )
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument(
        "--worker", choices=("official", "ours"), default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--masks-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_at_least(parser, [("--points-per-side", args.points_per_side, 1)])
    if not args.worker:  # refused here, not as a worker's traceback
        check_json(parser, args.json)
        if args.image is not None and not Path(args.image).is_file():
            parser.error(f"--image {args.image} is not a file")
    if args.image is None:
        sys.path.insert(0, str(REPO))
        from composer.data.paths import dataset_dir

        args.image = str(dataset_dir("bsds500") / "images" / "test" / "100007.jpg")
    if args.worker:
        args.impl = args.worker
        print(json.dumps(worker(args)))
        return 0

    results: dict[str, Any] = {
        "points_per_side": args.points_per_side,
        "image": args.image,
        "seed": args.seed,
        "model": args.model,
        "no_filters": args.no_filters,
        "no_iou_gate": args.no_iou_gate,
        "cpu_count": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = {impl: os.path.join(tmp, f"{impl}.json") for impl in ("official", "ours")}
        for impl in ("official", "ours"):
            if args.only in (None, impl):
                try:
                    results[impl] = _run_worker(impl, args, files[impl])
                except RuntimeError as e:  # keep the other side's minutes of timing
                    results[f"{impl}_error"] = str(e)
                    print(e, file=sys.stderr)
        if "official" in results and "ours" in results:
            results["match"] = _match(files["official"], files["ours"])
    header = f"{'generator':<10} {'total s':>9} {'encoder s':>10} {'decoder s':>10} {'other s':>9} {'peak RSS MB':>12} {'py heap MB':>11} {'masks':>6}"
    settings = "no IoU/stability filters" if args.no_filters else "official defaults"
    if args.no_iou_gate:
        settings += ", ours without the IoU gate"
    print(
        f"AMG on {Path(args.image).name}, {args.points_per_side}x{args.points_per_side} grid, "
        f"{settings}, seed {args.seed}, ours on {args.model} modules, {os.cpu_count()} CPUs"
    )
    print(header)
    for impl in ("official", "ours"):
        r = results.get(impl)
        if r:
            print(
                f"{impl:<10} {r['seconds']:9.2f} {r['encoder_s']:10.2f} {r['decoder_s']:10.2f} "
                f"{r['other_s']:9.2f} {r['peak_rss_mb']:12.0f} {r['python_heap_peak_mb']:11.1f} {r['n_masks']:6d}"
            )
    if "official" in results and "ours" in results:
        o, u = results["official"], results["ours"]
        ratios = {
            "time": o["seconds"] / u["seconds"],
            "post_processing_time": o["other_s"] / max(u["other_s"], 1e-9),
            "peak_rss": o["peak_rss_mb"] / u["peak_rss_mb"],
        }
        results["ratios"] = ratios
        print(
            f"ratios official/ours: total time {ratios['time']:.2f}x, time outside encoder+decoder "
            f"{ratios['post_processing_time']:.1f}x, peak RSS {ratios['peak_rss']:.2f}x"
        )
        print(f"masks: {results['match']}")
        if results["match"]["vacuous"]:
            print("warning: neither generator kept a mask, so the masks were not compared "
                  "(try --no-filters)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if any(k.endswith("_error") for k in results) else 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
