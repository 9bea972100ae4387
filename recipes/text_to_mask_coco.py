"""Text-to-mask on COCO: query every category present in an image by its name.

The paper shows text-to-mask only qualitatively (§7.5; its CLIP-conditioned SAM was never
released), so this recipe defines a measurable protocol for :class:`tasks.text_to_mask`:
for every (image, category present) pair the category name is the prompt, and the returned
masks (labelled with that category) are scored against the category's instances in the image:

- ``mask AP (pycocotools)``: COCO mask AP over all queries (per category over images, then
  averaged; only queried pairs have detections, so it measures finding and segmenting the
  named objects, not rejecting absent ones);
- ``per-query AP``: COCO AP@[.5:.95] of each (image, category) query alone, averaged;
- ``top-mask mIoU``: IoU of the best-scored mask with the best-matching instance (0 when
  nothing is returned), averaged over queries; ``hit@0.5`` is the share with IoU >= 0.5;
- ``answered``: the share of queries that returned at least one mask.

Measured (80-image subset, detector strategy: SSD-MobileNet-v2 at score 0.05, MiniLM matching,
``--model classic``; 324 queries, 80 encoder calls, 1560 s wall on a shared 2-core CPU)::

    mask AP 16.1 (AP50 26.9, APs 2.0, APm 12.2, APl 33.9); per-query AP 17.2;
    top-mask mIoU 29.5; hit@0.5 32.1%; answered 84.6%

Commands::

    # detector strategy (SSD-MobileNet-v2 + MiniLM matching), classic segmenter, 80 images
    python recipes/text_to_mask_coco.py --model classic --out runs/text_coco80
    # CLIP strategy with a local open_clip checkpoint
    python recipes/text_to_mask_coco.py --strategy clip --clip-arch ViT-B-16 \\
        --clip-weights open_clip_model.safetensors --model vit_b --checkpoint sam_vit_b
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "recipes"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _cli import check_at_least, check_out_dir, one_line_errors  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from composer.data.coco import CocoDataset, coco_subset  # noqa: E402
from composer.embedding import EmbeddingCache  # noqa: E402
from composer.evaluation.base import quiet_call  # noqa: E402
from composer.structures import Detections  # noqa: E402
from tasks.base import TaskContext  # noqa: E402
from tasks.text_to_mask import TextConfig, TextToMaskTask  # noqa: E402

logger = logging.getLogger("recipes.text_to_mask_coco")


def query_results(
    task: TextToMaskTask,
    dataset: CocoDataset,
    limit: int | None = None,
    cache: EmbeddingCache | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every (image, category present) query.

    Returns:
        COCO result entries (labelled with the queried category) and one record per query:
        image_id, category_id, prompt, n_masks, top_iou, seconds, matched (class name or None).
    """
    cache = EmbeddingCache() if cache is None else cache
    entries: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    ids = dataset.image_ids[:limit] if limit is not None else dataset.image_ids
    for n, image_id in enumerate(ids):
        item = dataset.item(image_id)
        image = item.load_image()
        gt = item.gt
        crowd = np.asarray(gt.extras.get("iscrowd", np.zeros(len(gt))), bool)
        ctx = TaskContext(image, image_id, cache, {"item": item})
        for cat in sorted(set(gt.labels[~crowd].tolist())):  # type: ignore[index]
            prompt = dataset.class_names[cat]
            t0 = time.perf_counter()
            out = task(ctx, prompt)
            secs = time.perf_counter() - t0
            out = Detections(out.boxes, out.scores, np.full(len(out), cat), out.masks, {}, out.meta)
            entries += out.to_coco(image_id=image_id) if out.masks is not None else []
            inst = gt[(gt.labels == cat) & ~crowd]
            top = 0.0
            if len(out) and out.masks is not None and inst.masks is not None:
                best = int(np.argmax(out.scores))  # type: ignore[arg-type]
                top = float(out.masks[best].iou(inst.masks).max())
            records.append(
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "prompt": prompt,
                    "n_masks": len(out),
                    "top_iou": top,
                    "seconds": secs,
                    "matched": out.meta.get("matched_class"),
                    "message": out.meta.get("message"),
                }
            )
        if (n + 1) % 10 == 0:
            logger.info("%d/%d images, %d queries", n + 1, len(ids), len(records))
    return entries, records


def score(
    dataset: CocoDataset, entries: list[dict[str, Any]], records: list[dict[str, Any]]
) -> dict[str, float]:
    """Aggregate and per-query mask AP, top-mask mIoU, hit@0.5 and the answered share."""
    coco = dataset.coco
    img_ids = sorted({r["image_id"] for r in records})
    out: dict[str, float] = {"queries": float(len(records)), "images": float(len(img_ids))}
    per_query = np.zeros(len(records))
    if entries:
        # masks are sized by their own area, as the harness's CocoEvaluator does: with a bbox
        # present loadRes takes the box's area, which moves APs/APm/APl (AP is unchanged)
        entries = [{k: v for k, v in e.items() if k not in ("bbox", "area")} for e in entries]
        dt = quiet_call(coco.loadRes, entries)
        ev = COCOeval(coco, dt, "segm")
        ev.params.imgIds = img_ids
        ev.params.catIds = sorted({r["category_id"] for r in records})
        quiet_call(ev.evaluate)
        quiet_call(ev.accumulate)
        quiet_call(ev.summarize)
        out.update(
            {
                "mask_AP": float(ev.stats[0]),
                "mask_AP50": float(ev.stats[1]),
                "mask_APs": float(ev.stats[3]),
                "mask_APm": float(ev.stats[4]),
                "mask_APl": float(ev.stats[5]),
            }
        )
        answered = {(e["image_id"], e["category_id"]) for e in entries}
        for i, r in enumerate(records):
            if (r["image_id"], r["category_id"]) not in answered:
                continue
            q = COCOeval(coco, dt, "segm")
            q.params.imgIds, q.params.catIds = [r["image_id"]], [r["category_id"]]
            quiet_call(q.evaluate)
            quiet_call(q.accumulate)
            quiet_call(q.summarize)
            per_query[i] = max(0.0, float(q.stats[0]))
    else:
        out.update(dict.fromkeys(("mask_AP", "mask_AP50", "mask_APs", "mask_APm", "mask_APl"), 0.0))
    tops = np.array([r["top_iou"] for r in records])
    out.update(
        {
            "per_query_AP": float(per_query.mean()) if len(records) else 0.0,
            "top_mask_mIoU": float(tops.mean()) if len(records) else 0.0,
            "hit@0.5": float((tops >= 0.5).mean()) if len(records) else 0.0,
            "answered": float(np.mean([r["n_masks"] > 0 for r in records])) if records else 0.0,
            "s_per_query": float(np.mean([r["seconds"] for r in records])) if records else 0.0,
        }
    )
    return out


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run's data and options, for summary.json."""
    keep = ("model", "checkpoint", "strategy", "detector", "score_threshold", "refine",
            "clip_arch", "clip_weights", "max_masks", "coco", "images", "limit")
    return {k: getattr(args, k) for k in keep}


def _print(metrics: dict[str, float]) -> None:
    for k, v in metrics.items():
        pct = k.startswith(("mask_", "per_query", "top_", "hit", "answered"))
        print(f"  {k:<14} " + (("     -" if v < 0 else f"{100 * v:6.1f}") if pct else f"{v:g}"))


def _rescore(run: Path, dataset: CocoDataset, args: argparse.Namespace) -> int:
    """Score an earlier run's saved results again (``--rescore``)."""
    try:
        entries = json.loads((run / "results.json").read_text())
        records = json.loads((run / "queries.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--rescore {run}: needs the results.json and queries.json of a run "
                         f"(--out): {exc}") from None
    ids = set(dataset.image_ids[: args.limit] if args.limit else dataset.image_ids)
    if not {r["image_id"] for r in records} <= ids:
        raise ValueError(f"--rescore {run}: its queries name images outside the data given "
                         "(give the run's --coco/--images/--limit)")
    metrics = score(dataset, entries, records)
    print(f"rescored {run} ({len(records)} queries)")
    _print(metrics)
    if args.out:
        # the run's own summary (its settings, model id, cache counts) with the new metrics:
        # this command's model options are not the run's, and --out may be the run itself
        try:
            before = json.loads((run / "summary.json").read_text())
        except (OSError, ValueError):
            before = {}
        before = before if isinstance(before, dict) else {}
        summary = {**before, "metrics": metrics, "rescored_from": str(run),
                   "rescore_data": {k: getattr(args, k) for k in ("coco", "images", "limit")}}
        if "metrics" in before:
            summary["metrics_before_rescore"] = before["metrics"]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="text-to-mask on COCO: every present category by name")
    p.add_argument("--model", default=None, help="composer.load_segmenter name (default model)")
    p.add_argument("--checkpoint", default=None, help="segmenter weights file or hub name")
    p.add_argument("--strategy", choices=("detector", "clip"), default="detector")
    p.add_argument(
        "--detector", default=None, help="detector strategy: ssd (default) / torchvision arch"
    )
    p.add_argument("--score-threshold", type=float, default=0.05, help="detector score floor")
    p.add_argument("--refine", action="store_true", help="refinement pass")
    p.add_argument("--clip-arch", default="ViT-B-16")
    p.add_argument(
        "--clip-weights", default=None, help="clip strategy: local open_clip weights file"
    )
    p.add_argument(
        "--max-masks", type=int, default=None, help="masks per query (detector 100, clip 5)"
    )
    p.add_argument("--coco", default=None, help="COCO annotation json (default: the shared subset)")
    p.add_argument("--images", default=None, help="image folder of --coco")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenCV threads")
    p.add_argument("--out", default=None, help="folder for summary.json and per-query records")
    p.add_argument(
        "--rescore", default=None, metavar="DIR",
        help="score the results.json and queries.json an earlier run wrote to DIR again (with "
        "this version's scoring; no model runs); --coco/--images/--limit name its data",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    check_at_least(p, [("--limit", args.limit, 1), ("--threads", args.threads, 1),
                       ("--max-masks", args.max_masks, 1)])
    # the outputs are written after the last query: a file in the way must not cost the run
    check_out_dir(p, args.out)
    if args.strategy == "clip" and not args.clip_weights:
        p.error("--strategy clip needs --clip-weights FILE")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.threads is not None:
        import cv2
        import torch

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    if args.coco and not args.images:
        raise SystemExit("--coco needs --images DIR")
    dataset = CocoDataset(args.coco, args.images) if args.coco else coco_subset()
    if args.rescore:
        return _rescore(Path(args.rescore), dataset, args)
    from composer.segmenters import load_segmenter

    seg = load_segmenter(args.model, checkpoint=args.checkpoint)
    print(f"segmenter: {seg.model_id}")
    if args.strategy == "detector":
        from composer.models.detectors import load_detector

        detector = load_detector(args.detector, score_threshold=args.score_threshold)
        cfg = TextConfig(
            strategy="detector",
            score_threshold=args.score_threshold,
            refine=args.refine,
            max_masks=100 if args.max_masks is None else args.max_masks,
        )
        task = TextToMaskTask(seg, cfg, detector=detector)
        print(
            f"detector: {detector.model_id}; matcher: "
            f"{getattr(task.matcher.encoder, 'model_id', 'lexical')}"
        )  # type: ignore[union-attr]
    else:
        from composer.models.clip import ClipModel

        clip = ClipModel.load(args.clip_arch, args.clip_weights)
        print(f"clip: {clip.model_id}")
        task = TextToMaskTask(
            seg,
            TextConfig(strategy="clip", refine=args.refine,
                       max_masks=5 if args.max_masks is None else args.max_masks),
            clip=clip,
        )
    cache = EmbeddingCache()
    t0 = time.perf_counter()
    entries, records = query_results(task, dataset, args.limit, cache)
    metrics = score(dataset, entries, records)
    metrics["seconds"] = time.perf_counter() - t0
    stats = cache.stats()
    _print(metrics)
    print(
        f"  encoder calls {stats['encoder_calls']} for {int(metrics['images'])} images "
        f"({stats['hits']} cache hits)"
    )
    unmatched = sorted(
        {r["prompt"] for r in records if r["message"] and "matches none" in r["message"]}
    )
    if unmatched:
        print(f"  prompts matching no class: {', '.join(unmatched)}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(
            json.dumps({"metrics": metrics, "cache": stats, "model_id": task.model_id,
                        "settings": _settings(args)}, indent=2)
        )
        (out / "queries.json").write_text(json.dumps(records, indent=1, default=str))
        (out / "results.json").write_text(json.dumps(entries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
