"""``sam-composer demo --out DIR``: the quick start on an image that ships with scikit-image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from .common import add_model_args, describe, load_model, score_text

# The astronaut picture (512 x 512) from scikit-image: a point on the face, a box on the shuttle
DEMO_POINT = (270.0, 140.0)
DEMO_BOX = (330.0, 10.0, 470.0, 150.0)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the quick start on a bundled example image (no download)")
    add_model_args(p)
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--no-automatic", action="store_true", help="skip the segment-everything part")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from skimage import data

    from ..embedding import EmbeddingCache
    from ..io.visualize import save_png, write_detections, write_json
    from ..segmenters.base import best_per_prompt

    out = Path(args.out)
    image = np.ascontiguousarray(data.astronaut()[..., :3])
    save_png(image, out / "astronaut.png")
    seg = load_model(args)
    print(describe(seg))
    cache = EmbeddingCache()
    emb = cache.get(image, seg)
    dets = seg.predict(emb, points=[DEMO_POINT], boxes=None, multimask=True)
    best = best_per_prompt(dets)
    box_dets = best_per_prompt(seg.predict(emb, boxes=[DEMO_BOX]))
    if "prompt_index" in box_dets.extras:  # the box is the second prompt of the json
        box_dets.extras["prompt_index"] = box_dets.extras["prompt_index"] + 1
    from ..structures import Detections

    both = Detections.concatenate([best, box_dets])
    written = write_detections(both, image, out, stem="prompts", points=np.array([DEMO_POINT]),
                               point_labels=np.array([1]), prompt_boxes=np.array([DEMO_BOX]),
                               image_file="astronaut.png")  # convert names the image by it
    summary: dict[str, Any] = {"segmenter": seg.model_id, "prompts": written}
    if args.no_automatic:
        # an earlier run's segment-everything outputs would sit beside this run's as if current
        for name in ("everything_overlay.png", "everything.json"):
            (out / name).unlink(missing_ok=True)
    else:
        from ..automatic import AutomaticMaskGenerator

        # every backend's scores are on its own scale: the model's calibrated thresholds where
        # it has them (composer_tiny), else 0.5 / 0.8 rather than SAM's official 0.88 / 0.95
        loose: dict[str, Any] = {} if getattr(seg, "amg_thresholds", None) else {
            "pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}
        amg = AutomaticMaskGenerator(seg, cache=cache, points_per_side=16, **loose)
        auto = amg.generate(image)
        summary["automatic"] = write_detections(auto, image, out, stem="everything", mask_pngs=False,
                                                image_file="astronaut.png")
        summary["automatic"]["n_masks"] = len(auto)
    summary["cache"] = cache.stats()
    summary["mirror_encoder_calls"] = int(getattr(seg, "mirror_encoder_calls", 0))
    write_json(out / "summary.json", summary, indent=1)
    for what, d in (("point prompt", best), ("box prompt  ", box_dets)):
        area = int(d.masks.area[0]) if d.masks is not None else 0
        print(f"{what}: {score_text(d, 0)}, area {area} px")
    if "automatic" in summary:
        print(f"segment everything: {summary['automatic']['n_masks']} masks")
    mirrored = int(getattr(seg, "mirror_encoder_calls", 0))
    print(f"encoder calls: {cache.encoder_calls} for all of the above"
          + (f", plus {mirrored} for the mirrored image (flip TTA)" if mirrored else ""))
    # the input is listed too: the tutorials go on with other commands on it
    print(f"outputs in {out}/: astronaut.png (the input), prompts_overlay.png, prompts_mask*.png,"
          " prompts.json"
          + (", everything_overlay.png, everything.json" if "automatic" in summary else "")
          + ", summary.json")
    return 0
