"""What one click costs with composer_tiny's predict-time options, side by side in one run.

On the GrabCut images (the first ``--images``), for every combination of flip test-time
augmentation (``tta``: off / flip) and GrabCut mask refinement (``refine``: off / the shipped
band), without the contrast ranking of the first click's masks, then the shipped default (both
and the ranking, ``rank``): the encoder pass (``embed``), the first click (which, with flip TTA,
includes the mirrored image's encoder pass) and a second click fed the first one's logits
(never mirrored).
Each image is embedded afresh for each combination, so the mirrored embedding is never reused.
With ``composer.refine.REFINE_THREADS`` > 1 (the default on a machine of several cores: the
three first-click masks are refined side by side) the default runs once more with
the masks refined one after the other (``refine/1t``). ``--threads`` sets torch's threads only.
Prints median seconds, the time to the first mask (embed + first click) and the ratios to the
plain decoder (tta off, refine off).

Command (one thread, as in the notes)::

    python benchmarks/bench_click.py --threads 1
    python benchmarks/bench_click.py --device cuda --dataset berkeley   # on a GPU machine
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--images", type=int, default=10, help="first N images of the dataset")
    parser.add_argument("--dataset", choices=("grabcut", "berkeley"), default="grabcut")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    check_at_least(parser, [("--threads", args.threads, 1), ("--images", args.images, 1)])
    check_json(parser, args.json)
    torch.set_num_threads(args.threads)
    from composer import load_segmenter
    from composer.data.interactive import Berkeley, GrabCut
    from composer.evaluation.points import next_click

    seg = load_segmenter("composer_tiny", device=args.device)
    data = GrabCut() if args.dataset == "grabcut" else Berkeley()
    items = [data[i] for i in range(min(args.images, len(data)))]
    images = [it.load_image() for it in items]
    for _ in range(2):  # warm-up (CUDA: context, kernels, allocator)
        seg.predict(seg.embed(images[0]), points=np.array([[[5.0, 5.0]]]), labels=np.ones((1, 1)))

    def sync() -> None:  # CUDA runs asynchronously: time the work, not its launch
        if seg.device.type == "cuda":
            torch.cuda.synchronize()

    import composer.refine

    threads = composer.refine.REFINE_THREADS
    rows = []
    combos = [(t, r, "off", threads) for t, r in itertools.product(("off", "flip"), ("off", "auto"))]
    combos.append(("flip", "auto", "auto", threads))  # the shipped default
    if threads > 1:  # the default once more with the masks refined one after the other
        combos.append(("flip", "auto", "auto", 1))
    for tta, refine, rank, refine_threads in combos:
        composer.refine.REFINE_THREADS = refine_threads
        embed_s, first_s, second_s = [], [], []
        for it, image in zip(items, images, strict=True):
            # the protocol's clicks (a distance transform of the ground truth or of the error)
            # are simulated outside the timed spans: a user's click costs nothing
            click = next_click(it.gt_mask, None, it.ignore)
            assert click is not None
            pts, lbl = click[0][None, None], np.array([[click[1]]])
            sync()
            t0 = time.perf_counter()
            emb = seg.embed(image)
            sync()
            t1 = time.perf_counter()
            first = seg.predict(emb, points=pts, labels=lbl, refine=refine, tta=tta, rank=rank)
            sync()
            t2 = time.perf_counter()
            top = int(np.argmax(first.scores))
            second_click = next_click(it.gt_mask, first.masks.to_dense()[top], it.ignore)
            if second_click is not None:
                pts2 = np.concatenate([pts, second_click[0][None, None]], axis=1)
                lbl2 = np.array([[click[1], second_click[1]]])
                low = first.extras["low_res_logits"][top][None, None]
                sync()
                t3 = time.perf_counter()
                seg.predict(emb, points=pts2, labels=lbl2, mask_input=low, multimask=False,
                            refine=refine, tta=tta)
                sync()
                second_s.append(time.perf_counter() - t3)
            embed_s.append(t1 - t0)
            first_s.append(t2 - t1)
        rows.append({
            "tta": tta,
            "refine": refine,
            "rank": rank,
            "refine_threads": refine_threads if refine != "off" else None,
            "embed_s": float(np.median(embed_s)),
            "first_click_s": float(np.median(first_s)),
            "second_click_s": float(np.median(second_s)) if second_s else None,
        })
    base = rows[0]
    print(f"composer_tiny on {seg.device}, {len(items)} {args.dataset} images, "
          f"{args.threads} thread(s), median seconds")
    print(f"{'tta':>5} {'refine':>9} {'rank':>5} {'embed':>7} {'1st click':>10} {'1st mask':>9} {'x plain':>8} "
          f"{'2nd click':>10} {'x plain':>8}")
    base_mask = base["embed_s"] + base["first_click_s"]
    for r in rows:
        second = r["second_click_s"] or float("nan")
        mask = r["embed_s"] + r["first_click_s"]
        r["first_mask_s"] = mask
        label = r["refine"] + (f"/{r['refine_threads']}t" if r["refine_threads"] else "")
        print(f"{r['tta']:>5} {label:>9} {r['rank']:>5} {r['embed_s']:7.3f} {r['first_click_s']:10.3f} "
              f"{mask:9.3f} {mask / base_mask:8.2f} {second:10.3f} "
              f"{second / (base['second_click_s'] or float('nan')):8.2f}")
    if args.json:
        meta = {"threads": args.threads, "images": len(items), "dataset": args.dataset,
                "device": str(seg.device)}
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
