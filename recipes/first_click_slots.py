"""How a model's three first-click masks rank: per output slot, the real and the predicted IoU.

For every object of each set, the point protocol's first click (the interior point farthest
from the boundary, ``composer.evaluation.points.next_click``) goes through a ``ClickSession``
exactly as in ``sam-composer eval points``, with the model's shipped predict-time settings
(``--tta`` / ``--mask-refine`` / ``--mask-rank`` override them; the README's table ranks by
predicted IoU alone, ``--mask-rank off``, as shipped before the contrast ranking). All three masks are kept: their IoU with the
ground truth, their predicted IoU and their area. Prints, per set and output slot: mean IoU,
mean predicted IoU, mean area, how often the slot is the best of the three (oracle) and how
often the model ranks it first; then top-1 and oracle mIoU.

``--calibrate`` also tries two re-rankings chosen on the tuning sets only (``bsds_heldout``
and ``coco_tune``, the held-out training data the mask refinement and flip TTA were chosen
on): a bias added to slots 0 and 1's predicted IoU (the best mean top-1 on a grid), and a
per-slot linear map from predicted to real IoU (least squares, each set weighted equally); it
prints every set's top-1 mIoU without and with each, and a leave-one-set-out check of the map
on the tuning sets. Sets: ``bsds_heldout``, ``coco_tune`` (see ``choose_mask_refine.py``), ``grabcut``,
``berkeley``, ``bsds20`` (BSDS500 test regions, first 20 images), ``coco20`` (COCO held-out,
first 20 images): these four are the README's benchmark rows; ``bsds200`` and ``coco40`` are
the whole BSDS500 test split and the whole held-out COCO half.

    OMP_NUM_THREADS=1 python recipes/first_click_slots.py --sets bsds_heldout coco_tune \\
        grabcut berkeley bsds20 coco20 --mask-rank off --calibrate --out runs/first_click_slots

``--out`` keeps one ``SET.npy`` per set (columns: 3 predicted IoUs, 3 IoUs, 3 mask areas as a
fraction of the image, the ground truth's area, the item index); a re-run loads them instead
of predicting again (``--fresh`` recomputes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import check_out_dir, one_line_errors  # noqa: E402
from choose_mask_refine import bsds_heldout, coco_tune  # noqa: E402

from composer.commands.common import parse_mask_rank, parse_mask_refine  # noqa: E402
from composer.evaluation.points import mask_iou, next_click  # noqa: E402
from composer.evaluation.runner import _item_image, point_targets  # noqa: E402
from composer.interactive import ClickSession  # noqa: E402
from composer.segmenters import load_segmenter  # noqa: E402

SETS = ("bsds_heldout", "coco_tune", "grabcut", "berkeley", "bsds20", "coco20", "bsds200", "coco40")
TUNING = ("bsds_heldout", "coco_tune")


def dataset(name: str) -> Any:
    if name == "bsds_heldout":
        return bsds_heldout()
    if name == "coco_tune":
        return coco_tune()
    if name == "grabcut":
        from composer.data.interactive import GrabCut

        return GrabCut()
    if name == "berkeley":
        from composer.data.interactive import Berkeley

        return Berkeley()
    if name in ("bsds20", "bsds200"):
        from composer.data.regions import BSDSRegions

        regions = BSDSRegions("test")
        return [regions[i] for i in range(20 if name == "bsds20" else len(regions))]
    if name in ("coco20", "coco40"):
        from composer.data.coco import coco_subset

        coco = coco_subset()
        return [coco[i] for i in range(int(name[4:]))]
    raise ValueError(f"unknown set {name!r}; valid: {SETS}")


def first_click_masks(seg: Any, items: Any) -> Iterator[tuple[int, np.ndarray, np.ndarray, Any,
                                                             np.ndarray, np.ndarray]]:
    """For every object of ``items`` with a first click (the point protocol's): (item index,
    image, ground truth, ignore mask or None, the 3 masks, their scores) from a ``ClickSession``."""
    for k in range(len(items)):
        item = items[k]
        image = _item_image(item)
        emb = seg.embed(image)
        for _, gt, ignore in point_targets(item):
            click = next_click(gt, None, ignore)
            if click is None:
                continue
            masks, scores = ClickSession(seg, image, emb).click(click[0], click[1], multimask=True)
            if len(masks) != 3:
                raise ValueError(f"expected 3 masks for a first click, got {len(masks)}")
            yield k, image, gt, ignore, masks, scores


def per_set_arrays(out: Path, names: list[str], fresh: bool,
                   compute: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """``{name: array}``: ``out/NAME.npy`` where it exists (unless ``fresh``), else
    ``compute(name)``, saved there and timed."""
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, np.ndarray] = {}
    for name in names:
        path = out / f"{name}.npy"
        if path.is_file() and not fresh:
            data[name] = np.load(path)
            continue
        t0 = time.perf_counter()
        data[name] = compute(name)
        np.save(path, data[name])
        print(f"{name}: {len(data[name])} objects in {time.perf_counter() - t0:.0f} s", flush=True)
    return data


def first_clicks(seg: Any, items: Any) -> np.ndarray:
    """(objects, 11): predicted IoUs, IoUs and areas of the 3 masks, gt area, item index."""
    rows = []
    for k, _, gt, ignore, masks, scores in first_click_masks(seg, items):
        ious = [mask_iou(m, gt, ignore) for m in masks]
        areas = masks.reshape(3, -1).mean(1)
        rows.append(np.concatenate([scores, ious, areas, [gt.mean(), k]]))
    return np.asarray(rows, np.float64).reshape(-1, 11)


def top1(a: np.ndarray, scores: np.ndarray) -> float:
    return float(a[np.arange(len(a)), scores.argmax(1) + 3].mean())


def fit_calibration(data: dict[str, np.ndarray], sets: list[str]) -> np.ndarray:
    """(3, 2): per slot, (intercept, slope) of real IoU on predicted IoU; sets weigh equally."""
    out = np.zeros((3, 2))
    for k in range(3):
        x = np.concatenate([data[s][:, k] for s in sets])
        y = np.concatenate([data[s][:, 3 + k] for s in sets])
        w = np.sqrt(np.concatenate([np.full(len(data[s]), 1.0 / len(data[s])) for s in sets]))
        design = np.stack([np.ones_like(x), x], 1) * w[:, None]
        out[k] = np.linalg.lstsq(design, y * w, rcond=None)[0]
    return out


def search_bias(data: dict[str, np.ndarray], sets: list[str]) -> np.ndarray:
    """(3,): the bias added to slots 0 and 1's predicted IoU (slot 2: 0), -0.3 to 0.3 in steps
    of 0.01, with the best mean top-1 over ``sets`` (the smallest bias among ties)."""
    grid = np.round(np.arange(-0.3, 0.3001, 0.01), 2)
    best, best_bias = -1.0, np.zeros(3)
    for b0 in sorted(grid, key=abs):
        for b1 in sorted(grid, key=abs):
            bias = np.array([b0, b1, 0.0])
            m = float(np.mean([top1(data[s], data[s][:, :3] + bias) for s in sets]))
            if m > best + 1e-12:
                best, best_bias = m, bias
    return best_bias


def calibrated(a: np.ndarray, coef: np.ndarray) -> np.ndarray:
    return coef[:, 0] + a[:, :3] * coef[:, 1]


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--model", default="composer_tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--tta", default="auto", choices=("auto", "flip", "off"))
    parser.add_argument("--mask-refine", default="auto")
    parser.add_argument("--mask-rank", default="auto", help="auto (shipped), off, or a weight")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit per-slot IoU calibration on the tuning sets (needs them in --sets)")
    parser.add_argument("--fresh", action="store_true", help="recompute sets saved in --out")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.calibrate and not set(TUNING) <= set(args.sets):
        parser.error(f"--calibrate needs the tuning sets {TUNING} in --sets")
    check_out_dir(parser, args.out)
    refine = parse_mask_refine(args.mask_refine)  # bad values refused before any work
    rank = parse_mask_rank(args.mask_rank)
    segs: list[Any] = []

    def compute(name: str) -> np.ndarray:
        if not segs:  # loaded once, and only when a set is not saved yet
            seg = load_segmenter(args.model, checkpoint=args.checkpoint, device=args.device)
            if refine != "auto":
                seg.mask_refine = refine
            if rank != "auto":
                seg.mask_rank = rank
            if args.tta != "auto":
                seg.flip_tta = args.tta == "flip"
            segs.append(seg)
        return first_clicks(segs[0], dataset(name))

    data = per_set_arrays(Path(args.out), args.sets, args.fresh, compute)

    print("\n| set | objects | top-1 | oracle | slot | mean IoU | mean predicted IoU | mean area "
          "| best of 3 | ranked first |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, a in data.items():
        best = np.bincount(a[:, 3:6].argmax(1), minlength=3)
        picked = np.bincount(a[:, :3].argmax(1), minlength=3)
        for k in range(3):
            head = (f"| {name} | {len(a)} | {top1(a, a[:, :3]):.3f} | {a[:, 3:6].max(1).mean():.3f}"
                    if k == 0 else "| | | | ")
            print(f"{head} | {k} | {a[:, 3 + k].mean():.3f} | {a[:, k].mean():.3f} | "
                  f"{a[:, 6 + k].mean():.3f} | {best[k]} | {picked[k]} |")
    if args.calibrate:
        bias = search_bias(data, list(TUNING))
        print(f"\nper-slot bias with the best mean top-1 on {', '.join(TUNING)}: {bias.tolist()}")
        coef = fit_calibration(data, list(TUNING))
        print(f"\nper-slot calibration (intercept, slope) fitted on {', '.join(TUNING)}:")
        print("  " + "; ".join(f"slot {k}: {c[0]:+.3f} + {c[1]:.3f} x" for k, c in enumerate(coef)))
        print("| set | top-1, predicted IoU | top-1, with the bias | top-1, calibrated |")
        print("|---|---|---|---|")
        for name, a in data.items():
            print(f"| {name} | {top1(a, a[:, :3]):.3f} | {top1(a, a[:, :3] + bias):.3f} | "
                  f"{top1(a, calibrated(a, coef)):.3f} |")
        loso = [top1(data[s], calibrated(data[s], fit_calibration(data, [o for o in TUNING if o != s])))
                for s in TUNING]
        print("leave-one-set-out on the tuning sets (fit on the other): "
              + ", ".join(f"{s} {v:.3f}" for s, v in zip(TUNING, loso, strict=True)))


if __name__ == "__main__":
    main()
