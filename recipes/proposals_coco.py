"""SAM Table 4: class-agnostic mask proposals, AR@1000 (Appendix D.3 protocol).

Runs :class:`tasks.proposals.ProposalTask` (64x64 grid, box NMS 0.9, no crops, no quality
filtering, top 1000 by mean(predicted IoU, stability)) through the evaluation harness with
:class:`composer.evaluation.ProposalEvaluator` (pycocotools, ``useCats=0``) and prints
AR@10/100/1000 and the area splits next to the published SAM row. The paper evaluates on LVIS
v1 val; pass ``--ann``/``--images`` for LVIS (frequency-group ARs are added automatically).
Without them the shared COCO val2017 80-image subset is used, which is a different ground
truth, so its numbers are not comparable with the paper's.

Commands::

    # LVIS v1 val, the paper's setting
    python recipes/proposals_coco.py --model vit_h --ann lvis_v1_val.json --images val2017 --out runs/prop_lvis
    # the shared COCO subset (80 images)
    python recipes/proposals_coco.py --model vit_b --out runs/prop_coco80
    # quick smoke run with the default model and a smaller grid
    python recipes/proposals_coco.py --limit 3 --points-per-side 16
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "recipes"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _cli import check_at_least, check_out_dir, one_line_errors  # noqa: E402

from composer.data.coco import CocoDataset, coco_subset  # noqa: E402
from composer.embedding import EmbeddingCache  # noqa: E402
from composer.evaluation.proposals import ProposalEvaluator  # noqa: E402
from composer.evaluation.runner import run  # noqa: E402
from tasks.proposals import ProposalConfig, ProposalTask  # noqa: E402

logger = logging.getLogger("recipes.proposals_coco")

#: Table 4, LVIS v1 val, mask AR@1000: all, small, medium, large, frequent, common, rare.
PAPER_ROWS = [
    ("ViTDet-H (LVIS v1)", 63.0, 51.7, 80.8, 87.0, 63.1, 63.3, 58.3),
    ("SAM single output (LVIS v1)", 54.9, 42.8, 76.7, 74.4, 54.7, 59.8, 62.0),
    ("SAM (paper, LVIS v1)", 59.3, 45.5, 81.6, 86.9, 59.1, 63.9, 65.8),
]


def evaluate_proposals(
    segmenter: Any,
    dataset: CocoDataset,
    limit: int | None = None,
    config: ProposalConfig | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    """Run the proposal task over a COCO-format dataset (AR over the images run); returns the
    harness report."""
    cfg = config or ProposalConfig()
    out_dir = Path(out) if out else None
    evaluator = ProposalEvaluator(
        dataset.coco,
        max_dets=(10, 100, cfg.max_proposals),
        results_file=None if out_dir is None else out_dir / "proposals.json",
    )
    return run(
        ProposalTask(segmenter, cfg),
        dataset,
        evaluator,
        cache=EmbeddingCache(),
        limit=limit,
        out_dir=out_dir,
    )


def _fmt(v: float | None) -> str:
    return "  -  " if v is None or v < 0 else f"{v:5.1f}"


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SAM Table 4: mask proposals AR@1000")
    parser.add_argument(
        "--model", default=None, help="composer.load_segmenter name (default model)"
    )
    parser.add_argument(
        "--checkpoint", default=None, help="weights file or registered name for --model"
    )
    parser.add_argument(
        "--split", choices=("val", "test"), default="val", help="only val has public ground truth"
    )
    parser.add_argument(
        "--ann", default=None, help="COCO/LVIS annotation json (default: COCO 80-image subset)"
    )
    parser.add_argument("--images", default=None, help="image folder for --ann")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--out", default=None, help="folder for report.json and proposals.json")
    parser.add_argument(
        "--points-per-side", type=int, default=None,
        help="grid points per side (default: 64, or 128 with --single-output)",
    )
    parser.add_argument(
        "--single-output", action="store_true", help="the paper's single-output ablation"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.split != "val":
        parser.error("COCO/LVIS test ground truth is not public; use --split val")
    if (args.ann is None) != (args.images is None):
        parser.error("--ann and --images go together")
    check_at_least(parser, [("--limit", args.limit, 1), ("--points-per-side", args.points_per_side, 1)])
    check_out_dir(parser, args.out)

    dataset = coco_subset() if args.ann is None else CocoDataset(args.ann, args.images)
    cfg = ProposalConfig.single_output() if args.single_output else ProposalConfig()
    if args.points_per_side is not None:  # given explicitly: also with --single-output
        cfg = dataclasses.replace(cfg, points_per_side=args.points_per_side)
    import composer

    segmenter = composer.load_segmenter(args.model, checkpoint=args.checkpoint)
    report = evaluate_proposals(segmenter, dataset, args.limit, cfg, args.out)
    m = report["metrics"]
    big = cfg.max_proposals

    def pct(key: str) -> float | None:
        v = m.get(f"proposals/{key}")
        return None if v is None else 100.0 * v

    print(
        f"{'method':<44} {'all':>5} {'small':>5} {'med':>5} {'large':>5} {'freq':>5} {'com':>5} {'rare':>5}"
    )
    for name, *vals in PAPER_ROWS:
        print(f"{name:<44} " + " ".join(_fmt(v) for v in vals))
    label = f"{segmenter.model_id} ({dataset.name}, {report['meta']['n_images']} img)"
    ours = [
        pct(f"AR@{big}"),
        pct(f"AR_small@{big}"),
        pct(f"AR_medium@{big}"),
        pct(f"AR_large@{big}"),
        pct(f"AR_frequent@{big}"),
        pct(f"AR_common@{big}"),
        pct(f"AR_rare@{big}"),
    ]
    print(f"{label:<44} " + " ".join(_fmt(v) for v in ours))
    print(
        f"AR@10 {_fmt(pct('AR@10'))}  AR@100 {_fmt(pct('AR@100'))}  AR@{big} {_fmt(pct(f'AR@{big}'))}"
    )
    if report["meta"]["n_failed"]:
        print(f"warning: {report['meta']['n_failed']} images failed; see report.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
