"""What the second click does: its sign and the IoU change it brings, per ``eval points`` run.

Reads the ``points_per_mask.json`` of each run folder (``sam-composer eval points --out DIR``)
and prints, per run: objects, how many second clicks are negative (the first mask spilled
over), how many of those lower the IoU by more than ``--drop``, and the mean IoU after the
first and second click over the objects whose second click is negative. Used in
recipes/README.md ("Contrast ranking") to see why the ranking costs GrabCut's second click:

    python recipes/second_click.py runs/noc_tiny4ttafb_grabcut runs/noc_tiny4rank_grabcut
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def second_clicks(records: list[dict], drop: float = 0.05) -> dict[str, float]:
    """Counts and mean IoUs of the negative second clicks of ``points_per_mask.json`` records."""
    neg = [r for r in records if len(r["labels"]) > 1 and len(r["ious"]) > 1 and int(r["labels"][1]) == 0]
    return {
        "objects": float(len(records)),
        "negative_second": float(len(neg)),
        "negative_dropped": float(sum(r["ious"][1] < r["ious"][0] - drop for r in neg)),
        "miou1_negative": float(np.mean([r["ious"][0] for r in neg])) if neg else float("nan"),
        "miou2_negative": float(np.mean([r["ious"][1] for r in neg])) if neg else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="eval points output folders")
    parser.add_argument("--drop", type=float, default=0.05, help="an IoU fall counted as a drop")
    args = parser.parse_args(argv)
    print(f"| run | objects | negative 2nd clicks | IoU falls > {args.drop:g} | mIoU@1 -> @2 of those |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        path = run / "points_per_mask.json"
        if not path.is_file():
            parser.error(f"{path} not found (an `eval points --out` folder?)")
        s = second_clicks(json.loads(path.read_text()), args.drop)
        print(f"| {run.name} | {s['objects']:.0f} | {s['negative_second']:.0f} | "
              f"{s['negative_dropped']:.0f} | {s['miou1_negative']:.3f} -> {s['miou2_negative']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
