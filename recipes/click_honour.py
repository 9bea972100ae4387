"""How often a segmenter honours a new corrective click (the pixel under it gets its label).

Runs the point protocol's clicks (the deepest error pixel, previous logits fed back,
``composer.interactive.ClickSession``) on GrabCut or Berkeley and counts, for every click, whether
the chosen mask afterwards has the click's label at the click's pixel, split by positive and
negative clicks. A model that ignores its corrections stalls in NoC; this measures it directly.

Command (numbers in recipes/README.md, training section)::

    OMP_NUM_THREADS=1 python recipes/click_honour.py --model composer_tiny --dataset grabcut
    OMP_NUM_THREADS=1 python recipes/click_honour.py --model composer_tiny \
        --checkpoint ~/.cache/sam-composer/train_obj_paste/stage3.pt     # stage 3, before
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import check_at_least, one_line_errors  # noqa: E402

from composer.evaluation.points import next_click  # noqa: E402
from composer.interactive import ClickSession  # noqa: E402


def honoured_clicks(segmenter: Any, items: Iterable[Any], max_clicks: int = 20) -> dict[str, Any]:
    """Per-label counts of clicks whose pixel has the click's label in the next prediction.

    ``items`` need ``load_image()``, ``gt_mask`` and ``ignore`` (GrabCut/Berkeley items). Returns
    ``{"positive": (honoured, total), "negative": (honoured, total)}``.
    """
    counts = {1: [0, 0], 0: [0, 0]}
    for item in items:
        image = item.load_image()
        session = ClickSession(segmenter, image)
        pred = None
        for _ in range(int(max_clicks)):
            click = next_click(item.gt_mask, pred, item.ignore)
            if click is None:
                break
            masks, scores = session.click(click[0], click[1])
            pred = masks[int(np.argmax(scores))]
            x, y = int(click[0][0]), int(click[0][1])
            counts[click[1]][0] += int(pred[y, x] == bool(click[1]))
            counts[click[1]][1] += 1
    return {"positive": tuple(counts[1]), "negative": tuple(counts[0])}


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    import torch

    import composer
    from composer.data.interactive import Berkeley, GrabCut

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="composer_tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--dataset", choices=("grabcut", "berkeley"), default="grabcut")
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args(argv)
    check_at_least(parser, [("--clicks", args.clicks, 1)])
    torch.set_num_threads(1)
    seg = composer.load_segmenter(args.model, checkpoint=args.checkpoint)
    # the decoder's own masks: GrabCut refinement fixes the click pixels, flip TTA averages the
    # first click with another image, and the contrast ranking picks a first mask by the image
    seg.mask_refine, seg.flip_tta, seg.mask_rank = None, False, None
    ds = GrabCut() if args.dataset == "grabcut" else Berkeley()
    out = honoured_clicks(seg, ds, args.clicks)
    print(f"{seg.model_id} on {args.dataset}, {args.clicks} clicks per object")
    for kind, (ok, n) in out.items():
        print(f"  {kind} clicks honoured: {ok}/{n} = {ok / max(n, 1):.1%}")


if __name__ == "__main__":
    main()
