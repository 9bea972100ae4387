"""Interactive click sessions, with optional zoom-in around the object.

Zoom-in is the test-time crop of RITM (Sofiiuk et al. 2022, "Reviving Iterative Training with
Mask Guidance"), used by the interactive-segmentation literature (FocalClick, SimpleClick): after
the first click(s) the image is cropped to the current prediction, the positive clicks and the
newest click, expanded by ``expansion``; the crop is embedded on its own, so the object fills the
encoder's input and its boundary gets the decoder's full low-res grid. Older clicks outside the
crop are left out of its prompt. The crop is kept while it still
holds every positive click and the newest click and overlaps the new box by ``recompute_iou``
(an older negative click may lie outside it); otherwise it is recomputed
(one more encoder call). The previous mask prompt is carried across frames
(:func:`reframe_logits`).

Example::

    session = ClickSession(segmenter, image, zoom_in=ZoomIn())
    for xy, label in clicks:
        masks, scores = session.click(xy, label)   # full-image (M, H, W) bool, (M,) float
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .embedding import ImageEmbedding
from .io.image import load_image
from .segmenters.base import upsample_logits
from .structures.masks import Masks

#: Logit used for pixels of a mask prompt that lie outside the previous frame.
OUTSIDE_LOGIT = -20.0


@dataclass(frozen=True)
class ZoomIn:
    """Zoom-in settings (RITM's defaults: expansion 1.4, recompute below a box IoU of 0.5).

    Attributes:
        skip_clicks: clicks predicted on the whole image before zooming (>= 1: the first
            crop needs a prediction).
        expansion: crop side = ``expansion`` x the side of the box around the prediction, the
            positive clicks and the newest click (per axis).
        min_crop: smallest crop side in pixels (small objects keep some context).
        recompute_iou: a new crop is embedded when the new box overlaps the current crop less
            than this (or a positive click or the newest click falls outside it).
    """

    skip_clicks: int = 1
    expansion: float = 1.4
    min_crop: int = 96
    recompute_iou: float = 0.5

    def __post_init__(self) -> None:
        if self.skip_clicks < 1:
            raise ValueError(f"skip_clicks must be >= 1, got {self.skip_clicks}")
        if not self.expansion >= 1.0:
            raise ValueError(f"expansion must be >= 1, got {self.expansion}")
        if self.min_crop < 8:
            raise ValueError(f"min_crop must be >= 8 pixels, got {self.min_crop}")
        if not 0.0 <= self.recompute_iou <= 1.0:
            raise ValueError(f"recompute_iou must be in [0, 1], got {self.recompute_iou}")


def zoom_box(
    mask: np.ndarray | None,
    points: np.ndarray,
    image_size: tuple[int, int],
    expansion: float = 1.4,
    min_crop: int = 96,
) -> np.ndarray:
    """Integer XYXY crop (x1, y1 exclusive) around a mask and points, expanded and kept inside.

    Args:
        mask: (H, W) bool current prediction (None or empty: the points alone).
        points: (K, 2) XY pixel coordinates to keep inside (at least one).
        image_size: (H, W).
        expansion: side multiplier around the tight box.
        min_crop: smallest side (capped by the image side).
    """
    h, w = int(image_size[0]), int(image_size[1])
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise ValueError("zoom_box needs at least one point")
    # The tight box in whole pixels: a click at x = 10.7 lies in pixel 10, so [10, 11) holds it
    # (with float bounds, rounding could leave a sub-pixel click just outside the crop).
    x0, y0 = (int(v) for v in np.floor(pts.min(0)))
    x1, y1 = (int(v) + 1 for v in np.floor(pts.max(0)))
    if mask is not None and mask.any():
        ys = np.flatnonzero(mask.any(1))
        xs = np.flatnonzero(mask.any(0))
        x0, x1 = min(x0, int(xs[0])), max(x1, int(xs[-1]) + 1)
        y0, y1 = min(y0, int(ys[0])), max(y1, int(ys[-1]) + 1)
    out = []
    for lo, hi, side in ((x0, x1, w), (y0, y1, h)):
        length = min(max((hi - lo) * expansion, hi - lo, min_crop), side)
        n = int(round(length))
        a = int(round((lo + hi) / 2 - length / 2))
        a = min(max(a, hi - n), lo)  # the tight box stays inside after rounding
        a = min(max(a, 0), side - n)
        out.append((a, a + n))
    return np.array([out[0][0], out[1][0], out[0][1], out[1][1]], np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two XYXY boxes."""
    iw = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    ih = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = iw * ih
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def _inside(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(K,) bool: which (K, 2) XY points lie in the XYXY box (x1, y1 exclusive)."""
    x, y = points[:, 0], points[:, 1]
    return (x >= box[0]) & (x < box[2]) & (y >= box[1]) & (y < box[3])


def _frame_origin(embedding: ImageEmbedding) -> tuple[int, int]:
    box = embedding.crop_box
    return (0, 0) if box is None else (int(box[0]), int(box[1]))


def reframe_logits(
    logits: np.ndarray, source: ImageEmbedding, target: ImageEmbedding
) -> np.ndarray:
    """Low-res mask logits (h, w) of ``source``'s frame -> the same-size logits of ``target``'s.

    Both embeddings are of one image (whole, or crops with ``crop_box`` in its pixels). The
    logits go up to the source frame's pixels (as masks are upsampled), into image
    coordinates, are cut to the target frame (``OUTSIDE_LOGIT`` where the source did not
    reach) and go down through the target's resize-and-pad geometry.
    """
    lo = torch.as_tensor(np.asarray(logits, np.float32))
    if lo.ndim != 2:
        raise ValueError(f"logits must be (h, w), got shape {tuple(lo.shape)}")
    low_hw = tuple(lo.shape)
    x = upsample_logits(lo[None, None], source)
    sx, sy = _frame_origin(source)
    tx, ty = _frame_origin(target)
    th, tw = target.original_size
    canvas = torch.full((1, 1, th, tw), OUTSIDE_LOGIT)
    # Overlap of the source frame with the target frame, in target coordinates.
    ox0, oy0 = max(sx - tx, 0), max(sy - ty, 0)
    ox1 = min(sx - tx + source.original_size[1], tw)
    oy1 = min(sy - ty + source.original_size[0], th)
    if ox1 > ox0 and oy1 > oy0:
        canvas[..., oy0:oy1, ox0:ox1] = x[
            ..., oy0 + ty - sy : oy1 + ty - sy, ox0 + tx - sx : ox1 + tx - sx
        ]
    jh, jw = target.input_size
    y = F.interpolate(canvas, (jh, jw), mode="bilinear", align_corners=False)
    padded = torch.full((1, 1, target.pad_size, target.pad_size), OUTSIDE_LOGIT)
    padded[..., :jh, :jw] = y
    out = F.interpolate(padded, low_hw, mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy()


@dataclass(frozen=True)
class _LeanFrame:
    """An earlier zoom crop's embedding kept for undo without its ``extras["image"]`` (the crop's
    pixels, which the session's own image gives back): on a large photo every crop the session
    has moved through would otherwise hold its pixels until the session ends."""

    embedding: ImageEmbedding


def _pack_mask(mask: np.ndarray | None) -> Masks | np.ndarray | None:
    """A compact copy of an (H, W) bool prediction for the undo history.

    The RLE is of the transposed mask: COCO RLE runs down columns, so encoding ``mask.T``
    needs no column-major copy of the image (about 10 ms instead of 120 ms at 12 MP). A mask
    whose RLE would be longer than its packed bits (noise) is kept as bits instead.
    """
    if mask is None:
        return None
    rle = Masks.from_dense(mask.T)
    if len(rle.rles[0]["counts"]) <= mask.size // 8:
        return rle
    return np.packbits(mask.reshape(-1))


def _unpack_mask(packed: Masks | np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """The (H, W) bool prediction stored by :func:`_pack_mask`."""
    if packed is None:
        return None
    if isinstance(packed, Masks):
        return np.ascontiguousarray(packed.to_dense()[0].T)
    return np.unpackbits(packed, count=size[0] * size[1]).reshape(size).astype(bool)


def top_index(scores: np.ndarray) -> int:
    """Index of the highest score; a NaN score (a diverged head) never wins over a number, and
    an all-NaN (or empty) set gives 0. ``np.argmax`` takes the first NaN as the maximum."""
    s = np.asarray(scores, np.float64).reshape(-1)
    if s.size == 0:
        return 0
    return int(np.argmax(np.where(np.isnan(s), -np.inf, s)))


class ClickSession:
    """One object's click session on one image: all clicks so far, the previous mask prompt,
    and (with ``zoom_in``) the crop it is predicted in.

    Args:
        segmenter: any Segmenter (``embed``, ``predict``).
        image: (H, W, 3) array, path or PIL image; needed to embed crops.
        embedding: the whole image's embedding from ``segmenter`` (computed when None).
        zoom_in: zoom-in settings, or None to predict on the whole image throughout.
        use_prev_logits: feed the chosen mask's low-res logits back as the next mask prompt.

    Attributes:
        points: the clicks so far, each (2,) float32 (x, y) in image pixels, oldest first.
        labels: their labels (1 positive, 0 negative).
        prediction: (H, W) bool current mask in image pixels (the session's own copy), or None
            before the first click.
        prev_logits: (h, w) float32 low-res logits of the current mask in the geometry of the
            current frame (the crop's with zoom-in, see :func:`reframe_logits`), or None.
        encoder_calls: crop embeddings computed by this session (not counting ``embedding``).
        crop_box: XYXY of the current zoom crop, or None (whole image).

    Raises:
        ValueError: no ``image`` where one is needed (no ``embedding``, or ``zoom_in``); an
            ``embedding`` made by another model than ``segmenter`` or of a crop.
    """

    def __init__(
        self,
        segmenter: Any,
        image: Any = None,
        embedding: ImageEmbedding | None = None,
        zoom_in: ZoomIn | None = None,
        use_prev_logits: bool = True,
    ) -> None:
        if image is None and (embedding is None or zoom_in is not None):
            raise ValueError("ClickSession needs the image (to embed it, or crops of it for zoom-in)")
        if embedding is not None:
            # checked here, not at the first click: a segmenter that does not check would
            # decode another model's features silently
            model_id = getattr(segmenter, "model_id", None)
            if model_id is not None and embedding.model_id != model_id:
                raise ValueError(
                    f"embedding was made by model {embedding.model_id!r}, not by the session's "
                    f"segmenter {model_id!r}"
                )
            if embedding.crop_box is not None:
                raise ValueError(
                    f"embedding is of the crop {tuple(embedding.crop_box)}; a ClickSession needs "
                    "the whole image's embedding"
                )
        self.segmenter = segmenter
        # The pixels are only needed to embed the image or crops of it (no per-object copy else).
        need_image = embedding is None or zoom_in is not None
        self.image = load_image(image) if need_image else None
        if self.image is not None and (
            (isinstance(image, np.ndarray) and np.shares_memory(self.image, image))
            or isinstance(image, torch.Tensor)  # a CPU tensor's pixels are shared the same way
        ):
            self.image = self.image.copy()  # later zoom crops must not see the caller's edits
        self.full = segmenter.embed(self.image) if embedding is None else embedding
        # an array given beside the embedding is checked too, though its pixels are not kept
        shape = self.image.shape if self.image is not None else (
            image.shape if isinstance(image, np.ndarray) and image.ndim >= 2 else None
        )
        if shape is not None and tuple(shape[:2]) != tuple(self.full.original_size):
            raise ValueError(
                f"image size {tuple(shape[:2])} differs from the embedding's {self.full.original_size}"
            )
        self.zoom_in = zoom_in
        self.use_prev_logits = bool(use_prev_logits)
        self.points: list[np.ndarray] = []
        self.labels: list[int] = []
        self.frame = self.full
        self.prev_logits: np.ndarray | None = None
        self.prediction: np.ndarray | None = None
        self.encoder_calls = 0
        # (frame, prev_logits, packed prediction) before each click, for undo(); the prediction
        # is kept as RLE (:func:`_pack_mask`): dense, 100 clicks on a 12 MP photo held 1.2 GB
        self._history: list[
            tuple[ImageEmbedding | _LeanFrame, np.ndarray | None, Masks | np.ndarray | None]
        ] = []

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.full.original_size)  # type: ignore[return-value]

    @property
    def crop_box(self) -> np.ndarray | None:
        box = self.frame.crop_box
        return None if box is None else np.asarray(box, np.int64)

    def _choose_frame(self) -> ImageEmbedding:
        z = self.zoom_in
        if z is None or len(self.points) <= z.skip_clicks or self.prediction is None:
            return self.frame
        pts = np.stack(self.points)
        # The box holds the mask, the positive clicks and the newest click (so a far negative
        # click is still seen); older negative clicks outside it are left out of the crop.
        keep = (np.asarray(self.labels) == 1) | (np.arange(len(pts)) == len(pts) - 1)
        box = zoom_box(self.prediction, pts[keep], self.image_size, z.expansion, z.min_crop)
        current = self.crop_box
        if current is not None:
            inside = _inside(pts[keep], current).all()
            if inside and box_iou(box, current) >= z.recompute_iou:
                return self.frame
        x0, y0, x1, y1 = (int(v) for v in box)
        if (x0, y0, x1, y1) == (0, 0, self.image_size[1], self.image_size[0]):
            # the crop is the whole image (one smaller than min_crop, or a large object): its
            # embedding is the one already held, so no encoder run is spent on it again
            return self.full
        assert self.image is not None
        emb = self.segmenter.embed(np.ascontiguousarray(self.image[y0:y1, x0:x1]))
        self.encoder_calls += 1
        return dataclasses.replace(emb, crop_box=(x0, y0, x1, y1))

    def click(
        self, point: Any, label: int, multimask: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add one click and predict.

        Args:
            point: (x, y) in image pixels (inside the image).
            label: 1 positive, 0 negative.
            multimask: three masks instead of one; default: only on the first click.

        Returns:
            masks (M, H, W) bool in image pixels and scores (M,) float32 (predicted IoU, or the
            segmenter's ``mask_rank`` score on a multimask click). The highest-scored mask
            becomes the session's prediction (and next mask prompt).
        """
        xy = np.asarray(point, np.float32)
        if xy.size != 2:
            raise ValueError(f"click point must be one (x, y) pair, got shape {xy.shape}")
        xy = xy.reshape(2)
        h, w = self.image_size
        if not (np.isfinite(xy).all() and 0 <= xy[0] < w and 0 <= xy[1] < h):
            raise ValueError(f"click {tuple(xy.tolist())} is outside the {w}x{h} image")
        if np.ndim(label) != 0 or label not in (0, 1):
            raise ValueError(f"click label must be 0 or 1, got {label!r}")
        self.points.append(xy)
        self.labels.append(int(label))
        if multimask is None:
            multimask = len(self.points) == 1
        before = (self.frame, self.prev_logits, self.prediction)
        packed = _pack_mask(self.prediction)  # before predicting: a failure leaves no trace
        try:
            out = self._predict(bool(multimask))
        except BaseException:
            # a click that fails (or is interrupted) leaves the session as it was
            self.points.pop()
            self.labels.pop()
            self.frame, self.prev_logits, self.prediction = before
            raise
        self._history.append((before[0], before[1], packed))
        if self.frame is not before[0]:
            self._lean_history(before[0])
        return out

    def undo(self) -> np.ndarray | None:
        """Take back the newest click: the session is as it was before it (clicks, crop, mask
        prompt and prediction; no prediction runs again).

        Returns:
            A copy of the prediction now current, (H, W) bool, or None when no click is left.

        Raises:
            ValueError: there is no click to take back.
        """
        if not self._history:
            raise ValueError("no click to undo")
        frame, self.prev_logits, packed = self._history.pop()
        self.frame = self._restore(frame) if isinstance(frame, _LeanFrame) else frame
        self.prediction = _unpack_mask(packed, self.image_size)
        self.points.pop()
        self.labels.pop()
        return None if self.prediction is None else self.prediction.copy()

    def _lean_history(self, left: ImageEmbedding) -> None:
        """The session has moved off the crop frame ``left``: its history entries keep one
        copy of it without the crop's pixels (:class:`_LeanFrame`)."""
        if left.crop_box is None or "image" not in left.extras or self.image is None:
            return
        x0, y0, x1, y1 = (int(v) for v in left.crop_box)
        if tuple(left.extras["image"].shape) != (y1 - y0, x1 - x0, 3):
            return  # not the crop's pixels as they are: keep them (``_restore`` could not)
        lean = _LeanFrame(dataclasses.replace(
            left, extras={k: v for k, v in left.extras.items() if k != "image"}
        ))
        self._history = [(lean if f is left else f, p, m) for f, p, m in self._history]

    def _restore(self, frame: _LeanFrame) -> ImageEmbedding:
        """The crop embedding of ``frame`` with its pixels again, as the segmenter kept them."""
        emb = frame.embedding
        assert emb.crop_box is not None and self.image is not None
        x0, y0, x1, y1 = (int(v) for v in emb.crop_box)
        pixels = torch.tensor(np.ascontiguousarray(self.image[y0:y1, x0:x1]))
        return dataclasses.replace(emb, extras={**emb.extras, "image": pixels})

    def reset(self) -> None:
        """Forget every click (start the object again); the whole image's embedding is kept,
        so the next click costs no encoder run."""
        self.points, self.labels, self._history = [], [], []
        self.frame = self.full
        self.prev_logits = None
        self.prediction = None

    def _predict(self, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        """Predict from all clicks so far (the newest last) and update the session."""
        h, w = self.image_size
        frame = self._choose_frame()
        mask_input = None
        if self.use_prev_logits and self.prev_logits is not None:
            prev = self.prev_logits
            if frame is not self.frame:
                prev = reframe_logits(prev, self.frame, frame)
            mask_input = prev[None, None]
        self.frame = frame
        ox, oy = _frame_origin(frame)
        pts = np.stack(self.points)
        labels = np.asarray(self.labels, np.int64)
        if frame.crop_box is not None:
            # Clicks outside the crop are not prompts of it (the newest one is always inside).
            inside = _inside(pts, np.asarray(frame.crop_box))
            pts, labels = pts[inside], labels[inside]
        pts = pts - np.array([ox, oy], np.float32)
        dets = self.segmenter.predict(
            frame,
            points=pts[None],
            labels=labels[None],
            mask_input=mask_input,
            multimask=bool(multimask),
        )
        if len(dets) == 0 or dets.masks is None:
            local = np.zeros((1, *frame.original_size), bool)
            scores = np.zeros(1, np.float32)
        else:
            local = dets.masks.to_dense()
            scores = (
                np.zeros(len(dets), np.float32)
                if dets.scores is None
                else np.asarray(dets.scores, np.float32)
            )
        if frame.crop_box is None:
            masks = local
        else:
            masks = np.zeros((len(local), h, w), bool)
            fh, fw = frame.original_size
            masks[:, oy : oy + fh, ox : ox + fw] = local
        top = top_index(scores)
        # copies, not views: the caller owns ``masks`` (and may paint on them), and a view of
        # one of three masks (or logit maps) would keep all three alive
        self.prediction = masks[top].copy()
        low = dets.extras.get("low_res_logits") if len(dets) else None
        self.prev_logits = None if low is None else np.array(low[top], np.float32)
        return masks, scores
