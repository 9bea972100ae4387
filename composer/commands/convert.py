"""``sam-composer convert INPUT --to coco-polygons|yolo|png-masks --out PATH``: masks in other
formats."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert mask annotations to COCO polygons, YOLO segmentation labels or PNG masks",
        description="Read a COCO dataset json (e.g. `everything` output), a COCO results json, "
        "a per-image detections json of segment/instances/text, or a folder of those, and write "
        "COCO polygons (one json), YOLO segmentation labels (a folder: labels/<stem>.txt, "
        "classes.txt, data.yaml) or PNG masks as segment-anything's amg.py writes them (a folder per image: "
        "0.png, 1.png, ..., metadata.csv, and labels.png, a 16-bit instance map). Polygons "
        "follow the pixel edges: with --tolerance 0 they give back exactly the masks, holes "
        "aside (polygons cannot hold holes: COCO polygons keep such a mask's RLE unless "
        "--holes fill, YOLO labels fill them); PNG masks are exact.",
    )
    p.add_argument("input", help="json file, or a folder of per-image detection jsons")
    p.add_argument("--to", required=True, choices=("coco-polygons", "yolo", "png-masks"),
                   help="output format")
    p.add_argument("--out", required=True,
                   help="output json (coco-polygons) or folder (yolo, png-masks); never the "
                   "input json")
    # None until run(): given where they do not apply (png-masks are exact, only COCO polygons
    # can keep an RLE), they are refused rather than ignored
    p.add_argument("--tolerance", type=float, default=None,
                   help="coco-polygons, yolo: polygon simplification in pixels (default 0: "
                   "exact; on COCO masks 0.5 keeps 59%% of the vertices at mean IoU .991, 1 "
                   "keeps 10%% at .959)")
    p.add_argument("--holes", choices=("rle", "fill"), default=None,
                   help="coco-polygons: a mask with holes keeps its RLE (default, exact) or is "
                   "written as polygons without its holes (fill)")
    p.set_defaults(func=run, out_is_folder=False)


def run(args: argparse.Namespace) -> int:
    from ..io.formats import convert

    if args.tolerance is not None and args.to == "png-masks":
        raise ValueError("--tolerance applies to coco-polygons and yolo (PNG masks are exact)")
    if args.holes is not None and args.to != "coco-polygons":
        raise ValueError(f"--holes applies to coco-polygons only (--to {args.to} "
                         + ("keeps holes: PNG masks are exact)" if args.to == "png-masks"
                            else "cannot hold holes: they are always filled)"))
    src, out = Path(args.input), Path(args.out)
    if args.to != "coco-polygons" and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder (--to {args.to} writes a folder)")
    # a json to write (coco-polygons) that is an input; resolved first, as the writer creates
    # missing folders: "x/../a.json" is a.json even when x does not exist yet
    target = out.resolve()
    if target.is_file() and src.exists():
        inside = src.is_dir() and target.parent == src.resolve() and target.suffix == ".json"
        if target == src.resolve() or inside:
            raise ValueError(f"--out {out} would overwrite the input {args.input}; "
                             "choose another name")
    tolerance = 0.0 if args.tolerance is None else args.tolerance
    holes = "rle" if args.holes is None else args.holes
    stats = convert(args.input, args.out, args.to, tolerance=tolerance, holes=holes)
    print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.items()) + f" -> {args.out}")
    return 0
