"""ONNX export of a promptable segmenter: the image encoder and the prompt decoder as two graphs.

``export_onnx`` writes, into one folder:

- ``encoder.onnx``: input ``image`` (1, 3, S, S) float32, the *normalised and zero-padded*
  model input (``Sam.preprocess`` of the image resized so its longest side is S); output
  ``image_embeddings`` (1, C, h, w) float32, exactly what ``SamPredictor.embed`` keeps.
- ``decoder.onnx``: the prompt encoder and the mask decoder for a batch of B prompts of one
  image, with the official SAM ONNX model's input convention
  (``segment_anything.utils.onnx.SamOnnxModel``, which takes B = 1):
  ``image_embeddings`` (1, C, h, w); ``point_coords`` (B, N, 2) float32 XY in the model-input
  frame (pixel indices of the resized image); ``point_labels`` (B, N) float32: 1 positive,
  0 negative, 2 / 3 a box's top-left / bottom-right corner, -1 padding (a prompt of points
  without a box ends with one padding point at (0, 0); a prompt of a mask input alone has
  N = 0, as ``PromptEncoder`` gives it no token); ``mask_input`` (B, 1, 4h, 4w) low-res logits
  and ``has_mask_input`` (B,) float32 0 or 1. Outputs ``low_res_masks`` (B, 4, 4h, 4w) and
  ``iou_predictions`` (B, 4): all four mask tokens, the single-mask output first and the three
  multimask outputs after it (the caller slices, as ``MaskDecoder.forward`` does). B may be
  1 to ``max_batch`` (``model.json``; the decoder's CPU chunk size, e.g. 16 for composer_tiny,
  4 for SAM's ViTs): the traced graph holds one chunk.
- ``model.json``: what a runtime needs besides the graphs (input side, pixel mean and std,
  low-res size, mask threshold, model id, opset, the segmenter's predict-time settings) and the
  parity measured against the PyTorch model at export time.

Any ``SamPredictor`` backend exports (``composer_tiny``, ``vit_b`` / ``vit_l`` / ``vit_h``,
``vit_t``): the graphs are traced from its modules, so the decoder graph computes the same
tokens as :class:`~composer.sam.prompt_encoder.PromptEncoder` (including composer_tiny's click
maps and hi-res path). ``composer.segmenters.onnx.OnnxSegmenter`` runs the folder with
ONNX Runtime behind the usual segmenter interface. Needs the ``onnx`` extra
(``pip install "sam-composer[onnx]"``: onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import logging
import math
import os
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
META_FILE = "model.json"
FORMAT = "sam-composer-onnx/1"
#: Keys of the graphs' metadata (``ModelProto.metadata_props``): the export both graphs came
#: from (also ``model.json``'s ``export_id``) and which graph a file holds, so a folder that
#: mixes exports, or swaps the two files, is refused when it is opened.
EXPORT_ID_KEY, GRAPH_ROLE_KEY = "sam_composer_export_id", "sam_composer_graph"
#: Label codes of ``point_labels`` in the decoder graph (the official ONNX model's).
PAD_LABEL, NEG_LABEL, POS_LABEL, BOX_TL_LABEL, BOX_BR_LABEL = -1, 0, 1, 2, 3
#: Lowest opset the graphs export to (the attention's ``scaled_dot_product_attention`` needs 14).
MIN_OPSET = 14


def max_opset() -> int:
    """Highest opset torch's TorchScript exporter (``dynamo=False``, which the export uses)
    writes."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):  # pragma: no cover - older or newer torch
        return 20


def _torchscript_exporter() -> dict[str, Any]:
    """``dynamo=False`` where ``torch.onnx.export`` has the flag (torch 2.5 on, where newer
    releases default to the dynamo exporter); before it the TorchScript exporter is the only one."""
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        return {"dynamo": False}
    return {}  # pragma: no cover - torch < 2.5


@functools.lru_cache(maxsize=1)
def sdpa_scale_exports() -> bool:
    """Whether the TorchScript exporter translates ``scaled_dot_product_attention`` with an
    explicit ``scale``. Older torch releases (2.1 to 2.3 were seen to) read the scale as a Python
    float and fail inside the exporter (``AttributeError: 'float' object has no attribute 'node'``
    on 2.1.0, ``TypeError: z_(): incompatible function arguments`` on 2.1.2 to 2.3).

    Raises:
        OSError: the probe's graph could not be written (a full disk, no temporary folder):
            that says nothing about the exporter, so it is raised, not remembered as False.
    """

    class Probe(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return nn.functional.scaled_dot_product_attention(q, q, q, scale=0.5)

    try:
        with torch.no_grad(), warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            torch.onnx.export(Probe(), (torch.zeros(1, 1, 2, 4),), str(Path(tmp) / "probe.onnx"),
                              opset_version=MIN_OPSET, **_torchscript_exporter())
    except OSError:
        raise  # not cached: the next export probes again
    except Exception:  # noqa: BLE001 - 2.1.0 raises AttributeError, 2.1.2 to 2.3 TypeError
        return False
    return True


def _query_dim(module: nn.Module) -> int | None:
    """The query's channels per head of a SAM ViT or TinyViT attention module, else None."""
    from ..sam.image_encoder import Attention as VitAttention
    from ..sam.tiny_vit import Attention as TinyVitAttention

    if isinstance(module, VitAttention):
        return int(module.qkv.out_features) // (3 * module.num_heads)
    if isinstance(module, TinyVitAttention):
        return int(module.key_dim)
    return None


@contextlib.contextmanager
def _exportable_attention(net: nn.Module) -> Any:
    """On a torch whose exporter fails on an explicit attention scale (:func:`sdpa_scale_exports`),
    let the ViT and TinyViT attention modules pass ``scale=None`` while exporting: their scale is
    ``head_dim ** -0.5``, the function's own default, which the graph then computes from the
    query's shape (equal in float32). The modules' scales are restored afterwards.

    Raises:
        ValueError: an attention scale other than the default (a modified model), which this
            torch cannot export.
    """
    changed: list[tuple[Any, float]] = []
    attention = [(m, d) for m in net.modules() if (d := _query_dim(m)) is not None]
    if attention and not sdpa_scale_exports():  # no probe for a model without such modules
        for module, dim in attention:
            scale = float(module.scale)  # type: ignore[arg-type]
            if not math.isclose(scale, 1.0 / math.sqrt(dim), rel_tol=1e-6):
                raise ValueError(
                    f"torch {torch.__version__}'s ONNX exporter cannot export attention with a "
                    f"scale ({scale}) other than 1/sqrt(head dim); export with a newer torch"
                )
            changed.append((module, scale))
    try:
        for module, _ in changed:
            module.scale = None
        yield
    finally:
        for module, scale in changed:
            module.scale = scale


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)`` (what exporting needs), or ImportError naming the extra."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "ONNX export needs the onnx extra: pip install \"sam-composer[onnx]\" (onnx, onnxruntime)"
        ) from exc
    return onnx, require_onnxruntime()


class EncoderGraph(nn.Module):
    """The image encoder on a preprocessed (1, 3, S, S) input."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.image_encoder: Any = model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)  # type: ignore[no-any-return]


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder for B prompts of one image, with label-coded points (see
    the module doc).

    Equal to ``PromptEncoder.forward`` followed by ``MaskDecoder`` for every prompt it
    accepts: points then box corners (labels 2, 3), or points then one padding point when
    there is no box; the mask input when ``has_mask_input`` is 1, the learned no-mask
    embedding when it is 0. Branches on the prompt's kind become arithmetic on the labels, so
    one graph serves every prompt.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.prompt_encoder: Any = model.prompt_encoder
        self.mask_decoder: Any = model.mask_decoder

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        labels = point_labels[..., None]
        enc = pe.pe_layer.forward_with_coords(point_coords + 0.5, pe.input_image_size)
        sparse = torch.where(labels == PAD_LABEL, pe.not_a_point_embed.weight, enc)
        for code in (NEG_LABEL, POS_LABEL, BOX_TL_LABEL, BOX_BR_LABEL):
            sparse = sparse + (labels == code).to(sparse.dtype) * pe.point_embeddings[code].weight
        has = has_mask_input.reshape(-1, 1, 1, 1).to(mask_input.dtype)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1 - has) * no_mask
        if pe.click_maps is not None:
            dense = torch.cat([dense, self._click_maps(point_coords, point_labels, mask_input, has)], 1)
        dec = self.mask_decoder
        emb, dense, hires = dec.split_inputs(image_embeddings, dense)
        masks, iou = dec.predict_masks(
            image_embeddings=emb,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            outputs=slice(0, None),
            hires=hires,
        )
        return masks, iou  # type: ignore[no-any-return]

    def _click_maps(self, coords: torch.Tensor, labels: torch.Tensor, mask_input: torch.Tensor,
                    has: torch.Tensor) -> torch.Tensor:
        """``ClickMapBranch`` on the clicks (labels 0 / 1; box corners and padding are not
        clicks) and, when given, the mask input; packed as ``PromptEncoder`` packs it."""
        pe = self.prompt_encoder
        branch = pe.click_maps
        h, w = pe.mask_input_size
        ih, iw = pe.input_image_size
        gx = (coords[..., 0] + 0.5) * (w / iw) - 0.5
        gy = (coords[..., 1] + 0.5) * (h / ih) - 0.5
        ys = torch.arange(h, dtype=torch.float32)
        xs = torch.arange(w, dtype=torch.float32)
        d2 = ((ys[None, None, :] - gy[..., None]) ** 2)[..., :, None] + (
            (xs[None, None, :] - gx[..., None]) ** 2
        )[..., None, :]
        g = torch.exp(-d2 / (2 * branch.sigma**2))  # (B, N, h, w)
        sel = labels[..., None, None]
        # a zero map joins the N maps: a prompt of a mask input alone has no point (N = 0),
        # and the maximum over none is -inf in the graph, where ``rasterize`` leaves zeros
        # (the maps are >= 0, so it changes no other maximum)
        zero = torch.zeros_like(mask_input)
        pos = torch.cat([torch.where(sel == POS_LABEL, g, torch.zeros_like(g)), zero], 1).amax(dim=1)
        neg = torch.cat([torch.where(sel == NEG_LABEL, g, torch.zeros_like(g)), zero], 1).amax(dim=1)
        mask = has[:, 0] * torch.tanh(mask_input[:, 0] / 4)
        flag = has[:, 0] * torch.ones_like(mask)
        raster = torch.stack([pos, neg, mask, flag], dim=1)
        return torch.nn.functional.pixel_unshuffle(branch(raster), 4)


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote: the folder, its files and the metadata (``model.json``)."""

    directory: Path
    encoder: Path
    decoder: Path
    meta: dict[str, Any]


def _settings(segmenter: Any) -> dict[str, Any]:
    """The segmenter's predict-time settings (``mask_refine``, ``mask_rank``, ``flip_tta``,
    ``prompt_shift``, ``amg_thresholds``, ``edge_refine``, ``box_zoom``) as JSON values; ``OnnxSegmenter``
    restores them."""
    refine, rank, edge = segmenter.mask_refine, segmenter.mask_rank, segmenter.edge_refine
    return {
        "mask_refine": None if refine is None else dataclasses.asdict(refine),
        "mask_rank": None if rank is None else dataclasses.asdict(rank),
        "flip_tta": bool(segmenter.flip_tta),
        "prompt_shift": float(segmenter.prompt_shift),
        "amg_thresholds": None if segmenter.amg_thresholds is None else dict(segmenter.amg_thresholds),
        "edge_refine": None if edge is None else [float(v) for v in edge],
        "box_zoom": None if segmenter.box_zoom is None else float(segmenter.box_zoom),
    }


def _example_prompt(low: int, s: int, batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    coords = torch.rand((batch, 2, 2), generator=g) * (s - 1)
    labels = torch.tensor([[1.0, -1.0]]).repeat(batch, 1)
    return coords, labels, torch.randn((batch, 1, low, low), generator=g), torch.ones(batch)


def max_prompt_batch(net: Any, features: torch.Tensor) -> int:
    """The most prompts one call of the traced decoder graph takes: ``MaskDecoder`` decodes
    on the CPU in chunks (of prompts, and of upscaled maps) within a byte budget, and a trace
    records one chunk, so a larger batch would be cut short."""
    from ..sam.mask_decoder import CHUNK_BYTES, PROMPT_CHUNK

    d = int(net.mask_decoder.transformer_dim)
    h, w = (int(v) for v in features.shape[-2:])
    chunk = max(1, min(PROMPT_CHUNK, CHUNK_BYTES // (4 * h * w * d)))
    step = max(1, CHUNK_BYTES // (4 * 2 * h * w * d))
    # The upscaler's sub-chunks of ``step`` prompts are a branch on the traced batch
    # (``min(2, max_batch)``), not a slice in the graph: a trace that stays under ``step``
    # holds no sub-chunking and takes the whole prompt chunk (SAM's ViTs: 4, where
    # ``min(chunk, step)`` gave 2).
    return chunk if min(2, chunk) <= step else 1


def export_onnx(
    model: str | Any = "composer_tiny",
    out_dir: str | os.PathLike[str] = "onnx",
    checkpoint: Any = None,
    opset: int = 17,
    check: bool = True,
) -> OnnxExport:
    """Export a segmenter's encoder and decoder to ONNX (see the module doc for the graphs).

    Args:
        model: a backend name for ``load_segmenter`` ("composer_tiny", "vit_b", ...) or a
            ``SamPredictor`` (e.g. one loaded with custom weights).
        out_dir: folder to write (created; existing export files are replaced).
        checkpoint: weights for a backend name (as ``load_segmenter``); None: its default.
        opset: ONNX opset of the graphs.
        check: run both graphs with ONNX Runtime on a real-sized random input and on random
            prompts, and record the largest absolute difference from the PyTorch model in
            ``model.json`` (``parity``); a difference above 1e-3 raises ``ValueError``.

    Returns:
        ``OnnxExport`` with the written paths and the metadata.

    Raises:
        ValueError: ``model`` is not a backend with a PyTorch SAM-structured model (the classic
            backend has no network), ``opset`` is outside :data:`MIN_OPSET` to
            :func:`max_opset`, or the exported graphs disagree with the model.
        ImportError: the ``onnx`` extra is not installed.
    """
    onnx, _ = require_onnx()
    if not MIN_OPSET <= int(opset) <= max_opset():
        raise ValueError(f"ONNX opset must be {MIN_OPSET} to {max_opset()}, got {opset}")
    from ..predictor import SamPredictor
    from ..segmenters import load_segmenter

    seg = load_segmenter(model, checkpoint=checkpoint, device="cpu") if isinstance(model, str) else model
    if not isinstance(seg, SamPredictor):
        raise ValueError(
            f"{getattr(seg, 'model_id', model)} has no PyTorch network to export; "
            "ONNX export needs a SAM-structured backend (composer_tiny, vit_b, vit_l, vit_h, vit_t)"
        )
    net = seg.model
    first = next(net.parameters())
    if (first.dtype != torch.float32 or first.device.type != "cpu"
            or any(m.training for m in net.modules())):
        # trace a float32 CPU copy in eval mode; the caller's segmenter keeps its device,
        # precision and mode (a model in training mode, e.g. just fine-tuned, was traced in eval
        # mode but checked against its training-mode output, and its BatchNorm statistics
        # were updated by the export's random input)
        net = copy.deepcopy(net).float().cpu().eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # model.json is written last: a failed export must not leave an older export's metadata
    # beside new graphs (the onnx backend would load the pair as a complete export)
    (out / META_FILE).unlink(missing_ok=True)
    s, low = seg.img_size, seg.low_res_size[0]
    image = torch.randn((1, 3, s, s), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    with torch.inference_mode():
        features = net.image_encoder(image)
    enc_path, dec_path = out / ENCODER_FILE, out / DECODER_FILE
    stamp = {EXPORT_ID_KEY: uuid.uuid4().hex}
    with _exportable_attention(net):
        _export(EncoderGraph(net), (image,), enc_path, ["image"], ["image_embeddings"], {}, opset,
                {**stamp, GRAPH_ROLE_KEY: "encoder"})
    max_batch = max_prompt_batch(net, features)
    batch = {0: "num_prompts"}
    _export(
        DecoderGraph(net),
        (features, *_example_prompt(low, s, min(2, max_batch))),
        dec_path,
        ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
        ["low_res_masks", "iou_predictions"],
        {"point_coords": {**batch, 1: "num_points"}, "point_labels": {**batch, 1: "num_points"},
         "mask_input": batch, "has_mask_input": batch, "low_res_masks": batch,
         "iou_predictions": batch},
        opset,
        {**stamp, GRAPH_ROLE_KEY: "decoder"},
    )
    for path in (enc_path, dec_path):
        onnx.checker.check_model(str(path))
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model_id": seg.model_id,
        "export_id": stamp[EXPORT_ID_KEY],
        "img_size": int(s),
        "low_res_size": [int(v) for v in seg.low_res_size],
        "embedding_shape": [int(v) for v in features.shape],
        "max_batch": int(max_batch),
        "pixel_mean": [float(v) for v in net.pixel_mean.reshape(-1)],
        "pixel_std": [float(v) for v in net.pixel_std.reshape(-1)],
        "mask_threshold": float(seg.mask_threshold),
        "opset": int(opset),
        "torch": torch.__version__,
        "settings": _settings(seg),
    }
    if check:
        meta["parity"] = check_parity(net, enc_path, dec_path, image, features, low, max_batch)
        worst = max(meta["parity"].values())
        if worst > 1e-3:
            raise ValueError(f"the exported graphs differ from the model by up to {worst:.2e}")
    from ..io.visualize import write_json

    write_json(out / META_FILE, meta, indent=2)
    logger.info("exported %s to %s in %.1f s", seg.model_id, out, time.perf_counter() - t0)
    return OnnxExport(out, enc_path, dec_path, meta)


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Add ``metadata`` to the ``metadata_props`` of the ONNX file ``path`` (in place; tensors
    kept in external data files stay where they are)."""
    onnx, _ = require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(path))


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: list[str],
            outputs: list[str], dynamic: dict[str, dict[int, str]], opset: int,
            metadata: dict[str, str] | None = None) -> None:
    """Trace ``module`` to ``path`` through a temporary ``.tmp`` file, renamed over ``path``
    when complete and removed when the export fails (a full disk, an interruption).
    ``metadata`` is added to the graph's ``metadata_props``.

    Raises:
        OSError: the file cannot be written; the exporter's own errors pass through.
    """
    tmp = path.with_name(path.name + ".tmp")
    # The tracer warns about every Python branch on a shape; the graphs are checked against
    # the model instead (``check_parity``), over the prompt kinds the branches tell apart.
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            torch.onnx.export(
                module.eval(), args, str(tmp), input_names=inputs, output_names=outputs,
                dynamic_axes=dynamic or None, opset_version=opset, do_constant_folding=True,
                **_torchscript_exporter(),
            )
        if metadata:
            _add_metadata(tmp, metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written graph (gigabytes for ViT-H) was left behind
        raise


def require_onnxruntime() -> Any:
    """``onnxruntime`` (all that running an export needs), or ImportError naming the extra."""
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the onnx backend needs ONNX Runtime: pip install onnxruntime "
            '(or the onnx extra: pip install "sam-composer[onnx]")'
        ) from exc
    return onnxruntime


def session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``path`` (``threads`` intra-op threads; None: ORT's)."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def decoder_inputs(coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None,
                   low: tuple[int, int], boxes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The decoder graph's feed for B prompts in the model-input frame.

    Args:
        coords: (B, K, 2) (or (K, 2) for one prompt; K may be 0) point XY.
        labels: (B, K) (or (K,)) labels 1 / 0 / -1.
        mask_input: None, or (B, 1, *low) low-res logits.
        low: the low-res size (h, w).
        boxes: None, or (B, 4) (or (4,)) XYXY boxes: appended as two corner points; without
            them every prompt of points ends with one padding point, as ``PromptEncoder``
            does, and a prompt of a mask input alone (K = 0) gets no point at all.
    """
    pts = np.asarray(coords, np.float32)
    pts = pts.reshape(1, -1, 2) if pts.ndim < 3 else pts
    b = pts.shape[0]
    lab = np.asarray(labels, np.float32).reshape(b, -1)
    if boxes is not None:
        corners = np.asarray(boxes, np.float32).reshape(b, 2, 2)
        extra = np.broadcast_to(np.array([BOX_TL_LABEL, BOX_BR_LABEL], np.float32), (b, 2))
    elif pts.shape[1]:
        corners = np.zeros((b, 1, 2), np.float32)
        extra = np.full((b, 1), PAD_LABEL, np.float32)
    else:
        # a mask input alone: ``PromptEncoder`` gives no sparse token at all (a padding token
        # here moved the masks and IoUs by up to ~0.1 from the PyTorch model's)
        corners = np.zeros((b, 0, 2), np.float32)
        extra = np.zeros((b, 0), np.float32)
    has = mask_input is not None
    mask = (np.asarray(mask_input, np.float32).reshape(b, 1, *low) if has
            else np.zeros((b, 1, *low), np.float32))
    return {
        "point_coords": np.ascontiguousarray(np.concatenate([pts, corners], axis=1)),
        "point_labels": np.ascontiguousarray(np.concatenate([lab, extra], axis=1)),
        "mask_input": mask,
        "has_mask_input": np.full(b, 1.0 if has else 0.0, np.float32),
    }


def check_parity(net: Any, encoder: Path, decoder: Path, image: torch.Tensor,
                 features: torch.Tensor, low: int, max_batch: int = 1) -> dict[str, float]:
    """Largest absolute differences between the graphs (run by ONNX Runtime) and ``net``:
    the embedding, and the decoder's logits and IoUs over four prompt kinds (one click; clicks
    with a mask input; a box; clicks and a box), each as one prompt and as a batch of
    ``max_batch`` prompts."""
    enc = session(encoder)
    got = enc.run(None, {"image": image.numpy()})[0]
    diff = {"embedding": float(np.abs(got - features.numpy()).max())}
    dec = session(decoder)
    s = int(image.shape[-1])
    rng = np.random.default_rng(0)

    def case(b: int, k: int, with_mask: bool, with_box: bool) -> tuple[Any, ...]:
        coords = rng.uniform(0, s - 1, (b, k, 2))
        labels = rng.integers(0, 2, (b, k))
        labels[:, :1] = 1
        if k > 2:
            labels[0, -1] = -1  # a padding point inside a prompt
        corners = np.sort(rng.uniform(0, s - 1, (b, 2, 2)), axis=1).reshape(b, 4)
        mask = rng.normal(size=(b, 1, low, low)) if with_mask else None
        return coords, labels, mask, corners if with_box else None

    cases = [case(b, k, m, x) for b in sorted({1, max_batch})
             for k, m, x in ((1, False, False), (3, True, False), (0, False, True), (2, False, True))]
    logit_diff = iou_diff = 0.0
    for coords, labels, mask, boxes in cases:
        feed = decoder_inputs(coords, labels, mask, (low, low), boxes)
        masks, iou = dec.run(None, {"image_embeddings": features.numpy(), **feed})
        ref_masks, ref_iou = _torch_decode(net, features, coords, labels, mask, boxes)
        logit_diff = max(logit_diff, float(np.abs(masks[:, 1:] - ref_masks[0]).max()),
                         float(np.abs(masks[:, :1] - ref_masks[1]).max()))
        iou_diff = max(iou_diff, float(np.abs(iou[:, 1:] - ref_iou[0]).max()),
                       float(np.abs(iou[:, :1] - ref_iou[1]).max()))
    diff.update(logits=logit_diff, iou=iou_diff)
    return diff


@torch.inference_mode()
def _torch_decode(net: Any, features: torch.Tensor, coords: np.ndarray, labels: np.ndarray,
                  mask: np.ndarray | None, boxes: np.ndarray | None) -> tuple[list[np.ndarray], ...]:
    """The PyTorch model's (multimask, single) logits and IoUs for B prompts."""
    points = None
    if coords.shape[1]:
        points = (torch.as_tensor(coords, dtype=torch.float32),
                  torch.as_tensor(labels, dtype=torch.int64))
    box_t = None if boxes is None else torch.as_tensor(boxes, dtype=torch.float32)
    masks = None if mask is None else torch.as_tensor(mask, dtype=torch.float32)
    sparse, dense = net.prompt_encoder(points=points, boxes=box_t, masks=masks)
    out_m, out_i = [], []
    for multimask in (True, False):
        m, i = net.mask_decoder(image_embeddings=features, image_pe=net.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                multimask_output=multimask)
        out_m.append(m.numpy())
        out_i.append(i.numpy())
    return out_m, out_i
