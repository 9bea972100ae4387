"""Automatic mask generation with reused chunk buffers against fresh ones, side by side.

The generator upsamples the kept masks of each prompt batch to the image size in chunks of up
to 64 MB and thresholds them three times (two stability counts, the mask). Tensors that large
come from glibc as fresh memory maps, and the kernel zeroes every page on first touch, so a
chunk whose buffers are allocated afresh pays a page fault per 4 KB it writes. The generator
takes them from a ``composer.amg_utils.Scratch`` instead, allocated on the first chunk of a
crop and reused by the later ones. This script runs composer_tiny's generator (its default
settings) on the same images both ways in one process, alternating which goes first, and
checks that the masks, scores and stability scores are identical:

- ``reused``: the shipped code;
- ``fresh``: ``Scratch.take`` hands out a new tensor on every call (what every chunk did
  before, when its maps, boolean masks and int32 counts were new tensors).

Per image set it prints the median seconds per image (wall, user and system CPU time of the
process) and the median minor page faults per image, and the ratios fresh / reused.

Command (one thread, as in the notes)::

    OMP_NUM_THREADS=1 python benchmarks/bench_amg_scratch.py --images 5
    OMP_NUM_THREADS=1 python benchmarks/bench_amg_scratch.py --images 2 --scale 2.5   # ~2 MP
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402


def _usage() -> tuple[float, float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


def _images(args: argparse.Namespace) -> dict[str, list[np.ndarray]]:
    import cv2

    from composer.data.paths import dataset_dir
    from composer.io.image import load_image

    sets = {
        "BSDS500 test": sorted((dataset_dir("bsds500") / "images" / "test").glob("*.jpg")),
        "COCO subset": sorted((dataset_dir("coco_val2017_tiny80") / "val2017").glob("*.jpg")),
    }
    out = {}
    for name, files in sets.items():
        if len(files) < args.images:
            raise SystemExit(f"{name}: {len(files)} images, --images {args.images}")
        arrs = [load_image(f) for f in files[: args.images]]
        if args.scale != 1.0:
            arrs = [cv2.resize(a, None, fx=args.scale, fy=args.scale,
                               interpolation=cv2.INTER_LINEAR) for a in arrs]
        out[name] = arrs
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--images", type=int, default=5, help="first N images of each set")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="resize every image by this factor first (2.5: about 2 MP)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    check_at_least(parser, [("--threads", args.threads, 1), ("--images", args.images, 1),
                            ("--scale", args.scale, 0.1)])
    check_json(parser, args.json)
    torch.set_num_threads(args.threads)
    from composer import load_segmenter
    from composer.amg_utils import Scratch
    from composer.automatic import AutomaticMaskGenerator

    reused_take = Scratch.take

    def fresh_take(self: Scratch, name: str, shape: Any, like: torch.Tensor,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        self._bufs.pop(name, None)  # drop the old buffer: every call allocates anew
        return reused_take(self, name, shape, like, dtype)

    seg = load_segmenter("composer_tiny")
    amg = AutomaticMaskGenerator(seg)
    sets = _images(args)
    amg.generate(next(iter(sets.values()))[0])  # warm-up
    rows: list[dict[str, Any]] = []
    print(f"composer_tiny AMG (default settings), {args.threads} thread(s), scale {args.scale:g}, "
          "median per image")
    print(f"  {'set':14s} {'variant':8s} {'pixels':>9s} {'masks':>6s} {'wall s':>7s} "
          f"{'user s':>7s} {'sys s':>7s} {'faults':>9s}")
    for set_name, images in sets.items():
        stats: dict[str, list[tuple[float, float, float, int]]] = {"reused": [], "fresh": []}
        n_masks = 0
        for i, image in enumerate(images):
            order = ("reused", "fresh") if i % 2 == 0 else ("fresh", "reused")
            results = {}
            for variant in order:
                Scratch.take = reused_take if variant == "reused" else fresh_take  # type: ignore[method-assign]
                try:
                    t0, u0, s0, f0 = _usage()
                    dets = amg.generate(image)
                    t1, u1, s1, f1 = _usage()
                finally:
                    Scratch.take = reused_take  # type: ignore[method-assign]
                stats[variant].append((t1 - t0, u1 - u0, s1 - s0, f1 - f0))
                results[variant] = dets
            a, b = results["reused"], results["fresh"]
            assert a.masks is not None and b.masks is not None
            same = (
                [r["counts"] for r in a.masks.rles] == [r["counts"] for r in b.masks.rles]
                and np.array_equal(np.asarray(a.scores), np.asarray(b.scores))
                and np.array_equal(a.extras["stability_score"], b.extras["stability_score"])
            )
            if not same:
                raise SystemExit(f"{set_name} image {i}: the two variants' masks differ")
            n_masks += len(a)
        pixels = int(np.median([im.shape[0] * im.shape[1] for im in images]))
        row: dict[str, Any] = {"set": set_name, "images": len(images), "pixels": pixels,
                               "masks_per_image": n_masks / len(images), "identical": True}
        for variant in ("reused", "fresh"):
            cols = list(zip(*stats[variant], strict=True))
            wall, user, sys_s = (statistics.median(c) for c in cols[:3])
            faults = int(statistics.median(cols[3]))
            row[variant] = {"wall_s": wall, "user_s": user, "sys_s": sys_s, "minor_faults": faults}
            print(f"  {set_name:14s} {variant:8s} {pixels:9d} {n_masks / len(images):6.1f} "
                  f"{wall:7.2f} {user:7.2f} {sys_s:7.2f} {faults:9d}")
        row["wall_ratio"] = row["fresh"]["wall_s"] / row["reused"]["wall_s"]
        print(f"  {set_name:14s} fresh / reused: wall {row['wall_ratio']:.2f}x, faults "
              f"{row['fresh']['minor_faults'] / max(1, row['reused']['minor_faults']):.1f}x; "
              "identical masks")
        rows.append(row)
    if args.json is not None:
        args.json.write_text(json.dumps({"threads": args.threads, "scale": args.scale,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
