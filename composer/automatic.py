"""Automatic mask generation: prompt a segmenter with a grid of points and keep the good masks.

The procedure and every default equal the official ``SamAutomaticMaskGenerator``: point grids
per crop layer, one embedding per crop (through the shared cache), batched point prompts, the
predicted-IoU filter, the stability score (IoU of the mask thresholded at ``+offset`` and
``-offset``), dropping masks that touch inner crop edges, box NMS within each crop,
cross-crop NMS preferring smaller crops, and optional small-region and hole removal.

It is built to be cheap on a CPU: the IoU filter runs on the decoder output before anything is
upsampled; survivors are upsampled in small chunks straight to the crop's size without the
1024x1024 padded intermediate, column-major, so thresholded masks go to pycocotools' RLE
encoder without a copy; nothing of size N x H x W is ever held. Memory is bounded by
``points_per_batch``. Results match the official generator mask for mask (see
tests/test_automatic.py).

The settings, :class:`AmgConfig`, live in :mod:`composer.amg_config` and are importable from
here too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from .allocator import trim_heap
from .amg_config import RECOMMENDABLE_FIELDS as RECOMMENDABLE_FIELDS
from .amg_config import AmgConfig
from .amg_utils import (
    TRIM_PIXELS,
    CropBox,
    LowResUpsampler,
    Scratch,
    box_nms,
    boxes_near_crop_edge,
    count_true,
    encode_rles_transposed,
    generate_crop_boxes,
    mask_boxes_transposed,
    remove_small_regions,
    scratch_like,
)
from .embedding import EmbeddingCache, ImageEmbedding, crop_image
from .io.image import load_image
from .segmenters.base import PromptableSegmenter
from .structures import Detections, Masks, Prompts

logger = logging.getLogger(__name__)

#: Bytes of float32 logits upsampled at once (bounds the transient memory per chunk).
_CHUNK_BYTES = 64 << 20


@dataclass
class _Candidates:
    """Masks kept so far, one row per mask, in the official generator's order."""

    rles: list[dict]
    boxes: torch.Tensor  # (N, 4) int64 inclusive XYXY (official box convention)
    iou: torch.Tensor  # (N,) float32
    stability: torch.Tensor  # (N,) float32
    points: np.ndarray  # (N, 2) float64 XY
    crop_boxes: np.ndarray  # (N, 4) int64 XYXY
    low_res: list[np.ndarray] | None = None  # N arrays (h, w) float32

    @classmethod
    def empty(cls, keep_low_res: bool) -> _Candidates:
        return cls(
            [],
            torch.zeros((0, 4), dtype=torch.int64),
            torch.zeros(0),
            torch.zeros(0),
            np.zeros((0, 2)),
            np.zeros((0, 4), np.int64),
            [] if keep_low_res else None,
        )

    def __len__(self) -> int:
        return len(self.rles)

    def select(self, keep: torch.Tensor | np.ndarray) -> _Candidates:
        idx = torch.as_tensor(keep).reshape(-1)
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).reshape(-1)
        idx_np = idx.cpu().numpy()
        return _Candidates(
            [self.rles[i] for i in idx_np],
            self.boxes[idx],
            self.iou[idx],
            self.stability[idx],
            self.points[idx_np],
            self.crop_boxes[idx_np],
            None if self.low_res is None else [self.low_res[i] for i in idx_np],
        )

    @classmethod
    def concatenate(cls, parts: Sequence[_Candidates], keep_low_res: bool) -> _Candidates:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty(keep_low_res)
        return cls(
            [r for p in parts for r in p.rles],
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.iou for p in parts]),
            torch.cat([p.stability for p in parts]),
            np.concatenate([p.points for p in parts]),
            np.concatenate([p.crop_boxes for p in parts]),
            [a for p in parts for a in p.low_res] if keep_low_res else None,  # type: ignore[union-attr]
        )


class AutomaticMaskGenerator:
    """Masks for everything in an image, from a grid of point prompts.

    Works with any ``PromptableSegmenter`` (SAM, the classic backend, the trained default model):
    it only calls ``segmenter.decode`` and reads ``segmenter.mask_threshold``.

    Args:
        segmenter: the promptable segmenter, or a SAM-structured model (what the official
            ``SamAutomaticMaskGenerator`` takes), which is wrapped in a ``SamPredictor``; also
            accepted as ``model=``, the official keyword.
        config: settings (default: the official generator's defaults, with the segmenter's
            recommended quality thresholds where it has them: ``AmgConfig.for_segmenter``).
        cache: shared embedding cache; when None each crop is embedded directly (no reuse).
        **overrides: individual ``AmgConfig`` fields replacing those of ``config``; passing
            ``point_grids`` alone implies ``points_per_side=None``.

    Example:
        >>> amg = AutomaticMaskGenerator(segmenter, points_per_side=16, pred_iou_thresh=0.86)
        >>> dets = amg.generate(image)   # Detections with RLE masks, sorted as the official
    """

    def __init__(
        self,
        segmenter: PromptableSegmenter | None = None,
        config: AmgConfig | None = None,
        cache: EmbeddingCache | None = None,
        **overrides: Any,
    ) -> None:
        if "model" in overrides:  # the official keyword: SamAutomaticMaskGenerator(model=sam)
            if segmenter is not None:
                raise TypeError("give the segmenter once: as segmenter or as model, not both")
            segmenter = overrides.pop("model")
        if segmenter is None:
            raise TypeError("AutomaticMaskGenerator needs a segmenter (or a SAM model)")
        if not hasattr(segmenter, "decode") and all(
            hasattr(segmenter, attr)
            for attr in ("image_encoder", "prompt_encoder", "mask_decoder", "preprocess")
        ):
            # a SAM model itself, as the official generator takes it (``SamAutomaticMaskGenerator(sam)``)
            from .predictor import SamPredictor

            segmenter = SamPredictor(segmenter)  # type: ignore[arg-type]
        for attr in ("decode", "model_id"):
            if not hasattr(segmenter, attr):
                raise TypeError(
                    f"segmenter has no {attr!r}; expected a PromptableSegmenter or a SAM model"
                )
        config = AmgConfig.for_segmenter(segmenter) if config is None else config
        if not isinstance(config, AmgConfig):
            hint = ""
            if isinstance(config, (int, float)) and not isinstance(config, bool):
                # SamAutomaticMaskGenerator(sam, 32): the official second argument
                hint = (f"; the official generator's positional points_per_side goes by name "
                        f"here: points_per_side={config!r}")
            raise TypeError(f"config must be an AmgConfig, got {type(config).__name__}{hint}")
        if overrides:
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(AmgConfig)})
            if "output_mode" in unknown:
                raise TypeError(
                    "output_mode is not a setting here: generate() returns Detections; "
                    "official_records(dets, output_mode) gives the official generator's dicts"
                )
            if unknown:
                raise TypeError(f"unknown AmgConfig fields: {unknown}")
            if "point_grids" in overrides and "points_per_side" not in overrides:
                overrides["points_per_side"] = None
            config = dataclasses.replace(config, **overrides)
        self.segmenter = segmenter
        self.config = config
        self.cache = cache
        self._grids = config.layer_grids()
        self._upsamplers: dict[tuple, LowResUpsampler] = {}

    @property
    def model_id(self) -> str:
        return str(self.segmenter.model_id)

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def generate(self, image: Any) -> Detections:
        """All masks of one image.

        Args:
            image: (H, W, 3) uint8 RGB array, a path or a PIL image.

        Returns:
            Detections in original-image pixels, in the official generator's order: ``masks``
            (COCO RLE), ``boxes`` (N, 4) float32 tight XYXY (x1, y1 exclusive), ``scores`` =
            predicted IoU, extras ``predicted_iou`` (N,) float32, ``stability_score`` (N,)
            float32 (0 for a mask empty at the lower threshold), ``point_coords`` (N, 2)
            float32 XY of the prompt, ``crop_box`` (N, 4) int64 XYXY of the crop that produced
            the mask, and optionally ``low_res_logits``. May be empty.

        Raises:
            ValueError: an unreadable or empty image.
        """
        arr = load_image(image)
        height, width = arr.shape[:2]
        cfg = self.config
        if cfg.max_side is not None and max(height, width) > cfg.max_side:
            return self._generate_scaled(arr)
        return self._to_detections(self._candidates(arr), (height, width))

    def _candidates(self, arr: np.ndarray, full: np.ndarray | None = None,
                    min_region_area: int | None = None) -> _Candidates:
        """The kept candidates of ``arr``; ``full``: the full-resolution image that ``arr`` is
        a scaled copy of (its crops are embedded instead, see ``_embed``)."""
        height, width = arr.shape[:2]
        cfg = self.config
        crop_boxes, layers = generate_crop_boxes(
            (height, width), cfg.crop_n_layers, cfg.crop_overlap_ratio
        )
        parts = [
            self._process_crop(arr, box, layer, full)
            for box, layer in zip(crop_boxes, layers, strict=True)
            if len(self._grids[layer])
        ]
        data = _Candidates.concatenate(parts, cfg.keep_low_res_logits)
        if len(crop_boxes) > 1 and len(data):
            cb = torch.as_tensor(data.crop_boxes)
            area = ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1])).float()
            data = data.select(box_nms(data.boxes, 1.0 / area, cfg.crop_nms_thresh))
        min_area = cfg.min_mask_region_area if min_region_area is None else min_region_area
        if min_area > 0 and len(data):
            data = self._remove_small_regions(data, (height, width), min_area)
        return data

    def _generate_scaled(self, arr: np.ndarray) -> Detections:
        """``generate`` of an image larger than ``max_side``: candidates at that size, the kept
        masks upsampled to the image's."""
        import cv2

        height, width = arr.shape[:2]
        cfg = self.config
        assert cfg.max_side is not None
        scale = cfg.max_side / max(height, width)
        sw, sh = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
        small = cv2.resize(arr, (sw, sh), interpolation=cv2.INTER_AREA)
        min_area = int(round(cfg.min_mask_region_area * (sw * sh) / (width * height)))
        if cfg.min_mask_region_area > 0:
            min_area = max(1, min_area)
        data = self._candidates(small, full=arr, min_region_area=min_area)
        fx, fy = width / sw, height / sh
        rles = []
        for rle in data.rles:  # the output boxes come from these masks (``_to_detections``)
            m = mask_utils.decode(rle).astype(np.float32)
            up = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5
            rles.append(encode_rles_transposed(up.T[None], (0, 0, width, height), (height, width))[0])
            if width * height >= TRIM_PIXELS:
                trim_heap()
        data.rles = rles
        data.points = data.points * np.array([[fx, fy]])
        cb = data.crop_boxes.astype(np.float64) * np.array([[fx, fy, fx, fy]])
        data.crop_boxes = np.minimum(np.round(cb), [[width, height, width, height]]).astype(np.int64)
        dets = self._to_detections(data, (height, width))
        dets.meta["max_side"] = {"max_side": cfg.max_side, "processed_size": (sh, sw)}
        return dets

    __call__ = generate

    # ------------------------------------------------------------------ per crop
    def _embed(self, image: np.ndarray, crop_box: CropBox,
               full: np.ndarray | None = None) -> ImageEmbedding:
        if full is not None:
            # ``image`` is ``full`` scaled down: embed the same crop of the full image (the
            # encoder resizes it to its input side anyway, and the full image's embedding is
            # the one other tasks share through the cache) and give it the scaled crop's size
            h, w = image.shape[:2]
            fh, fw = full.shape[:2]
            x0, y0, x1, y1 = (int(v) for v in crop_box)
            fbox = (int(round(x0 * fw / w)), int(round(y0 * fh / h)),
                    min(fw, int(round(x1 * fw / w))), min(fh, int(round(y1 * fh / h))))
            emb = self._embed(full, fbox)
            # in the scaled image's frame: its size, and its box there (fbox is the full's)
            small: CropBox | None = None if (x0, y0, x1, y1) == (0, 0, w, h) else (x0, y0, x1, y1)
            return dataclasses.replace(emb, original_size=(y1 - y0, x1 - x0), crop_box=small)
        height, width = image.shape[:2]
        box = None if tuple(crop_box) == (0, 0, width, height) else tuple(crop_box)
        if self.cache is not None:
            return self.cache.get(image, self.segmenter, crop_box=box)  # type: ignore[arg-type]
        return self.segmenter.embed(image if box is None else crop_image(image, box))  # type: ignore[arg-type]

    def _upsampler(
        self, emb: ImageEmbedding, low_res: tuple[int, int], device: torch.device
    ) -> LowResUpsampler:
        key = (low_res, emb.pad_size, tuple(emb.input_size), tuple(emb.original_size), str(device))
        up = self._upsamplers.get(key)
        if up is None:
            if len(self._upsamplers) > 16:
                self._upsamplers.clear()
            up = LowResUpsampler(low_res, emb.pad_size, emb.input_size, emb.original_size, device)
            self._upsamplers[key] = up
        return up

    def _process_crop(self, image: np.ndarray, crop_box: CropBox, layer: int,
                      full: np.ndarray | None = None) -> _Candidates:
        cfg = self.config
        emb = self._embed(image, crop_box, full)
        crop_h, crop_w = emb.original_size
        points = self._grids[layer] * np.array([[crop_w, crop_h]], dtype=np.float64)
        scratch = Scratch()  # the full-size temporaries of every chunk of this crop
        parts = [
            self._process_batch(
                emb, points[s : s + cfg.points_per_batch], crop_box, image.shape[:2], scratch
            )
            for s in range(0, len(points), cfg.points_per_batch)
        ]
        scratch.clear()
        data = _Candidates.concatenate(parts, cfg.keep_low_res_logits)
        if not len(data):
            return data
        data = data.select(box_nms(data.boxes, data.iou, cfg.box_nms_thresh))
        x0, y0 = int(crop_box[0]), int(crop_box[1])
        data.boxes = data.boxes + torch.tensor([[x0, y0, x0, y0]], dtype=torch.int64)
        data.points = data.points + np.array([[x0, y0]], dtype=np.float64)
        data.crop_boxes = np.tile(np.asarray(crop_box, np.int64), (len(data), 1))
        return data

    def _process_batch(
        self,
        emb: ImageEmbedding,
        points: np.ndarray,
        crop_box: CropBox,
        image_size: tuple[int, int],
        scratch: Scratch,
    ) -> _Candidates:
        cfg = self.config
        n = len(points)
        prompts = Prompts(
            points=points.astype(np.float32)[:, None, :], labels=np.ones((n, 1), dtype=np.int64)
        )
        if cfg.pred_iou_thresh > 0.0 and getattr(self.segmenter, "skips_low_iou", False):
            # masks that the IoU filter below drops are not computed (exact: same survivors)
            decode: Any = self.segmenter.decode
            out = decode(emb, prompts, cfg.multimask, min_iou=cfg.pred_iou_thresh)
        else:
            out = self.segmenter.decode(emb, prompts, cfg.multimask)
        m = out.iou_pred.shape[1]
        low_res = tuple(int(v) for v in out.logits.shape[-2:])
        logits = out.logits.reshape(n * m, *low_res)
        iou = out.iou_pred.reshape(-1).float()
        keep = torch.ones_like(iou, dtype=torch.bool)
        if cfg.pred_iou_thresh > 0.0:
            keep = iou > cfg.pred_iou_thresh
        idx = torch.nonzero(keep).reshape(-1)
        if idx.numel() == 0:
            return _Candidates.empty(cfg.keep_low_res_logits)
        upsampler = self._upsampler(emb, low_res, logits.device)  # type: ignore[arg-type]
        crop_h, crop_w = emb.original_size
        chunk = max(1, _CHUNK_BYTES // (4 * crop_h * crop_w))
        # a large crop's full-size temporaries would otherwise pin freed heap (see trim_heap)
        trim = crop_h * crop_w >= TRIM_PIXELS
        parts = []
        for s in range(0, len(idx), chunk):
            parts.append(self._process_chunk(
                logits, iou, points, m, idx[s : s + chunk], upsampler, crop_box, image_size,
                scratch,
            ))
            if trim:
                trim_heap()
        return _Candidates.concatenate(parts, cfg.keep_low_res_logits)

    def _process_chunk(
        self,
        logits: torch.Tensor,
        iou: torch.Tensor,
        points: np.ndarray,
        m: int,
        idx: torch.Tensor,
        upsampler: LowResUpsampler,
        crop_box: CropBox,
        image_size: tuple[int, int],
        scratch: Scratch,
    ) -> _Candidates:
        cfg = self.config
        thr = float(self.segmenter.mask_threshold)
        up = upsampler.transposed(logits[idx], scratch)  # (C, crop_w, crop_h)
        # the three thresholdings write into one reused boolean buffer laid out as ``up``
        above = scratch_like(scratch, "above", up, torch.bool)
        hi = count_true(torch.gt(up, thr + cfg.stability_score_offset, out=above), scratch)
        lo = count_true(torch.gt(up, thr - cfg.stability_score_offset, out=above), scratch)
        stability = torch.nan_to_num(hi / lo, nan=0.0)
        keep = torch.ones_like(stability, dtype=torch.bool)
        if cfg.stability_score_thresh > 0.0:
            keep = stability >= cfg.stability_score_thresh
        masks = torch.gt(up, thr, out=above)
        if not bool(keep.all()):
            masks = masks[keep]
        idx, stability = idx[keep], stability[keep]
        boxes = mask_boxes_transposed(masks)
        height, width = image_size
        keep = ~boxes_near_crop_edge(boxes, crop_box, (0, 0, width, height))
        if cfg.max_mask_area_fraction is not None:
            area = count_true(masks, scratch).long()
            keep &= area <= cfg.max_mask_area_fraction * height * width
        if not bool(keep.all()):
            masks, idx, stability, boxes = masks[keep], idx[keep], stability[keep], boxes[keep]
        rles = encode_rles_transposed(masks.cpu().numpy(), crop_box, image_size)
        idx_np = idx.cpu().numpy()
        return _Candidates(
            rles,
            boxes.cpu(),
            iou[idx].cpu(),
            stability.float().cpu(),
            points[idx_np // m],
            np.zeros((len(idx_np), 4), np.int64),
            list(logits[idx].float().cpu().numpy()) if cfg.keep_low_res_logits else None,
        )

    # ------------------------------------------------------------------ post-processing
    def _remove_small_regions(self, data: _Candidates, image_size: tuple[int, int],
                              area: int) -> _Candidates:
        """Fill holes and drop islands below ``area`` pixels, then NMS preferring unchanged
        masks."""
        height, width = image_size
        new_rles: list[dict | None] = []
        boxes = torch.zeros((len(data), 4), dtype=torch.int64)
        scores = torch.zeros(len(data))
        for i, rle in enumerate(data.rles):
            mask = mask_utils.decode(rle).astype(bool)
            mask, changed_holes = remove_small_regions(mask, area, "holes")
            mask, changed_islands = remove_small_regions(mask, area, "islands")
            changed = changed_holes or changed_islands
            scores[i] = 0.0 if changed else 1.0
            mask_t = torch.from_numpy(np.ascontiguousarray(mask.T))[None]
            boxes[i] = mask_boxes_transposed(mask_t)[0]
            new_rles.append(
                encode_rles_transposed(mask.T[None], (0, 0, width, height), image_size)[0]
                if changed
                else None
            )
        thresh = max(self.config.box_nms_thresh, self.config.crop_nms_thresh)
        keep = box_nms(boxes, scores, thresh)
        for i in keep.tolist():
            if new_rles[i] is not None:
                data.rles[i] = new_rles[i]  # type: ignore[assignment]
                data.boxes[i] = boxes[i]
        return data.select(keep)

    def _to_detections(self, data: _Candidates, image_size: tuple[int, int]) -> Detections:
        masks = Masks._trusted(data.rles, image_size)  # encoded here
        iou = data.iou.numpy().astype(np.float32)
        extras: dict[str, np.ndarray] = {
            "predicted_iou": iou,
            "stability_score": data.stability.numpy().astype(np.float32),
            "point_coords": data.points.astype(np.float32).reshape(-1, 2),
            "crop_box": data.crop_boxes.astype(np.int64).reshape(-1, 4),
        }
        if data.low_res is not None:
            # no masks: still (0, h, w) in the segmenter's low-res frame, so that an empty
            # result concatenates with others
            h, w = (
                data.low_res[0].shape
                if data.low_res
                else tuple(int(v) for v in getattr(self.segmenter, "low_res_size", (0, 0)))
            )
            extras["low_res_logits"] = (
                np.stack(data.low_res) if data.low_res else np.zeros((0, h, w), np.float32)
            )
        meta = {"model_id": self.model_id, "image_size": tuple(image_size)}
        return Detections.from_masks(masks, scores=iou, extras=extras, meta=meta)


#: ``output_mode`` values of :func:`official_records` (the official generator's).
OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def official_records(dets: Detections, output_mode: str = "binary_mask") -> list[dict[str, Any]]:
    """``generate``'s Detections as the official ``SamAutomaticMaskGenerator.generate`` returns
    them: one dict per mask, in the same order, with its keys, types and conventions.

    Args:
        dets: the output of :meth:`AutomaticMaskGenerator.generate`.
        output_mode: "binary_mask" ((H, W) bool array), "uncompressed_rle" (``{"size": [H, W],
            "counts": [int, ...]}``, column-major runs starting with zeros) or "coco_rle"
            (``{"size": [H, W], "counts": str}``).

    Returns:
        Dicts with ``segmentation``, ``area`` (int), ``bbox`` (XYWH ints, the official
        inclusive convention: ``w`` and ``h`` are one less than the mask's pixel extent, and
        ``[0, 0, 0, 0]`` for an empty mask), ``predicted_iou`` and ``stability_score``
        (floats), ``point_coords`` (``[[x, y]]``, from float32 values) and ``crop_box``
        (XYWH ints).

    Raises:
        ValueError: an unknown ``output_mode``, or Detections without masks or without the
            generator's extras.
    """
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"output_mode must be one of {list(OUTPUT_MODES)}, got {output_mode!r}")
    needed = ("predicted_iou", "stability_score", "point_coords", "crop_box")
    missing = [k for k in needed if k not in dets.extras]
    if dets.masks is None or missing:
        raise ValueError(
            "official_records takes AutomaticMaskGenerator.generate's Detections; these have "
            + ("no masks" if dets.masks is None else f"no extras {missing}")
        )
    height, width = dets.masks.image_size
    coco = dets.masks.to_coco_rles()
    areas = dets.masks.area
    records = []
    for i, rle in enumerate(coco):
        area = int(areas[i])
        if area:
            x0, y0, x1, y1 = (int(v) for v in dets.boxes[i])
            bbox = [x0, y0, x1 - 1 - x0, y1 - 1 - y0]  # official boxes hold the last pixel
        else:
            bbox = [0, 0, 0, 0]
        segmentation: Any
        if output_mode == "coco_rle":
            segmentation = {"size": [int(height), int(width)], "counts": rle["counts"]}
        else:
            dense = mask_utils.decode({"size": [height, width], "counts": rle["counts"].encode()})
            segmentation = dense.astype(bool)
            if output_mode == "uncompressed_rle":
                segmentation = _uncompressed_rle(segmentation)
        cx0, cy0, cx1, cy1 = (int(v) for v in dets.extras["crop_box"][i])
        records.append({
            "segmentation": segmentation,
            "area": area,
            "bbox": bbox,
            "predicted_iou": float(dets.extras["predicted_iou"][i]),
            "point_coords": [[float(v) for v in dets.extras["point_coords"][i]]],
            "stability_score": float(dets.extras["stability_score"][i]),
            "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        })
    return records


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """An (H, W) bool mask as the official uncompressed RLE: column-major run lengths,
    the first a run of zeros (0 when the first pixel is set)."""
    flat = mask.reshape(-1, order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}
