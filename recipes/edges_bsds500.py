"""SAM Table 3: zero-shot edge detection on BSDS500 (ODS, OIS, AP, R50).

Runs :class:`tasks.edges.EdgeTask` (Appendix D.2: 16x16 grid, 768 masks, no quality filters,
mask NMS, Sobel on the mask probabilities at the outer boundary, max, normalise, edge NMS) over
a BSDS500 split through the evaluation harness and prints a paper-style row next to the
published SAM row. The mask-NMS threshold is not given in the paper: choose it on ``--split val``
with ``--nms-sweep`` and report test with the chosen value.

Commands::

    # choose the mask-NMS threshold on val (prints one row per value)
    python recipes/edges_bsds500.py --model vit_h --split val --nms-sweep 0.5,0.6,0.7,0.8,0.9
    # the table row (200 test images)
    python recipes/edges_bsds500.py --model vit_h --split test --nms 0.7 --out runs/edges_test
    # quick smoke run with the default model
    python recipes/edges_bsds500.py --split val --limit 5
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "recipes"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _cli import check_at_least, check_out_dir, one_line_errors  # noqa: E402

from composer.data.bsds import BSDS500  # noqa: E402
from composer.embedding import EmbeddingCache  # noqa: E402
from composer.evaluation.edges_bsds import BoundaryEvaluator  # noqa: E402
from composer.evaluation.runner import run  # noqa: E402
from tasks.edges import EdgeConfig, EdgeTask, parse_refine  # noqa: E402

logger = logging.getLogger("recipes.edges_bsds500")

PAPER_ROWS = [
    ("HED (2015)", 0.788, 0.808, 0.840, 0.923),
    ("Canny, zero-shot (1986)", 0.600, 0.640, 0.580, None),
    ("SAM (paper, ViT-H)", 0.768, 0.786, 0.794, 0.928),
]


class BoundaryAdapter:
    """Feeds the harness's ``process(image_id, EdgeMap)`` to the BSDS evaluator with its GT,
    and optionally saves each edge map as an 8-bit PNG (the BSDS benchmark's input format)."""

    def __init__(
        self, evaluator: BoundaryEvaluator, dataset: BSDS500, png_dir: Path | None = None
    ) -> None:
        self.evaluator = evaluator
        self.dataset = dataset
        self.png_dir = png_dir

    def reset(self) -> None:
        self.evaluator.reset()

    def process(self, image_id: str, edges: Any) -> None:
        self.evaluator.process(image_id, edges, self.dataset[image_id].boundaries)
        if self.png_dir is not None:
            from PIL import Image

            self.png_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(edges.to_uint8()).save(self.png_dir / f"{image_id}.png")

    def evaluate(self) -> dict[str, float]:
        return {f"edges/{k}": v for k, v in self.evaluator.evaluate().items()}


def evaluate_edges(
    segmenter: Any,
    split: str = "test",
    limit: int | None = None,
    config: EdgeConfig | None = None,
    out: str | None = None,
    workers: int | None = None,
    cache: EmbeddingCache | None = None,
) -> dict[str, Any]:
    """Run the edge task over a BSDS500 split; returns the harness report. Pass one ``cache``
    to several runs (a sweep) so each image is embedded once."""
    dataset = BSDS500(split)
    out_dir = Path(out) if out else None
    adapter = BoundaryAdapter(
        BoundaryEvaluator(workers=workers), dataset, None if out_dir is None else out_dir / "png"
    )
    task = EdgeTask(segmenter, config)
    cache = EmbeddingCache() if cache is None else cache
    return run(task, dataset, adapter, cache=cache, limit=limit, out_dir=out_dir)


def _fmt(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}".lstrip("0")


def print_table(
    rows: list[tuple[str, float | None, float | None, float | None, float | None]],
) -> None:
    print(f"{'method':<34} {'ODS':>5} {'OIS':>5} {'AP':>5} {'R50':>5}")
    for name, *vals in rows:
        print(f"{name:<34} " + " ".join(f"{_fmt(v):>5}" for v in vals))


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SAM Table 3: zero-shot edges on BSDS500")
    parser.add_argument(
        "--model", default=None, help="composer.load_segmenter name (default model)"
    )
    parser.add_argument(
        "--checkpoint", default=None, help="weights file or registered name for --model"
    )
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--out", default=None, help="folder for report.json and PNG maps")
    parser.add_argument(
        "--nms", type=float, default=EdgeConfig.box_nms_thresh, help="mask box-NMS threshold"
    )
    parser.add_argument(
        "--nms-sweep", default=None, help="comma-separated NMS thresholds (use on val)"
    )
    parser.add_argument(
        "--refine",
        default="auto",
        help="guided-filter refinement of the mask maps: auto (the model's recommendation), "
        "off (the paper's procedure) or RADIUS,EPS",
    )
    parser.add_argument(
        "--refine-sweep",
        default=None,
        help="semicolon-separated --refine values, e.g. 'off;8,0.01;16,0.01' (use on val)",
    )
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="BSDS evaluator processes")
    args = parser.parse_args(argv)
    check_at_least(parser, [("--limit", args.limit, 1), ("--points-per-side", args.points_per_side, 1),
                            ("--workers", args.workers, 1)])
    check_out_dir(parser, args.out)
    try:  # bad values refused before the model loads
        values = [float(v) for v in args.nms_sweep.split(",")] if args.nms_sweep else [args.nms]
    except ValueError:
        parser.error(f"--nms-sweep takes comma-separated numbers, got {args.nms_sweep!r}")
    try:
        refines = [parse_refine(v) for v in (args.refine_sweep or args.refine).split(";")]
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import composer

    segmenter = composer.load_segmenter(args.model, checkpoint=args.checkpoint)
    rows = list(PAPER_ROWS)
    cache = EmbeddingCache()  # shared by the sweep's settings: one encoder pass per image
    for nms in values:
        for refine in refines:
            cfg = EdgeConfig(points_per_side=args.points_per_side, box_nms_thresh=nms, refine=refine)
            setting = cfg.refine_setting(segmenter)
            tag = "off" if setting is None else f"r{setting[0]}e{setting[1]:g}"
            out = None if args.out is None else str(Path(args.out) / f"nms{nms:g}_{tag}")
            report = evaluate_edges(
                segmenter, args.split, args.limit, cfg, out, args.workers, cache=cache
            )
            m = report["metrics"]
            n = report["meta"]["n_images"]
            label = f"{segmenter.model_id} nms={nms:g} refine={tag} ({args.split}, {n} img)"
            rows.append(
                (label, m.get("edges/ODS"), m.get("edges/OIS"), m.get("edges/AP"), m.get("edges/R50"))
            )
            if report["meta"]["n_failed"]:
                print(f"warning: {report['meta']['n_failed']} images failed; see report.json")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
