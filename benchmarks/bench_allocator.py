"""glibc's heap thresholds fixed (``composer.allocator.tune_allocator``) against its defaults.

Each variant runs in its own fresh process (the thresholds are per process), twice,
alternating (tuned, default, tuned, default), on the same work with composer_tiny and its
shipped settings:

- ``embed``: the encoder pass of each of the first ``--images`` GrabCut images;
- ``first click``: the protocol's first click on it (flip TTA, refinement, contrast ranking);
- ``later click``: four corrective clicks, each fed the previous mask's logits;
- ``amg``: automatic masks (composer_tiny's thresholds, 32x32 grid) of the first
  ``--amg-images`` COCO-subset images.

Prints the median seconds of each step per variant (over both runs), the ratio default / tuned
and the minor page faults per step, and checks that both variants produced the same masks
(a hash of every output).

Command (one thread, as in the notes)::

    OMP_NUM_THREADS=1 python benchmarks/bench_allocator.py --images 8 --amg-images 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402

STEPS = ("embed", "first click", "later click", "amg")


def _child(images: int, amg_images: int, threads: int, tune: bool) -> dict[str, Any]:
    from composer.allocator import tune_allocator

    tuned = tune_allocator() if tune else False
    import torch

    torch.set_num_threads(threads)
    from composer import load_segmenter
    from composer.automatic import AutomaticMaskGenerator
    from composer.data.interactive import GrabCut
    from composer.data.paths import dataset_dir
    from composer.evaluation.points import next_click
    from composer.io.image import load_image

    seg = load_segmenter("composer_tiny", device="cpu")
    digest = hashlib.sha256()
    times: dict[str, list[float]] = {s: [] for s in STEPS}
    faults: dict[str, list[int]] = {s: [] for s in STEPS}

    def timed(step: str, fn: Any) -> Any:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        out = fn()
        times[step].append(time.perf_counter() - t0)
        faults[step].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        return out

    def add(dets: Any) -> None:
        for rle in dets.masks.rles:
            digest.update(rle["counts"])
        digest.update(np.asarray(dets.scores, np.float32).tobytes())

    data = GrabCut()
    items = [data[i] for i in range(min(images, len(data)))]
    seg.predict(seg.embed(items[0].load_image()), points=np.array([[[5.0, 5.0]]]),
                labels=np.ones((1, 1)))  # warm-up
    for it in items:
        image = it.load_image()
        emb = timed("embed", lambda: seg.embed(image))  # noqa: B023
        click = next_click(it.gt_mask, None, it.ignore)
        assert click is not None
        pts, lbl = [click[0]], [click[1]]
        dets = timed("first click", lambda: seg.predict(  # noqa: B023
            emb, points=np.array([pts], float), labels=np.array([lbl])))  # noqa: B023
        add(dets)
        best = int(np.argmax(dets.scores))
        mask, logits = dets.masks.to_dense()[best], dets.extras["low_res_logits"][best : best + 1]
        for _ in range(4):
            click = next_click(it.gt_mask, mask, it.ignore)
            if click is None:
                break
            pts.append(click[0])
            lbl.append(click[1])
            dets = timed("later click", lambda: seg.predict(  # noqa: B023
                emb, points=np.array([pts], float), labels=np.array([lbl]),  # noqa: B023
                mask_input=logits, multimask=False))  # noqa: B023
            add(dets)
            mask, logits = dets.masks.to_dense()[0], dets.extras["low_res_logits"][0:1]
    amg = AutomaticMaskGenerator(seg)
    coco = sorted((dataset_dir("coco_val2017_tiny80") / "val2017").glob("*.jpg"))[:amg_images]
    for path in coco:
        image = load_image(path)
        add(timed("amg", lambda: amg.generate(image)))  # noqa: B023
    return {"tuned": tuned, "times": times, "faults": faults, "digest": digest.hexdigest()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--images", type=int, default=8, help="first N GrabCut images")
    parser.add_argument("--amg-images", type=int, default=2, help="first N COCO-subset images")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=("tuned", "default"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_at_least(parser, [("--threads", args.threads, 1), ("--images", args.images, 1),
                            ("--amg-images", args.amg_images, 0)])
    if args.child:
        out = _child(args.images, args.amg_images, args.threads, args.child == "tuned")
        print(json.dumps(out))
        return 0
    check_json(parser, args.json)
    runs: dict[str, list[dict[str, Any]]] = {"tuned": [], "default": []}
    for variant in ("tuned", "default", "tuned", "default"):
        env = dict(os.environ)
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
        env["SAM_COMPOSER_TUNE_MALLOC"] = "1" if variant == "tuned" else "0"
        cmd = [sys.executable, __file__, "--child", variant, "--threads", str(args.threads),
               "--images", str(args.images), "--amg-images", str(args.amg_images)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
        runs[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not all(r["tuned"] for r in runs["tuned"]):
        raise SystemExit("tune_allocator() did not apply here (not glibc?): nothing to compare")
    digests = {r["digest"] for rs in runs.values() for r in rs}
    if len(digests) != 1:
        raise SystemExit(f"the variants' masks differ: {sorted(digests)}")
    print(f"composer_tiny, {args.threads} thread(s), {args.images} GrabCut images, "
          f"{args.amg_images} COCO images; median seconds per step over 2 runs of each variant")
    print(f"  {'step':12s} {'n':>4s} {'tuned s':>9s} {'default s':>10s} {'default/tuned':>14s} "
          f"{'faults tuned':>13s} {'faults default':>15s}")
    rows = []
    for step in STEPS:
        med: dict[str, float] = {}
        flt: dict[str, int] = {}
        n = 0
        for variant, rs in runs.items():
            values = [t for r in rs for t in r["times"][step]]
            if not values:
                break
            n = len(rs[0]["times"][step])
            med[variant] = statistics.median(values)
            flt[variant] = int(statistics.median([f for r in rs for f in r["faults"][step]]))
        if len(med) < 2:
            continue
        ratio = med["default"] / med["tuned"]
        rows.append({"step": step, "n": n, "tuned_s": med["tuned"], "default_s": med["default"],
                     "ratio": ratio, "faults_tuned": flt["tuned"],
                     "faults_default": flt["default"]})
        print(f"  {step:12s} {n:4d} {med['tuned']:9.3f} {med['default']:10.3f} {ratio:13.2f}x "
              f"{flt['tuned']:13d} {flt['default']:15d}")
    print("  same masks and scores in all four runs")
    if args.json is not None:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
