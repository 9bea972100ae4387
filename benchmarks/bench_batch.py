"""Segment everything over a folder: one process against worker processes and Ray actors.

Runs ``tasks.everything.annotate_folder`` (what ``sam-composer everything FOLDER`` runs) on the
first ``--images`` BSDS500 test images with composer_tiny (or ``--model``), ``--points-per-side``
points, in this one process, once per setting:

- ``1 worker x T threads`` for T in 1 .. ``--cores`` (this process, no pickling);
- ``W workers x 1 thread`` for W = ``--cores`` (``LocalEngine``: spawned processes, each
  loading its own copy of the model);
- the same with ``RayEngine`` (skipped without Ray, or with ``--no-ray``).

Wall time includes starting the workers and loading the model in each, which is what a user
waits for. Each row also says whether its masks are bit-identical to the first row's (worker
processes with one thread each are; more torch threads sum in another order, which can move a
few boundary pixels). Command::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_batch.py --images 12 --cores 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="composer_tiny")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    check_at_least(ap, [("--images", args.images, 1), ("--points-per-side", args.points_per_side, 1),
                        ("--cores", args.cores, 1)])
    check_json(ap, args.json)

    import torch

    from composer.automatic import AmgConfig
    from composer.data.paths import dataset_dir
    from composer.runner import LocalEngine, RayEngine
    from composer.segmenters import load_segmenter
    from tasks.everything import annotate_folder

    src = dataset_dir("bsds500") / "images" / "test"
    files = sorted(src.glob("*.jpg"))[: args.images]
    seg = load_segmenter(args.model, device="cpu")
    config = AmgConfig.for_segmenter(seg, points_per_side=args.points_per_side)
    settings: list[tuple[str, int, object]] = [
        (f"1 worker x {t} thread(s)", t, None) for t in range(1, args.cores + 1)
    ]
    settings.append((f"{args.cores} local workers x 1 thread", 1, LocalEngine(args.cores, 1)))
    if not args.no_ray:
        try:
            import ray  # noqa: F401

            settings.append((f"{args.cores} Ray actors x 1 CPU", 1,
                             RayEngine(args.cores, init_kwargs={"num_cpus": args.cores})))
        except ImportError:
            print("Ray not installed: skipping the Ray engine")
    rows = []
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for f in files:
            (folder / f.name).symlink_to(f)
        for k, (name, threads, engine) in enumerate(settings):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            coco = annotate_folder(folder, seg, Path(tmp) / f"run{k}.json", config=config,
                                   engine=engine, resume=False)
            wall = time.perf_counter() - t0
            anns = [(a["image_id"], a["segmentation"]["counts"]) for a in coco["annotations"]]
            if reference is None:
                reference = anns
            same = anns == reference
            rows.append({"setting": name, "seconds": wall, "masks": len(anns), "same": same})
            print(f"{name:<28} {wall:7.1f} s  {len(anns)} masks  identical masks: {same}",
                  flush=True)
    base = rows[0]["seconds"]
    print(f"{len(files)} BSDS500 test images, {args.points_per_side}x{args.points_per_side} "
          f"points, {seg.model_id}; speed-up against {rows[0]['setting']}:")
    for r in rows:
        print(f"  {r['setting']:<28} {base / r['seconds']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
