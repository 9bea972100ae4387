"""On a CUDA GPU: our SAM networks against the official ``segment-anything`` code, side by side.

For each architecture (``--archs``; default vit_b, vit_h and MobileSAM's vit_t) the official
model is built with seeded random weights (timing does not depend on them), its state dict is
loaded into ours, and both run in this process on the same real image (BSDS500 test 100007),
one after the other, in float32 (TF32 off: IEEE arithmetic, as the parity tests use) and under
bfloat16 autocast. Reported: the image encoder's median milliseconds per image (after two
warm-up calls; CUDA synchronised around every timed call), the prompt encoder + mask decoder's
median milliseconds for a batch of ``--prompts`` single-point prompts with three masks each,
the largest difference between the two embeddings, peak GPU memory, and ours / official.
composer_tiny (our trained default; no official counterpart) is timed the same way.

Command (on the GPU machine)::

    python benchmarks/bench_gpu.py --json runs/bench_gpu.json

Refuses to run without CUDA: its numbers are about the GPU path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402
from bench_encoder import _input  # noqa: E402  (resize + preprocess, as the CPU benchmark)

ARCHS = ("vit_b", "vit_l", "vit_h", "vit_t")


def _image(device: torch.device) -> torch.Tensor:
    from composer.data.paths import dataset_dir
    from composer.io.image import load_image

    try:
        path = dataset_dir("bsds500") / "images" / "test" / "100007.jpg"
        arr = load_image(path)
    except ValueError:  # BSDS500 not at hand: astronaut, resized like BSDS (481 x 321)
        from skimage import data
        from skimage.transform import resize

        arr = (resize(data.astronaut(), (321, 481), anti_aliasing=True) * 255).astype("uint8")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().to(device)


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(2):
            fn()
        for _ in range(repeats):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def _official(arch: str, seed: int) -> Any:
    torch.manual_seed(seed)
    if arch == "vit_t":
        from mobile_sam import sam_model_registry as registry
    else:
        from segment_anything import sam_model_registry as registry
    return registry[arch](checkpoint=None).eval()


def _decode(model: Any, emb: torch.Tensor, n: int, side: int) -> Callable[[], Any]:
    g = torch.Generator().manual_seed(0)
    coords = (torch.rand(n, 1, 2, generator=g) * side).to(emb.device)
    labels = torch.ones(n, 1, dtype=torch.int, device=emb.device)

    def run() -> Any:
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return model.mask_decoder(
            image_embeddings=emb,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )

    return run


def _measure(model: Any, image: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    x = _input(model, image)
    side = int(model.image_encoder.img_size)
    for mode in ("fp32", "bf16"):
        ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "bf16")
        with ctx:
            torch.cuda.reset_peak_memory_stats()
            out[f"encoder_ms_{mode}"] = _median_ms(lambda: model.image_encoder(x), args.repeats)
            out[f"encoder_peak_mb_{mode}"] = torch.cuda.max_memory_allocated() / 2**20
            with torch.inference_mode():
                emb = model.image_encoder(x)
            out[f"decoder_ms_{mode}"] = _median_ms(
                _decode(model, emb, args.prompts, side), args.repeats
            )
    with torch.inference_mode():
        out["embedding"] = model.image_encoder(x).float()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vit_b", "vit_h", "vit_t"], choices=ARCHS)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=64, help="point prompts per decoder call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    check_at_least(parser, [("--repeats", args.repeats, 1), ("--prompts", args.prompts, 1)])
    check_json(parser, args.json)
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark measures the GPU path")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    image = _image(device)
    rows: list[dict[str, Any]] = []
    from composer.sam import build_sam

    for arch in args.archs:
        official = _official(arch, args.seed).to(device)
        ours = build_sam(arch, meta=False)
        ours.load_state_dict(official.state_dict(), strict=True)
        ours = ours.eval().to(device)
        m_off = _measure(official, image, args)
        m_ours = _measure(ours, image, args)
        diff = float((m_off.pop("embedding") - m_ours.pop("embedding")).abs().max())
        row = {"arch": arch, "official": m_off, "ours": m_ours, "embedding_max_abs_diff": diff}
        row["ratio_ours_to_official"] = {k: m_ours[k] / m_off[k] for k in m_ours}
        rows.append(row)
        del official, ours
        torch.cuda.empty_cache()
    from composer.sam.composer_tiny import build_composer_tiny

    tiny = build_composer_tiny(device=device)
    m_tiny = _measure(tiny, image, args)
    m_tiny.pop("embedding")
    rows.append({"arch": "composer_tiny", "ours": m_tiny})

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{args.prompts} prompts per decoder call")
    print(f"{'arch':14s} {'mode':5s} {'encoder ms (official / ours / ratio)':>38s} "
          f"{'decoder ms (official / ours / ratio)':>38s}")
    for row in rows:
        for mode in ("fp32", "bf16"):
            ours_e, ours_d = row["ours"][f"encoder_ms_{mode}"], row["ours"][f"decoder_ms_{mode}"]
            if "official" in row:
                off_e = row["official"][f"encoder_ms_{mode}"]
                off_d = row["official"][f"decoder_ms_{mode}"]
                enc = f"{off_e:9.2f} / {ours_e:9.2f} / {ours_e / off_e:5.2f}"
                dec = f"{off_d:9.2f} / {ours_d:9.2f} / {ours_d / off_d:5.2f}"
            else:
                enc = f"{'-':>9s} / {ours_e:9.2f} / {'-':>5s}"
                dec = f"{'-':>9s} / {ours_d:9.2f} / {'-':>5s}"
            print(f"{row['arch']:14s} {mode:5s} {enc:>38s} {dec:>38s}")
        if "embedding_max_abs_diff" in row:
            print(f"{'':14s} fp32 embedding max |ours - official| = "
                  f"{row['embedding_max_abs_diff']:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                "prompts": args.prompts, "repeats": args.repeats}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
