"""``sam-composer export --model NAME --out DIR``: the encoder and decoder as ONNX graphs."""

from __future__ import annotations

import argparse
import shlex


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a segmenter's encoder and decoder to ONNX (run them with --model onnx)",
        description="Write encoder.onnx, decoder.onnx and model.json into --out, check them "
        "with ONNX Runtime against the PyTorch model, and print the largest differences. "
        "Use the folder with `--model onnx --checkpoint DIR` in any command, or "
        "load_segmenter('onnx', checkpoint=DIR). Needs the onnx extra.",
    )
    p.add_argument("--model", default="composer_tiny",
                   help="backend to export: composer_tiny (default), vit_b, vit_l, vit_h, vit_t")
    p.add_argument("--checkpoint", default=None,
                   help="weights file or registered weights name (default: the backend's own)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 14 to 20 (default 17)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the ONNX Runtime parity check against the PyTorch model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_onnx

    if args.model.strip().lower() in ("classic", "onnx"):
        raise ValueError(f"--model {args.model} has no PyTorch network to export")
    try:
        out = export_onnx(args.model, args.out, checkpoint=args.checkpoint, opset=args.opset,
                          check=not args.no_check)
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    print(f"exported {out.meta['model_id']} to {out.directory}")
    for path in (out.encoder, out.decoder):
        print(f"  {path.name}: {path.stat().st_size / 2**20:.1f} MiB")
    if "parity" in out.meta:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in out.meta["parity"].items())
        print(f"  largest |ONNX Runtime - PyTorch|: {diffs}")
    # quoted and joined with "=", so the line runs as printed when the folder's name has
    # spaces or quotes or starts with "-"
    print("use it: sam-composer segment IMAGE --model onnx "
          f"--checkpoint={shlex.quote(str(out.directory))} ...")
    return 0
