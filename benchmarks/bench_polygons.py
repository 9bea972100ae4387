"""Polygons of masks (``sam-composer convert``): vertices, accuracy and time per tolerance.

On the COCO subset's ground-truth masks (holes filled: polygons cannot hold them), for each
``--tolerances`` value: vertices per mask, mean / minimum IoU of the polygons rasterised back
by pycocotools, and milliseconds per mask; then the whole conversions of the annotation json
(``coco-polygons`` and ``yolo``) timed end to end.

Command::

    python benchmarks/bench_polygons.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, run_main  # noqa: E402

from composer.data.paths import data_root  # noqa: E402
from composer.io.formats import convert  # noqa: E402
from composer.structures.masks import mask_polygons, segmentation_rle  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", default=None,
                    help="COCO json (default: the COCO subset's instances_val2017.json)")
    ap.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    args = ap.parse_args(argv)
    check_at_least(ap, [("--tolerances", min(args.tolerances), 0)])
    src = Path(args.annotations or data_root() / "coco_val2017_tiny80" / "annotations"
               / "instances_val2017.json")
    if not src.is_file():
        ap.error(f"no annotation file at {src}")
    data = json.loads(src.read_text())
    size = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    masks = []
    for a in data["annotations"]:
        if a.get("iscrowd"):
            continue
        m = mask_utils.decode(segmentation_rle(a["segmentation"], size[a["image_id"]]))
        masks.append(ndi.binary_fill_holes(m.astype(bool)))
    print(f"{len(masks)} masks of {len(data['images'])} images ({src})")
    print(f"{'tolerance':>9} | {'vertices/mask':>13} | {'mean IoU':>8} | {'min IoU':>7} | ms/mask")
    for tol in args.tolerances:
        verts, ious, secs = [], [], 0.0
        for m in masks:
            t = time.perf_counter()
            polys, _ = mask_polygons(m, tol)
            secs += time.perf_counter() - t
            verts.append(sum(len(p) // 2 for p in polys))
            h, w = m.shape
            back = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))
            back = back.astype(bool)
            ious.append((back & m).sum() / max(1, (back | m).sum()))
        print(f"{tol:9.1f} | {np.mean(verts):13.1f} | {np.mean(ious):8.4f} | "
              f"{np.min(ious):7.4f} | {1000 * secs / len(masks):.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for to, out in (("coco-polygons", Path(tmp) / "p.json"), ("yolo", Path(tmp) / "y")):
            t = time.perf_counter()
            convert(src, out, to)
            print(f"convert --to {to}: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
