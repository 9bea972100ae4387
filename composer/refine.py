"""Refinement and ranking of a segmenter's binary masks with the image as guide.

:class:`GrabCutRefine` refines a binary mask: GrabCut (Rother, Kolmogorov and Blake,
SIGGRAPH 2004) is allowed to relabel only a band around the mask's boundary, with colour models
learnt from the mask's inside and surroundings, so a coarse but well-placed mask gets the
image's own boundary without the object's extent changing.

:class:`ContrastRank` ranks a prompt's several masks by predicted IoU plus the colour contrast
at their boundary.

The guided filter of probability maps (:class:`GuidedFilter`, :func:`box_mean`) lives in
:mod:`composer.guided_filter` and is importable from here too.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from .guided_filter import GuidedFilter as GuidedFilter
from .guided_filter import box_mean as box_mean

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrabCutRefine:
    """Snap a mask's boundary to the image's edges: GrabCut inside a band around it.

    Pixels farther than the band's half-width inside the mask are fixed foreground, farther
    outside it fixed background; GrabCut relabels the band from colour models of both sides
    and a contrast-sensitive smoothness term. Clicks are fixed too: a small disk of foreground
    at each positive click and of background at each negative one. The work is done in the
    mask's bounding box grown by the band, so the cost follows the object, not the image.

    Attributes:
        band: half-width of the relabelled band, in pixels of an image whose longest side is
            ``ref_size`` (scaled to the image; at least 2 pixels).
        iters: GrabCut iterations (colour-model re-estimations); 1-2 is usually enough.
        ref_size: the longest side ``band`` refers to (512: composer_tiny's input side).
        seed: seed of OpenCV's random generator for GrabCut's k-means initialisation, set
            before every call so a mask is always refined the same way.
        max_side: an image whose longest side exceeds this is refined at that scale (the
            mask's padded box and band scaled down, GrabCut run there, and only the band's
            pixels taken back from the upsampled result), so a 12-megapixel photo costs about
            what a 1024-px one does; 0 always works at full resolution. Images up to this size
            are refined exactly as without it.
    """

    band: float = 16.0
    iters: int = 2
    ref_size: int = 512
    seed: int = 0
    max_side: int = 1024

    def __post_init__(self) -> None:
        """Check the settings.

        Raises:
            ValueError: ``band`` not a finite number > 0, ``iters`` not a whole number >= 1
                (OpenCV refuses a float count, e.g. ``2.0`` read back from JSON, and the
                masks were then silently left unrefined), ``ref_size`` < 1 or ``max_side`` < 0.
        """
        if not 0 < self.band < float("inf"):
            raise ValueError(f"band must be a finite number > 0, got {self.band}")
        if isinstance(self.iters, bool) or not (self.iters >= 1 and float(self.iters).is_integer()):
            raise ValueError(f"iters must be a whole number >= 1, got {self.iters!r}")
        if self.ref_size < 1:
            raise ValueError(f"ref_size must be >= 1, got {self.ref_size}")
        if self.max_side < 0:
            raise ValueError(f"max_side must be >= 0, got {self.max_side}")

    def band_pixels(self, size: tuple[int, int]) -> int:
        """The band's half-width in pixels of an image of ``size`` (H, W)."""
        return max(2, int(round(self.band * max(size) / self.ref_size)))

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """Refined copy of ``mask``.

        Args:
            image: (H, W, 3) uint8 RGB (or (H, W) grey) image the mask belongs to.
            mask: (H, W) bool mask.
            points: optional (K, 2) XY clicks in image pixels; ``labels`` (K,) 1 positive,
                0 negative, -1 ignored. Clicks outside the image are ignored.

        Returns:
            (H, W) bool. An empty or full mask, or one GrabCut cannot model (e.g. a band with
            no colour on one side), comes back unchanged.
        """
        out = np.array(mask, dtype=bool)
        self.refine_inplace(image, out, points, labels)
        return out

    def refine_inplace(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> bool:
        """Refine the writable (H, W) bool ``mask`` in place (only inside its padded bounding
        box); the arguments are those of ``__call__``. Returns whether GrabCut ran."""
        if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.ndim != 2:
            raise ValueError(
                f"mask must be an (H, W) bool array, got {getattr(mask, 'shape', None)}"
            )
        if not mask.flags.writeable:
            raise ValueError(
                "mask is read-only; refine_inplace writes into it (use __call__ for a copy)"
            )
        m = mask
        img = np.asarray(image)
        # a grey image is made RGB only inside the box worked on (``_crop``), not all of it
        shape = (*img.shape, 3) if img.ndim == 2 else img.shape
        if len(shape) != 3 or shape[2] != 3 or shape[:2] != m.shape:
            raise ValueError(f"image {shape} does not match mask {m.shape} (need (H, W, 3))")
        if img.dtype != np.uint8:
            raise ValueError(f"image must be uint8, got {img.dtype}")
        if not m.any() or m.all():
            return False
        pts = labs = None
        if points is not None and labels is not None:
            pts = np.asarray(points, np.float64).reshape(-1, 2)
            labs = np.asarray(labels).reshape(-1)
            if len(pts) != len(labs):
                raise ValueError(f"{len(pts)} points but {len(labs)} labels")
        h, w = m.shape
        bw = self.band_pixels((h, w))
        y0, y1, x0, x1 = _padded_bbox(m, 3 * bw)
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
        if scale == 1.0:
            out = self._grabcut(
                _crop(img, y0, y1, x0, x1), m[y0:y1, x0:x1], bw, pts, labs, (x0, y0)
            )
            if out is None:
                return False
            m[y0:y1, x0:x1] = out[0]
            return True
        # A large image: GrabCut on the crop scaled to max_side (its band scaled alike), and
        # only the band's pixels taken from the upsampled result; the rest keeps full resolution.
        ch, cw = y1 - y0, x1 - x0
        sw, sh = max(1, int(round(cw * scale))), max(1, int(round(ch * scale)))
        crop = m[y0:y1, x0:x1]
        small_img = cv2.resize(_crop(img, y0, y1, x0, x1), (sw, sh), interpolation=cv2.INTER_AREA)
        small = cv2.resize(crop.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) >= 0.5
        if not small.any() or small.all():
            return False
        small_pts = None if pts is None else (pts - (x0, y0)) * (sw / cw, sh / ch)
        out = self._grabcut(
            small_img, small, max(2, int(round(bw * scale))), small_pts, labs, (0, 0)
        )
        if out is None:
            return False
        refined, band = out
        up = cv2.resize(refined.astype(np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR) >= 0.5
        # nearest-neighbour resizing keeps the 0/1 values, so the result reads as bool as it is,
        # and copyto takes the band's labels without gathering them into more arrays
        up_band = cv2.resize(band.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_NEAREST)
        np.copyto(crop, up, where=up_band.view(bool))
        return True

    def _grabcut(
        self,
        img: np.ndarray,
        crop_mask: np.ndarray,
        bw: int,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        origin: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """GrabCut in a band of half-width ``bw`` around ``crop_mask`` (H, W bool) of the
        (H, W, 3) uint8 RGB ``img``; ``points`` are in the frame whose (0, 0) is ``origin`` of
        the crop. Returns (refined mask, the pixels whose label may differ from ``crop_mask``:
        the band GrabCut could relabel and the click disks), or None when it did not run."""
        # Labels: GC_BGD 0, GC_FGD 1, GC_PR_BGD 2, GC_PR_FGD 3, so a label is foreground (sure
        # or probable) when odd and in the band (probable) when >= 2; the label maps are
        # uint8, none of them int64 or a gathered copy (memory: a few bytes per crop pixel
        # besides GrabCut's own)
        crop = crop_mask.astype(np.uint8)
        if crop_mask.dtype != bool:
            crop = (crop > 0).view(np.uint8)  # 0/1: the same erosion and dilation where > 0
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * bw + 1, 2 * bw + 1))
        tri = crop + np.uint8(cv2.GC_PR_BGD)  # GC_PR_FGD (3) inside the mask, GC_PR_BGD outside
        inner = cv2.erode(crop, kernel, borderType=cv2.BORDER_REPLICATE)
        tri[inner.view(bool)] = cv2.GC_FGD  # erosion and dilation of 0/1 are 0/1
        del inner
        outer = cv2.dilate(crop, kernel, borderType=cv2.BORDER_REPLICATE)
        del crop
        tri[outer == 0] = cv2.GC_BGD
        del outer
        clicked = None
        if points is not None and labels is not None:
            radius = max(2, bw // 3)
            ox, oy = origin
            ch, cw = tri.shape
            for (x, y), lab in zip(points, labels, strict=True):
                if lab not in (0, 1) or not (ox <= x < ox + cw and oy <= y < oy + ch):
                    continue
                if clicked is None:
                    clicked = np.zeros_like(tri)
                value = cv2.GC_FGD if lab == 1 else cv2.GC_BGD
                cv2.circle(tri, (int(x) - ox, int(y) - oy), radius, int(value), -1)
                cv2.circle(clicked, (int(x) - ox, int(y) - oy), radius, 1, -1)
        fg = (tri & 1).view(bool)  # GC_FGD or GC_PR_FGD
        if fg.all() or not fg.any():
            return None
        del fg
        if (img.max(axis=(0, 1)) == img.min(axis=(0, 1))).all():
            # one colour throughout: nothing to snap to, and GrabCut gave the whole band to
            # the background (the mask shrank by the band's width)
            return None
        # the click disks are fixed, not in the band, yet may differ from the mask (a negative
        # click inside it, a positive one outside): a caller that copies back only what may have
        # changed (the scaled path of refine_inplace) needs them too
        band = tri >= cv2.GC_PR_BGD  # GC_PR_BGD or GC_PR_FGD
        if clicked is not None:
            band |= clicked.view(bool)
            del clicked
        bgr = np.ascontiguousarray(img[..., ::-1])
        bgd_model = np.zeros((1, 65), np.float64)
        fgd_model = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(self.seed)
        try:
            cv2.grabCut(
                bgr, tri, (0, 0, 0, 0), bgd_model, fgd_model, int(self.iters), cv2.GC_INIT_WITH_MASK
            )
        except cv2.error as exc:  # too few samples for a colour model: keep the mask
            logger.debug("GrabCut refinement skipped: %s", exc)
            return None
        del bgr
        refined = np.bitwise_and(tri, 1, out=tri).view(bool)  # GC_FGD or GC_PR_FGD
        if not refined.any():  # no sure foreground (a mask thinner than the band) and GrabCut
            return None  # relabelled every pixel: keep the model's mask rather than none
        return refined, band


def _padded_bbox(mask: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the bounding box of a non-empty (H, W) bool mask grown by ``pad``
    pixels on every side, clipped to the image (end exclusive)."""
    h, w = mask.shape
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return (
        max(0, int(ys[0]) - pad),
        min(h, int(ys[-1]) + pad + 1),
        max(0, int(xs[0]) - pad),
        min(w, int(xs[-1]) + pad + 1),
    )


def _crop(image: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """(y1 - y0, x1 - x0, 3) RGB pixels of that box of an (H, W, 3) image (a view), or of an
    (H, W) grey one (its box repeated into three channels, not the whole image)."""
    box = image[y0:y1, x0:x1]
    return np.repeat(box[..., None], 3, axis=2) if box.ndim == 2 else box


#: Threads that refine the masks of one ``predict`` call side by side (OpenCV's GrabCut
#: releases the GIL; each mask is refined alone, its random generator seeded in its own
#: thread, so the masks do not depend on this number). 1 refines in the calling thread.
REFINE_THREADS = max(1, min(4, os.cpu_count() or 1))
_POOLS: dict[int, ThreadPoolExecutor] = {}  # by thread count, for the process _POOLS_PID
_POOLS_PID = 0
_POOL_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """The shared refinement pool of ``threads`` threads; new ones in a forked child (whose
    copies of the parent's pools have no threads).

    A pool is never shut down while this process runs: another thread may hold it between
    this call and its ``submit`` (shutting the old pool down when the count changed made a
    concurrent ``predict`` with another number of masks fail with "cannot schedule new
    futures after shutdown"). Counts are at most ``REFINE_THREADS`` unless asked for, so the
    pools are few."""
    global _POOLS_PID
    pid = os.getpid()
    with _POOL_LOCK:
        if _POOLS_PID != pid:
            _POOLS.clear()  # the parent's pools: their threads did not survive the fork
            _POOLS_PID = pid
        pool = _POOLS.get(threads)
        if pool is None:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="grabcut-refine")
            _POOLS[threads] = pool
        return pool


def refine_masks(
    refiner: GrabCutRefine,
    image: np.ndarray,
    masks: np.ndarray,
    points: list[np.ndarray | None] | None = None,
    labels: list[np.ndarray | None] | None = None,
    threads: int | None = None,
) -> None:
    """Refine each (H, W) bool mask of the writable (N, H, W) ``masks`` in place with
    ``refiner``, mask ``i`` with ``points[i]`` / ``labels[i]`` (or none), on up to ``threads``
    threads (default :data:`REFINE_THREADS`). The result is the same whatever ``threads``."""
    n = len(masks)
    pts = [None] * n if points is None else list(points)
    lbl = [None] * n if labels is None else list(labels)
    if len(pts) != n or len(lbl) != n:
        raise ValueError(f"{n} masks but {len(pts)} point sets and {len(lbl)} label sets")
    workers = min(n, REFINE_THREADS if threads is None else max(1, int(threads)))
    if workers <= 1:
        for i in range(n):
            refiner.refine_inplace(image, masks[i], pts[i], lbl[i])
        return
    jobs = [
        _pool(workers).submit(refiner.refine_inplace, image, masks[i], pts[i], lbl[i])
        for i in range(n)
    ]
    for job in jobs:
        job.result()  # re-raises a worker's error here


@dataclass(frozen=True)
class ContrastRank:
    """Rank a prompt's several masks by predicted IoU plus the colour contrast at their boundary.

    A first click's three masks (whole object, part, sub-part) get predicted IoUs from the
    model's IoU head. A small model trained on few images ranks them poorly: composer_tiny's
    head under-rates the whole object on GrabCut (its top mask is .07-.10 below the best of
    the three; ``recipes/first_click_slots.py``). A mask whose boundary separates two different
    colour distributions is more likely an object's; a part's cut through a uniform surface is
    not. The contrast is one minus the Bhattacharyya coefficient of the Lab colour histograms
    (``bins`` per channel) of the mask's pixels within ``band`` of its boundary and the pixels
    outside it within ``band``: 0 for the same colours on both sides, 1 for disjoint ones. The
    ranking score is ``predicted IoU + weight * contrast``.

    Attributes:
        weight: weight of the contrast in the ranking score.
        band: width of the two strips compared, in pixels of an image whose longest side is
            ``ref_size`` (scaled to the image; at least 2 pixels).
        ref_size: the longest side ``band`` refers to.
        bins: histogram bins per Lab channel.
        min_pixels: fewer pixels than this on either side gives a contrast of 0.
        max_side: ``contrasts`` of an image whose longest side exceeds this are measured on
            the image and masks scaled to it (the strips scale alike); 0: full resolution.
    """

    weight: float = 2.0
    band: float = 16.0
    ref_size: int = 512
    bins: int = 8
    min_pixels: int = 10
    max_side: int = 1024

    def __post_init__(self) -> None:
        """Check the settings.

        Raises:
            ValueError: a setting out of range (``band`` must be finite: an infinite one
                overflowed in ``band_pixels``).
        """
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight}")
        if not 0 < self.band < float("inf"):
            raise ValueError(f"band must be a finite number > 0, got {self.band}")
        if self.ref_size < 1:
            raise ValueError(f"ref_size must be >= 1, got {self.ref_size}")
        if not 2 <= self.bins <= 64:
            raise ValueError(f"bins must be in [2, 64], got {self.bins}")
        if self.max_side < 0:
            raise ValueError(f"max_side must be >= 0, got {self.max_side}")

    def band_pixels(self, size: tuple[int, int]) -> int:
        """The strips' width in pixels of an image of ``size`` (H, W)."""
        return max(2, int(round(self.band * max(size) / self.ref_size)))

    def lab(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) histogram bin indices per Lab channel of an RGB uint8 (or grey) image."""
        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        lab = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB)
        return (lab.astype(np.int32) * self.bins) // 256

    def contrast(self, lab_bins: np.ndarray, mask: np.ndarray) -> float:
        """The contrast of one (H, W) bool ``mask`` given ``lab(image)``."""
        m = np.asarray(mask, dtype=bool)
        if m.shape != lab_bins.shape[:2]:
            raise ValueError(f"mask {m.shape} does not match the image {lab_bins.shape[:2]}")
        if not m.any() or m.all():
            return 0.0
        bw = self.band_pixels(m.shape)
        y0, y1, x0, x1 = _padded_bbox(m, bw + 1)
        crop = m[y0:y1, x0:x1]
        c8 = crop.astype(np.uint8)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * bw + 1, 2 * bw + 1))
        # outside the image counts as neither side: dilation and erosion ignore the border
        ring = (cv2.dilate(c8, kernel) > 0) & ~crop
        inner = crop & ~(cv2.erode(c8, kernel) > 0)
        if ring.sum() < self.min_pixels or inner.sum() < self.min_pixels:
            return 0.0
        q = lab_bins[y0:y1, x0:x1]
        flat = (q[..., 0] * self.bins + q[..., 1]) * self.bins + q[..., 2]
        n = self.bins**3
        hi = np.bincount(flat[inner], minlength=n).astype(np.float64)
        ho = np.bincount(flat[ring], minlength=n).astype(np.float64)
        coefficient = float(np.sqrt(hi / hi.sum() * (ho / ho.sum())).sum())
        return float(min(1.0, max(0.0, 1.0 - coefficient)))

    def contrasts(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(N,) float32 contrasts of the (N, H, W) bool ``masks`` of ``image`` (scaled to
        ``max_side`` first when the image is larger)."""
        img = np.asarray(image)
        h, w = img.shape[:2]
        if np.ndim(masks) != 3 or tuple(np.shape(masks)[1:]) != (h, w):
            raise ValueError(
                f"masks must be (N, {h}, {w}) for the {w}x{h} image, got {np.shape(masks)}"
            )
        if not self.max_side or max(h, w) <= self.max_side:
            lab_bins = self.lab(img)
            return np.array([self.contrast(lab_bins, m) for m in masks], np.float32)
        scale = self.max_side / max(h, w)
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        lab_bins = self.lab(
            cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_AREA)
        )
        out = []
        for m in masks:
            small = cv2.resize(np.asarray(m, np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
            out.append(self.contrast(lab_bins, small))
        return np.array(out, np.float32)
