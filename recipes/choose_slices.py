"""Choose the sliced-detection settings (``SlicedDetector``) by box AP on the COCO subset.

The shipped SSD-MobileNet-v2 sees every image at 300 x 300. ``SlicedDetector`` also runs it
on overlapping tiles and merges the boxes (SAHI). This recipe measures the detector's box AP
(no segmenter: the boxes are what instance masks are built on) for a grid of tile sizes and
merge rules, on a chosen half of the shared 80-image COCO val2017 subset:

* ``--half train`` (the last 40 images, ``coco_subset_split("train")``): where the settings
  are chosen. The detector never saw them (it was trained on COCO train2017); composer_tiny
  trained on them, which does not matter for boxes.
* ``--half holdout`` (the first 40): where the instance rows of recipes/README.md are reported.

The detector runs once per distinct tile (a memo keyed by the pixels), so every merge rule of
one tile size reuses the same raw boxes.

    OMP_NUM_THREADS=1 python recipes/choose_slices.py --half train --out runs/slices_train
    OMP_NUM_THREADS=1 python recipes/choose_slices.py --half holdout --settings "off;400,0.2,nms,iou,0.5;400,0.2,nms,iou,0.5,dropcut" --out runs/slices_holdout
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import check_out_dir, one_line_errors  # noqa: E402

from composer.data.coco import coco_subset  # noqa: E402
from composer.evaluation.coco_ap import CocoEvaluator  # noqa: E402
from composer.models.detectors import SlicedDetector, load_detector  # noqa: E402
from composer.structures import Detections  # noqa: E402
from composer.training.data import coco_subset_split  # noqa: E402

DEFAULT_SETTINGS = (
    "off;"
    "256,0.2,nmm,ios,0.5;320,0.2,nmm,ios,0.5;400,0.2,nmm,ios,0.5;320,0.2,nmm,ios,0.7;"
    "320,0.2,nmm,iou,0.5;320,0.2,nmm,iou,0.7;320,0.2,nms,ios,0.5;"
    "256,0.2,nms,iou,0.5;320,0.2,nms,iou,0.4;320,0.2,nms,iou,0.5;320,0.2,nms,iou,0.6;"
    "320,0.35,nms,iou,0.5;360,0.2,nms,iou,0.5;400,0.2,nms,iou,0.4;400,0.2,nms,iou,0.5;"
    "480,0.2,nms,iou,0.5;"
    "320,0.2,nms,iou,0.5,dropcut;320,0.35,nms,iou,0.5,dropcut;400,0.2,nms,iou,0.5,dropcut"
)


class MemoDetector:
    """Runs ``detector`` once per distinct image array (the tiles recur across settings)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.model_id = detector.model_id
        self.calls = 0
        self.seconds = 0.0
        self._memo: dict[str, Detections] = {}

    @property
    def class_names(self) -> Mapping[int, str]:
        return self.detector.class_names

    def __call__(self, image: np.ndarray, image_id: Hashable | None = None) -> Detections:
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() + str(image.shape)
        if key not in self._memo:
            t0 = time.perf_counter()
            self._memo[key] = self.detector(image)
            self.seconds += time.perf_counter() - t0
            self.calls += 1
        return self._memo[key]


def parse_setting(text: str) -> dict[str, Any] | None:
    """"off" -> None; "SIZE,OVERLAP,MERGE,METRIC,THRESHOLD[,dropcut]" -> SlicedDetector kwargs
    (without "dropcut" the boxes of a tile that touch its inner borders are kept).

    Raises:
        ValueError: a malformed setting or values ``SlicedDetector`` refuses, naming ``text``.
    """
    if text.strip() == "off":
        return None
    fields = [t.strip() for t in text.split(",")]
    if len(fields) not in (5, 6) or fields[5:] not in ([], ["dropcut"]):
        raise ValueError(f"setting {text!r}: expected off or "
                         "SIZE,OVERLAP,MERGE,METRIC,THRESHOLD[,dropcut]")
    size, overlap, merge, metric, thr = fields[:5]
    try:
        kw = {"slice_size": int(size), "overlap": float(overlap), "merge": merge,
              "metric": metric, "threshold": float(thr), "drop_cut": len(fields) == 6}
        SlicedDetector.check(kw["slice_size"], kw["overlap"], metric, kw["threshold"], merge)
    except ValueError as e:
        raise ValueError(f"setting {text!r}: {e}") from None
    return kw


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--half", choices=("train", "holdout", "all"), default="train")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help='";"-separated: off, or SIZE,OVERLAP,MERGE(nms|nmm),METRIC(iou|ios),THRESHOLD[,dropcut]')
    p.add_argument("--score-threshold", type=float, default=0.05,
                   help="detector score floor (AP: low; default 0.05)")
    p.add_argument("--out", default=None, help="folder for summary.json and table.txt")
    args = p.parse_args(argv)
    check_out_dir(p, args.out)
    # every setting checked before any detector runs: a typo in the last one would otherwise
    # end the run after the others, with nothing written
    settings = [(text.strip(), parse_setting(text)) for text in args.settings.split(";")
                if text.strip()]
    if not settings:
        p.error(f"--settings names no setting: {args.settings!r}")
    ids = (coco_subset().image_ids if args.half == "all" else coco_subset_split(args.half))
    dataset = coco_subset(image_ids=ids)
    memo = MemoDetector(load_detector("ssd", score_threshold=args.score_threshold))
    images = {i: dataset.item(i).load_image() for i in ids}
    rows: list[dict[str, Any]] = []
    for text, kw in settings:
        det: Any = memo if kw is None else SlicedDetector(memo, **kw)
        ev = CocoEvaluator(dataset.coco, iou_types=("bbox",))
        t0 = time.perf_counter()
        n_boxes = 0
        for i in ids:
            d = det(images[i], i)
            n_boxes += len(d)
            ev.process(i, d)
        m = ev.evaluate()
        rows.append({"setting": text, "boxes_per_image": n_boxes / len(ids),
                     "seconds": time.perf_counter() - t0,
                     **{k.split("/")[1]: v for k, v in m.items()}})
        r = rows[-1]
        print(f"{r['setting']:<24} AP {100 * r['AP']:5.1f}  APs {100 * r['APs']:5.1f}  "
              f"APm {100 * r['APm']:5.1f}  APl {100 * r['APl']:5.1f}  "
              f"AR@100 {100 * r['AR@100']:5.1f}  boxes/img {r['boxes_per_image']:.1f}", flush=True)
    lines = [f"COCO subset, {args.half} half ({len(ids)} images), SSD-MobileNet-v2, "
             f"score >= {args.score_threshold}",
             "| setting | box AP | AP50 | APs | APm | APl | AR@100 | boxes per image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {100 * r['AP']:.1f} | {100 * r['AP50']:.1f} | "
                     f"{100 * r['APs']:.1f} | {100 * r['APm']:.1f} | {100 * r['APl']:.1f} | "
                     f"{100 * r['AR@100']:.1f} | {r['boxes_per_image']:.1f} |")
    lines.append(f"detector runs: {memo.calls} ({memo.seconds:.1f} s)")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.txt").write_text(table + "\n")
        (out / "summary.json").write_text(json.dumps({"half": args.half, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
