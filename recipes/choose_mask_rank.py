"""Choose how a first click's three masks are ranked: predicted IoU plus a weighted boundary contrast.

composer_tiny's IoU head under-rates whole objects (``first_click_slots.py``: on GrabCut the
largest mask is the best of three for 32 of 50 objects and ranked first 4 times).
:class:`composer.refine.ContrastRank` adds ``weight`` times the colour contrast across each
mask's boundary (one minus the Bhattacharyya coefficient of Lab histograms, ``bins`` per
channel, of ``band``-px strips inside and outside the mask) to the predicted IoU.

For every object of the tuning sets (``bsds_heldout`` and ``coco_tune``, the held-out training
data the mask refinement and flip TTA were chosen on; ``choose_mask_refine.py``) the point
protocol's first click goes through a ``ClickSession`` with the model's shipped refinement and
TTA and no ranking; its three masks are kept with their predicted IoU, their IoU with the ground
truth and their contrast under each (bins, band) variant. Prints, per variant, the first-click
mIoU (top-1 by the ranking score) of each set for each weight of the grid, and the weight with
the best mean over the tuning sets (the smallest among ties). Other sets (``first_click_slots``'
names) can be added to see what the choice does there; the choice uses the tuning sets only.

    OMP_NUM_THREADS=1 python recipes/choose_mask_rank.py --out runs/mask_rank

``--out`` keeps one ``SET.npy`` per set (columns: 3 predicted IoUs, 3 IoUs, then 3 contrasts
per variant in the printed order); a re-run loads them (``--fresh`` recomputes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import check_out_dir, one_line_errors  # noqa: E402
from first_click_slots import SETS, TUNING, dataset, first_click_masks, per_set_arrays  # noqa: E402

from composer.evaluation.points import mask_iou  # noqa: E402
from composer.refine import ContrastRank  # noqa: E402
from composer.segmenters import load_segmenter  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


def first_click_contrasts(seg: Any, items: Any, ranks: list[ContrastRank]) -> np.ndarray:
    """(objects, 6 + 3 * len(ranks)): predicted IoUs and IoUs of the three first-click masks
    (ranked by predicted IoU alone), then each rank's contrasts of those masks."""
    rows = []
    for _, image, gt, ignore, masks, scores in first_click_masks(seg, items):
        row = [*scores, *(mask_iou(m, gt, ignore) for m in masks)]
        for rank in ranks:
            row.extend(rank.contrasts(image, masks))
        rows.append(row)
    return np.asarray(rows, np.float64).reshape(-1, 6 + 3 * len(ranks))


def top1(a: np.ndarray, scores: np.ndarray) -> float:
    """Mean IoU of the mask with the highest score per object (0 for no objects)."""
    if len(a) == 0:
        return 0.0
    return float(a[np.arange(len(a)), scores.argmax(1) + 3].mean())


def ranked(a: np.ndarray, variant: int, weight: float) -> np.ndarray:
    """(objects, 3) ranking scores: predicted IoU + weight * the variant's contrast."""
    return a[:, :3] + weight * a[:, 6 + 3 * variant : 9 + 3 * variant]


def choose_weight(data: dict[str, np.ndarray], sets: list[str], variant: int,
                  weights: tuple[float, ...] = WEIGHTS) -> tuple[float, float]:
    """(weight, mean top-1 over ``sets``): the best weight, the smallest among ties."""
    best_w, best = weights[0], -1.0
    for w in sorted(weights):
        m = float(np.mean([top1(data[s], ranked(data[s], variant, w)) for s in sets]))
        if m > best + 1e-12:
            best_w, best = w, m
    return best_w, best


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(TUNING), choices=SETS)
    parser.add_argument("--model", default="composer_tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bins", nargs="+", type=int, default=[8, 16])
    parser.add_argument("--bands", nargs="+", type=float, default=[16.0, 32.0],
                        help="strip widths in pixels at a 512-px image side")
    parser.add_argument("--fresh", action="store_true", help="recompute sets saved in --out")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not set(TUNING) <= set(args.sets):
        parser.error(f"--sets must include the tuning sets {TUNING}")
    check_out_dir(parser, args.out)
    ranks = [ContrastRank(band=band, bins=bins) for band in args.bands for bins in args.bins]
    segs: list[Any] = []

    def compute(name: str) -> np.ndarray:
        if not segs:  # loaded once, and only when a set is not saved yet
            seg = load_segmenter(args.model, checkpoint=args.checkpoint, device=args.device)
            seg.mask_rank = None  # the masks ranked by predicted IoU alone; contrasts added here
            segs.append(seg)
        return first_click_contrasts(segs[0], dataset(name), ranks)

    data = per_set_arrays(Path(args.out), args.sets, args.fresh, compute)
    for name, a in data.items():
        if a.shape[1] != 6 + 3 * len(ranks):
            parser.error(f"{args.out}/{name}.npy was made with other --bins/--bands; add --fresh")

    names = list(data)
    tuning = list(TUNING)
    print(f"\nfirst-click mIoU (top-1 by predicted IoU + weight x contrast); choice on {', '.join(tuning)}")
    for v, rank in enumerate(ranks):
        print(f"\n### {rank.bins} bins, {rank.band:g}-px strips")
        print("| weight | " + " | ".join(names) + " | tuning mean |")
        print("|---|" + "---|" * (len(names) + 1))
        for w in WEIGHTS:
            vals = [top1(data[s], ranked(data[s], v, w)) for s in names]
            mean = float(np.mean([top1(data[s], ranked(data[s], v, w)) for s in tuning]))
            print(f"| {w:g} | " + " | ".join(f"{x:.3f}" for x in vals) + f" | {mean:.3f} |")
        w, m = choose_weight(data, tuning, v)
        print(f"best weight on the tuning sets: {w:g} (mean top-1 {m:.3f})")


if __name__ == "__main__":
    main()
