"""Zero-shot edge detection with a promptable segmenter (SAM paper, Appendix D.2).

Procedure: a 16x16 grid of foreground points gives 768 masks (3 per point); no predicted-IoU or
stability filtering; redundant masks are removed by box NMS (the paper does not state the
threshold: a free parameter, to be chosen on BSDS500 *val*); a Sobel filter is applied to each
remaining mask's unthresholded probability map (sigmoid of the upsampled logits) and zeroed
away from the mask's outer boundary pixels; the pixel-wise maximum over masks is normalised
linearly to [0, 1] and thinned by edge NMS.

Edge NMS is a port of Dollar's ``edgesNms`` (structured-edge toolbox; also pyEdgeEval's
``fast_nms``): the map is smoothed with ``convTri(1)``, orientation comes from the second
derivatives of ``convTri(4)`` of it, and a pixel survives if it is not smaller than its two
neighbours (bilinearly interpolated) across the edge, times a small margin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from composer.allocator import trim_heap
from composer.amg_utils import TRIM_PIXELS, LowResUpsampler, Scratch
from composer.automatic import AmgConfig, AutomaticMaskGenerator
from composer.embedding import EmbeddingCache
from composer.guided_filter import GuidedFilter
from composer.structures import EdgeMap

from .base import TaskContext

logger = logging.getLogger(__name__)

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
#: Float32 probability maps upsampled at once (bounds transient memory).
_CHUNK_BYTES = 64 << 20
#: Pixels of the edge map compared at once by :func:`edge_nms` (bounds its temporaries).
_NMS_CHUNK_PIXELS = 1 << 20
#: Pixels of one mask's boundary region filtered at once by :func:`mask_boundary_edges`
#: (small bands also keep glibc's heap from holding freed scratch: 150 MB at 3 MP, not 400).
_BAND_PIXELS = 1 << 16


@dataclass(frozen=True)
class EdgeConfig:
    """Settings of SAM-style edge detection.

    Attributes:
        points_per_side: grid points per side (16 in the paper: 256 prompts, 768 masks).
        points_per_batch: prompts decoded per forward pass.
        box_nms_thresh: box IoU threshold of the mask NMS (not stated in the paper; 0.7 is the
            AMG default and the value of the public re-implementation; sweep it on BSDS val).
        boundary: which mask pixels keep their Sobel response: ``"outer"`` (pixels just outside
            the mask, the paper's "outer boundary pixels"), ``"inner"`` or ``"both"``.
        edge_nms: thin the normalised map with Dollar's edge NMS.
        nms_radius: NMS radius r (pixels compared on each side across the edge).
        nms_border: suppress responses within this many pixels of the image border (s).
        nms_margin: multiplier m of the centre value before comparing (conservative NMS).
        refine: edge-aware refinement of each mask's probability map before the Sobel filter,
            with a colour guided filter of the image
            (:class:`composer.guided_filter.GuidedFilter`; not in the paper): ``(radius, eps)``,
            ``"off"`` (the paper's procedure), or ``"auto"``: the segmenter's recommendation,
            its ``edge_refine`` attribute
            (composer_tiny's 64x64 masks put boundaries on an 8-pixel grid and carry a setting
            chosen on BSDS500 val; SAM carries none, so it runs the paper's procedure).
    """

    points_per_side: int = 16
    points_per_batch: int = 64
    box_nms_thresh: float = 0.7
    boundary: str = "outer"
    edge_nms: bool = True
    nms_radius: int = 1
    nms_border: int = 5
    nms_margin: float = 1.01
    refine: str | tuple[int, float] = "auto"

    def __post_init__(self) -> None:
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if not 0.0 <= self.box_nms_thresh <= 1.0:
            raise ValueError(f"box_nms_thresh must be in [0, 1], got {self.box_nms_thresh}")
        if self.boundary not in ("outer", "inner", "both"):
            raise ValueError(f"boundary must be 'outer', 'inner' or 'both', got {self.boundary!r}")
        if self.nms_radius < 1 or self.nms_border < 0 or not self.nms_margin > 0:  # NaN too
            raise ValueError(
                f"bad edge NMS settings r={self.nms_radius}, s={self.nms_border}, m={self.nms_margin}"
            )
        if isinstance(self.refine, str):
            if self.refine not in ("auto", "off"):
                raise ValueError(
                    f"refine must be 'auto', 'off' or (radius, eps), got {self.refine!r}"
                )
        else:
            _check_refine(self.refine)

    def refine_setting(self, segmenter: Any) -> tuple[int, float] | None:
        """(radius, eps) of the guided filter to apply for ``segmenter``, or None."""
        if self.refine == "off":
            return None
        if self.refine == "auto":
            rec = getattr(segmenter, "edge_refine", None)
            return None if rec is None else _check_refine(rec)
        return _check_refine(self.refine)

    def amg_config(self) -> AmgConfig:
        """The AMG settings of the procedure: no quality filters, no crops, logits kept."""
        return AmgConfig(
            points_per_side=self.points_per_side,
            points_per_batch=self.points_per_batch,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            box_nms_thresh=self.box_nms_thresh,
            crop_n_layers=0,
            multimask=True,
            keep_low_res_logits=True,
        )


def _check_refine(value: Any) -> tuple[int, float]:
    try:
        radius, eps = value
    except (TypeError, ValueError):
        raise ValueError(f"refine must be 'auto', 'off' or (radius, eps), got {value!r}") from None
    if int(radius) != radius or radius < 1 or not float(eps) > 0:
        raise ValueError(f"refine needs an integer radius >= 1 and eps > 0, got {value!r}")
    return int(radius), float(eps)


def parse_refine(text: str) -> str | tuple[int, float]:
    """``"auto"``, ``"off"`` or ``"R,EPS"`` / ``"R:EPS"`` (a command-line value) -> EdgeConfig.refine."""
    text = text.strip()
    if text in ("auto", "off"):
        return text
    parts = text.replace(":", ",").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        value = (int(parts[0]), float(parts[1]))
    except ValueError:
        raise ValueError(f"refine must be 'auto', 'off' or 'RADIUS,EPS', got {text!r}") from None
    return _check_refine(value)


class EdgeTask:
    """Edge map of an image from a promptable segmenter's automatic masks.

    Args:
        segmenter: any ``PromptableSegmenter``.
        config: settings (default :class:`EdgeConfig`).

    Call with a :class:`TaskContext` (uses its shared cache) or an image.
    """

    #: automatic masks are decoded without the segmenter's predict-time settings (mask
    #: refinement, flip TTA, contrast ranking); reports record them as not applied
    uses_predict_settings = False

    def __init__(self, segmenter: Any, config: EdgeConfig | None = None) -> None:
        self.segmenter = segmenter
        self.config = EdgeConfig() if config is None else config
        if not isinstance(self.config, EdgeConfig):
            raise TypeError(f"config must be an EdgeConfig, got {type(self.config).__name__}")

    @property
    def model_id(self) -> str:
        return str(self.segmenter.model_id)

    def __call__(self, context: TaskContext | Any) -> EdgeMap:
        """Edge map of ``context.image`` (or of an image given directly).

        Returns:
            EdgeMap with (H, W) float32 edges in [0, 1], original-image pixels; meta holds
            ``image_id``, ``model_id``, ``method``, ``n_masks`` (masks after NMS) and
            ``refine`` (the guided filter's (radius, eps), or None).
        """
        if not isinstance(context, TaskContext):
            from composer.io.image import load_image

            context = TaskContext(load_image(context), None, EmbeddingCache())
        cfg = self.config
        setting = cfg.refine_setting(self.segmenter)
        # embed first: the generator then takes the same embedding from the cache
        emb = context.cache.get(context.image, self.segmenter)
        amg = AutomaticMaskGenerator(self.segmenter, cfg.amg_config(), cache=context.cache)
        dets = amg.generate(context.image)
        height, width = context.image_size
        edges = np.zeros((height, width), np.float32)
        if len(dets):
            logits = torch.from_numpy(dets.extras["low_res_logits"])
            up = LowResUpsampler(
                (int(logits.shape[-2]), int(logits.shape[-1])),
                emb.pad_size,
                emb.input_size,
                emb.original_size,
            )
            thr = float(self.segmenter.mask_threshold)
            refine = None if setting is None else GuidedFilter(context.image, *setting)
            edges = mask_boundary_edges(logits, up, thr, cfg.boundary, refine)
            del refine  # the image statistics (60 bytes a pixel) are spent before the NMS
        peak = float(edges.max())
        if peak > 0:
            edges /= peak  # a fresh float32 map: in place, the same values as edges / peak
        if cfg.edge_nms and peak > 0:
            thin = edge_nms(edges, cfg.nms_radius, cfg.nms_border, cfg.nms_margin)
            del edges
            edges = np.clip(thin, 0, 1, out=thin)
            del thin
        meta = {
            "image_id": context.image_id,
            "model_id": self.model_id,
            "method": "sam-amg-sobel",
            "n_masks": len(dets),
            "refine": setting,
        }
        return EdgeMap(edges.astype(np.float32), meta)


@torch.inference_mode()
def mask_boundary_edges(
    logits: torch.Tensor,
    upsampler: LowResUpsampler,
    mask_threshold: float,
    boundary: str = "outer",
    refine: GuidedFilter | None = None,
) -> np.ndarray:
    """Pixel-wise max over masks of the Sobel magnitude of each mask's probability map,
    kept only on the mask's boundary pixels.

    Args:
        logits: (N, h, w) float32 low-res logits of the masks.
        upsampler: maps the low-res frame to the (H, W) image.
        mask_threshold: logit threshold that binarises a mask.
        boundary: ``"outer"`` (3x3 dilation minus the mask), ``"inner"`` (mask minus its 3x3
            erosion) or ``"both"``.
        refine: optional guided filter of the image: each probability map is refined with it
            before the Sobel filter, and the mask is the refined map above the threshold's
            probability.

    Returns:
        (H, W) float32 non-negative edge strength (not normalised).

    Memory: besides the output, one chunk of upsampled maps (at most ``_CHUNK_BYTES``, or one
    map) and its boolean masks, in buffers that every chunk reuses; the Sobel stage of each mask runs on its box in bands of rows
    (:func:`_max_boundary_sobel`), and the heap is trimmed after each chunk of a large image.
    The values are those of the whole-map computation.
    """
    height, width = upsampler.original_size
    out = torch.zeros((height, width))
    chunk = max(1, _CHUNK_BYTES // (4 * height * width))
    scratch = Scratch()  # each chunk's maps and masks reuse the first chunk's buffers
    for s in range(0, len(logits), chunk):
        up = upsampler(logits[s : s + chunk], scratch)[:, None]  # (C, 1, H, W)
        mask = scratch.take("mask", up.shape, up, torch.bool)
        # The sigmoid runs over whole maps as before: on a crop its vectorised and scalar code
        # paths would round some values differently. In place: the same values.
        if refine is not None:
            prob = _refine_maps(torch.sigmoid_(up), refine)
            torch.gt(prob, 1.0 / (1.0 + np.exp(-mask_threshold)), out=mask)
        else:
            torch.gt(up, mask_threshold, out=mask)
            prob = torch.sigmoid_(up)
        for i in range(len(prob)):
            _max_boundary_sobel(out, prob[i, 0], mask[i, 0], boundary)
        if height * width >= TRIM_PIXELS:
            trim_heap()  # glibc holds freed masks otherwise: 24 MP peaked at 0.48 GB, not 0.27
    return out.numpy()


def _max_boundary_sobel(
    out: torch.Tensor, prob: torch.Tensor, mask: torch.Tensor, boundary: str
) -> None:
    """``out = max(out, |Sobel(prob)| * boundary(mask))`` in place, for (H, W) float32 ``out``
    and ``prob`` and (H, W) bool ``mask``.

    Memory: only the mask's box grown by one pixel (where its boundary pixels lie) is
    computed, over bands of rows read with one pixel of context on each side inside the image.
    Every 3x3 neighbourhood is then the whole map's (or padded as the whole map's is at the
    image border), so each written value equals the whole-map one (``conv2d`` sums a pixel's
    taps in the same order whatever the input's size: the tests compare with the whole-map
    code). Outside the box the whole-map code multiplied a finite magnitude by False, giving
    0; an empty mask has no boundary pixel. The scratch is a few bands, not a dozen (H, W) maps.
    """
    height, width = mask.shape
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    if not len(rows):
        return
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    y0, y1 = max(0, int(rows[0]) - 1), min(height, int(rows[-1]) + 2)
    x0, x1 = max(0, int(cols[0]) - 1), min(width, int(cols[-1]) + 2)
    xa, xb = max(0, x0 - 1), min(width, x1 + 1)
    kx = _SOBEL_X[None, None]
    ky = _SOBEL_X.T.contiguous()[None, None]
    band = max(1, _BAND_PIXELS // (xb - xa))
    for r0 in range(y0, y1, band):
        r1 = min(r0 + band, y1)
        ya, yb = max(0, r0 - 1), min(height, r1 + 1)
        padded = F.pad(prob[None, None, ya:yb, xa:xb], (1, 1, 1, 1), mode="replicate")
        mag = F.conv2d(padded, kx).square_()
        mag += F.conv2d(padded, ky).square_()
        del padded
        mag.sqrt_()
        m = mask[None, None, ya:yb, xa:xb].float()
        keep = torch.zeros_like(m, dtype=torch.bool)
        if boundary in ("outer", "both"):
            keep |= (F.max_pool2d(m, 3, 1, 1) > 0) & (m == 0)
        if boundary in ("inner", "both"):
            keep |= (-F.max_pool2d(-m, 3, 1, 1) == 0) & (m > 0)
        del m
        mag.mul_(keep)
        dst = out[r0:r1, x0:x1]
        torch.maximum(dst, mag[0, 0, r0 - ya : r1 - ya, x0 - xa : x1 - xa], out=dst)


def _refine_maps(prob: torch.Tensor, refine: GuidedFilter, floor: float = 0.05) -> torch.Tensor:
    """Guided-filter (C, 1, H, W) probability maps in place, each only inside the box where it
    exceeds ``floor``, padded by the filter's reach (elsewhere the map is near zero and stays
    so); returns ``prob``."""
    height, width = prob.shape[-2:]
    pad = 2 * refine.radius + 2
    for i in range(len(prob)):
        above = prob[i, 0] > floor
        rows = torch.nonzero(above.any(dim=1)).flatten()
        if not len(rows):
            continue
        cols = torch.nonzero(above.any(dim=0)).flatten()
        y0, y1 = max(0, int(rows[0]) - pad), min(height, int(rows[-1]) + 1 + pad)
        x0, x1 = max(0, int(cols[0]) - pad), min(width, int(cols[-1]) + 1 + pad)
        window = prob[i, 0, y0:y1, x0:x1]
        window.copy_(refine(window, (y0, y1, x0, x1)).clamp_(0.0, 1.0))
    return prob


# --------------------------------------------------------------------------- edge NMS
def conv_tri(image: np.ndarray, r: int) -> np.ndarray:
    """Dollar's ``convTri``: separable triangle filter of radius r, symmetric padding.

    r <= 1 uses the [1 p 1] / (2 + p) kernel with p = 12 / r / (r + 2) - 2.
    """
    if r <= 0:
        return image
    if r <= 1:
        p = 12.0 / r / (r + 2) - 2.0
        kernel = np.array([1.0, p, 1.0]) / (2.0 + p)
    else:
        kernel = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float64)
        kernel /= (r + 1) ** 2
    out = ndimage.convolve1d(image, kernel, axis=0, mode="reflect")
    return ndimage.convolve1d(out, kernel, axis=1, mode="reflect")


def _interp(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    height, width = image.shape
    x = np.clip(x, 0, width - 1.001)
    y = np.clip(y, 0, height - 1.001)
    x0 = x.astype(np.int64)
    y0 = y.astype(np.int64)
    dx, dy = x - x0, y - y0
    return (
        image[y0, x0] * (1 - dx) * (1 - dy)
        + image[y0, x0 + 1] * dx * (1 - dy)
        + image[y0 + 1, x0] * (1 - dx) * dy
        + image[y0 + 1, x0 + 1] * dx * dy
    )


def edge_nms(edges: np.ndarray, r: int = 1, s: int = 5, m: float = 1.01) -> np.ndarray:
    """Non-maximum suppression of a soft edge map (Dollar's ``edgesNms``).

    Args:
        edges: (H, W) float edge strengths in [0, 1].
        r: radius: neighbours at distances 1..r on both sides across the edge are compared.
        s: responses within s pixels of the border fade linearly to 0.
        m: a pixel is suppressed if ``m * value`` is below an interpolated neighbour.

    Returns:
        (H, W) float64 thinned map (smoothed with ``convTri(1)`` first, as the original).
    """
    e = np.asarray(edges, np.float64)
    if e.ndim != 2:
        raise ValueError(f"edges must be (H, W), got shape {e.shape}")
    height, width = e.shape
    if height < 2 or width < 2:
        return e.copy()
    e = conv_tri(e, 1)
    ori = _orientation(e)
    # Memory: a 24-MP map holds ~20 float64 per-pixel temporaries in the comparisons below, so
    # they run over bands of rows; every value is computed as on the whole map.
    suppressed = np.zeros(e.shape, bool)
    band = max(1, _NMS_CHUNK_PIXELS // width)
    for y0 in range(0, height, band):
        ys, xs = np.nonzero(e[y0 : y0 + band])
        ys += y0
        val = e[ys, xs] * m
        cos, sin = np.cos(ori[ys, xs]), np.sin(ori[ys, xs])
        sup = np.zeros(len(ys), bool)
        for d in range(-r, r + 1):
            if d == 0:
                continue
            sup |= val < _interp(e, xs + d * cos, ys + d * sin)
        suppressed[ys[sup], xs[sup]] = True
    del ori
    out = e  # the comparisons are done: suppress and fade in place
    out[suppressed] = 0.0
    s = min(s, width // 2, height // 2)
    for i in range(s):
        f = i / s
        out[:, i] *= f
        out[:, width - 1 - i] *= f
        out[i, :] *= f
        out[height - 1 - i, :] *= f
    return out


def _orientation(e: np.ndarray) -> np.ndarray:
    """(H, W) float64 edge orientation in [0, pi) from the second derivatives of ``convTri(e, 4)``:
    ``mod(arctan(oyy * sign(-oxy) / (oxx + 1e-5)), pi)``. Four maps are alive at most (the
    whole-array expression holds ten): the derivatives reuse buffers and the rest runs in place,
    giving the same values."""
    ox = conv_tri(e, 4)
    oy = _gradient(ox, 0)
    _gradient(ox, 1, out=ox)
    oxx = _gradient(ox, 1, out=ox)
    oyy = _gradient(oy, 0)
    ori = _gradient(oy, 1, out=oy)  # oxy
    np.negative(ori, out=ori)
    np.sign(ori, out=ori)
    ori *= oyy
    del oyy
    oxx += 1e-5
    ori /= oxx
    del oxx, ox
    np.arctan(ori, out=ori)
    np.mod(ori, np.pi, out=ori)
    return ori


def _gradient(f: np.ndarray, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """``np.gradient(f, axis=axis)`` of a (H, W) float64 map, over bands of rows (each with a
    row of context on both sides) so its temporaries stay small; ``out`` may be ``f`` for
    ``axis=1`` (a row's derivative needs only that row)."""
    height, width = f.shape
    if out is None:
        out = np.empty_like(f)
    elif out is f and axis != 1:
        raise ValueError("only the axis=1 gradient can be taken in place")
    band = max(1, _NMS_CHUNK_PIXELS // width)
    for y0 in range(0, height, band):
        y1 = min(y0 + band, height)
        if axis == 1:
            out[y0:y1] = np.gradient(f[y0:y1], axis=1)
        else:
            lo, hi = max(y0 - 1, 0), min(y1 + 1, height)
            out[y0:y1] = np.gradient(f[lo:hi], axis=0)[y0 - lo : y1 - lo]
    return out
