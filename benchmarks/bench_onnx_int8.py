"""int8 quantisation of the exported ONNX graphs against fp32: speed and agreement (not shipped).

Exports ``--model`` (default: the packaged composer_tiny) with ``composer.export.export_onnx``
into a temporary folder, quantises it with ``onnxruntime.quantization`` and measures, in this
one process with ``--threads`` ONNX Runtime threads, these variants of the folder:

- ``fp32``: the export as shipped;
- ``int8``: the encoder quantised statically (QDQ, per-channel int8 weights, uint8
  activations, ``reduce_range`` as ONNX Runtime advises for AVX2 CPUs without VNNI; MinMax
  calibration on the first ``--calibration`` BSDS500 *train* images, preprocessed as
  ``OnnxSegmenter.embed`` does); the decoder stays fp32;
- ``int8-partial``: the same with the nodes matching ``--keep-fp32`` left in fp32 (default: the
  stem and the first three blocks, which also feed the hi-res path, the neck and the hi-res
  branch: only EfficientNet blocks 3-15 run in int8);
- ``w8-fake``: the fp32 graphs with every backbone convolution's weights rounded to int8 (per
  output channel, symmetric) and nothing else: the best a fully int8 backbone could do,
  whatever its activations;
- ``int8-dec``: the fp32 encoder and the decoder quantised dynamically (``quantize_dynamic``,
  int8 weights of the MatMuls with a constant operand).

Measured:

- encoder: ``embed`` seconds per image (median over ``--images`` BSDS500 test images times
  ``--repeats``, the variants interleaved image by image so that other load on the machine
  hits them alike), and the max / mean absolute difference of the embedding from fp32;
- decoder: ms per first click (``predict`` with ``refine``, ``tta`` and ``rank`` off), median;
- agreement: a first click at the centre (the point farthest from the boundary) of every
  region of the first annotator's segmentation covering at least 1 % of the image, on the
  same BSDS500 test images (test images measure agreement only; calibration never sees
  them); the bare decoder's masks (logit > 0) against fp32's: the mean IoU of the three
  multimask outputs paired by index, and of the top-scored mask of each;
- GrabCut first-click mIoU against the ground truth (``--grabcut`` masks, 0 skips; the
  shipped predict-time settings, as ``sam-composer eval points --clicks 1``).

Command (the numbers in docs/onnx.md)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_onnx_int8.py --threads 1

``--json`` writes the numbers; ``--save DIR`` keeps the variant folders (``DIR/int8`` ...),
which run like any export (``sam-composer eval points --model onnx --checkpoint DIR/int8
--dataset grabcut --clicks 1 --out runs/int8``). Needs the datasets (``SAM_COMPOSER_DATA``) and
the onnx extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's composer, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_args import check_at_least, check_json, run_main  # noqa: E402

ENC_TIMED = ("fp32", "int8", "int8-partial")


def encoder_input(image: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """The encoder graph's (1, 3, S, S) input, as ``OnnxSegmenter.embed`` builds it."""
    from composer.predictor import resize_longest_side

    s = int(meta["img_size"])
    mean = np.asarray(meta["pixel_mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(meta["pixel_std"], np.float32).reshape(3, 1, 1)
    resized = resize_longest_side(image, s)
    h, w = resized.shape[:2]
    x = np.zeros((1, 3, s, s), np.float32)
    x[0, :, :h, :w] = (resized.transpose(2, 0, 1).astype(np.float32) - mean) / std
    return x


def quantize_encoder(src: Path, dst: Path, calibration: list[np.ndarray], keep_fp32: str | None,
                     reduce_range: bool) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"image": x}

    pre = dst.with_name("encoder_pre.onnx")
    if not pre.is_file():
        quant_pre_process(str(src / "encoder.onnx"), str(pre))
    names = [n.name for n in onnx.load(str(pre)).graph.node]
    exclude = [n for n in names if keep_fp32 and re.search(keep_fp32, n)]
    quantize_static(str(pre), str(dst / "encoder.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude)


def fake_quantize_weights(src: Path, dst: Path) -> None:
    """Round the backbone convolutions' weights to int8 (per output channel, symmetric)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src / "encoder.onnx"))
    conv_w = {n.input[1] for n in model.graph.node if n.op_type == "Conv" and "backbone" in n.name}
    for init in model.graph.initializer:
        if init.name in conv_w:
            w = numpy_helper.to_array(init)
            scale = np.abs(w).reshape(w.shape[0], -1).max(1).reshape(-1, *[1] * (w.ndim - 1)) / 127
            scale[scale == 0] = 1
            wq = (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(wq, init.name))
    onnx.save(model, str(dst / "encoder.onnx"))


def quantize_decoder(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name("decoder_pre.onnx")
    quant_pre_process(str(src / "decoder.onnx"), str(pre))
    quantize_dynamic(str(pre), str(dst / "decoder.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"],
                     extra_options={"MatMulConstBOnly": True})


def variant(src: Path, dst: Path, make: Any) -> Path:
    """A copy of the fp32 folder ``src`` in which ``make(src, dst)`` replaces a graph."""
    dst.mkdir()
    for f in ("encoder.onnx", "decoder.onnx", "model.json"):
        shutil.copy(src / f, dst / f)
    make(src, dst)
    return dst


def region_clicks(images: list[Any]) -> list[tuple[int, np.ndarray]]:
    """(image index, (x, y)) at the centre of each first-annotator region >= 1 % of the image."""
    from composer.evaluation.points import next_click

    out = []
    for i, sample in enumerate(images):
        seg = sample.ground_truth[0]["segmentation"]
        for r in np.unique(seg):
            region = seg == r
            if region.mean() >= 0.01:
                click = next_click(region)
                assert click is not None
                out.append((i, click[0]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="composer_tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", type=int, default=24, help="BSDS500 train images")
    ap.add_argument("--images", type=int, default=6, help="BSDS500 test images")
    ap.add_argument("--repeats", type=int, default=3, help="encoder timings per image")
    ap.add_argument("--grabcut", type=int, default=50, help="GrabCut masks (0: skip)")
    ap.add_argument("--keep-fp32",
                    default=r"conv_stem|_blocks\.[0-2]/|/neck/|/hires/|^/image_encoder/[A-Z]",
                    help="regex of encoder node names int8-partial leaves in fp32")
    ap.add_argument("--no-reduce-range", action="store_true",
                    help="full 8-bit weights (saturates in VPMADDUBSW on AVX2 without VNNI)")
    ap.add_argument("--save", default=None, help="copy the variant folders into this folder")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    check_at_least(ap, [("--threads", args.threads, 1), ("--calibration", args.calibration, 1),
                        ("--images", args.images, 1), ("--repeats", args.repeats, 1),
                        ("--grabcut", args.grabcut, 0)])
    check_json(ap, args.json)
    torch.set_num_threads(args.threads)
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's per-tensor warnings

    from composer.data.bsds import BSDS500
    from composer.data.interactive import GrabCut
    from composer.evaluation.points import mask_iou, simulate_clicks
    from composer.export import export_onnx
    from composer.segmenters.onnx import OnnxSegmenter

    train, test = BSDS500("train"), BSDS500("test")
    samples = [test[i] for i in range(args.images)]
    images = [s.image for s in samples]
    clicks = region_clicks(samples)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        fp32 = tmp / "fp32"
        export = export_onnx(args.model, fp32, checkpoint=args.checkpoint)
        meta = export.meta
        calib = [encoder_input(train[i].image, meta) for i in range(args.calibration)]
        t0 = time.perf_counter()
        folders = {"fp32": fp32}
        rr = not args.no_reduce_range
        folders["int8"] = variant(fp32, tmp / "int8",
                                  lambda s, d: quantize_encoder(s, d, calib, None, rr))
        quant_s = time.perf_counter() - t0
        folders["int8-partial"] = variant(
            fp32, tmp / "partial", lambda s, d: quantize_encoder(s, d, calib, args.keep_fp32, rr))
        folders["w8-fake"] = variant(fp32, tmp / "w8", fake_quantize_weights)
        folders["int8-dec"] = variant(fp32, tmp / "dec", quantize_decoder)
        sizes = {k: {g: (v / g).stat().st_size / 2**20 for g in ("encoder.onnx", "decoder.onnx")}
                 for k, v in folders.items()}
        segs = {k: OnnxSegmenter(v, threads=args.threads) for k, v in folders.items()}

        # encoder: interleaved timings, embedding differences
        enc_t: dict[str, list[float]] = {k: [] for k in ENC_TIMED}
        for k in ENC_TIMED:  # warm-up
            segs[k].embed(images[0])
        for _ in range(args.repeats):
            for image in images:
                for k in ENC_TIMED:
                    t = time.perf_counter()
                    segs[k].embed(image)
                    enc_t[k].append(time.perf_counter() - t)
        embs = {k: [s.embed(im) for im in images] for k, s in segs.items()}
        emb_diff = {}
        for k in segs:
            d = [np.abs(a.features.numpy() - b.features.numpy())
                 for a, b in zip(embs[k], embs["fp32"], strict=True)]
            emb_diff[k] = (max(float(x.max()) for x in d), float(np.mean([x.mean() for x in d])))
        scale = float(np.mean([np.abs(e.features.numpy()).mean() for e in embs["fp32"]]))

        # decoder timing and mask agreement on the bare decoder
        bare = {k: OnnxSegmenter(v, threads=args.threads, settings=False)
                for k, v in folders.items()}
        dec_t: dict[str, list[float]] = {k: [] for k in segs}
        masks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in segs}
        for i, xy in clicks:
            for k, seg in bare.items():
                emb = embs[k][i]
                for _ in range(3):
                    t = time.perf_counter()
                    det = seg.predict(emb, points=xy[None], labels=[1], refine="off",
                                      tta="off", rank="off")
                    dec_t[k].append(time.perf_counter() - t)
                assert det.masks is not None
                masks[k].append((det.masks.to_dense(), np.asarray(det.scores)))
        agree = {}
        for k in segs:
            pairs = list(zip(masks[k], masks["fp32"], strict=True))
            per_output = [mask_iou(a, b) for (ma, _), (mb, _) in pairs
                          for a, b in zip(ma, mb, strict=True)]
            top = [mask_iou(ma[np.argmax(sa)], mb[np.argmax(sb)]) for (ma, sa), (mb, sb) in pairs]
            agree[k] = (float(np.mean(per_output)), float(np.mean(top)))

        # GrabCut first click against the ground truth, shipped settings
        grab: dict[str, float] = {}
        if args.grabcut > 0:
            items = list(GrabCut())[: args.grabcut]
            ious: dict[str, list[float]] = {k: [] for k in segs}
            for item in items:
                image = item.load_image()
                for k, seg in segs.items():
                    trace = simulate_clicks(seg, seg.embed(image), item.gt_mask, item.ignore,
                                            max_clicks=1, image=image)
                    ious[k].append(float(trace.ious[0]))
            grab = {k: float(np.mean(v)) for k, v in ious.items()}
        if args.save:
            for k, v in folders.items():
                shutil.copytree(v, Path(args.save) / k, dirs_exist_ok=True)

    enc = {k: statistics.median(v) for k, v in enc_t.items()}
    dec = {k: 1000 * statistics.median(v) for k, v in dec_t.items()}
    print(f"{meta['model_id']}, {args.threads} thread(s); encoder calibrated on "
          f"{args.calibration} BSDS500 train images ({quant_s:.0f} s), reduce_range {rr}; "
          f"{len(images)} BSDS500 test images, {len(clicks)} region clicks; "
          f"{args.grabcut} GrabCut masks; int8-partial keeps /{args.keep_fp32}/ in fp32")
    print(f"{'variant':<13} {'enc MiB':>7} {'enc s/img':>9} {'speed-up':>8} {'emb max|d|':>10} "
          f"{'emb mean|d|':>11} {'dec ms':>7} {'IoU outputs':>11} {'IoU top':>8} {'GrabCut@1':>9}")
    for k in segs:
        e = f"{enc[k]:>9.3f} {enc['fp32'] / enc[k]:>7.2f}x" if k in enc else f"{'':>9} {'':>8}"
        g = f"{grab[k]:>9.4f}" if grab else ""
        print(f"{k:<13} {sizes[k]['encoder.onnx']:>7.1f} {e} {emb_diff[k][0]:>10.3f} "
              f"{emb_diff[k][1]:>11.4f} {dec[k]:>7.2f} {agree[k][0]:>11.4f} {agree[k][1]:>8.4f} "
              f"{g}")
    print(f"(mean |fp32 embedding| {scale:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"model_id": meta["model_id"], "threads": args.threads, "reduce_range": rr,
             "calibration_images": args.calibration, "keep_fp32": args.keep_fp32,
             "encoder_s": enc, "decoder_ms": dec, "embedding_diff": emb_diff,
             "agreement_iou": agree, "grabcut_miou1": grab, "sizes_mib": sizes}, indent=2))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
