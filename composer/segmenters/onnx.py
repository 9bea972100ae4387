"""The ``onnx`` backend: a folder written by ``composer.export.export_onnx``, run by ONNX Runtime.

``load_segmenter("onnx", checkpoint=DIR)`` (or ``OnnxSegmenter(DIR)``) returns a
``PromptableSegmenter``: every task, the automatic generator, click sessions and the
evaluation harness use it as they use the PyTorch backend it was exported from, with that
backend's predict-time settings (``model.json``: mask refinement, contrast ranking, flip TTA,
automatic-mask thresholds, edge refinement). It needs only numpy, onnxruntime and this package
at run time; no PyTorch model is built. Embeddings carry the exported model's id, so a cached
embedding of the PyTorch model is refused (and the other way round): the two agree to ~1e-5
in the logits, not bit for bit.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..embedding import ImageEmbedding
from ..export.onnx import (
    DECODER_FILE,
    ENCODER_FILE,
    EXPORT_ID_KEY,
    FORMAT,
    GRAPH_ROLE_KEY,
    META_FILE,
    decoder_inputs,
    session,
)
from ..io.image import load_image
from ..predictor import resize_longest_side
from ..refine import ContrastRank, GrabCutRefine
from ..structures import Prompts
from .base import MaskLogits, PromptableSegmenter

# the keys of ``model.json`` that ``OnnxSegmenter`` reads unconditionally
_META_KEYS = ("model_id", "img_size", "low_res_size", "mask_threshold", "pixel_mean", "pixel_std")


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``model.json`` of an export folder, checked; ValueError names what is missing."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{root} is not an ONNX export folder (write one with `sam-composer export --out DIR`)")
    missing = [f for f in (ENCODER_FILE, DECODER_FILE, META_FILE) if not (root / f).is_file()]
    if missing:
        raise ValueError(f"{root} is not a complete ONNX export: missing {', '.join(missing)}")
    try:
        meta = json.loads((root / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root / META_FILE} is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{root / META_FILE} is not a {FORMAT} file (a JSON {type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{root / META_FILE} is not a {FORMAT} file (format {meta.get('format')!r})")
    absent = [k for k in _META_KEYS if k not in meta]
    if absent:
        raise ValueError(f"{root / META_FILE} lacks {', '.join(absent)}; export the model again")
    try:
        mean = np.asarray(meta["pixel_mean"], np.float64)
        std = np.asarray(meta["pixel_std"], np.float64)
        threshold = float(meta["mask_threshold"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{root / META_FILE}: pixel_mean, pixel_std and mask_threshold must be "
                         f"numbers ({exc}); export the model again") from None
    if (
        mean.shape != (3,) or std.shape != (3,) or not np.isfinite([*mean, *std, threshold]).all()
        or (std <= 0).any()
    ):
        # a zero std gave NaN scores and empty masks, a NaN threshold emptied every mask
        raise ValueError(
            f"{root / META_FILE}: pixel_mean and pixel_std must be three finite numbers (std > 0) "
            f"and mask_threshold finite, got {meta['pixel_mean']!r}, {meta['pixel_std']!r}, "
            f"{meta['mask_threshold']!r}; export the model again"
        )
    settings = meta.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(
            f"{root / META_FILE}: settings must be a JSON object or null, got a "
            f"{type(settings).__name__}; export the model again"
        )
    return meta


def onnx_model_id(exported_id: str, img_size: int) -> str:
    """The id of an export's embeddings: ``onnx-`` plus the exported model's id, with
    ``-<img_size>px`` appended where that id does not name the input size.

    A derived id names it (``composer_tiny-packaged-512px-0da76b6b6c90``) since 2026-11-25;
    the exports made before, and those of a model given a fixed ``model_id``, carry an id
    without it, so exports of the same weights at two input sizes shared an id, and an
    ``EmbeddingCache`` shared by the two handed one the other's embedding (refused by
    ``predict``, not recomputed). With the size in every id each gets its own.

    Args:
        exported_id: ``model.json``'s ``model_id``.
        img_size: the export's square model input side (``model.json``'s ``img_size``).
    """
    if re.search(rf"(?<![0-9A-Za-z]){img_size}px(?![0-9A-Za-z])", exported_id) is None:
        exported_id = f"{exported_id}-{img_size}px"
    return f"onnx-{exported_id}"


class OnnxSegmenter(PromptableSegmenter):
    """A promptable segmenter running an exported encoder and decoder with ONNX Runtime.

    Args:
        directory: the export folder (``encoder.onnx``, ``decoder.onnx``, ``model.json``).
        threads: ONNX Runtime intra-op threads (None: torch's thread count,
            ``torch.get_num_threads()``, when the sessions open, so ``OMP_NUM_THREADS``,
            ``torch.set_num_threads`` and ``--threads-per-worker`` reach it as they reach the
            PyTorch backends).
        settings: apply the exported backend's predict-time settings (default); False gives
            the bare decoder (no refinement, ranking or TTA).

    Raises:
        ValueError: an incomplete folder, a ``model.json`` that is malformed or disagrees
            with the graphs (their sizes, or the export they came from), graphs that are not
            this format's encoder and decoder, or graphs ONNX Runtime cannot load.
    """

    _encoder: Any
    _decoder: Any
    embedding_shape: tuple[int, ...] | None

    def __init__(self, directory: str | os.PathLike[str], threads: int | None = None,
                 settings: bool = True) -> None:
        self.directory = Path(directory)
        self.threads = threads
        self.meta = read_meta(self.directory)
        try:
            self.img_size = int(self.meta["img_size"])
            low = self.meta["low_res_size"]
            if isinstance(low, str) or len(low) != 2:
                raise ValueError(f"low_res_size {low!r} is not [height, width]")
            self.low_res_size = (int(low[0]), int(low[1]))
            #: prompts per call of the decoder graph (the traced chunk; see ``export_onnx``)
            self.max_batch = max(1, int(self.meta.get("max_batch", 1)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.directory / META_FILE}: img_size, low_res_size and max_batch "
                             f"must be whole numbers ({exc}); export the model again") from None
        self.model_id = onnx_model_id(str(self.meta["model_id"]), self.img_size)
        self.mask_threshold = float(self.meta["mask_threshold"])
        self._mean = np.asarray(self.meta["pixel_mean"], np.float32).reshape(3, 1, 1)
        self._std = np.asarray(self.meta["pixel_std"], np.float32).reshape(3, 1, 1)
        self._encoder = self._decoder = None
        self._sessions()
        self._check_graphs()
        if settings:
            try:
                self._apply(self.meta.get("settings") or {})
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                raise ValueError(
                    f"{self.directory / META_FILE}: its settings cannot be applied "
                    f"({type(exc).__name__}: {exc}); export the model again, or load it with "
                    "settings=False for the bare decoder"
                ) from None

    def __getstate__(self) -> dict[str, Any]:
        # ONNX Runtime sessions do not pickle: a copy (e.g. for a batch-run worker process)
        # opens the export folder again, keeping every setting of this object.
        state = dict(self.__dict__)
        del state["_encoder"], state["_decoder"]
        state.pop("_mirror_memo", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # the sessions open on first use: a copy sent to a worker process takes the threads
        # the worker sets up (``threads=None`` follows torch's) rather than the parent's
        self.__dict__.update(state)
        self._encoder = self._decoder = None

    def _sessions(self) -> tuple[Any, Any]:
        if self._encoder is None or self._decoder is None:
            self._encoder, self._decoder = (
                self._session(self.directory / f, self.threads) for f in (ENCODER_FILE, DECODER_FILE)
            )
        return self._encoder, self._decoder

    @property
    def device(self) -> torch.device:
        """Always the CPU: the sessions run ONNX Runtime's CPU provider; embeddings hold CPU
        tensors."""
        return torch.device("cpu")

    def _check_graphs(self) -> None:
        """Raise ``ValueError`` when the two files are not this format's encoder and decoder
        graphs (in that order), come from another export than ``model.json`` (its
        ``export_id``, in both graphs' metadata since 2026-11-24; older exports are checked by
        shapes alone), or when ``model.json``'s ``img_size``, ``low_res_size`` or
        ``embedding_shape`` differs from the graphs' (ONNX Runtime refused every image then,
        or a mixed folder ran silently with another model's embeddings)."""
        meta_file = self.directory / META_FILE
        wanted = {
            ENCODER_FILE: (self._encoder, "encoder", {"image"}),
            DECODER_FILE: (self._decoder, "decoder", {"image_embeddings", "point_coords",
                                                      "point_labels", "mask_input",
                                                      "has_mask_input"}),
        }
        export_id = self.meta.get("export_id")
        for file, (sess, role, names) in wanted.items():
            have = {inp.name for inp in sess.get_inputs()}
            stamp = dict(sess.get_modelmeta().custom_metadata_map or {})
            if stamp.get(GRAPH_ROLE_KEY, role) != role or not names <= have:
                what = (f"the {stamp[GRAPH_ROLE_KEY]} graph" if GRAPH_ROLE_KEY in stamp
                        else f"a graph with inputs {sorted(have)}")
                raise ValueError(
                    f"{self.directory / file} is not the {role} graph of a sam-composer export "
                    f"(it is {what}); export the model again"
                )
            if export_id is not None and stamp.get(EXPORT_ID_KEY) != export_id:
                raise ValueError(
                    f"{self.directory / file} belongs to another export than {meta_file} "
                    f"(export id {stamp.get(EXPORT_ID_KEY)!r}, model.json says {export_id!r}); "
                    "keep an export's three files together, or export the model again"
                )
        emb_out = [tuple(o.shape) for o in self._encoder.get_outputs()][:1]
        emb_in = [tuple(i.shape) for i in self._decoder.get_inputs() if i.name == "image_embeddings"]
        shapes = [(f"{ENCODER_FILE}'s output", s) for s in emb_out]
        shapes += [(f"{DECODER_FILE}'s image_embeddings input", s) for s in emb_in]
        if isinstance(self.meta.get("embedding_shape"), list):
            shapes.append((f"{META_FILE}'s embedding_shape", tuple(self.meta["embedding_shape"])))
        fixed = [(n, s) for n, s in shapes if all(isinstance(v, int) for v in s)]
        if len({s for _, s in fixed}) > 1:
            raise ValueError(
                f"{self.directory}: the image embedding's shape differs between "
                + ", ".join(f"{n} {list(s)}" for n, s in fixed)
                + "; the files belong to different exports"
            )
        #: (1, C, h, w) of the embeddings the decoder graph takes (None: not fixed by the graphs)
        self.embedding_shape = fixed[0][1] if fixed and len(fixed[0][1]) == 4 else None
        sizes = (
            (self._encoder, "image", "img_size", (self.img_size, self.img_size)),
            (self._decoder, "mask_input", "low_res_size", tuple(self.low_res_size)),
        )
        for sess, name, key, want in sizes:
            for inp in sess.get_inputs():
                got = tuple(inp.shape[-2:]) if inp.name == name else ()
                if len(got) == 2 and all(isinstance(v, int) for v in got) and got != want:
                    raise ValueError(
                        f"{self.directory / META_FILE}: {key} says {list(want)}, but the graph's "
                        f"{name} input is {list(got)}; the file was edited or belongs to another "
                        "export"
                    )

    @staticmethod
    def _session(path: Path, threads: int | None) -> Any:
        try:
            return session(path, threads or torch.get_num_threads())
        except ImportError:
            raise
        except Exception as exc:  # onnxruntime's own exception types (bad protobuf, bad graph)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"ONNX Runtime cannot load {path}: {first}") from exc

    def _apply(self, s: dict[str, Any]) -> None:
        if s.get("mask_refine"):
            self.mask_refine = GrabCutRefine(**s["mask_refine"])
        if s.get("mask_rank"):
            self.mask_rank = ContrastRank(**s["mask_rank"])
        self.flip_tta = bool(s.get("flip_tta", False))
        # exports from before 2026-11-24 lack it: composer.training's models read prompts half an
        # input pixel left of where the encoder puts them (composer_tiny.PROMPT_SHIFT), SAM's not
        default = 0.5 if str(self.meta["model_id"]).startswith("composer_tiny") else 0.0
        self.prompt_shift = float(s.get("prompt_shift", default))
        if s.get("amg_thresholds"):
            self.amg_thresholds = {k: float(v) for k, v in s["amg_thresholds"].items()}
        if s.get("edge_refine"):
            radius, eps = s["edge_refine"]
            self.edge_refine = (int(radius), float(eps))
        if s.get("box_zoom"):
            self.box_zoom = float(s["box_zoom"])

    def embed(self, image: Any) -> ImageEmbedding:
        """Run the encoder graph once (resize, normalise and pad as ``SamPredictor.embed``)."""
        arr = load_image(image)
        resized = resize_longest_side(arr, self.img_size)
        h, w = resized.shape[:2]
        x = np.zeros((1, 3, self.img_size, self.img_size), np.float32)
        x[0, :, :h, :w] = (resized.transpose(2, 0, 1).astype(np.float32) - self._mean) / self._std
        features = self._sessions()[0].run(None, {"image": x})[0]
        return ImageEmbedding(
            features=torch.from_numpy(np.ascontiguousarray(features)),
            original_size=(int(arr.shape[0]), int(arr.shape[1])),
            input_size=(int(h), int(w)),
            pad_size=self.img_size,
            model_id=self.model_id,
            extras=self.image_extras(arr),
        )

    def decode(self, embedding: ImageEmbedding, prompts: Prompts, multimask: bool = True) -> MaskLogits:
        """The decoder graph on chunks of at most ``max_batch`` prompts (``model.json``).

        Raises:
            ValueError: an embedding of another model, or one whose features or ``pad_size``
                are not this export's (built by hand under its id: an export of the same
                weights at another input size has another id, :func:`onnx_model_id`;
                ``ImageEmbedding.check_fits``), or a graph that returns fewer masks than prompts (``max_batch`` larger than the
                exported chunk).
        """
        embedding.check_model(self.model_id)
        # the graph has fixed shapes: ONNX Runtime refused another grid or channel count with
        # its own error, and decoded another pad_size's embedding in the wrong frame silently
        shape = self.embedding_shape
        embedding.check_fits(self.img_size, None if shape is None else shape[-2:],
                             None if shape is None else shape[1])
        oh, ow = embedding.original_size
        ih, iw = embedding.input_size
        scale = np.array([iw / ow, ih / oh], np.float32)
        features = embedding.features.detach().cpu().float().numpy()
        chosen = slice(1, None) if multimask else slice(0, 1)
        n = len(prompts)
        logits, ious = [], []
        for s in range(0, n, self.max_batch):
            part = prompts[s : min(n, s + self.max_batch)]
            b = len(part)
            coords, labels = np.zeros((b, 0, 2), np.float32), np.zeros((b, 0), np.float32)
            if part.points is not None and part.labels is not None:
                coords, labels = part.points.astype(np.float32) * scale, part.labels
            boxes = None
            if part.boxes is not None:
                boxes = (part.boxes.reshape(b, 2, 2).astype(np.float32) * scale).reshape(b, 4)
            feed = decoder_inputs(coords, labels, part.mask_input, self.low_res_size, boxes)
            m, q = self._sessions()[1].run(None, {"image_embeddings": features, **feed})
            if len(m) != b or len(q) != b:
                # the traced graph keeps its chunk size: more prompts were silently dropped
                raise ValueError(
                    f"the decoder graph of {self.directory} returned {len(m)} masks for {b} "
                    f"prompts: model.json's max_batch ({self.max_batch}) exceeds the chunk it was "
                    "exported for; export the model again"
                )
            logits.append(m[:, chosen])
            ious.append(q[:, chosen])
        if not logits:
            k = 3 if multimask else 1
            return MaskLogits(torch.zeros((0, k, *self.low_res_size)), torch.zeros((0, k)))
        return MaskLogits(torch.from_numpy(np.concatenate(logits)),
                          torch.from_numpy(np.concatenate(ious)))
