"""``sam-composer everything IMAGE|DIR --out DIR``: automatic mask generation ("segment everything")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._tasks_import import tasks_import
from ..io.image import IMAGE_SUFFIXES
from .common import add_model_args, add_worker_args, describe, engine_from_args, load_model
from .instances import check_out_not_input, image_files


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "everything",
        help="segment everything in an image (or a folder -> COCO json)",
        description="An image: <stem>_overlay.png and <stem>.json in --out. A folder: one "
        "COCO json, annotations.json (--out may not be the input folder), with each image logged as it finishes "
        "(annotations.json.records.jsonl, with the model and settings), so a rerun with the "
        "same settings resumes (it says how many images were done earlier); Ctrl-C writes the "
        "json of the images finished so far and says how many; an unreadable image is "
        'reported, skipped and listed under "failures". Exit status 0 when every image '
        "succeeded, 1 when some failed, 2 for unusable input (no images, bad flags, a log of "
        "other settings without --overwrite), 130 when interrupted (143: SIGTERM).",
    )
    p.add_argument("input", help="image file, or a folder of images (writes one COCO json)")
    add_model_args(p, prompted=False)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--overwrite", action="store_true",
        help="folder mode: recompute every image instead of resuming an earlier run in --out "
             "(needed when the model or settings changed)",
    )
    p.add_argument("--points-per-side", type=int, default=None,
                   help="prompt grid per side (default 32; with --sa1b it overrides SA-1B's)")
    p.add_argument(
        "--pred-iou-thresh", type=float, default=None,
        help="default: 0.88 (official), or the model's calibrated value (composer_tiny)",
    )
    p.add_argument(
        "--stability-thresh", type=float, default=None,
        help="in [0, 1]; default: 0.95 (official, and the paper's SA-1B run; 0.92 with --sa1b, "
             "the official notebook's), or the model's calibrated value (composer_tiny)",
    )
    p.add_argument("--crop-n-layers", type=int, default=None,
                   help="crop layers (default 0; SA-1B style: 1 or 2)")
    p.add_argument("--min-region-area", type=int, default=None,
                   help="remove islands/holes below this area (default 0)")
    p.add_argument("--sa1b", action="store_true",
                   help="SA-1B-style settings (32-point grid, one crop layer, cleanup below "
                        "100 px, big-mask filter, stability 0.92 as in the official notebook "
                        "unless the model has calibrated thresholds; the paper's SA-1B run had "
                        "two crop layers and 0.95); the grid, crop, cleanup and threshold flags "
                        "given override them")
    p.add_argument("--max-side", type=int, default=None,
                   help="process images whose longest side exceeds this at that size and upsample "
                        "the kept masks (fast on large photos; default: full resolution, official)")
    p.add_argument("--limit", type=int, default=None, help="folder mode: only the first N images")
    add_worker_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with tasks_import():
        from tasks.everything import SA1B_CONFIG, annotate_folder

    from ..automatic import AmgConfig, AutomaticMaskGenerator
    from ..io.image import load_image
    from ..io.visualize import write_detections
    src = Path(args.input)
    image_files(src, args.limit)  # unusable input fails here, before the model loads
    # as instances and text: nothing of a run goes among its inputs (there, annotations.json
    # would replace a dataset's json of that name, kept beside its images by many exports)
    check_out_not_input(src, Path(args.out), "annotations.json and its record log would go "
                        "among the images (replacing a json of that name there)")
    engine = engine_from_args(args)
    seg = load_model(args)
    # None (flag not given): the model's recommended value, see AmgConfig.for_segmenter.
    thresholds = {
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_thresh,
    }
    flags = {"points_per_side": args.points_per_side, "crop_n_layers": args.crop_n_layers,
             "min_mask_region_area": args.min_region_area}
    given = {k: v for k, v in flags.items() if v is not None}  # flags given override the base
    if args.sa1b:
        config = AmgConfig.for_segmenter(
            seg, SA1B_CONFIG, max_side=args.max_side, **given, **thresholds
        )
    else:
        defaults = {"points_per_side": 32, "crop_n_layers": 0, "min_mask_region_area": 0}
        config = AmgConfig.for_segmenter(
            seg, max_side=args.max_side, **{**defaults, **given}, **thresholds
        )
    print(describe(seg, prompted=False))
    if config.crop_n_layers >= 3:  # a long run should not look like a hang
        crops = sum(4**i for i in range(config.crop_n_layers + 1))
        print(f"--crop-n-layers {config.crop_n_layers}: {crops} crops per image, each one "
              f"encoder pass and its own point grid, so about {crops} times the work of one "
              "pass")
    out = Path(args.out)
    if src.is_dir():
        coco = annotate_folder(
            src, seg, out / "annotations.json", config=config, suffixes=IMAGE_SUFFIXES,
            limit=args.limit, resume=not args.overwrite, engine=engine, progress=print,
        )
        n_failed = len(coco.get("failures", []))
        print(f"{len(coco['images'])} images, {len(coco['annotations'])} masks, "
              f"{n_failed} failed -> {out / 'annotations.json'}")
        if n_failed:
            print(f"{n_failed} of {n_failed + len(coco['images'])} images failed "
                  f"(listed under \"failures\" in {out / 'annotations.json'})")
        if coco["images"] and not coco["annotations"]:
            print(_no_masks_hint(seg, config), file=sys.stderr)
        return 1 if n_failed else 0
    image = load_image(src)
    dets = AutomaticMaskGenerator(seg, config).generate(image)
    written = write_detections(dets, image, out, stem=src.stem, mask_pngs=False,
                               image_file=src.name)
    print(f"{len(dets)} masks -> {written['overlay']}, {written['json']}")
    if len(dets) == 0:
        print(_no_masks_hint(seg, config), file=sys.stderr)
    return 0


def _no_masks_hint(seg: Any, config: Any) -> str:
    """What to try when no mask passed the filters: SAM's official thresholds, the default of a
    model without calibrated ones, keep little or nothing of classic's scores (on their own
    scale; the demo uses 0.5 and 0.8 for it)."""
    hint = (f"no mask passed the quality filters (predicted IoU > {config.pred_iou_thresh:g}, "
            f"stability >= {config.stability_score_thresh:g}"
            + (f", area at most {config.max_mask_area_fraction:g} of the image"
               if config.max_mask_area_fraction is not None else "")
            + "); lower them with --pred-iou-thresh and --stability-thresh")
    if str(seg.model_id).startswith("classic") and not getattr(seg, "amg_thresholds", None):
        hint += (" (classic's scores are lower than SAM's, for which the defaults were chosen: "
                 "try 0.5 and 0.8)")
    return hint
