"""Speed of the ``classic`` backend: embed per image and decode per prompt, side by side over
GrabCut iteration counts (the main cost knob).

One thread (OpenCV and torch), process CPU time and wall time, on every 10th Berkeley image
(481x321 or 321x481) with 5 random positive clicks each (3 masks per click)::

    .venv/bin/python benchmarks/bench_classic.py --iters 1 2

Prints one row per setting and the ratio of each to the first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, run_main  # noqa: E402

from composer.data.interactive import Berkeley  # noqa: E402
from composer.segmenters import ClassicConfig, ClassicSegmenter  # noqa: E402


def measure(iters: int, images: list[np.ndarray], clicks: int) -> dict[str, float]:
    seg = ClassicSegmenter(ClassicConfig(grabcut_iters=iters))
    out = {"embed_cpu": 0.0, "embed_wall": 0.0, "prompt_cpu": 0.0, "prompt_wall": 0.0}
    for i, img in enumerate(images):
        c, w = time.process_time(), time.perf_counter()
        emb = seg.embed(img)
        out["embed_cpu"] += time.process_time() - c
        out["embed_wall"] += time.perf_counter() - w
        rng = np.random.default_rng(i)
        h, wd = img.shape[:2]
        pts = np.stack([rng.uniform(0, wd, clicks), rng.uniform(0, h, clicks)], 1)[:, None]
        c, w = time.process_time(), time.perf_counter()
        seg.predict(emb, points=pts, labels=np.ones((clicks, 1), int), keep_low_res=False)
        out["prompt_cpu"] += (time.process_time() - c) / clicks
        out["prompt_wall"] += (time.perf_counter() - w) / clicks
    return {k: v / len(images) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, nargs="+", default=[1, 2], help="GrabCut iterations")
    ap.add_argument("--clicks", type=int, default=5, help="prompts per image")
    ap.add_argument("--step", type=int, default=10, help="use every N-th Berkeley mask")
    args = ap.parse_args(argv)
    check_at_least(ap, [("--clicks", args.clicks, 1), ("--step", args.step, 1),
                        ("--iters", min(args.iters), 1)])
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    ds = Berkeley()
    images = [ds[i].load_image() for i in range(0, len(ds), args.step)]
    rows = [(it, measure(it, images, args.clicks)) for it in args.iters]
    base = rows[0][1]
    print(f"{len(images)} Berkeley images, {args.clicks} clicks each, seconds (ratio to first row)")
    print(
        f"{'iters':>5} {'embed cpu':>14} {'embed wall':>14} {'prompt cpu':>14} {'prompt wall':>14}"
    )
    for it, r in rows:
        cells = [
            f"{r[k]:.3f} ({r[k] / base[k]:.2f})"
            for k in ("embed_cpu", "embed_wall", "prompt_cpu", "prompt_wall")
        ]
        print(f"{it:>5} " + " ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
