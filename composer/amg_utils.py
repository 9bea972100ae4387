"""Building blocks of automatic mask generation: point grids, crop boxes, exact low-res
upsampling, mask boxes, RLE encoding and small-region clean-up.

Everything here reproduces the semantics of the official ``segment_anything.utils.amg``
helpers (same grids, same crop boxes, same inclusive mask boxes, same region rules) with
implementations that avoid Python loops over pixels and never build a padded 1024x1024
intermediate per mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.ops import batched_nms, box_iou

CropBox = tuple[int, int, int, int]

#: Mask boxes closer than this many pixels to an inner crop edge are dropped (official value).
CROP_EDGE_ATOL = 20.0


def build_point_grid(n_per_side: int) -> np.ndarray:
    """A regular grid of ``n_per_side**2`` points at pixel-cell centres of the unit square.

    Returns:
        (n*n, 2) float64 XY in [0, 1], x varying fastest (the official order).
    """
    if n_per_side < 0:
        raise ValueError(f"n_per_side must be >= 0, got {n_per_side}")
    if n_per_side == 0:
        return np.zeros((0, 2), np.float64)
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer; layer ``i`` has ``int(n_per_side / scale_per_layer**i)`` per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[CropBox], list[int]]:
    """Crop boxes of every layer: the whole image, then ``(2**i)**2`` overlapping crops in layer i.

    Same boxes and order as the official ``generate_crop_boxes``; crops that come out empty on
    tiny images (where the official code would fail) are skipped.

    Args:
        image_size: (H, W) of the image in pixels.
        n_layers: number of crop layers below the full image.
        overlap_ratio: overlap of neighbouring first-layer crops as a fraction of the short side.

    Returns:
        boxes: XYXY int boxes in image pixels (x1, y1 exclusive); layer_idxs: layer of each box.
    """
    im_h, im_w = image_size
    boxes: list[CropBox] = [(0, 0, int(im_w), int(im_h))]
    layers = [0]
    short = min(im_h, im_w)

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short * (2 / n))
        crop_w = crop_len(im_w, n, overlap)
        crop_h = crop_len(im_h, n, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(x0s, y0s):
            box = (x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h))
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append(box)
                layers.append(i_layer + 1)
    return boxes, layers


# --------------------------------------------------------------------------- upsampling
def _bilinear_matrix(out_len: int, in_len: int) -> np.ndarray:
    """(out_len, in_len) float64 matrix of a 1-D bilinear resize, ``align_corners=False``.

    Source positions and weights are computed in float32 exactly as PyTorch's CPU kernel does,
    so the composite operator below agrees with ``F.interpolate`` to float rounding.
    """
    scale = np.float32(in_len) / np.float32(out_len)
    src = scale * (np.arange(out_len, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    l1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    l0 = np.float32(1.0) - l1
    i1 = np.minimum(i0 + 1, in_len - 1)
    mat = np.zeros((out_len, in_len), np.float64)
    rows = np.arange(out_len)
    np.add.at(mat, (rows, i0), l0.astype(np.float64))
    np.add.at(mat, (rows, i1), l1.astype(np.float64))
    return mat


class _Blocked1D:
    """A banded (out, in) resize matrix applied block by block as small dense matmuls."""

    def __init__(self, mat: np.ndarray, device: torch.device, block: int = 128) -> None:
        nz = np.flatnonzero(mat.any(axis=0))
        self.lo, self.hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 1)
        self.out_len = mat.shape[0]
        self.blocks: list[tuple[int, int, int, int, torch.Tensor]] = []
        for o0 in range(0, self.out_len, block):
            o1 = min(self.out_len, o0 + block)
            cols = np.flatnonzero(mat[o0:o1].any(axis=0))
            a, b = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (self.lo, self.lo + 1)
            w_t = torch.tensor(mat[o0:o1, a:b].T, dtype=torch.float32, device=device)
            self.blocks.append((o0, o1, a - self.lo, b - self.lo, w_t.contiguous()))

    def apply_last(self, x: torch.Tensor, scratch: Scratch | None = None,
                   name: str = "") -> torch.Tensor:
        """Resize the last axis of ``x`` (..., hi - lo) (already cut to [lo, hi)) to out_len.

        With ``scratch`` the result is its buffer ``name`` (the same values).
        """
        shape = (*x.shape[:-1], self.out_len)
        out = x.new_empty(shape) if scratch is None else scratch.take(name, shape, x)
        for o0, o1, a, b, w_t in self.blocks:
            out[..., o0:o1] = torch.matmul(x[..., a:b], w_t)
        return out


class LowResUpsampler:
    """Low-res logits in the padded-square frame -> logits at the original image size.

    The same geometry as ``upsample_logits`` and the official ``Sam.postprocess_masks``
    (bilinear to the padded square, crop the valid region, bilinear to the original size), done
    without a padded-square intermediate:

    - output no larger than the valid region (the usual case): both resizes are folded into one
      separable linear operator per axis, applied as banded matmuls to the low-res rows and
      columns that reach the valid region (agrees with ``F.interpolate`` to ~1e-6);
    - larger output (big photos): the first resize runs only over the valid region (same source
      positions, hence the same values as the official code), then one ``F.interpolate``.

    Args:
        low_res_size: (h, w) of the logits (256x256 for SAM, 128x128 for a 512-px model).
        pad_size: side of the padded square encoder input.
        input_size: (ih, iw) valid region of the padded input.
        original_size: (H, W) output size in pixels.
        device: where the operator's matrices live (the logits' device).
    """

    def __init__(
        self,
        low_res_size: tuple[int, int],
        pad_size: int,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> None:
        h, w = (int(v) for v in low_res_size)
        ih, iw = (int(v) for v in input_size)
        oh, ow = (int(v) for v in original_size)
        if min(h, w, ih, iw, oh, ow, pad_size) <= 0 or ih > pad_size or iw > pad_size:
            raise ValueError(
                f"bad upsampling geometry: low_res {low_res_size}, pad {pad_size}, "
                f"input {input_size}, original {original_size}"
            )
        self.low_res_size = (h, w)
        self.original_size = (oh, ow)
        self.input_size = (ih, iw)
        self.pad_size = int(pad_size)
        self._two_stage = oh * ow > ih * iw and pad_size % h == 0 and pad_size % w == 0
        if self._two_stage:
            ky, kx = pad_size // h, pad_size // w
            # low-res rows/cols whose bilinear footprint reaches the valid region
            self._hv = min(h, math.ceil(ih / ky) + 1)
            self._wv = min(w, math.ceil(iw / kx) + 1)
            self._mid = (self._hv * ky, self._wv * kx)
            return
        dev = torch.device(device)
        my = _bilinear_matrix(oh, ih) @ _bilinear_matrix(pad_size, h)[:ih]
        mx = _bilinear_matrix(ow, iw) @ _bilinear_matrix(pad_size, w)[:iw]
        self._y = _Blocked1D(my, dev)
        self._x = _Blocked1D(mx, dev)

    def _check(self, logits: torch.Tensor) -> None:
        if logits.ndim != 3 or tuple(logits.shape[-2:]) != self.low_res_size:
            h, w = self.low_res_size
            raise ValueError(f"logits must be (C, {h}, {w}), got {tuple(logits.shape)}")

    def transposed(self, logits: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        """(C, h, w) low-res logits -> (C, W, H) float32 logits, each mask column-major.

        Column-major masks are what COCO RLE encodes. The result may be a transposed view.
        With ``scratch`` the result and the intermediates live in its buffers (the same values):
        the result is valid until the next call with the same ``scratch``.
        """
        self._check(logits)
        if self._two_stage:
            return self(logits, scratch).transpose(1, 2)
        x = logits.float()[:, self._y.lo : self._y.hi, self._x.lo : self._x.hi]
        c, rows = x.shape[0], x.shape[1]
        width = self._x.out_len
        if scratch is None:
            x = self._x.apply_last(x)  # (C, rows, W)
            return self._y.apply_last(x.transpose(1, 2).contiguous())  # (C, W, H)
        mid = self._x.apply_last(x, scratch, "up_x")  # (C, rows, W)
        mid_t = scratch.take("up_xt", (c, width, rows), x)
        mid_t.copy_(mid.transpose(1, 2))
        return self._y.apply_last(mid_t, scratch, "up")  # (C, W, H)

    def __call__(self, logits: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
        """(C, h, w) low-res logits -> (C, H, W) float32 logits at the original size.

        ``scratch``: as in :meth:`transposed`.
        """
        self._check(logits)
        if not self._two_stage:
            return self.transposed(logits, scratch).transpose(1, 2)
        ih, iw = self.input_size
        x = logits.float()[:, None, : self._hv, : self._wv]
        if scratch is None:
            x = F.interpolate(x, self._mid, mode="bilinear", align_corners=False)[..., :ih, :iw]
            x = F.interpolate(x, self.original_size, mode="bilinear", align_corners=False)
            return x[:, 0]
        c = x.shape[0]
        mid = _resize_into(x, self._mid, scratch.take("up_mid", (c, 1, *self._mid), x))
        up = scratch.take("up", (c, 1, *self.original_size), x)
        return _resize_into(mid[..., :ih, :iw], self.original_size, up)[:, 0]


class Scratch:
    """Reusable scratch tensors for a loop over chunks of full-size masks.

    A chunk's full-size temporaries are tens of MB. Allocated afresh for every chunk, glibc
    maps each one from the OS and the kernel zeroes every page on first touch: an automatic
    mask run on a 640 x 480 photo spent more than a third of its time in such page faults
    (half at 2 MP). Buffers taken from a ``Scratch`` are allocated once, on the first
    chunk that needs them (or a larger one), and reused by the later chunks.

    ``take`` returns a view of a buffer: it is valid until the next ``take`` of the same name.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: Sequence[int], like: torch.Tensor,
             dtype: torch.dtype | None = None) -> torch.Tensor:
        """An uninitialised (contiguous) tensor of ``shape`` on ``like``'s device, of ``dtype``
        (default: ``like``'s)."""
        dtype = like.dtype if dtype is None else dtype
        n = math.prod(int(v) for v in shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != like.device:
            self._bufs.pop(name, None)  # free the old buffer before the larger one is made
            buf = torch.empty(n, dtype=dtype, device=like.device)
            self._bufs[name] = buf
        return buf[:n].view(tuple(int(v) for v in shape))

    def clear(self) -> None:
        """Free every buffer."""
        self._bufs.clear()


def scratch_like(scratch: Scratch, name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A ``scratch`` tensor of ``t``'s shape and ``dtype`` laid out in memory as ``t`` is when
    ``t`` is contiguous or a view with its last two axes swapped (as the transposed masks are),
    so that an elementwise op from ``t`` into it runs over both in memory order."""
    if t.ndim >= 2 and not t.is_contiguous() and t.transpose(-1, -2).is_contiguous():
        shape = (*t.shape[:-2], t.shape[-1], t.shape[-2])
        return scratch.take(name, shape, t, dtype).transpose(-1, -2)
    return scratch.take(name, t.shape, t, dtype)


def count_true(masks: torch.Tensor, scratch: Scratch) -> torch.Tensor:
    """(C,) int32 number of True pixels of each of the (C, A, B) bool ``masks``.

    ``masks.sum(dim=(1, 2), dtype=torch.int32)`` casts the whole chunk to a fresh int32 tensor
    first (4 bytes a pixel, page-faulted anew on every call); here the cast goes into a reused
    ``scratch`` buffer. The counts are the same.
    """
    count = scratch_like(scratch, "count", masks, torch.int32)
    count.copy_(masks)
    return count.sum(dim=(1, 2), dtype=torch.int32)


def _resize_into(x: torch.Tensor, size: tuple[int, int], out: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` written into ``out``.

    The same kernel that ``F.interpolate`` calls (its out= variant, with no scale factors, as
    ``F.interpolate`` passes for a given size), hence the same values; where that private
    signature is missing, ``F.interpolate``'s result is copied. (torch's type stubs list only
    the form that ``F.interpolate`` uses; the out= form has been in every supported release.)
    """
    try:
        return torch._C._nn.upsample_bilinear2d(  # type: ignore[call-arg]
            x, size, False, None, None, out=out)
    except (TypeError, AttributeError):
        out.copy_(F.interpolate(x, size, mode="bilinear", align_corners=False))
        return out


# --------------------------------------------------------------------------- memory
#: Crops of at least this many pixels call :func:`trim_heap` (``composer.allocator``) after
#: each chunk of masks.
TRIM_PIXELS = 4_000_000


# --------------------------------------------------------------------------- masks
def mask_boxes_transposed(masks_t: torch.Tensor) -> torch.Tensor:
    """Inclusive XYXY boxes of column-major boolean masks, as the official ``batched_mask_to_box``.

    Args:
        masks_t: (C, W, H) bool masks (x first).

    Returns:
        (C, 4) int64 boxes (x0, y0, x1, y1) with x1, y1 the last covered pixel; (0, 0, 0, 0)
        for an empty mask.
    """
    c, w, h = masks_t.shape
    if c == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks_t.device)
    cols = masks_t.any(dim=2)  # (C, W)
    rows = masks_t.any(dim=1)  # (C, H)
    xs = torch.arange(w, device=masks_t.device)
    ys = torch.arange(h, device=masks_t.device)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    x0 = torch.where(cols, xs, w).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    y0 = torch.where(rows, ys, h).amin(dim=1)
    out = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~cols.any(dim=1)
    out[empty] = 0
    return out


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """Indices of the boxes kept by NMS, best score first (the official box NMS).

    Inclusive boxes of zero width or height (a one-row or one-column mask, or an empty one)
    have an IoU of 0/0 with every box, so the official NMS never suppresses them: a 7 x 1 image
    kept 900 copies of one mask. Such boxes alone are compared once more, as pixel boxes
    (x1 + 1, y1 + 1), with the better boxes kept; other boxes are kept as officially.
    """
    keep = batched_nms(boxes.float(), scores.float(), torch.zeros(len(boxes)), iou_threshold=thresh)
    kept = boxes[keep].float()
    flat = torch.nonzero((kept[:, 2] <= kept[:, 0]) | (kept[:, 3] <= kept[:, 1])).flatten()
    if not len(flat):
        return keep
    pixel = kept + torch.tensor([0.0, 0.0, 1.0, 1.0], device=kept.device)
    drop = torch.zeros(len(keep), dtype=torch.bool, device=kept.device)
    for j in flat.tolist():
        if j and bool(((box_iou(pixel[j : j + 1], pixel[:j])[0] > thresh) & ~drop[:j]).any()):
            drop[j] = True
    return keep[~drop]


def boxes_near_crop_edge(
    boxes: torch.Tensor,
    crop_box: Sequence[int],
    image_box: Sequence[int],
    atol: float = CROP_EDGE_ATOL,
) -> torch.Tensor:
    """(C,) bool: which boxes (crop frame) touch an inner edge of the crop (not an image edge)."""
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    full = torch.as_tensor(image_box, dtype=torch.float32, device=boxes.device)
    shifted = boxes.float() + crop[[0, 1, 0, 1]]
    near_crop = torch.isclose(shifted, crop[None], atol=atol, rtol=0)
    near_image = torch.isclose(shifted, full[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def encode_rles_transposed(
    masks_t: np.ndarray, crop_box: Sequence[int], image_size: tuple[int, int]
) -> list[dict]:
    """COCO compressed RLEs of column-major crop masks placed into the full image.

    Args:
        masks_t: (C, cw, ch) bool or uint8 masks of the crop, column-major (x first).
        crop_box: XYXY crop box in image pixels; (cw, ch) must equal its size.
        image_size: (H, W) of the full image.

    Returns:
        C RLE dicts ``{"size": [H, W], "counts": bytes}``.
    """
    c = masks_t.shape[0]
    if c == 0:
        return []
    height, width = image_size
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    m = (
        np.ascontiguousarray(masks_t).view(np.uint8)
        if masks_t.dtype == bool
        else np.ascontiguousarray(masks_t, np.uint8)
    )
    if (x0, y0, x1, y1) != (0, 0, width, height):
        full = np.zeros((c, width, height), np.uint8)
        full[:, x0:x1, y0:y1] = m
        m = full
    # (C, W, H) C-order is (H, W, C) Fortran order: the layout pycocotools encodes directly.
    return mask_utils.encode(m.transpose(2, 1, 0))


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes or drop islands smaller than ``area_thresh`` pixels (8-connectivity).

    Same rules as the official helper: in ``"islands"`` mode, when every component is small
    the largest one is kept; in ``"holes"`` mode the background around the mask counts as a hole
    when it is small.

    Args:
        mask: (H, W) bool mask (any nonzero value of another dtype is foreground).
        area_thresh: components (or holes) with fewer pixels are removed (filled).
        mode: ``"holes"`` or ``"islands"``.

    Returns:
        (new (H, W) bool mask, whether it changed); a mask of no pixels comes back unchanged.

    Raises:
        ValueError: an unknown ``mode``, or a mask that is not 2-D.
    """
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)  # 0/255 masks: ``True ^ 255`` is no complement
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if mask.size == 0:  # OpenCV's connected components crash on an empty image
        return mask, False
    holes = mode == "holes"
    working = (holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    fill = np.zeros(n_labels, bool)
    fill[0] = True
    fill[small] = True
    if not holes:
        fill = ~fill
        if not fill.any():
            fill[int(np.argmax(sizes)) + 1] = True
    return fill[regions], True
