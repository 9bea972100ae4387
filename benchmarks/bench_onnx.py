"""ONNX Runtime against PyTorch for the same segmenter: encoder per image, decoder per prompt.

Exports ``--model`` (default: the packaged composer_tiny) with ``composer.export.export_onnx``
into a temporary folder, then times, in this one process and on the same real images (the
first ``--images`` of BSDS500 test), the PyTorch segmenter (``load_segmenter(MODEL)``) and the
``onnx`` backend on that export, both limited to ``--threads`` threads:

- encoder: ``embed`` per image (resize, normalise, encoder), median over the images after a
  warm-up;
- decoder: one first click (``predict`` with ``refine``, ``tta`` and ``rank`` off, so only the
  prompt encoder, the mask decoder and the upsampling count), median over ``--prompts``
  clicks per image;
- segment everything: ``AutomaticMaskGenerator`` (32 x 32 points, the model's thresholds)
  on the first image, embedding included, best of two runs (``--amg-side 0`` skips it).

Both see identical prompts; the script also prints the largest difference of their low-res
logits over those prompts. Command::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_onnx.py --threads 1
    .venv/bin/python benchmarks/bench_onnx.py --threads 2

``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="composer_tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--amg-side", type=int, default=32, help="AMG points per side (0: skip)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    check_at_least(ap, [("--threads", args.threads, 1), ("--images", args.images, 1),
                        ("--prompts", args.prompts, 1), ("--amg-side", args.amg_side, 0)])
    check_json(ap, args.json)
    torch.set_num_threads(args.threads)

    from composer.data.paths import dataset_dir
    from composer.export import export_onnx
    from composer.io.image import load_image
    from composer.segmenters import load_segmenter
    from composer.segmenters.onnx import OnnxSegmenter

    paths = sorted((dataset_dir("bsds500") / "images" / "test").glob("*.jpg"))[: args.images]
    images = [load_image(p) for p in paths]
    ref = load_segmenter(args.model, checkpoint=args.checkpoint, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export = export_onnx(ref, tmp)
        export_s = time.perf_counter() - t0
        ours = OnnxSegmenter(tmp, threads=args.threads)
        rng = np.random.default_rng(0)
        res: dict[str, dict[str, list[float]]] = {"torch": {"enc": [], "dec": []},
                                                  "onnx": {"enc": [], "dec": []}}
        worst = 0.0
        for i, image in enumerate([images[0]] + images):  # the first image twice: a warm-up
            warm = i == 0
            h, w = image.shape[:2]
            clicks = rng.uniform([0, 0], [w - 1, h - 1], (args.prompts, 2)).astype(np.float32)
            logits = {}
            for name, seg in (("torch", ref), ("onnx", ours)):
                t = time.perf_counter()
                emb = seg.embed(image)
                enc = time.perf_counter() - t
                dec, out = [], []
                for xy in clicks:
                    t = time.perf_counter()
                    d = seg.predict(emb, points=xy[None], labels=[1], refine="off", tta="off",
                                    rank="off")
                    dec.append(time.perf_counter() - t)
                    out.append(d.extras["low_res_logits"])
                logits[name] = np.stack(out)
                if not warm:
                    res[name]["enc"].append(enc)
                    res[name]["dec"].extend(dec)
            worst = max(worst, float(np.abs(logits["torch"] - logits["onnx"]).max()))
        amg: dict[str, float] = {}
        if args.amg_side > 0:
            from composer.automatic import AutomaticMaskGenerator

            for name, seg in (("torch", ref), ("onnx", ours)):
                gen = AutomaticMaskGenerator(seg, points_per_side=args.amg_side)
                runs = []
                for _ in range(2):
                    t = time.perf_counter()
                    n_masks = len(gen.generate(images[0]))
                    runs.append(time.perf_counter() - t)
                amg[name] = min(runs)
                print(f"{name}: segment everything {n_masks} masks")
    med = {k: {p: statistics.median(v[p]) for p in v} for k, v in res.items()}
    print(f"{ref.model_id}, {args.threads} thread(s), {len(images)} BSDS500 test images, "
          f"{args.prompts} clicks each; export {export_s:.1f} s, parity "
          f"{', '.join(f'{k} {v:.1e}' for k, v in export.meta['parity'].items())}")
    print(f"{'runtime':<8} {'encoder s/image':>16} {'decoder ms/prompt':>18}")
    for k in ("torch", "onnx"):
        print(f"{k:<8} {med[k]['enc']:>16.3f} {1000 * med[k]['dec']:>18.2f}")
    print(f"ratio torch/onnx: encoder {med['torch']['enc'] / med['onnx']['enc']:.2f}x, "
          f"decoder {med['torch']['dec'] / med['onnx']['dec']:.2f}x; "
          f"largest low-res logit difference {worst:.1e}")
    if amg:
        print(f"segment everything ({args.amg_side}x{args.amg_side} points): torch "
              f"{amg['torch']:.1f} s, onnx {amg['onnx']:.1f} s, ratio "
              f"{amg['torch'] / amg['onnx']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"model_id": ref.model_id, "threads": args.threads,
                                               "median": med, "amg_s": amg,
                                               "max_logit_diff": worst}, indent=2))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
