"""Mask-decoder costs behind the automatic generator, and what the IoU gate saves.

Part 1, SAM ViT-B (seeded random weights, as in ``bench_amg.py``), BSDS500 test image 100007:
decode the first 64 points of the default 32x32 grid; prints the predicted-IoU range, how
many prompts pass ``pred_iou_thresh`` 0.88, the decode time with the IoU gate
(``min_iou=0.88``: the two-way transformer and IoU head only when every prompt fails) and
without it, the same two calls in chunks of 16 prompts (before the decoder's byte budget,
``CHUNK_BYTES``), and the upscaler's time for 16 prompts.

Part 2, the trained ``composer_tiny``: automatic mask generation at the generator's defaults
(composer_tiny's calibrated thresholds, ``AMG_THRESHOLDS``) on
the first ``--images`` BSDS500 test images, with the gate and without it (same masks).

Command (one thread, as in the notes)::

    python benchmarks/bench_decoder.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _bench_args import check_at_least, run_main  # noqa: E402


def _best(fn: Any, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def vit_b_decoder(seed: int) -> None:
    from bench_amg import _build_model

    from composer.automatic import AmgConfig
    from composer.data.bsds import BSDS500
    from composer.predictor import SamPredictor
    from composer.structures import Prompts

    model = _build_model(seed, "composer")
    seg = SamPredictor(model)
    image = BSDS500("test")["100007"].image
    emb = seg.embed(image)
    height, width = image.shape[:2]
    grid = AmgConfig().layer_grids()[0][:64] * np.array([[width, height]])
    prompts = Prompts(points=grid.astype(np.float32)[:, None, :], labels=np.ones((64, 1), np.int64))
    iou = seg.decode(emb, prompts, True).iou_pred
    passing = int((iou > 0.88).any(dim=1).sum())
    gated = _best(lambda: seg.decode(emb, prompts, True, min_iou=0.88))
    full = _best(lambda: seg.decode(emb, prompts, True))
    import composer.sam.mask_decoder as md

    budget = md.CHUNK_BYTES
    md.CHUNK_BYTES = 1 << 40  # chunks of PROMPT_CHUNK prompts, as before the byte budget
    try:
        gated_16 = _best(lambda: seg.decode(emb, prompts, True, min_iou=0.88))
        full_16 = _best(lambda: seg.decode(emb, prompts, True))
    finally:
        md.CHUNK_BYTES = budget
    dec = model.mask_decoder
    keys, hyper = torch.randn(16, 4096, 256), torch.randn(16, 4, 32)
    with torch.inference_mode():
        up = _best(lambda: dec._masks(keys, hyper, 64, 64))
    print(f"ViT-B (seed {seed}), 64 grid prompts: predicted IoU in [{float(iou.min()):.3f}, "
          f"{float(iou.max()):.3f}], {passing} of 64 pass 0.88")
    print(f"  decode with the IoU gate {gated:.2f} s, without {full:.2f} s; "
          f"upscaler + hypernetwork for 16 prompts {up:.2f} s")
    print(f"  in chunks of {md.PROMPT_CHUNK} prompts (no CHUNK_BYTES budget): with the gate "
          f"{gated_16:.2f} s, without {full_16:.2f} s")


def tiny_amg(n_images: int) -> None:
    import composer
    from composer.automatic import AutomaticMaskGenerator
    from composer.data.bsds import BSDS500
    from composer.embedding import EmbeddingCache

    seg = composer.load_segmenter("composer_tiny")
    dataset = BSDS500("test")
    images = [dataset[i].image for i in range(min(n_images, len(dataset)))]
    cache = EmbeddingCache()
    for image in images:
        cache.get(image, seg)  # embeddings out of the timing
    counts, rles = {}, {}
    AutomaticMaskGenerator(seg, cache=cache).generate(images[0])  # warm-up, not timed
    for gate in (True, False):
        seg.skips_low_iou = gate
        amg = AutomaticMaskGenerator(seg, cache=cache)
        t0 = time.perf_counter()
        dets = [amg.generate(image) for image in images]
        counts[gate] = [len(d) for d in dets]
        rles[gate] = [[r["counts"] for r in d.masks.rles] if len(d) else [] for d in dets]
        per = (time.perf_counter() - t0) / len(images)
        cfg = amg.config
        print(f"composer_tiny AMG (defaults, pred_iou_thresh {cfg.pred_iou_thresh}, stability "
              f"{cfg.stability_score_thresh}; {len(images)} BSDS test images), gate {gate}: "
              f"{per:.2f} s per image, masks {sum(counts[gate])}")
    seg.skips_low_iou = True
    if rles[True] != rles[False]:
        raise SystemExit("the IoU gate changed the masks")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=5)
    args = parser.parse_args(argv)
    # --images 0 used to fail with a ZeroDivisionError after part 1
    check_at_least(parser, [("--threads", args.threads, 1), ("--images", args.images, 1)])
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        vit_b_decoder(args.seed)
    tiny_amg(args.images)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
