"""SAM Table 5: instance segmentation from detector boxes, COCO mask AP (Appendix D.4 protocol).

Runs :class:`tasks.instances.InstanceTask` (all boxes of an image in one batched prompt call
on the shared embedding) through the evaluation harness with pycocotools, four ways on one
embedding cache (so the encoder runs once per image in all):

1. the detector alone: box AP of its boxes (what the masks are built on);
2. detector boxes -> masks: mask AP, no refinement;
3. the same with the paper's refinement pass (best mask's logits fed back with the box);
4. ground-truth boxes -> masks: the upper bound of box prompting (``--boxes gt``; ``all``
   runs every row). Each mask is scored by its predicted IoU and boxed by its own extent
   (:class:`tasks.instances.ScoredByPredictedIoU`, as ``sam-composer eval instances``): the
   boxes all score 1, which would leave AP's ranking to the annotation order.

The paper used ViTDet-H boxes (box AP 58.7 per the EdgeSAM README; ViTDet-H's own masks reach
mask AP 51.0) with SAM ViT-H: mask AP 46.5 / APs 30.8 / APm 51.0 / APl 61.7. The default
detector here is the shipped SSD-MobileNet-v2 (COCO box AP ~22 on val2017 per its model zoo),
so the rows compare the composition, not the detectors. Pass ``--detector results.json`` to use
stored boxes (e.g. the ViTDet/YOLOv8 COCO results jsons EfficientViT-SAM publishes).

Measured (shared COCO val2017 80-image subset, ``--model classic --score-threshold 0.2``, 2-core
CPU shared with other jobs, 1884 s wall; 80 encoder calls in all four rows)::

    row                                   boxAP    AP   APs   APm   APl
    SSD-MobileNet-v2 boxes                 29.6     -     -     -     -
    classic + SSD boxes                    29.6  14.8   1.8  10.0  34.8
    classic + SSD boxes + refine           29.6  14.8   1.8   9.9  34.3
    classic + GT boxes (upper bound)       55.8  28.1  11.2  26.6  47.7
    (box rectangles as masks, SSD boxes:         9.4   0.8   7.5  25.0)

(the GT row from its own run with ``--boxes gt``, 2026-11-23, after GT masks were scored by
predicted IoU; with every GT mask scored 1 it was 19.4 / 4.2 / 17.7 / 42.4).

SSD box AP on the subset is 31.6 at ``--score-threshold 0.05`` (25.7 if fed BGR: the graph
wants RGB). The classic backend uses ``mask_input`` only as a score prior, so refinement barely
moves it; the gap to the paper is the segmenter and the detector, not the protocol.

Commands::

    # the shared COCO val2017 80-image subset, default detector, the classic segmenter
    python recipes/instances_coco.py --model classic --out runs/instances_coco80
    # SAM ViT-H with stored ViTDet-H boxes on full COCO val2017 (the paper's setting)
    python recipes/instances_coco.py --model vit_h --checkpoint sam_vit_h \\
        --detector coco_instances_results_vitdet_h.json --coco instances_val2017.json --images val2017
    # quick smoke run
    python recipes/instances_coco.py --limit 3 --boxes gt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "recipes"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _cli import check_at_least, check_out_dir, one_line_errors  # noqa: E402

from composer.data.coco import CocoDataset, coco_subset  # noqa: E402
from composer.embedding import EmbeddingCache  # noqa: E402
from composer.evaluation import CocoEvaluator, run  # noqa: E402
from composer.models.detectors import (  # noqa: E402
    GroundTruthDetector,
    SlicedDetector,
    load_detector,
)
from composer.structures import Detections  # noqa: E402
from tasks.instances import (  # noqa: E402
    InstanceConfig,
    InstanceTask,
    ScoredByPredictedIoU,
    call_detector,
)

logger = logging.getLogger("recipes.instances_coco")

#: Table 5 (COCO, mask AP with ViTDet-H boxes): AP, APs, APm, APl.
PAPER_ROWS = [
    ("paper: ViTDet-H (its own masks)", 51.0, 32.0, 54.3, 68.9),
    ("paper: SAM ViT-H + ViTDet-H boxes", 46.5, 30.8, 51.0, 61.7),
]


class MemoDetector:
    """Runs a detector once per image id and replays its output (rows 1-3 share the boxes)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.model_id = detector.model_id
        self.class_names = detector.class_names
        self._memo: dict[Hashable, Detections] = {}
        self.seconds = 0.0

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        if image_id not in self._memo:
            t0 = time.perf_counter()
            self._memo[image_id] = call_detector(self.detector, image, image_id)
            self.seconds += time.perf_counter() - t0
        return self._memo[image_id]


class DetectorTask:
    """The detector's boxes as the task output (for box AP)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.config = {"detector": detector.model_id}
        self.model_id = detector.model_id

    def __call__(self, context: Any) -> Detections:
        return self.detector(context.image, context.image_id)


def evaluate(
    segmenter: Any,
    dataset: CocoDataset,
    detector: Any,
    boxes: str = "all",
    score_threshold: float = 0.05,
    limit: int | None = None,
    out: Path | None = None,
    max_dets: int = 100,
    zoom_small: float | str = "auto",
) -> dict[str, Any]:
    """Run the requested rows; returns {row name: harness report} plus the cache counters."""
    cache = EmbeddingCache()
    memo = MemoDetector(detector)
    rows: dict[str, Any] = {}

    def go(name: str, task: Any, iou_types: tuple[str, ...]) -> None:
        sub = None if out is None else out / name
        ev = CocoEvaluator(
            dataset.coco,
            iou_types=iou_types,
            results_file=None if sub is None else sub / "results.json",
        )
        t0 = time.perf_counter()
        rows[name] = run(task, dataset, ev, cache=cache, limit=limit, out_dir=sub)
        logger.info("%s: %.1f s, %s", name, time.perf_counter() - t0, rows[name]["meta"]["cache"])

    if boxes in ("detector", "all"):
        cfg = InstanceConfig(score_threshold=score_threshold, max_dets=max_dets,
                             zoom_small=zoom_small)
        go("detector_boxes", DetectorTask(memo), ("bbox",))
        go("masks", InstanceTask(segmenter, memo, cfg), ("segm", "bbox"))
        refine = InstanceConfig(score_threshold=score_threshold, max_dets=max_dets, refine=True,
                                zoom_small=zoom_small)
        go("masks_refined", InstanceTask(segmenter, memo, refine), ("segm", "bbox"))
    if boxes in ("gt", "all"):
        # scored by predicted IoU and boxed by the masks, as `sam-composer eval instances`
        gt_cfg = InstanceConfig(zoom_small=zoom_small)
        gt_task = InstanceTask(segmenter, GroundTruthDetector(dataset), gt_cfg)
        go("gt_boxes", ScoredByPredictedIoU(gt_task), ("segm", "bbox"))
    stats = cache.stats()
    return {
        "rows": rows,
        "cache": stats,
        "detector_seconds": memo.seconds,
        "segmenter": segmenter.model_id,
        "detector": detector.model_id,
    }


def _pct(v: float | None) -> str:
    return "   -  " if v is None or v < 0 else f"{100 * v:6.1f}"


def format_table(result: dict[str, Any]) -> str:
    seg, det = result["segmenter"], result["detector"]
    names = {
        "detector_boxes": f"{det} boxes (box AP)",
        "masks": f"{seg} + {det} boxes",
        "masks_refined": f"{seg} + {det} boxes + refine",
        "gt_boxes": f"{seg} + GT boxes (bound)",
    }
    head = f"{'row':<64} {'boxAP':>6} {'AP':>6} {'APs':>6} {'APm':>6} {'APl':>6} {'s/img':>6}"
    lines = [head, "-" * len(head)]
    for label, ap, aps, apm, apl in PAPER_ROWS:
        lines.append(f"{label:<64} {'   -  '} {ap:6.1f} {aps:6.1f} {apm:6.1f} {apl:6.1f} {'':>6}")
    for key, rep in result["rows"].items():
        m = rep["metrics"]
        t = "segm" if key != "detector_boxes" else "bbox"
        mask = (
            [m.get(f"{t}/{k}") for k in ("AP", "APs", "APm", "APl")] if t == "segm" else [None] * 4
        )
        sec = rep["meta"]["timings"]["mean_s_per_image"]
        lines.append(
            f"{names[key]:<64} {_pct(m.get('bbox/AP'))} "
            + " ".join(_pct(v) for v in mask)
            + f" {sec:6.2f}"
        )
    n = max(rep["meta"]["n_images"] for rep in result["rows"].values())
    c = result["cache"]
    lines.append(
        f"images: {n}; encoder calls: {c['encoder_calls']} (one per image across all rows, "
        f"plus one per zoomed crop), "
        f"cache hits: {c['hits']}; detector: {result['detector_seconds']:.1f} s in all"
    )
    return "\n".join(lines)


def parse_zoom(text: str) -> float | str:
    """``--zoom-small``: "auto", "off" or a fraction."""
    from composer.commands.common import parse_zoom_small

    return parse_zoom_small(text)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="SAM Table 5: mask AP from detector boxes")
    p.add_argument("--model", default=None, help="composer.load_segmenter name (default model)")
    p.add_argument("--checkpoint", default=None, help="segmenter weights file or hub name")
    p.add_argument("--mask-refine", default="auto", metavar="auto|off|BAND[,ITERS]",
                   help="GrabCut refinement of the masks (auto: the model's recommendation)")
    p.add_argument("--tta", default="auto", choices=("auto", "flip", "off"),
                   help="flip test-time augmentation of the box prompts (auto: the model's "
                        "recommendation)")
    p.add_argument(
        "--detector", default=None, help="ssd (default), a torchvision arch, or a results .json"
    )
    p.add_argument("--slice", type=int, default=None, metavar="PIXELS",
                   help="sliced detection: tiles of this side plus the whole image, boxes "
                        "merged (composer.models.detectors.SlicedDetector; default off)")
    p.add_argument("--slice-overlap", type=float, default=0.2,
                   help="overlap of neighbouring tiles (default 0.2)")
    p.add_argument("--boxes", choices=("detector", "gt", "all"), default="all")
    p.add_argument("--zoom-small", default="auto", metavar="auto|off|FRACTION",
                   help="segment boxes smaller than this fraction of the image side again in "
                        "a crop around them (InstanceConfig.zoom_small; default auto: the "
                        "model's recommendation, composer_tiny 0.35)")
    p.add_argument(
        "--score-threshold", type=float, default=0.05, help="detector score floor (AP: low)"
    )
    p.add_argument(
        "--coco", default=None, help="COCO annotation json (default: the shared 80-image subset)"
    )
    p.add_argument("--images", default=None, help="image folder of --coco")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--half", choices=("holdout", "train"), default=None,
                   help="only one half of the shared subset: holdout (the first 40 images, "
                        "which composer_tiny never saw) or train (the last 40, for choosing "
                        "settings); default: all 80")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenCV threads")
    p.add_argument("--out", default=None, help="folder for reports and results jsons")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    check_at_least(p, [("--limit", args.limit, 1), ("--threads", args.threads, 1),
                       ("--slice", args.slice, 1)])
    check_out_dir(p, args.out)
    zoom_small = parse_zoom(args.zoom_small)  # bad values refused before any model loads
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.threads is not None:
        import cv2
        import torch

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    if args.coco:
        if args.half:
            raise SystemExit("--half is for the shared subset, not --coco")
        if not args.images:
            raise SystemExit("--coco needs --images DIR")
        dataset = CocoDataset(args.coco, args.images)
    else:
        from composer.training.data import coco_subset_split

        dataset = coco_subset(image_ids=coco_subset_split(args.half) if args.half else None)
    from composer.commands.common import describe, load_model

    segmenter = load_model(args)  # --model, --checkpoint, --mask-refine and --tta, as the CLI does
    detector = load_detector(args.detector, score_threshold=args.score_threshold)
    if args.slice is not None:
        detector = SlicedDetector(detector, args.slice, args.slice_overlap)
    print(f"{describe(segmenter)}\ndetector: {detector.model_id}\ndataset: {dataset!r}")
    out = Path(args.out) if args.out else None
    result = evaluate(
        segmenter, dataset, detector, args.boxes, args.score_threshold, args.limit, out,
        zoom_small=zoom_small,
    )
    table = format_table(result)
    print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.txt").write_text(table + "\n")
        summary = {k: v["metrics"] for k, v in result["rows"].items()}
        (out / "summary.json").write_text(
            json.dumps(
                {**{k: result[k] for k in ("cache", "segmenter", "detector")}, "rows": summary},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
