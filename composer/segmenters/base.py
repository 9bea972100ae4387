"""The Segmenter protocol every backend implements, and the shared decode -> Detections path."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ..allocator import trim_heap
from ..embedding import ImageEmbedding, image_hash
from ..refine import ContrastRank, GrabCutRefine
from ..structures import Detections, Masks, Prompts

logger = logging.getLogger(__name__)
#: Bytes of full-size float32 logits that one decoder batch of ``predict`` may upsample at
#: once: a larger image is decoded in batches smaller than ``prompt_batch`` (images up to
#: about 1.4 megapixels keep whole batches of 64 multimask prompts).
PREDICT_CHUNK_BYTES = 1 << 30

# guards every segmenter's memo of mirrored embeddings (a module lock keeps segmenters picklable)
_MIRROR_LOCK = threading.Lock()
_MEMO_KEYS = itertools.count()

@runtime_checkable
class Segmenter(Protocol):
    """A promptable segmenter: embed an image once, then decode many prompts against it."""

    model_id: str

    def embed(self, image: Any) -> ImageEmbedding:
        """Encode an image (path, array or PIL) into an ImageEmbedding."""
        ...

    def predict(self, embedding: ImageEmbedding, points: Any = None, labels: Any = None,
                boxes: Any = None, mask_input: Any = None, multimask: bool = True) -> Detections:
        """Masks for N prompts of one image; see PromptableSegmenter.predict."""
        ...


@dataclass
class MaskLogits:
    """Raw decoder output for N prompts.

    Attributes:
        logits: (N, M, h, w) float32 mask logits in the low-res frame: the padded square
            encoder input (side ``embedding.pad_size``) scaled to (h, w).
        iou_pred: (N, M) float32 predicted IoU per mask.
        feedback: optional (N, M, h, w) logits to hand back as ``low_res_logits`` (the
            ``mask_input`` of a later prompt) instead of ``logits``; flip TTA keeps the direct
            decoder's logits there, the kind of mask prompt the model was trained with.
    """

    logits: torch.Tensor
    iou_pred: torch.Tensor
    feedback: torch.Tensor | None = None


def as_flag(name: str, value: Any) -> bool:
    """``value`` as a bool, refusing what is not one: ``multimask="no"`` or
    ``multimask_output="False"`` would be truthy and silently give three masks."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def upsample_logits(logits: torch.Tensor, embedding: ImageEmbedding) -> torch.Tensor:
    """Low-res logits (N, M, h, w) -> logits (N, M, H, W) at the embedded image's original size.

    Same geometry as the official ``Sam.postprocess_masks``: bilinear to the padded square,
    crop the valid region, bilinear to the original size.
    """
    if logits.numel() == 0:
        h, w = embedding.original_size
        return logits.new_zeros((*logits.shape[:2], h, w))
    n, m = logits.shape[:2]
    x = logits.reshape(n * m, 1, *logits.shape[-2:]).float()
    s = embedding.pad_size
    x = F.interpolate(x, (s, s), mode="bilinear", align_corners=False)
    ih, iw = embedding.input_size
    x = x[..., :ih, :iw]
    x = F.interpolate(x, tuple(embedding.original_size), mode="bilinear", align_corners=False)
    return x.reshape(n, m, *x.shape[-2:])


class PromptableSegmenter(ABC):
    """Base for backends: subclasses implement ``embed`` and ``decode``; ``predict`` is shared.

    Attributes:
        model_id: unique id of the model and weights (embeddings carry it).
        mask_threshold: logit threshold that binarises masks (0.0 for SAM).
        low_res_size: (h, w) of the decoder's low-res logits, also the ``mask_input`` size.
        prompt_batch: prompts decoded per forward pass; bounds memory for many prompts.
        skips_low_iou: ``decode`` accepts ``min_iou=t`` and may then leave the masks of prompts
            whose predicted IoUs are all <= t uncomputed (empty); their IoUs stay exact.
            Callers that drop those masks anyway (the automatic generator) pass it.
        amg_thresholds: None, or recommended automatic-generation quality thresholds for a
            model whose predicted IoU or logit scale is calibrated unlike SAM's (keys
            ``pred_iou_thresh``, ``stability_score_thresh``, ``stability_score_offset``); used
            by ``AmgConfig.for_segmenter`` when no explicit settings are given.
        edge_refine: None, or the recommended ``(radius, eps)`` of the guided filter that the
            edge task (``tasks.edges``, refine ``"auto"``) applies to each mask's probability
            map, for a model whose low-res masks are too coarse for edge detection.
        mask_refine: None, or a :class:`~composer.refine.GrabCutRefine` that ``predict``
            (``refine="auto"``) applies to every returned mask: a band around the upsampled
            low-res boundary is relabelled by GrabCut with the image. The backend's ``embed``
            then keeps the image in ``extras["image"]`` (set it before embedding).
        flip_tta: ``predict`` (``tta="auto"``) averages, for prompts without a ``mask_input``
            (first clicks, boxes), the decoder's logits and predicted IoUs with those of the
            horizontally mirrored image and prompts (test-time augmentation; one more encoder
            run per image, memoised, the first time such a prompt is decoded). The masks and
            scores are the averages; ``low_res_logits`` stay the direct decoder's (a later
            prompt's ``mask_input``). Prompts with a ``mask_input`` (later clicks) and the
            automatic generator (``decode``) are not mirrored. The backend's ``embed`` then
            keeps the image in ``extras["image"]``.
        mirror_encoder_calls: encoder passes made for flip TTA's mirrored images (outside any
            ``EmbeddingCache``, whose ``encoder_calls`` do not include them).
        prompt_shift: how far (input-frame pixels, right and down) the model's training
            encoded a prompt from the place it marks; flip TTA mirrors the marked place (see
            ``mirror_prompts``). 0 for SAM (a point at ``x * s + 0.5`` marks that pixel's
            centre); 0.5 for models trained by ``composer.training``, which puts a low-res
            pixel centre or box edge ``c`` (input pixels) at ``c + 0.5``.
        mask_rank: None, or a :class:`~composer.refine.ContrastRank` that ``predict``
            (``rank="auto"``) uses to score the masks of multimask prompts: ``scores`` become
            the predicted IoU plus ``weight`` times the colour contrast at each (refined)
            mask's boundary, so the three masks of a first click are ranked by both
            (``extras["predicted_iou"]`` keeps the IoU head's values). Single-mask prompts and
            the automatic generator keep the predicted IoU. The backend's ``embed`` then keeps
            the image in ``extras["image"]``.
        box_zoom: None, or the recommended ``zoom_small`` of box-prompted instance
            segmentation (``tasks.instances.InstanceConfig``, ``"auto"``): boxes whose longer
            side is below this fraction of the image's are decoded again in a crop around
            them, for a model whose masks are too coarse for small objects.
    """

    model_id: str = "segmenter"
    mask_threshold: float = 0.0
    low_res_size: tuple[int, int] = (256, 256)
    prompt_batch: int = 64
    skips_low_iou: bool = False
    amg_thresholds: dict[str, float] | None = None
    edge_refine: tuple[int, float] | None = None
    mask_refine: GrabCutRefine | None = None
    flip_tta: bool = False
    mirror_encoder_calls: int = 0
    prompt_shift: float = 0.0
    mask_rank: ContrastRank | None = None
    box_zoom: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        # the memo of mirrored embeddings is this process's cache: a copy (e.g. for a batch-run
        # worker process) would carry up to two images' embeddings and pixels for nothing
        state = self.__dict__.copy()
        state.pop("_mirror_memo", None)
        return state

    @abstractmethod
    def embed(self, image: Any) -> ImageEmbedding: ...

    @abstractmethod
    def decode(self, embedding: ImageEmbedding, prompts: Prompts, multimask: bool = True) -> MaskLogits:
        """Decode validated prompts (original-image pixels) into low-res logits and IoU."""

    def predict(self, embedding: ImageEmbedding, points: Any = None, labels: Any = None,
                boxes: Any = None, mask_input: Any = None, multimask: bool = True,
                keep_low_res: bool = True, refine: Any = "auto", tta: Any = "auto",
                rank: Any = "auto") -> Detections:
        """Masks for N prompts of the embedded image in one call.

        Args:
            embedding: from ``embed`` of this segmenter (or the shared cache).
            points: (N, K, 2) or (K, 2) float XY in original-image pixels.
            labels: (N, K) or (K,) ints: 1 foreground, 0 background, -1 padding.
            boxes: (N, 4) or (4,) float XYXY in original-image pixels.
            mask_input: (N, 1, h, w) low-res logits from an earlier ``low_res_logits``.
            multimask: three masks per prompt (ambiguity-aware) instead of one.
            keep_low_res: keep (h, w) float32 logits per mask in ``extras["low_res_logits"]``.
            refine: ``"auto"`` (the segmenter's ``mask_refine``, if any), ``"off"``, or a
                :class:`~composer.refine.GrabCutRefine`. Only the returned masks are refined;
                ``low_res_logits`` stay the decoder's (they are what ``mask_input`` expects).
            tta: ``"auto"`` (the segmenter's ``flip_tta``), ``"flip"`` or ``"off"``: average
                the outputs of prompts without ``mask_input`` with the mirrored image's (see
                ``decode_tta``); masks and scores are then the averages, ``low_res_logits``
                the direct decoder's.
            rank: ``"auto"`` (the segmenter's ``mask_rank``, if any), ``"off"``, or a
                :class:`~composer.refine.ContrastRank`: with ``multimask``, ``scores`` are the
                predicted IoU plus the rank's weight times each returned mask's colour
                contrast (``extras["contrast"]``); without it the rank is not applied.

        Returns:
            Detections of N*M items, prompt-major (M = 3 if multimask else 1): masks at the
            original resolution, ``scores`` = predicted IoU (plus the contrast term under a
            rank), extras ``predicted_iou``, ``prompt_index``, ``mask_index`` and
            (optionally) ``low_res_logits`` and ``contrast``; ``meta["refine"]`` and
            ``meta["rank"]`` are the refinement and rank used, as dicts (None for none), and
            ``meta["tta"]`` ``"flip"`` or None.

        Raises:
            ValueError: empty prompt set, NaN, malformed boxes, prompts outside the image,
                an embedding from another model, or an explicit refiner, rank or
                ``tta="flip"`` with an embedding that carries no image (see ``refinement``).
            TypeError: ``embedding`` is not an ``ImageEmbedding`` (e.g. the image itself), or
                ``multimask`` / ``keep_low_res`` is not a bool.
        """
        if not isinstance(embedding, ImageEmbedding):
            raise TypeError(
                f"predict needs the ImageEmbedding that embed(image) returns, got "
                f"{type(embedding).__name__}"
            )
        embedding.check_model(self.model_id)
        multimask, keep_low_res = as_flag("multimask", multimask), as_flag("keep_low_res", keep_low_res)
        if isinstance(points, Prompts):  # DESIGN: predict(embedding, prompts, multimask=...)
            if labels is not None or boxes is not None or mask_input is not None:
                raise TypeError("predict takes a Prompts or points/labels/boxes/mask_input, not both")
            p = points
            points, labels, boxes, mask_input = p.points, p.labels, p.boxes, p.mask_input
        prompts = Prompts.create(points, labels, boxes, mask_input, image_size=embedding.original_size)
        self.check_mask_input(prompts)
        refiner, image = self.refinement(embedding, refine)
        ranker = self.resolve_rank(rank, embedding)  # validated even when there is nothing to rank
        if not multimask:
            ranker = None
        if ranker is not None and image is None:
            image = refine_image(embedding)
        flip = self.resolve_tta(tta, embedding)
        self.warn_if_image_missing(embedding, refine, tta, rank, multimask,
                                   first_prompt=prompts.mask_input is None)
        return self._predict_prompts(embedding, prompts, multimask, keep_low_res, refiner, image,
                                     flip, ranker)

    def check_mask_input(self, prompts: Prompts) -> None:
        """Raise ``ValueError`` unless ``prompts.mask_input`` is None or of ``low_res_size``."""
        if prompts.mask_input is not None and tuple(prompts.mask_input.shape[-2:]) != tuple(self.low_res_size):
            raise ValueError(
                f"mask_input must be (N, 1, {self.low_res_size[0]}, {self.low_res_size[1]}) for "
                f"{self.model_id}, got {prompts.mask_input.shape}"
            )

    def refinement(
        self, embedding: ImageEmbedding, refine: Any = "auto"
    ) -> tuple[GrabCutRefine | None, np.ndarray | None]:
        """(refiner, image) for ``predict(refine=...)``; (None, None) for no refinement.

        ``"auto"`` with an embedding that carries no image (made before ``mask_refine`` was
        set, or read from an older disk cache) returns the decoder's masks (``predict`` says
        so once, :meth:`warn_if_image_missing`); an explicit refiner then raises ``ValueError``.
        """
        refiner = self.resolve_refine(refine)
        if refiner is None:
            return None, None
        if "image" not in embedding.extras and not isinstance(refine, GrabCutRefine):
            return None, None
        return refiner, refine_image(embedding)

    def warn_if_image_missing(self, embedding: ImageEmbedding, refine: Any = "auto",
                              tta: Any = "auto", rank: Any = "auto", multimask: bool = True,
                              first_prompt: bool = True) -> list[str]:
        """Log (once per segmenter and setting) which of the segmenter's own predict-time
        settings an embedding without the image (``extras["image"]``: one made by
        ``set_torch_image``, before the settings were set, or read from an older disk cache)
        makes ``predict`` skip: mask refinement, flip TTA (only for a prompt without
        ``mask_input``) and contrast ranking (only with ``multimask``), each where its argument
        is ``"auto"``. A setting set after the first warning warns again when first skipped.

        Returns:
            The names of the skipped settings (empty when the embedding keeps the image).
        """
        if "image" in embedding.extras:
            return []
        skipped = []
        if isinstance(refine, str) and refine == "auto" and self.mask_refine is not None:
            skipped.append("mask refinement")
        if isinstance(tta, str) and tta == "auto" and self.flip_tta and first_prompt:
            skipped.append("flip TTA")
        if (isinstance(rank, str) and rank == "auto" and self.mask_rank is not None
                and multimask):
            skipped.append("contrast ranking")
        warned: set[str] | None = getattr(self, "_warned_no_image", None)
        if warned is None:
            warned = set()
            self._warned_no_image = warned
        if not warned.issuperset(skipped):
            logger.warning(
                "%s: the embedding carries no image (made by set_torch_image, before "
                "mask_refine, flip_tta or mask_rank was set, or read from an older cache), so "
                "its masks get no %s; embed the image itself (set_image, embed) to apply them",
                self.model_id, " and no ".join(skipped),
            )
            warned.update(skipped)
        return skipped

    def image_extras(self, rgb: np.ndarray) -> dict[str, torch.Tensor]:
        """``{"image": ...}`` for ``embed`` to add to the embedding's extras when the segmenter
        refines its masks (``mask_refine``), mirrors prompts (``flip_tta``) or ranks masks by
        their colour contrast (``mask_rank``), else ``{}``."""
        keep = self.mask_refine is not None or self.flip_tta or self.mask_rank is not None
        return {"image": torch.tensor(np.asarray(rgb))} if keep else {}

    def resolve_tta(self, tta: Any = "auto", embedding: ImageEmbedding | None = None) -> bool:
        """Whether ``predict(tta=...)`` mirrors prompts without ``mask_input``.

        ``"auto"`` follows ``flip_tta`` and, for an embedding without the image (an older
        disk cache), quietly falls back to no mirroring; ``"flip"`` then raises ``ValueError``.
        """
        if tta == "auto":
            flip = bool(self.flip_tta)
        elif tta == "flip":
            flip = True
        elif tta == "off" or tta is None:
            flip = False
        else:
            raise ValueError(f"tta must be 'auto', 'flip' or 'off', got {tta!r}")
        if flip and embedding is not None and "image" not in embedding.extras:
            if tta == "flip":
                raise ValueError(
                    f"tta='flip' needs the image, and this embedding of {embedding.model_id} carries "
                    "none (extras['image']): set the segmenter's flip_tta before embedding"
                )
            return False
        return flip

    def mirrored_embedding(self, embedding: ImageEmbedding) -> ImageEmbedding:
        """The embedding of the horizontally mirrored image of ``embedding`` (from its
        ``extras["image"]``); the last two are memoised, so a click session embeds once more.
        The memo knows an embedding by identity, else by its model id and pixels: the copies
        that an ``EmbeddingCache`` hands out of one entry share one mirrored pass (and the memo
        holds no copy alive: a weak reference). These encoder passes bypass any
        ``EmbeddingCache``; ``mirror_encoder_calls`` counts them."""
        memo: OrderedDict[
            int, tuple[weakref.ref[ImageEmbedding], tuple[str, str], ImageEmbedding]
        ] = self.__dict__.setdefault("_mirror_memo", OrderedDict())
        with _MIRROR_LOCK:
            for key, (ref, _, mirrored) in memo.items():
                if ref() is embedding:
                    memo.move_to_end(key)
                    return mirrored
        image = refine_image(embedding)
        content = (embedding.model_id, image_hash(image))
        with _MIRROR_LOCK:
            for key, (_, other, mirrored) in list(memo.items()):
                if other == content:  # a copy of an embedding seen before: its pixels' mirror
                    del memo[key]
                    _remember(memo, embedding, content, mirrored)
                    return mirrored
        mirrored = self.embed(image[:, ::-1].copy())  # a copy: a width-1 view keeps its negative stride
        # only decoded, never refined or ranked: the memo need not hold a second copy of the pixels
        mirrored = dataclasses.replace(
            mirrored, extras={k: v for k, v in mirrored.extras.items() if k != "image"}
        )
        with _MIRROR_LOCK:
            self.mirror_encoder_calls += 1
            _remember(memo, embedding, content, mirrored)
            while len(memo) > 2:
                memo.popitem(last=False)
        return mirrored

    def mirror_prompts(self, prompts: Prompts, embedding: ImageEmbedding) -> Prompts:
        """``prompts`` for the horizontally mirrored image of ``embedding``: each marks the
        mirror of the place the original marks, as the model reads prompts.

        SAM's prompt encoder (and composer_tiny's click maps) put an original-pixel x at
        ``x * s + 0.5`` of the input frame (s = ``input_size[1] / W``, ``iw`` the resized
        width), and a model trained with ``prompt_shift`` d reads that as the place
        ``x * s + 0.5 - d``. Its mirror in the resized image is ``iw - x * s - 0.5 + d``, so
        x goes to ``W - (1 - 2 d) * W / iw - x``: ``W - W / iw - x`` for SAM, ``W - x`` for
        composer_tiny. The pixel mirror ``W - 1 - x`` is right for neither unless s = 1.
        A backend with another prompt frame overrides this.
        """
        width = embedding.original_size[1]
        offset = (1.0 - 2.0 * float(self.prompt_shift)) * width / embedding.input_size[1]
        return mirror_prompts(prompts, width, offset)

    def decode_tta(self, embedding: ImageEmbedding, prompts: Prompts, multimask: bool = True,
                   flip: bool = True, mirrored: ImageEmbedding | None = None) -> MaskLogits:
        """``decode``, averaged with the mirrored image's output when ``flip`` is set and the
        prompts carry no ``mask_input``.

        The mirrored prompts are decoded against ``mirrored`` (default: ``mirrored_embedding``
        of ``embedding``; a caller that decodes many batches of one image looks it up once, as
        other threads' images may push it out of the memo between batches); their low-res
        logits are mirrored back about the valid (unpadded) region and averaged with the direct
        ones there (padding columns keep the direct logits), and the predicted IoUs are averaged.
        ``feedback`` keeps the direct logits: fed back as a later click's ``mask_input`` they
        are the mask prompt the model was trained with (averaged logits, a first variant, cost
        clicks on held-out data; ``recipes/README.md``, "Flip TTA").
        """
        out = self.decode(embedding, prompts, multimask)
        if not flip or prompts.mask_input is not None:
            return out
        if mirrored is None:
            mirrored = self.mirrored_embedding(embedding)
        back = self.decode(mirrored, self.mirror_prompts(prompts, embedding), multimask)
        valid_w = embedding.input_size[1] * out.logits.shape[-1] / embedding.pad_size
        logits, valid = mirror_low_res(back.logits, valid_w)
        averaged = torch.where(valid, (out.logits + logits.to(out.logits)) / 2, out.logits)
        iou = (out.iou_pred + back.iou_pred.to(out.iou_pred)) / 2
        return MaskLogits(averaged, iou, feedback=out.logits)

    def resolve_refine(self, refine: Any) -> GrabCutRefine | None:
        """The mask refinement that ``predict(refine=...)`` applies (None: none)."""
        if isinstance(refine, GrabCutRefine):
            return refine
        if refine == "auto":
            return self.mask_refine
        if refine == "off" or refine is None:
            return None
        raise ValueError(f"refine must be 'auto', 'off' or a GrabCutRefine, got {refine!r}")

    def resolve_rank(self, rank: Any = "auto", embedding: ImageEmbedding | None = None
                     ) -> ContrastRank | None:
        """The mask ranking ``predict(rank=...)`` applies (None: predicted IoU alone).

        ``"auto"`` follows ``mask_rank`` and, for an embedding without the image (an older
        disk cache), quietly falls back to the predicted IoU; an explicit ``ContrastRank``
        then raises ``ValueError``.
        """
        if isinstance(rank, ContrastRank):
            ranker: ContrastRank | None = rank
        elif rank == "auto":
            ranker = self.mask_rank
        elif rank == "off" or rank is None:
            return None
        else:
            raise ValueError(f"rank must be 'auto', 'off' or a ContrastRank, got {rank!r}")
        if ranker is not None and embedding is not None and "image" not in embedding.extras:
            if isinstance(rank, ContrastRank):
                raise ValueError(
                    f"a ContrastRank needs the image, and this embedding of {embedding.model_id} "
                    "carries none (extras['image']): set the segmenter's mask_rank before embedding"
                )
            return None
        return ranker

    @torch.no_grad()
    def _predict_prompts(self, embedding: ImageEmbedding, prompts: Prompts, multimask: bool,
                         keep_low_res: bool, refiner: GrabCutRefine | None = None,
                         image: np.ndarray | None = None, flip: bool = False,
                         ranker: ContrastRank | None = None) -> Detections:
        h, w = embedding.original_size
        parts: list[Detections] = []
        n = len(prompts)
        # looked up once for all batches: one encoder pass per call whatever other threads do
        mirrored = (self.mirrored_embedding(embedding)
                    if flip and n and prompts.mask_input is None else None)
        # each batch's masks are upsampled to the image's size at once (64 prompts of a
        # 6000 x 4000 photo: 18 GB of float32 logits), so a large image takes smaller batches
        per_prompt = 4 * h * w * (3 if multimask else 1)
        batch = max(1, min(self.prompt_batch, PREDICT_CHUNK_BYTES // per_prompt))
        for start in range(0, n, batch):
            chunk = prompts[start : min(n, start + batch)]
            out = self.decode_tta(embedding, chunk, multimask, flip, mirrored)
            parts.append(self._to_detections(out, embedding, start, keep_low_res, refiner, image,
                                             chunk, ranker))
            if batch < self.prompt_batch:
                trim_heap()  # the freed full-size temporaries would stay pinned (trim_heap)
        dets = Detections.concatenate(parts) if parts else Detections.empty((h, w))
        # the embedding's id: predict checked it is this model's (a check costs ~0.5 ms)
        dets.meta.update(model_id=embedding.model_id, image_size=(h, w),
                         refine=None if refiner is None else dataclasses.asdict(refiner),
                         rank=None if ranker is None else dataclasses.asdict(ranker),
                         tta="flip" if flip else None)
        return dets

    def _to_detections(self, out: MaskLogits, embedding: ImageEmbedding, offset: int,
                       keep_low_res: bool, refiner: GrabCutRefine | None = None,
                       image: np.ndarray | None = None,
                       prompts: Prompts | None = None,
                       ranker: ContrastRank | None = None) -> Detections:
        n, m = out.iou_pred.shape
        binary = upsample_logits(out.logits, embedding) > self.mask_threshold
        dense = binary.reshape(n * m, *binary.shape[-2:]).cpu().numpy()
        if refiner is not None and image is not None:
            from ..refine import refine_masks

            pts = lbl = None
            if prompts is not None and prompts.points is not None and prompts.labels is not None:
                # mask k belongs to prompt k // m and is refined with that prompt's clicks
                pts = [prompts.points[k // m] for k in range(n * m)]
                lbl = [prompts.labels[k // m] for k in range(n * m)]
            refine_masks(refiner, image, dense, pts, lbl)
        masks = Masks.from_dense(dense)
        iou = out.iou_pred.reshape(-1).float().cpu().numpy()
        extras: dict[str, np.ndarray] = {
            "predicted_iou": iou,
            "prompt_index": np.repeat(np.arange(offset, offset + n), m),
            "mask_index": np.tile(np.arange(m), n),
        }
        scores = iou
        if ranker is not None and image is not None and m > 1:
            contrast = ranker.contrasts(image, dense)
            extras["contrast"] = contrast
            scores = (iou + ranker.weight * contrast).astype(np.float32)
        if keep_low_res:
            low = out.logits if out.feedback is None else out.feedback
            extras["low_res_logits"] = low.reshape(n * m, *low.shape[-2:]).float().cpu().numpy()
        return Detections.from_masks(masks, scores=scores, extras=extras)


def _remember(memo: OrderedDict[int, Any], embedding: ImageEmbedding, content: tuple[str, str],
              mirrored: ImageEmbedding) -> None:
    """Put ``embedding``'s mirror in the memo as its newest entry, under a key of its own
    (never the embedding's id: the memo holds weak references, and CPython gives a freed
    object's address to a new one, so a new embedding's id could overwrite the entry of a
    dead one whose pixels a later copy would still find by content)."""
    memo[next(_MEMO_KEYS)] = (weakref.ref(embedding), content, mirrored)


def mirror_prompts(prompts: Prompts, width: float, offset: float) -> Prompts:
    """Prompts of the horizontally mirrored image of ``width`` pixels: x becomes
    ``width - offset - x`` (points), and a box's x0, x1 become ``width - offset - x1``,
    ``width - offset - x0``. ``offset`` 1 mirrors pixel indices (column x to ``width - 1 - x``),
    0 continuous coordinates; ``PromptableSegmenter.mirror_prompts`` picks the one of its
    backend's prompt frame."""
    points = boxes = None
    if prompts.points is not None:
        points = prompts.points.copy()
        points[..., 0] = width - offset - points[..., 0]
    if prompts.boxes is not None:
        boxes = prompts.boxes.copy()
        boxes[:, [0, 2]] = width - offset - prompts.boxes[:, [2, 0]]
    return dataclasses.replace(prompts, points=points, boxes=boxes)


def mirror_low_res(logits: torch.Tensor, valid_w: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror low-res logits (..., h, w) about the centre of their valid region.

    ``valid_w`` is the unpadded width in low-res pixels (``input_size[1] * w / pad_size``, may
    be fractional): column c takes the (linearly interpolated) value at ``valid_w - 1 - c``,
    which maps the centre of a mirrored input pixel back onto the original's. Returns the
    mirrored logits and a (w,) bool mask of the columns inside the valid region (both on the
    logits' device).
    """
    w = logits.shape[-1]
    # The sampling positions are worked out in float64 on the CPU (Apple's MPS has no float64)
    # and only the indices and weights move to the logits' device.
    cols = torch.arange(w, dtype=torch.float64)
    src = (valid_w - 1 - cols).clamp(0, w - 1)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=w - 1)
    dev = logits.device
    frac = (src - i0).to(logits.dtype).to(dev)
    i0, i1 = i0.to(dev), i1.to(dev)
    mirrored = logits[..., i0] * (1 - frac) + logits[..., i1] * frac
    return mirrored, (cols < valid_w).to(dev)


def refine_image(embedding: ImageEmbedding) -> np.ndarray:
    """The (H, W, 3) uint8 image a refining, mirroring or ranking backend keeps in
    ``extras["image"]`` (``mask_refine``, ``flip_tta``, ``mask_rank``)."""
    img = embedding.extras.get("image")
    if img is None:
        raise ValueError(
            f"mask refinement, flip TTA and contrast ranking need the image, and this embedding "
            f"of {embedding.model_id} carries none (extras['image']): set the segmenter's "
            "mask_refine, flip_tta or mask_rank before embedding, or predict with refine='off', "
            "tta='off', rank='off'"
        )
    arr = img.cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.shape[:2] != tuple(embedding.original_size):
        raise ValueError(f"extras['image'] is {arr.shape}, the embedding's image {embedding.original_size}")
    return arr


def best_per_prompt(dets: Detections) -> Detections:
    """Keep, for each prompt, the item with the highest score (the "most confident" mask)."""
    if len(dets) == 0:
        return dets
    if "prompt_index" not in dets.extras or dets.scores is None:
        raise ValueError("best_per_prompt needs scores and extras['prompt_index']")
    pidx = dets.extras["prompt_index"]
    order = np.lexsort((-dets.scores, pidx))
    first = np.ones(len(order), bool)
    first[1:] = pidx[order][1:] != pidx[order][:-1]
    return dets[order[first]]
