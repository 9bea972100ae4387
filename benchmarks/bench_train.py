"""What one training step of composer_tiny costs, on each device given, side by side in one run.

The shipped architecture (packaged weights, with the hi-res path and the click maps) with stage 4's
session (``recipes/train_default.py --stage clicks``: 16 masks per step, 8 corrective rounds,
2 without a new point, the first round weighted 5x, half of the first prompts boxes), frozen
backbone, on ``--images`` synthetic 512-px images of up to 24 shapes (so most steps draw 16
masks, as on the BSDS regions) whose features are cached first (as the
recipe caches its training images'). Each device trains a fresh copy for ``--steps`` steps; the
first three are warm-up, the median of the rest is reported (a step ends with a host read of the
loss, so CUDA work is finished when it is timed). On CUDA the trainer uses float16 autocast and
a gradient scaler, as the recipe does there.

Command::

    python benchmarks/bench_train.py --devices cpu --threads 1          # this machine
    python benchmarks/bench_train.py --devices cpu cuda --threads 1     # on a GPU machine

Prints median seconds per step and steps per hour for each device, and the ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402

WARMUP_STEPS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", default=["cpu"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=23, help="steps per device (3 warm-up)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    # the first WARMUP_STEPS are not timed: fewer steps used to train, then fail on no timings
    check_at_least(parser, [("--steps", args.steps, WARMUP_STEPS + 1), ("--images", args.images, 1),
                            ("--threads", args.threads, 1)])
    check_json(parser, args.json)
    torch.set_num_threads(args.threads)
    from composer.sam.composer_tiny import build_composer_tiny
    from composer.segmenters import resolve_device
    from composer.training.data import Variant, synthetic_shapes
    from composer.training.features import FeatureCache
    from composer.training.losses import LossWeights
    from composer.training.trainer import TrainConfig, Trainer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.devices:
            device = resolve_device(name)
            torch.manual_seed(0)
            model = build_composer_tiny(device=device)
            cache = FeatureCache(f"bench-{device.type}", root=Path(tmp) / device.type)
            items = synthetic_shapes(args.images, size=512, seed=1, max_shapes=24)
            low = int(model.prompt_encoder.mask_input_size[0])
            samples = cache.load_all(cache.build(model, items, lambda _: [Variant()], low))
            config = TrainConfig(
                steps=args.steps, masks_per_image=16, num_corrective=8, no_point_rounds=2,
                first_round_weight=5.0, box_prob=0.5, lr=3e-4, warmup_steps=5,
                loss=LossWeights(focal=2.0), freeze=("image_encoder.backbone",),
                checkpoint_dir=str(Path(tmp) / f"ck-{device.type}"),
                checkpoint_every=10**9, seed=0,
            )
            trainer = Trainer(model, config, samples)
            hist = trainer.fit()
            secs = [h["seconds"] for h in hist[WARMUP_STEPS:]]
            med = statistics.median(secs)
            rows.append({"device": str(device), "amp": bool(trainer.amp),
                         "median_s_per_step": med, "steps_per_hour": 3600 / med,
                         "steps_timed": len(secs)})
    print(f"composer_tiny training step (stage 4 session, 16 masks), {args.threads} CPU thread(s)")
    base = rows[0]["median_s_per_step"]
    for r in rows:
        gpu = torch.cuda.get_device_name() if r["device"].startswith("cuda") else ""
        print(f"{r['device']:8s} amp={r['amp']!s:5s} {r['median_s_per_step']:8.3f} s/step "
              f"{r['steps_per_hour']:9.0f} steps/h  x{base / r['median_s_per_step']:.1f} {gpu}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
