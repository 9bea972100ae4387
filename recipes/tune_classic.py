"""classic's first-click ranking with score weights chosen on held-out training data, not on GrabCut.

``classic`` has no learned weights, but its scorer (``ClassicConfig.score_weights`` and
``score_bias``: six cues of each candidate mask, see ``_classic_ops.mask_features``) was tuned
by hand on GrabCut and Berkeley masks, the benchmark sets it is compared on. composer_tiny's
predict-time settings (refinement, flip TTA, contrast ranking) were chosen on held-out training
images instead. This recipe gives ``classic`` the same footing: it keeps, for every object's
first click (the point protocol's, as in ``first_click_slots.py``), the three candidate masks'
cues and real IoUs, then searches the weights and bias that give the best mean top-1 mIoU on
the tuning sets alone (``bsds_heldout`` and ``coco_tune``, the sets composer_tiny's settings
were chosen on) and reports every set's top-1 with the shipped and with the tuned weights. The
candidate masks do not depend on the weights (only their ranking does), so the oracle is the
same for both.

    OMP_NUM_THREADS=1 python recipes/tune_classic.py --sets bsds_heldout coco_tune grabcut \\
        berkeley bsds20 coco20 --out runs/tune_classic

``--out`` keeps one ``SET.npy`` per set (columns: 3 shipped scores, 3 IoUs, 3 x 6 cues, 3
fallback flags, the item index; see :func:`first_click_cues`); a re-run loads them instead of
segmenting again (``--fresh`` recomputes). The tuned weights are written to
``OUT/tuned.json``; ``load_segmenter("classic", config=ClassicConfig(score_weights=...,
score_bias=...))`` runs with them. Only the first click is re-ranked here: later clicks weigh
the same cues, but with the previous mask's agreement mixed in.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import check_out_dir, one_line_errors  # noqa: E402
from first_click_slots import (  # noqa: E402
    SETS,
    TUNING,
    dataset,
    first_click_masks,
    per_set_arrays,
    top1,  # the IoUs sit in columns 3-5 here too
)

from composer.evaluation.points import mask_iou  # noqa: E402
from composer.segmenters import load_segmenter  # noqa: E402
from composer.segmenters.classic import ClassicConfig, ClassicSegmenter  # noqa: E402

N_CUES = 6
# columns of a set's array
SCORES, IOUS, CUES, FALLBACK = slice(0, 3), slice(3, 6), slice(6, 24), slice(24, 27)
WIDTH = 28


@contextmanager
def recording_cues(log: list[tuple[np.ndarray | None, float]]) -> Iterator[None]:
    """While active, every ``ClassicSegmenter._score`` call appends (the mask's six cues, or
    None for an empty mask, and the score it returned) to ``log``."""
    from composer.segmenters import _classic_ops as ops

    original_score = ClassicSegmenter._score
    original_features = ops.mask_features
    current: list[np.ndarray] = []

    def features(*args: Any, **kwargs: Any) -> np.ndarray:
        f = original_features(*args, **kwargs)
        current.append(np.asarray(f, np.float64).copy())
        return f

    def score(self: ClassicSegmenter, *args: Any, **kwargs: Any) -> float:
        current.clear()
        s = original_score(self, *args, **kwargs)
        log.append((current[0] if current else None, s))
        return s

    ops.mask_features = features
    ClassicSegmenter._score = score  # type: ignore[method-assign]
    try:
        yield
    finally:
        ops.mask_features = original_features
        ClassicSegmenter._score = original_score  # type: ignore[method-assign]


def first_click_cues(seg: ClassicSegmenter, items: Any) -> np.ndarray:
    """(objects, 28): the 3 scores the segmenter gave, the 3 masks' IoUs, their 3 x 6 cues
    (zeros for an empty mask), 3 flags (1 where GrabCut emptied the candidate and the rough
    mask stood in at half the score, -1 for an empty mask, else 0) and the item index."""
    log: list[tuple[np.ndarray | None, float]] = []
    rows = []
    with recording_cues(log):
        stream = first_click_masks(seg, items)
        while True:
            log.clear()
            try:
                k, _, gt, ignore, masks, scores = next(stream)
            except StopIteration:
                break
            if len(log) != 3:
                raise RuntimeError(f"expected 3 scored candidates, got {len(log)}")
            cues = np.zeros((3, N_CUES))
            flags = np.zeros(3)
            for j, (f, s) in enumerate(log):
                if f is None:
                    flags[j] = -1
                    continue
                cues[j] = f
                # the fallback candidate's score is half of what _score returned
                flags[j] = 1.0 if abs(float(scores[j]) - 0.5 * s) < 1e-6 < s else 0.0
            ious = [mask_iou(m, gt, ignore) for m in masks]
            rows.append(np.concatenate([scores, ious, cues.ravel(), flags, [k]]))
    return np.asarray(rows, np.float64).reshape(-1, WIDTH)


def rescore(a: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """(objects, 3) first-click scores of the saved candidates under ``weights`` and ``bias``,
    as ``ClassicSegmenter._score`` computes them for a first click (one positive point, no box
    or prior): clip(cues . weights + bias, 0, 1), halved for a fallback candidate, 0 for an
    empty mask."""
    cues = a[:, CUES].reshape(-1, 3, N_CUES)
    s = np.clip(cues @ np.asarray(weights, np.float64) + bias, 0.0, 1.0)
    flags = a[:, FALLBACK]
    s = np.where(flags == 1, 0.5 * s, s)
    return np.where(flags == -1, 0.0, s)


def tuning_mean(data: dict[str, np.ndarray], sets: list[str], params: np.ndarray) -> float:
    """Mean over ``sets`` of each set's top-1 mIoU under ``params`` (6 weights, then the bias)."""
    return float(np.mean([top1(data[s], rescore(data[s], params[:N_CUES], params[N_CUES]))
                          for s in sets]))


def search(data: dict[str, np.ndarray], sets: list[str], start: np.ndarray,
           steps: np.ndarray | None = None, passes: int = 8) -> np.ndarray:
    """Coordinate search from ``start`` (6 weights, bias) for the best :func:`tuning_mean`.

    Each pass tries, for every parameter in turn, ``start``'s value plus each of ``steps``
    (default -1.5 to 1.5 by 0.05) and keeps a change only when it raises the mean (a tie keeps
    the current value, so the shipped weights stay where the tuning data cannot tell).
    Deterministic; stops early when a pass changes nothing.
    """
    steps = np.round(np.arange(-1.5, 1.5001, 0.05), 4) if steps is None else steps
    best = np.asarray(start, np.float64).copy()
    best_v = tuning_mean(data, sets, best)
    for _ in range(passes):
        changed = False
        for i in range(len(best)):
            base = best[i]
            for d in steps:
                trial = best.copy()
                trial[i] = round(base + float(d), 4)
                v = tuning_mean(data, sets, trial)
                if v > best_v + 1e-12:
                    best, best_v, changed = trial, v, True
        if not changed:
            break
    return best


def shipped_params() -> np.ndarray:
    cfg = ClassicConfig()
    return np.array([*cfg.score_weights, cfg.score_bias], np.float64)


def check_rescore(data: dict[str, np.ndarray]) -> None:
    """The shipped weights must give back the scores the segmenter returned (else the saved
    cues do not describe the scorer and the search would optimise something else)."""
    p = shipped_params()
    for name, a in data.items():
        diff = np.abs(rescore(a, p[:N_CUES], p[N_CUES]) - a[:, SCORES]).max(initial=0.0)
        if diff > 1e-5:
            raise RuntimeError(f"{name}: recomputed scores differ from the segmenter's by {diff:.2g}")


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--fresh", action="store_true", help="recompute sets saved in --out")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not set(TUNING) <= set(args.sets):
        parser.error(f"--sets must include the tuning sets {TUNING}")
    check_out_dir(parser, args.out)
    out = Path(args.out)
    segs: list[ClassicSegmenter] = []

    def compute(name: str) -> np.ndarray:
        if not segs:
            segs.append(load_segmenter("classic"))
        return first_click_cues(segs[0], dataset(name))

    data = per_set_arrays(out, args.sets, args.fresh, compute)
    check_rescore(data)
    start = shipped_params()
    tuned = search(data, list(TUNING), start)
    loso = {s: search(data, [o for o in TUNING if o != s], start) for s in TUNING}
    (out / "tuned.json").write_text(json.dumps({
        "score_weights": tuned[:N_CUES].tolist(), "score_bias": float(tuned[N_CUES]),
        "shipped_weights": start[:N_CUES].tolist(), "shipped_bias": float(start[N_CUES]),
        "tuning_sets": list(TUNING),
        "tuning_mean": {"shipped": tuning_mean(data, list(TUNING), start),
                        "tuned": tuning_mean(data, list(TUNING), tuned)},
    }, indent=2) + "\n")
    fmt = ", ".join(f"{v:g}" for v in tuned[:N_CUES])
    print(f"\nshipped: weights ({', '.join(f'{v:g}' for v in start[:N_CUES])}), bias {start[N_CUES]:g}")
    print(f"tuned on {', '.join(TUNING)}: weights ({fmt}), bias {tuned[N_CUES]:g}")
    print("\n| set | objects | top-1, shipped weights | top-1, tuned weights | oracle |")
    print("|---|---|---|---|---|")
    for name, a in data.items():
        print(f"| {name} | {len(a)} | {top1(a, a[:, SCORES]):.3f} | "
              f"{top1(a, rescore(a, tuned[:N_CUES], tuned[N_CUES])):.3f} | "
              f"{a[:, IOUS].max(1).mean():.3f} |")
    print("leave-one-set-out on the tuning sets (weights searched on the other one): "
          + ", ".join(f"{s} {top1(data[s], rescore(data[s], p[:N_CUES], p[N_CUES])):.3f}"
                      f" (shipped {top1(data[s], data[s][:, SCORES]):.3f})"
                      for s, p in loso.items()))


if __name__ == "__main__":
    main()
