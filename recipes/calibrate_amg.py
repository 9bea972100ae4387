"""Choose a segmenter's automatic-mask quality thresholds on BSDS500 val.

The official thresholds (predicted IoU > 0.88, stability >= 0.95) suit SAM's IoU head and
logit scale. Another model can be calibrated differently: composer_tiny's IoU head predicts
low (median 0.35 on grid prompts) and its soft 64x64 logits rarely reach stability 0.95, so at
the official values it keeps almost no mask. This recipe measures, on the val split only, how
well each (pred_iou_thresh, stability_score_thresh) pair's masks match the human regions, and
prints the best pair; the chosen values ship as the model's ``amg_thresholds`` (used by
``AutomaticMaskGenerator`` when no config is given).

Protocol: for each of the first ``--limit`` val images, every candidate mask of the grid
(``--points-per-side``, three outputs per point, no filters, no NMS) is computed once; each
threshold pair then filters them and applies box NMS 0.7, as the generator does. A kept mask is
correct when its IoU with some region of some annotator is >= 0.5 (precision); a region of an
annotator covering at least 0.5% of the image is found when some kept mask reaches IoU >= 0.5
with it (recall). F1 pools the counts over images.

Command (the values shipped for composer_tiny)::

    OMP_NUM_THREADS=1 python recipes/calibrate_amg.py --model composer_tiny --limit 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "recipes"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _cli import check_at_least, one_line_errors  # noqa: E402

from composer.amg_utils import box_nms  # noqa: E402
from composer.automatic import AmgConfig, AutomaticMaskGenerator  # noqa: E402
from composer.data.bsds import BSDS500  # noqa: E402

PRED_GRID = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.88)
STAB_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MATCH_IOU = 0.5
MIN_REGION_FRACTION = 0.005


def _regions(sample: Any) -> list[dict[str, Any]]:
    """COCO RLEs of every annotator's regions covering >= MIN_REGION_FRACTION of the image."""
    from pycocotools import mask as mask_utils

    out = []
    for annotation in sample.ground_truth:
        seg = annotation["segmentation"]
        min_area = MIN_REGION_FRACTION * seg.size
        for label in np.unique(seg):
            region = seg == label
            if region.sum() >= min_area:
                out.append(mask_utils.encode(np.asfortranarray(region.astype(np.uint8))))
    return out


def candidates(segmenter: Any, image: np.ndarray, points_per_side: int) -> dict[str, Any]:
    """Every mask of the grid with its predicted IoU, stability score and box."""
    amg = AutomaticMaskGenerator(
        segmenter,
        AmgConfig(
            points_per_side=points_per_side,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            box_nms_thresh=1.0,
        ),
    )
    dets = amg.generate(image)
    return {
        "rles": dets.masks.to_coco_rles() if len(dets) else [],
        "pred_iou": np.asarray(dets.extras.get("predicted_iou", np.zeros(0)), dtype=np.float32),
        "stability": np.asarray(dets.extras.get("stability_score", np.zeros(0)), dtype=np.float32),
        "boxes": np.asarray(dets.boxes, dtype=np.float32).reshape(-1, 4),
    }


def score_pairs(items: list[dict[str, Any]], nms_thresh: float = 0.7) -> list[dict[str, float]]:
    """Pooled precision / recall / F1 of every threshold pair over the images in ``items``."""
    rows = []
    for pred_t in PRED_GRID:
        for stab_t in STAB_GRID:
            tp = kept = found = regions = 0
            for it in items:
                iou = it["iou"]  # (candidates, regions)
                regions += iou.shape[1]
                keep = (it["pred_iou"] > pred_t) & (it["stability"] >= stab_t)
                idx = np.flatnonzero(keep)
                if len(idx):
                    order = box_nms(
                        torch.from_numpy(it["boxes"][idx]),
                        torch.from_numpy(it["pred_iou"][idx]),
                        nms_thresh,
                    ).numpy()
                    idx = idx[order]
                kept += len(idx)
                if len(idx) and iou.shape[1]:
                    sub = iou[idx]
                    tp += int((sub.max(axis=1) >= MATCH_IOU).sum())
                    found += int((sub.max(axis=0) >= MATCH_IOU).sum())
            precision = tp / kept if kept else 0.0
            recall = found / regions if regions else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append(
                {
                    "pred_iou_thresh": pred_t,
                    "stability_score_thresh": stab_t,
                    "masks_per_image": kept / max(len(items), 1),
                    "precision": precision,
                    "recall": recall,
                    "f1": f1,
                }
            )
    return rows


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    from pycocotools import mask as mask_utils

    import composer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="composer_tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument(
        "--split",
        choices=("val", "train", "test"),
        default="val",
        help="choose thresholds on val; test only to report the chosen ones",
    )
    parser.add_argument("--limit", type=int, default=20, help="first N images of the split")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--json", default=None, help="write every row here")
    args = parser.parse_args(argv)
    check_at_least(parser, [("--limit", args.limit, 1), ("--points-per-side", args.points_per_side, 1)])
    if args.json:  # written at the end: a folder there, or a missing parent, would lose the rows
        if Path(args.json).is_dir():
            parser.error(f"--json {args.json} is a folder")
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)

    segmenter = composer.load_segmenter(args.model, checkpoint=args.checkpoint)
    dataset = BSDS500(args.split)
    n = min(args.limit, len(dataset))
    items = []
    t0 = time.perf_counter()
    for i in range(n):
        sample = dataset[i]
        cand = candidates(segmenter, sample.image, args.points_per_side)
        gt = _regions(sample)
        if cand["rles"] and gt:
            cand["iou"] = np.asarray(
                mask_utils.iou(cand["rles"], gt, [0] * len(gt)), dtype=np.float32
            ).reshape(len(cand["rles"]), len(gt))
        else:
            cand["iou"] = np.zeros((len(cand["rles"]), len(gt)), dtype=np.float32)
        del cand["rles"]
        items.append(cand)
    seconds = time.perf_counter() - t0
    rows = score_pairs(items)
    best = max(rows, key=lambda r: r["f1"])
    official = next(
        r for r in rows if r["pred_iou_thresh"] == 0.88 and r["stability_score_thresh"] == 0.95
    )
    print(
        f"{args.model} on BSDS500 {args.split} (first {n} images, {args.points_per_side}x"
        f"{args.points_per_side} grid, {seconds / n:.1f} s per image)"
    )
    print(
        f"{'pred_iou':>8} {'stability':>9} {'masks/img':>9} {'precision':>9} {'recall':>7} {'F1':>6}"
    )
    for r in rows:
        mark = " <- best" if r is best else (" <- official" if r is official else "")
        print(
            f"{r['pred_iou_thresh']:8.2f} {r['stability_score_thresh']:9.2f} "
            f"{r['masks_per_image']:9.1f} {r['precision']:9.3f} {r['recall']:7.3f} "
            f"{r['f1']:6.3f}{mark}"
        )
    print(
        f"best: pred_iou_thresh {best['pred_iou_thresh']}, stability_score_thresh "
        f"{best['stability_score_thresh']} (F1 {best['f1']:.3f}; official values F1 "
        f"{official['f1']:.3f}, {official['masks_per_image']:.1f} masks per image)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "best": best}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
