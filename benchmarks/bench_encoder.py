"""Image-encoder time per image: composer_tiny against MobileSAM's TinyViT and SAM's ViT-B.

The encoder is the once-per-image cost of every task (the prompt decoder is milliseconds), so
it decides whether interactive use and automatic generation are practical on a CPU. Each
encoder runs in this process, one after the other, on the same real image (BSDS500 test
100007) preprocessed to its own input size, with random weights (timing does not depend on
them): a warm-up call, then ``--repeats`` timed calls; the median is reported.

Command::

    .venv/bin/python benchmarks/bench_encoder.py --threads 1
    .venv/bin/python benchmarks/bench_encoder.py --threads 2 --skip vit_b

Prints one row per encoder (input side, parameters, median and min seconds per image) and the
ratios to composer_tiny; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's composer, not an installed one
sys.path.insert(0, str(REPO / "benchmarks"))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402

ENCODERS = ("composer_tiny", "vit_t", "vit_b")


def _image() -> torch.Tensor:
    from composer.data.paths import dataset_dir
    from composer.io.image import load_image

    path = dataset_dir("bsds500") / "images" / "test" / "100007.jpg"
    return torch.from_numpy(load_image(path).copy()).permute(2, 0, 1).float()


def _input(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    side = int(model.image_encoder.img_size)
    h, w = image.shape[-2:]
    scale = side / max(h, w)
    size = (int(h * scale + 0.5), int(w * scale + 0.5))
    x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return model.preprocess(x)[None]


def _time(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> list[float]:
    times = []
    with torch.inference_mode():
        model.image_encoder(x)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            model.image_encoder(x)
            times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--skip", action="append", default=[], choices=ENCODERS,
        help="encoder to leave out (repeatable)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    check_at_least(parser, [("--threads", args.threads, 1), ("--repeats", args.repeats, 1)])
    check_json(parser, args.json)
    torch.set_num_threads(args.threads)
    from composer.sam.build import build_sam
    from composer.sam.composer_tiny import build_composer_tiny

    builders = {
        "composer_tiny": lambda: build_composer_tiny(pretrained_backbone=False),
        "vit_t": lambda: build_sam("vit_t"),
        "vit_b": lambda: build_sam("vit_b"),
    }
    image = _image()
    rows = []
    for name, build in builders.items():
        if name in args.skip:
            continue
        model = build().eval()
        x = _input(model, image)
        times = _time(model, x, args.repeats)
        params = sum(p.numel() for p in model.image_encoder.parameters())
        rows.append(
            {
                "encoder": name,
                "input": int(x.shape[-1]),
                "params_m": params / 1e6,
                "median_s": statistics.median(times),
                "min_s": min(times),
            }
        )
        del model
    base = next((r["median_s"] for r in rows if r["encoder"] == "composer_tiny"), None)
    print(f"image encoders, BSDS500 test 100007, {args.threads} thread(s), {args.repeats} runs")
    print(f"{'encoder':<14} {'input':>5} {'params M':>9} {'median s':>9} {'min s':>7}  x tiny")
    for r in rows:
        ratio = f"{r['median_s'] / base:6.1f}x" if base else "     -"
        print(
            f"{r['encoder']:<14} {r['input']:>5} {r['params_m']:>9.2f} {r['median_s']:>9.3f} "
            f"{r['min_s']:>7.3f}  {ratio}"
        )
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
