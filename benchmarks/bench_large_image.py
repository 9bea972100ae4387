"""A first click on a large photo: mask refinement and ranking at ``max_side`` against full resolution.

composer_tiny refines its masks with GrabCut in a band around their boundary
(``GrabCutRefine``) and ranks a first click's masks by the colour contrast across it
(``ContrastRank``). Both work in pixels of the image, so on a 10-megapixel photo they cost
seconds per mask. Above ``max_side`` (1024 by default) they now work on the mask's box scaled
to that side. This script upscales the first ``--images`` GrabCut images by ``--scale`` (cubic),
clicks the interior point farthest from the boundary (the evaluation protocol's first click)
and times embed + first click with the shipped settings, then with ``max_side=0`` (full
resolution, the behaviour before), in one run; it also reports the top mask's IoU with the
upscaled ground truth for both. Medians over the images; one torch thread.

``--amg-images N`` also times automatic mask generation (composer_tiny's thresholds, 32x32
grid) on the first N upscaled images with ``AmgConfig.max_side=1024`` against full
resolution (the official procedure), and reports how many masks each keeps and the mean best
IoU of the scaled run's masks with the full-resolution run's.

    python benchmarks/bench_large_image.py --scale 4 --images 10
    python benchmarks/bench_large_image.py --scale 8 --images 5
    python benchmarks/bench_large_image.py --scale 4 --images 0 --amg-images 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402


def _upscale(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0


def _amg(seg, data, args) -> dict[str, dict[str, float]]:  # noqa: ANN001
    import cv2
    from pycocotools import mask as mask_utils

    from composer.automatic import AutomaticMaskGenerator
    from composer.embedding import EmbeddingCache

    times: dict[str, list[float]] = {"amg max_side 1024": [], "amg full resolution": []}
    counts: dict[str, list[int]] = {k: [] for k in times}
    best: list[float] = []
    for i in range(min(args.amg_images, len(data))):
        image = cv2.resize(data[i].load_image(), None, fx=args.scale, fy=args.scale,
                           interpolation=cv2.INTER_CUBIC)
        cache = EmbeddingCache()
        cache.get(image, seg)  # both runs start from the cached embedding
        rles = {}
        for name, side in (("amg max_side 1024", 1024), ("amg full resolution", None)):
            t0 = time.perf_counter()
            dets = AutomaticMaskGenerator(seg, cache=cache, max_side=side).generate(image)
            times[name].append(time.perf_counter() - t0)
            counts[name].append(len(dets))
            rles[name] = dets.masks.to_coco_rles() if len(dets) and dets.masks is not None else []
        a, b = rles["amg max_side 1024"], rles["amg full resolution"]
        if a and b:
            best.extend(np.asarray(mask_utils.iou(a, b, [0] * len(b))).max(axis=1).tolist())
    base = float(np.median(times["amg full resolution"]))
    out = {}
    for name in times:
        med = float(np.median(times[name]))
        out[name] = {"median_s": med, "masks": float(np.mean(counts[name])), "speedup": base / med}
        print(f"{name:>20}: {med:7.1f} s per image (x{base / med:4.1f}), "
              f"{np.mean(counts[name]):.1f} masks per image")
    if best:  # none when either run kept no mask: np.min of nothing ended the run here
        print(f"scaled masks' best IoU with a full-resolution mask: mean {np.mean(best):.3f}, "
              f"min {np.min(best):.3f}")
    else:
        print("scaled masks' best IoU with a full-resolution mask: - (no masks to compare)")
    out["amg max_side 1024"]["mean_best_iou"] = float(np.mean(best)) if best else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=4, help="upscaling factor of the images")
    parser.add_argument("--images", type=int, default=10, help="first N GrabCut images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--amg-images", type=int, default=0, help="also time AMG on N images")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    check_at_least(parser, [("--scale", args.scale, 1), ("--threads", args.threads, 1),
                            ("--images", args.images, 0), ("--amg-images", args.amg_images, 0)])
    if args.images == 0 and args.amg_images == 0:
        parser.error("nothing to time: --images and --amg-images are both 0")
    check_json(parser, args.json)
    torch.set_num_threads(args.threads)
    import cv2

    from composer import load_segmenter
    from composer.data.interactive import GrabCut
    from composer.evaluation.points import mask_iou, next_click

    seg = load_segmenter("composer_tiny")
    settings = {
        "max_side (shipped)": (seg.mask_refine, seg.mask_rank),
        "full resolution": (dataclasses.replace(seg.mask_refine, max_side=0),
                            dataclasses.replace(seg.mask_rank, max_side=0)),
    }
    data = GrabCut()
    rows: dict[str, dict[str, list[float]]] = {k: {"s": [], "iou": []} for k in settings}
    size = None
    for i in range(min(args.images, len(data))):
        item = data[i]
        image = cv2.resize(item.load_image(), None, fx=args.scale, fy=args.scale,
                           interpolation=cv2.INTER_CUBIC)
        size = image.shape[:2]
        gt = _upscale(item.gt_mask, size)
        ignore = None if item.ignore is None else _upscale(item.ignore, size)
        click = next_click(gt, None, ignore)
        assert click is not None
        for name, (refine, rank) in settings.items():
            seg.mask_refine, seg.mask_rank = refine, rank
            t0 = time.perf_counter()
            emb = seg.embed(image)
            dets = seg.predict(emb, points=click[0][None, None], labels=np.array([[click[1]]]))
            rows[name]["s"].append(time.perf_counter() - t0)
            top = int(np.argmax(dets.scores))
            rows[name]["iou"].append(mask_iou(dets.masks.to_dense()[top], gt, ignore))
    seg.mask_refine, seg.mask_rank = settings["max_side (shipped)"]
    out: dict[str, dict[str, float]] = {}
    if size is not None:
        print(f"composer_tiny, first {len(rows['full resolution']['s'])} GrabCut images x{args.scale} "
              f"(the last {size[1]} x {size[0]} px, W x H), {args.threads} thread(s)")
        base = float(np.median(rows["full resolution"]["s"]))
        for name, r in rows.items():
            med = float(np.median(r["s"]))
            out[name] = {"median_s": med, "mean_iou": float(np.mean(r["iou"])), "speedup": base / med}
            print(f"{name:>20}: embed + first click {med:7.2f} s (x{base / med:4.1f}), "
                  f"top mask mIoU {np.mean(r['iou']):.3f}")
    if args.amg_images:
        out.update(_amg(seg, data, args))
    if args.json:
        args.json.write_text(json.dumps({"scale": args.scale, "images": args.images,
                                         "amg_images": args.amg_images,
                                         "threads": args.threads, "rows": out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
