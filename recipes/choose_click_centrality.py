"""Would ranking the first click's masks by how central the click lies in them help? (tried, not shipped)

A first click, the point protocol's as a user's, lies in the middle of the object meant: the
protocol clicks the interior point farthest from the boundary (``next_click``). So the
intended mask should hold the click near its own farthest-from-boundary point, while a part
cut through the object, or a mask spilling into the background, tends to hold it off-centre.
The *centrality* of a click in a mask is the click's distance to the mask's boundary over the
largest such distance in the mask (the same zero-padded Euclidean distance transform as the
protocol's): 1 at the mask's most interior point, 0 outside it.

For every object of the sets the point protocol's first click goes through a ``ClickSession``
with the model's shipped refinement and flip TTA and no ranking (as in ``choose_mask_rank.py``);
its three masks are kept with their predicted IoU, their IoU with the ground truth, their
boundary contrast under the shipped :class:`composer.refine.ContrastRank` and the click's
centrality. Prints the first-click mIoU (top-1 by predicted IoU + ``wc`` x contrast + ``wk`` x
centrality) of each set over a grid of both weights, and the pair with the best mean over the
tuning sets (``bsds_heldout`` and ``coco_tune``; the smallest weights among ties).

    OMP_NUM_THREADS=1 python recipes/choose_click_centrality.py --sets bsds_heldout coco_tune \\
        grabcut berkeley --out runs/click_centrality

``--out`` keeps one ``SET.npy`` per set (columns: 3 predicted IoUs, 3 IoUs, 3 contrasts, 3
centralities); a re-run loads them (``--fresh`` recomputes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import check_out_dir, one_line_errors  # noqa: E402
from first_click_slots import SETS, TUNING, dataset, first_click_masks, per_set_arrays  # noqa: E402

from composer.evaluation.points import mask_iou, next_click  # noqa: E402
from composer.refine import ContrastRank  # noqa: E402
from composer.segmenters import load_segmenter  # noqa: E402

CONTRAST_WEIGHTS = (0.0, 1.0, 1.5, 2.0, 3.0)
CENTRALITY_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def click_centrality(mask: np.ndarray, x: int, y: int) -> float:
    """The click's distance to the boundary of ``mask`` over the mask's largest such distance
    (the image border counts as boundary); 0 when the click is outside the mask."""
    m = np.asarray(mask, bool)
    if not m[y, x]:
        return 0.0
    dist = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    return float(dist[y, x] / dist.max())


def first_click_features(seg: Any, items: Any, rank: ContrastRank) -> np.ndarray:
    """(objects, 12): predicted IoUs, IoUs, contrasts and click centralities of the three
    first-click masks (ranked by predicted IoU alone)."""
    rows = []
    for _, image, gt, ignore, masks, scores in first_click_masks(seg, items):
        click = next_click(gt, None, ignore)  # the click first_click_masks made (deterministic)
        assert click is not None
        x, y = (int(v) for v in click[0])
        rows.append([*scores, *(mask_iou(m, gt, ignore) for m in masks),
                     *rank.contrasts(image, masks), *(click_centrality(m, x, y) for m in masks)])
    return np.asarray(rows, np.float64).reshape(-1, 12)


def top1(a: np.ndarray, scores: np.ndarray) -> float:
    """Mean IoU of the mask with the highest score per object (0 for no objects)."""
    if len(a) == 0:
        return 0.0
    return float(a[np.arange(len(a)), scores.argmax(1) + 3].mean())


def ranked(a: np.ndarray, wc: float, wk: float) -> np.ndarray:
    """(objects, 3) ranking scores: predicted IoU + wc * contrast + wk * centrality."""
    return a[:, :3] + wc * a[:, 6:9] + wk * a[:, 9:12]


def choose_weights(data: dict[str, np.ndarray], sets: list[str]) -> tuple[float, float, float]:
    """(wc, wk, mean top-1 over ``sets``): the best pair of the grid, the smallest among ties."""
    best = (0.0, 0.0, -1.0)
    for wc in sorted(CONTRAST_WEIGHTS):
        for wk in sorted(CENTRALITY_WEIGHTS):
            m = float(np.mean([top1(data[s], ranked(data[s], wc, wk)) for s in sets]))
            if m > best[2] + 1e-12:
                best = (wc, wk, m)
    return best


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(TUNING), choices=SETS)
    parser.add_argument("--model", default="composer_tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fresh", action="store_true", help="recompute sets saved in --out")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not set(TUNING) <= set(args.sets):
        parser.error(f"--sets must include the tuning sets {TUNING}")
    check_out_dir(parser, args.out)
    segs: list[Any] = []

    def compute(name: str) -> np.ndarray:
        if not segs:  # loaded once, and only when a set is not saved yet
            seg = load_segmenter(args.model, checkpoint=args.checkpoint, device=args.device)
            seg.mask_rank = None  # the masks ranked by predicted IoU alone; the rest added here
            segs.append(seg)
        return first_click_features(segs[0], dataset(name), ContrastRank())

    data = per_set_arrays(Path(args.out), args.sets, args.fresh, compute)
    for name, a in data.items():
        if a.ndim != 2 or a.shape[1] != 12:
            parser.error(f"{args.out}/{name}.npy is not this script's; add --fresh")
    names = list(data)
    tuning = list(TUNING)
    print("\nfirst-click mIoU (top-1 by predicted IoU + wc x contrast + wk x click centrality); "
          f"choice on {', '.join(tuning)}")
    print("| wc | wk | " + " | ".join(names) + " | tuning mean |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for wc in CONTRAST_WEIGHTS:
        for wk in CENTRALITY_WEIGHTS:
            vals = [top1(data[s], ranked(data[s], wc, wk)) for s in names]
            mean = float(np.mean([top1(data[s], ranked(data[s], wc, wk)) for s in tuning]))
            print(f"| {wc:g} | {wk:g} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {mean:.3f} |")
    for name, a in data.items():
        print(f"{name}: {len(a)} objects, oracle {a[:, 3:6].max(1).mean() if len(a) else 0:.3f}, "
              f"mean centrality per slot {np.round(a[:, 9:12].mean(0), 3).tolist() if len(a) else []}")
    wc, wk, m = choose_weights(data, tuning)
    print(f"best weights on the tuning sets: contrast {wc:g}, centrality {wk:g} (mean top-1 {m:.3f})")


if __name__ == "__main__":
    main()
