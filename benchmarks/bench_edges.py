"""BSDS boundary benchmark speed: pyEdgeEval's per-image evaluation against ours, same images, one run.

For each image both sides get the same soft map, the same ground truth and the same thresholds:

- ``pyEdgeEval``: ``evaluate_boundaries_threshold_multiple_gts`` (thinning + the Cython port of
  the BSDS CSA matcher ``correspond_pixels``, every threshold, every annotator);
- ``ours``: ``composer.evaluation.edges_bsds.image_counts`` (same protocol; skips thresholds whose
  binary map repeats, thins foreground pixels only, exact matcher split by graph component);
- ``--csa-in-ours`` adds our pipeline driving pyEdgeEval's matcher, isolating the matcher's share.

Times are CPU seconds of this process (``time.process_time``; wall seconds alongside), so other
jobs on a shared machine disturb them less. The counts of both sides are also summarised into
ODS / OIS / AP to show the agreement.

Command (the 10 shipped gPb-owt-ucm maps' first 3, 99 thresholds)::

    .venv/bin/python benchmarks/bench_edges.py --maps ucm2 --images 3 --thresholds 99

``--maps`` also takes ``png`` (the 5 official fixture maps) or a classical method (``sobel``,
``canny``, ``felzenszwalb``) run on the first test images. ``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

_REPO = Path(__file__).resolve().parents[1]
for _path in (_REPO, _REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402

from composer.data.bsds import (  # noqa: E402
    BSDS500,
    bench_reference_dir,
    load_ground_truth,
    load_png_map,
    load_ucm2,
    ucm2_reference_dir,
)
from composer.evaluation.edges_bsds import (  # noqa: E402
    as_boundary_map,
    bsds_thresholds,
    image_counts,
    summarize,
)


def _maps(kind: str, n: int) -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """(id, (H, W) float64 map, per-annotator boundaries) for the first ``n`` images."""
    out = []
    if kind == "png":
        ref = bench_reference_dir()
        for iid in ["2018", "3063", "5096", "6046", "8068"][:n]:
            gts = [g["boundaries"] for g in load_ground_truth(ref / "groundTruth" / f"{iid}.mat")]
            out.append((iid, as_boundary_map(load_png_map(ref / "png" / f"{iid}.png")), gts))
        return out
    ds = BSDS500("test")
    if kind == "ucm2":
        ref = ucm2_reference_dir() / "test_first10"
        for iid in ds.ids[: min(n, 10)]:
            out.append((iid, load_ucm2(ref / f"{iid}.mat"), ds[iid].boundaries))
        return out
    from tasks.edges_classic import make_classic_task

    task = make_classic_task(kind)
    for sample in list(ds)[:n]:
        out.append((sample.image_id, as_boundary_map(task(sample.image)), sample.boundaries))
    return out


def _timed(fn, *args, **kwargs):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - c0, time.perf_counter() - w0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--maps", default="ucm2", choices=("ucm2", "png", "sobel", "canny", "felzenszwalb"))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--thresholds", type=int, default=99)
    ap.add_argument("--csa-in-ours", action="store_true", help="also time our pipeline with CSA")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    # --images 0 used to end in np.stack of nothing, after importing pyEdgeEval
    check_at_least(ap, [("--images", args.images, 1), ("--thresholds", args.thresholds, 1)])
    check_json(ap, args.json)

    with contextlib.redirect_stdout(io.StringIO()):  # pyEdgeEval prints on import
        from pyEdgeEval.common.binary_label.evaluate_boundaries import (
            evaluate_boundaries_threshold_multiple_gts as pyedgeeval_image,
        )

    thresholds = bsds_thresholds(args.thresholds)
    items = _maps(args.maps, args.images)
    rows = []
    counts = {"pyEdgeEval": [], "ours": []}
    for iid, pb, gts in items:
        row = {"image": iid, "annotators": len(gts)}
        ours, row["ours_cpu"], row["ours_wall"] = _timed(image_counts, pb, gts, thresholds)
        (cr, sr, cp, sp), row["pyEdgeEval_cpu"], row["pyEdgeEval_wall"] = _timed(
            pyedgeeval_image, thresholds, pb, gts, max_dist=0.0075, apply_thinning=True
        )
        theirs = np.stack([cr, sr, cp, sp], axis=1).astype(np.int64)
        if args.csa_in_ours:
            _, row["ours_csa_cpu"], row["ours_csa_wall"] = _timed(
                image_counts, pb, gts, thresholds, matcher="csa"
            )
        diff = np.abs(ours - theirs)
        row["max_count_diff"] = int(diff.max())
        row["max_rel_diff_cntR"] = float((diff[:, 0] / np.maximum(theirs[:, 0], 1)).max())
        row["max_rel_diff_cntP"] = float((diff[:, 2] / np.maximum(theirs[:, 2], 1)).max())
        row["ratio_cpu"] = row["pyEdgeEval_cpu"] / max(row["ours_cpu"], 1e-9)
        counts["ours"].append(ours)
        counts["pyEdgeEval"].append(theirs)
        rows.append(row)
        print(
            f"{iid:>8}  pyEdgeEval {row['pyEdgeEval_cpu']:7.2f}s  ours {row['ours_cpu']:6.2f}s"
            f"  x{row['ratio_cpu']:5.1f}"
            + (f"  ours+CSA {row['ours_csa_cpu']:6.2f}s" if args.csa_in_ours else "")
            + f"  |counts diff| max {row['max_count_diff']}",
            flush=True,
        )

    ids = [r["image"] for r in rows]
    metrics = {}
    for name, cs in counts.items():
        s = summarize(np.stack(cs), thresholds, ids).summary
        metrics[name] = {"ODS": float(s[3]), "OIS": float(s[6]), "AP": float(s[7])}
    n = len(rows)
    pe = sum(r["pyEdgeEval_cpu"] for r in rows) / n
    ours_s = sum(r["ours_cpu"] for r in rows) / n
    summary = {
        "maps": args.maps,
        "images": n,
        "thresholds": args.thresholds,
        "pyEdgeEval_s_per_image": pe,
        "ours_s_per_image": ours_s,
        "speedup": pe / ours_s,
        "metrics": metrics,
    }
    if args.csa_in_ours:
        summary["ours_csa_s_per_image"] = sum(r["ours_csa_cpu"] for r in rows) / n
    print(f"\n{args.maps}, {n} images, {args.thresholds} thresholds (CPU s per image)")
    print(f"  pyEdgeEval  {pe:8.2f}")
    if args.csa_in_ours:
        print(f"  ours + CSA  {summary['ours_csa_s_per_image']:8.2f}")
    print(f"  ours        {ours_s:8.2f}")
    print(f"  ratio pyEdgeEval / ours: {pe / ours_s:.1f}x")
    for key in ("ODS", "OIS", "AP"):
        a, b = metrics["pyEdgeEval"][key], metrics["ours"][key]
        print(f"  {key:<4} pyEdgeEval {a:.4f}  ours {b:.4f}  diff {b - a:+.4f}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    return summary


if __name__ == "__main__":
    raise SystemExit(run_main(main))
