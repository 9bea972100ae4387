"""Choose composer_tiny's GrabCut mask refinement (``MASK_REFINE``) on held-out training data.

Runs the 20-click point protocol (``composer.evaluation.PointEvaluator``, the same as
``sam-composer eval points``) once per refinement setting, on data no reported benchmark uses:

* ``bsds_heldout``: the 8 BSDS500 training images that ``recipes/train_default.py`` holds out
  to monitor training (never trained on; not in BSDS500 test), one annotator's regions;
* ``coco_tune``: COCO-subset held-out images 21-40 (``coco_subset_split("holdout")[20:40]``;
  the reported COCO rows use the first 20).

and prints one row per setting: mIoU@1 / oracle@1 / @3 / @5 and NoC@85 / NoC@90.
``--tta off,flip`` runs every setting without and with flip test-time augmentation of the
first click (``PromptableSegmenter.flip_tta``); the default runs them as the model ships.
The first click's masks are ranked by predicted IoU alone (``--mask-rank off``, the default:
the refinement and flip TTA were chosen before the contrast ranking, ``choose_mask_rank.py``);
``--mask-rank auto`` uses the model's shipped ranking.

    OMP_NUM_THREADS=1 python recipes/choose_mask_refine.py --set bsds_heldout \\
        --settings "off;8,2;16,1;16,2;16,4;24,2" --tta off --out runs/mask_refine_bsds_heldout
    OMP_NUM_THREADS=1 python recipes/choose_mask_refine.py --set coco_tune \\
        --settings "off;8,2;16,2" --tta off --out runs/mask_refine_coco_tune
    # flip TTA (composer_tiny's FLIP_TTA), with the shipped refinement
    OMP_NUM_THREADS=1 python recipes/choose_mask_refine.py --set bsds_heldout \\
        --settings "16,2" --tta off,flip --out runs/flip_tta_bsds_heldout
    OMP_NUM_THREADS=1 python recipes/choose_mask_refine.py --set coco_tune \\
        --settings "16,2" --tta off,flip --out runs/flip_tta_coco_tune
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import check_at_least, check_out_dir, one_line_errors  # noqa: E402
from train_default import holdout_ids  # noqa: E402

from composer.commands.common import parse_mask_rank, parse_mask_refine  # noqa: E402
from composer.evaluation import PointEvaluator, run  # noqa: E402
from composer.segmenters import load_segmenter  # noqa: E402
from composer.training.data import bsds_ids, coco_subset_split, evaluation_bsds_ids  # noqa: E402

COLUMNS = (
    ("mIoU@1", "points/mIoU@1"),
    ("oracle@1", "points/oracle_mIoU@1"),
    ("mIoU@3", "points/mIoU@3"),
    ("mIoU@5", "points/mIoU@5"),
    ("NoC@85", "points/NoC@85"),
    ("NoC@90", "points/NoC@90"),
)


class _Items(list):  # type: ignore[type-arg]
    """A list of dataset items with the ``name`` the evaluation runner records."""

    def __init__(self, items: list[Any], name: str) -> None:
        super().__init__(items)
        self.name = name


def bsds_heldout(n_holdout: int = 8) -> _Items:
    """Regions (annotator 0) of the BSDS500 training images train_default.py holds out."""
    from composer.data.regions import BSDSRegions

    ids = [image_id for _, image_id in bsds_ids(("train", "val"), evaluation_bsds_ids())]
    held = holdout_ids(ids, n_holdout)
    items = []
    for split in ("train", "val"):
        regions = BSDSRegions(split)
        items += [regions[k] for k, image_id in enumerate(regions.bsds.ids) if image_id in held]
    if len(items) != len(held):
        raise RuntimeError(f"found {len(items)} of the {len(held)} held-out BSDS500 images")
    return _Items(items, "bsds500_heldout_regions")


def coco_tune() -> Any:
    """COCO-subset held-out images 21-40 (the reported COCO rows use images 1-20)."""
    from composer.data.coco import CocoDataset, coco_subset

    ds = coco_subset()
    return CocoDataset(ds.coco, ds.image_dir, image_ids=coco_subset_split("holdout")[20:40])


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("bsds_heldout", "coco_tune"), default="bsds_heldout")
    parser.add_argument("--settings", default="off;8,2;16,1;16,2;16,4;24,2",
                        help="';'-separated --mask-refine values (off or BAND[,ITERS])")
    parser.add_argument("--tta", default="auto",
                        help="','-separated flip test-time augmentation values to run every "
                             "setting with: auto (the model's FLIP_TTA), off, flip")
    parser.add_argument("--model", default="composer_tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--mask-rank", default="off",
                        help="off (default: predicted IoU alone), auto (shipped) or a weight")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--out", required=True, help="folder for one report per setting and summary.json")
    args = parser.parse_args(argv)
    check_at_least(parser, [("--clicks", args.clicks, 1), ("--limit", args.limit, 1)])
    check_out_dir(parser, args.out)

    settings = [s.strip() for s in args.settings.split(";") if s.strip()]
    if not settings:
        parser.error(f"--settings names no setting: {args.settings!r}")
    refiners = {s: parse_mask_refine(s) for s in settings}  # refuse bad values before any work
    rank = parse_mask_rank(args.mask_rank)
    if any(r == "auto" for r in refiners.values()):
        raise SystemExit("--settings takes off or BAND[,ITERS], not auto")
    ttas = [t.strip() for t in args.tta.split(",") if t.strip()]
    if not ttas or any(t not in ("auto", "off", "flip") for t in ttas):
        raise SystemExit(f"--tta takes auto, off or flip (','-separated), got {args.tta!r}")
    dataset = bsds_heldout() if args.set == "bsds_heldout" else coco_tune()
    seg = load_segmenter(args.model, checkpoint=args.checkpoint)
    if rank != "auto":
        seg.mask_rank = rank
    out = Path(args.out)
    summary = {}
    header = "| setting | " + " | ".join(c for c, _ in COLUMNS) + " | s |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    shipped_tta = bool(seg.flip_tta)
    runs = [(f"{s}" if t == "auto" else f"{s}+{t}", r, shipped_tta if t == "auto" else t == "flip")
            for s, r in refiners.items() for t in ttas]
    for text, refiner, flip in runs:
        seg.mask_refine = refiner
        seg.flip_tta = flip
        ev = PointEvaluator(max_clicks=args.clicks, report_clicks=tuple(k for k in (1, 3, 5) if k <= args.clicks))
        t0 = time.perf_counter()
        report = run(seg, dataset, [ev], limit=args.limit, out_dir=out / text.replace(",", "_").replace("+", "_"))
        secs = time.perf_counter() - t0
        m = report["metrics"]
        summary[text] = {**{c: m.get(k, float("nan")) for c, k in COLUMNS}, "n_masks": m["points/n_masks"], "s": secs}
        row = " | ".join(f"{summary[text][c]:.2f}" if c.startswith("NoC") else f"{summary[text][c]:.3f}" for c, _ in COLUMNS)
        lines.append(f"| {text} | {row} | {secs:.0f} |")
        print(lines[-1], flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{dataset.name if hasattr(dataset, 'name') else args.set}, "
          f"{int(next(iter(summary.values()))['n_masks'])} objects, {args.clicks} clicks")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
