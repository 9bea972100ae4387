"""``sam-composer segment IMAGE --point X,Y[,L] --box X0,Y0,X1,Y1 --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .common import add_model_args, describe, load_model, score_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment an image from point and box prompts",
                       description="All --point values form one prompt; each --box is a prompt "
                                   "(one box combines with the points).")
    p.add_argument("image", help="image file")
    add_model_args(p)
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   help="point in pixels; LABEL 1 foreground (default) or 0 background")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1", help="box in pixels")
    p.add_argument("--multimask", action="store_true", help="write all 3 masks per prompt, not only the best")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.image import load_image
    from ..io.visualize import parse_floats, write_detections
    from ..segmenters.base import best_per_prompt

    image = load_image(args.image)
    pts = [parse_floats(s, (2, 3), "--point") for s in args.point]
    boxes = [parse_floats(s, (4,), "--box") for s in args.box]
    if not pts and not boxes:
        raise ValueError("give at least one --point or --box")
    if pts and len(boxes) > 1:
        raise ValueError("points combine with at most one --box; use several --box without points")
    points = labels = None
    if pts:
        points = np.array([[p[0], p[1]] for p in pts], np.float32)[None]
        bad = [p[2] for p in pts if len(p) == 3 and p[2] not in (0.0, 1.0)]
        if bad:
            raise ValueError(f"--point LABEL must be 1 (foreground) or 0 (background), got {bad[0]:g}")
        labels = np.array([[int(p[2]) if len(p) == 3 else 1 for p in pts]])
    box_arr = np.array(boxes, np.float32) if boxes else None
    from ..structures import Prompts

    # the prompts' own checks (inside the image, finite, x0 <= x1) before the model loads and
    # the encoder runs: a typo was reported only after a full encoder pass
    Prompts.create(points, labels, box_arr, None, image_size=image.shape[:2])
    seg = load_model(args)
    print(describe(seg))
    emb = seg.embed(image)
    dets = seg.predict(emb, points=points, labels=labels, boxes=box_arr, multimask=True)
    if not args.multimask:
        dets = best_per_prompt(dets)
    written = write_detections(
        dets, image, args.out, stem=Path(args.image).stem,
        points=None if points is None else points[0], point_labels=None if labels is None else labels[0],
        prompt_boxes=box_arr, image_file=Path(args.image).name,
    )
    for i in range(len(dets)):
        print(f"mask {i}: prompt {int(dets.extras['prompt_index'][i])}, {score_text(dets, i)}, "
              f"area {int(dets.masks.area[i])} px")
    print(f"wrote {len(written['masks'])} mask PNGs, {written['overlay']} and {written['json']}")
    return 0
