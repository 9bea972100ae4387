"""Array operations behind the ``classic`` backend (no learned weights).

Everything here works in the *work frame*: the image resized so that its longest side equals
the backend's work size, pixel (row, col) = (y, x), top-left origin. Superpixel-level arrays are
indexed by superpixel label ``0..n-1``.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.segmentation import slic

logger = logging.getLogger(__name__)

# OpenCV's grabCut models have five Gaussian components: 5 weights, 5x3 means, 5x3x3 covariances.
_GMM_COMPONENTS = 5
# Added to every initial covariance (in squared 8-bit colour units) so that it is invertible.
_COV_FLOOR = 25.0


def work_shape(h: int, w: int, work_size: int) -> tuple[int, int]:
    """(h, w) of an image resized so that its longest side equals ``work_size``."""
    s = work_size / max(h, w)
    return max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to ``shape`` (h, w): area filter down, bilinear up."""
    h, w = shape
    if (h, w) == image.shape[:2]:
        return np.ascontiguousarray(image)
    down = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)


def edge_strength(lab: np.ndarray) -> np.ndarray:
    """Colour gradient magnitude of a smoothed Lab image, scaled so its 99th percentile is ~1.

    Args:
        lab: (h, w, 3) float32 CIE Lab image (L in [0, 100]).

    Returns:
        (h, w) float32, >= 0 (all zeros on a flat image).
    """
    smooth = cv2.GaussianBlur(lab, (0, 0), 1.0)
    mag2 = np.zeros(lab.shape[:2], np.float32)
    for c in range(3):
        mag2 += cv2.Sobel(smooth[..., c], cv2.CV_32F, 1, 0) ** 2
        mag2 += cv2.Sobel(smooth[..., c], cv2.CV_32F, 0, 1) ** 2
    mag = np.sqrt(mag2)
    return (mag / (float(np.percentile(mag, 99)) + 1e-6)).astype(np.float32)


def superpixels(image: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    """SLIC superpixels with consecutive labels.

    Args:
        image: (h, w, 3) uint8 RGB work image.

    Returns:
        (h, w) int32 labels ``0..n-1``.
    """
    labels = slic(
        image,
        n_segments=max(1, n_segments),
        compactness=compactness,
        start_label=0,
        channel_axis=-1,
    )
    _, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(labels.shape).astype(np.int32)


def superpixel_graph(
    labels: np.ndarray, lab: np.ndarray, edges: np.ndarray, edge_weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Region adjacency graph of the superpixels with geodesic step costs.

    The cost of stepping between two adjacent superpixels is their mean-Lab distance plus
    ``edge_weight`` times the mean edge strength along their shared boundary.

    Args:
        labels: (h, w) int32 superpixel labels ``0..n-1``.
        lab: (h, w, 3) float32 Lab image.
        edges: (h, w) float32 edge strength (see :func:`edge_strength`).
        edge_weight: weight of the boundary term.

    Returns:
        pairs: (E, 2) int64 adjacent label pairs (a < b).
        weights: (E,) float64 step costs, > 0.
        mean_lab: (n, 3) float32 mean Lab colour per superpixel.
    """
    n = int(labels.max()) + 1
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(flat, lab[..., c].ravel(), n) for c in range(3)], -1)
    mean_lab = sums / np.maximum(area, 1)[:, None]
    pa = np.concatenate([labels[:, :-1].ravel(), labels[:-1].ravel()])
    pb = np.concatenate([labels[:, 1:].ravel(), labels[1:].ravel()])
    pe = np.concatenate(
        [np.maximum(edges[:, :-1], edges[:, 1:]).ravel(), np.maximum(edges[:-1], edges[1:]).ravel()]
    )
    cross = pa != pb
    a = np.minimum(pa[cross], pb[cross]).astype(np.int64)
    b = np.maximum(pa[cross], pb[cross]).astype(np.int64)
    keys, inv = np.unique(a * n + b, return_inverse=True)
    length = np.bincount(inv).astype(np.float64)
    strength = np.bincount(inv, pe[cross].astype(np.float64)) / np.maximum(length, 1)
    pairs = np.stack([keys // n, keys % n], 1)
    colour = np.linalg.norm(mean_lab[pairs[:, 0]] - mean_lab[pairs[:, 1]], axis=1)
    # the small constant keeps a flat image's distances proportional to hop counts
    weights = colour + edge_weight * strength + 1e-3
    return pairs, weights, mean_lab.astype(np.float32)


def geodesic(n: int, pairs: np.ndarray, weights: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Shortest-path distance of every superpixel to the nearest source superpixel.

    Returns:
        (n,) float64 distances; ``inf`` where unreachable or when ``sources`` is empty.
    """
    sources = np.unique(np.asarray(sources, np.int64))
    if sources.size == 0:
        return np.full(n, np.inf)
    if len(pairs) == 0:
        d = np.full(n, np.inf)
        d[sources] = 0.0
        return d
    graph = coo_matrix((weights, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    return dijkstra(graph, directed=False, indices=sources, min_only=True)


def palette(
    bgr: np.ndarray, k: int, seed: int, iters: int = 8, sample: int = 4000
) -> tuple[np.ndarray, np.ndarray]:
    """Quantise colours with k-means on a pixel sample (deterministic for a given ``seed``).

    Args:
        bgr: (h, w, 3) uint8 BGR work image.
        k: number of colours (<= 256).

    Returns:
        centres: (k', 3) float32 BGR centres, k' <= k (fewer on images with few colours).
        index: (h, w) uint8 index of each pixel's nearest centre.
    """
    pix = bgr.reshape(-1, 3).astype(np.float32)
    rng = np.random.default_rng(seed)
    sub = pix[rng.choice(len(pix), min(len(pix), sample), replace=False)]
    uniq = np.unique(sub, axis=0)
    k = int(min(k, len(uniq), 256))
    centres = uniq[rng.choice(len(uniq), k, replace=False)].copy()
    for _ in range(iters):
        assign = ((sub[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for c in range(k):
            members = sub[assign == c]
            if len(members):
                centres[c] = members.mean(0)
    index = np.empty(len(pix), np.uint8)
    for start in range(0, len(pix), 1 << 15):  # bounded memory for the distance table
        chunk = pix[start : start + (1 << 15)]
        index[start : start + len(chunk)] = (
            ((chunk[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        )
    return centres, index.reshape(bgr.shape[:2])


def gmm_model(centres: np.ndarray, index: np.ndarray, region: np.ndarray) -> np.ndarray:
    """An initial OpenCV grabCut colour model of ``region``, fitted on palette counts.

    A weighted k-means over the palette colours (weights = pixel counts in the region) groups
    them into five components; this replaces grabCut's own k-means on all pixels, which is the
    slow part of ``GC_INIT_WITH_MASK``.

    Args:
        centres: (k, 3) float32 BGR palette.
        index: (h, w) uint8 palette index per pixel.
        region: (h, w) bool pixels of the region.

    Returns:
        (1, 65) float64 model: 5 weights, 5x3 means, 5x3x3 covariances (BGR, 0..255 units).
    """
    pal = centres.astype(np.float64)
    counts = np.bincount(index[region], minlength=len(pal)).astype(np.float64)
    used = np.nonzero(counts)[0]
    coefs = np.zeros(_GMM_COMPONENTS)
    means = np.zeros((_GMM_COMPONENTS, 3))
    covs = np.tile(np.eye(3) * _COV_FLOOR, (_GMM_COMPONENTS, 1, 1))
    if used.size:
        colours, wts = pal[used], counts[used]
        k = min(_GMM_COMPONENTS, len(used))
        cen = colours[np.argsort(-wts)[:k]].copy()
        for _ in range(5):
            assign = ((colours[:, None] - cen[None]) ** 2).sum(-1).argmin(1)
            for c in range(k):
                sel = assign == c
                if wts[sel].sum() > 0:
                    cen[c] = (colours[sel] * wts[sel, None]).sum(0) / wts[sel].sum()
        assign = ((colours[:, None] - cen[None]) ** 2).sum(-1).argmin(1)
        for c in range(k):
            sel = assign == c
            wsum = wts[sel].sum()
            if wsum <= 0:
                continue
            d = colours[sel] - cen[c]
            coefs[c] = wsum
            means[c] = cen[c]
            covs[c] += (wts[sel, None, None] * d[:, :, None] * d[:, None, :]).sum(0) / wsum
        coefs /= coefs.sum()
    return np.concatenate([coefs, means.ravel(), covs.ravel()])[None]


def grabcut(
    bgr: np.ndarray,
    init: np.ndarray,
    fg_seed: np.ndarray,
    bg_seed: np.ndarray,
    iters: int,
    centres: np.ndarray,
    index: np.ndarray,
) -> np.ndarray:
    """Refine a rough mask with OpenCV's GrabCut (colour GMMs + contrast-sensitive graph cut).

    Args:
        bgr: (h, w, 3) uint8 BGR work image.
        init: (h, w) bool rough mask; its pixels start as "probably foreground", the rest as
            "probably background".
        fg_seed: (h, w) bool pixels fixed to foreground.
        bg_seed: (h, w) bool pixels fixed to background (foreground seeds win on overlap).
        iters: GrabCut iterations; 0 returns ``init | fg_seed`` minus ``bg_seed``.
        centres: (k, 3) float32 palette and index: (h, w) uint8, for the initial models.

    Returns:
        (h, w) bool mask. When one side has no pixels (nothing to contrast), or OpenCV
        refuses the input, the constrained initial mask is returned unchanged.
    """
    mask = np.where(init, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    mask[bg_seed] = cv2.GC_BGD
    mask[fg_seed] = cv2.GC_FGD
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if iters <= 0 or fg.all() or not fg.any():
        return fg
    if not np.ptp(bgr.reshape(-1, 3), axis=0).any():
        # a flat image has no contrast to cut along; OpenCV's max-flow also takes minutes on it
        return fg
    fg_model = gmm_model(centres, index, fg)
    bg_model = gmm_model(centres, index, ~fg)
    try:
        cv2.grabCut(bgr, mask, (0, 0, 0, 0), bg_model, fg_model, int(iters), cv2.GC_EVAL)
    except cv2.error as exc:  # e.g. degenerate colour statistics; keep the prior
        logger.debug("grabCut failed (%s); keeping the initial mask", exc)
        return fg
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def keep_components(
    mask: np.ndarray, seeds: np.ndarray | None, min_fraction: float = 0.1
) -> np.ndarray:
    """Connected components (8-connected) of ``mask`` that touch ``seeds``.

    Without seeds (or when no component touches them), keeps the components whose area is at
    least ``min_fraction`` of the largest one.
    """
    count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask.astype(bool)
    if seeds is not None and seeds.any():
        ids = np.unique(comp[seeds & mask])
        ids = ids[ids > 0]
        if ids.size:
            return np.isin(comp, ids)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.nonzero(areas >= min_fraction * areas.max())[0] + 1
    return np.isin(comp, keep)


def fill_holes(
    mask: np.ndarray, max_fraction: float, forbid: np.ndarray | None = None
) -> np.ndarray:
    """Fill holes (background components not touching the border) smaller than
    ``max_fraction`` of the mask area that do not contain any ``forbid`` pixel."""
    area = int(mask.sum())
    if area == 0 or max_fraction <= 0:
        return mask
    count, comp, stats, _ = cv2.connectedComponentsWithStats(
        (~mask).astype(np.uint8), connectivity=4
    )
    if count <= 2:
        return mask
    outer = np.unique(np.concatenate([comp[0], comp[-1], comp[:, 0], comp[:, -1]]))
    small = np.nonzero(stats[:, cv2.CC_STAT_AREA] <= max_fraction * area)[0]
    holes = np.setdiff1d(small[small > 0], outer)
    if forbid is not None and forbid.any():
        holes = np.setdiff1d(holes, np.unique(comp[forbid]))
    return mask | np.isin(comp, holes) if holes.size else mask


def disk_seeds(labels: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of each point *and* in the point's own superpixel.

    Keeping seeds inside the clicked superpixel stops a click on a thin part from seeding the
    background around it.

    Args:
        labels: (h, w) int32 superpixel labels.
        points: (P, 2) int XY pixel indices in the work frame.
    """
    h, w = labels.shape
    out = np.zeros((h, w), bool)
    r = int(np.ceil(radius))
    for x, y in points:
        y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= radius * radius
        out[y0:y1, x0:x1] |= disk & (labels[y0:y1, x0:x1] == labels[y, x])
        out[y, x] = True
    return out


def mask_features(
    mask: np.ndarray,
    raw: np.ndarray,
    points: np.ndarray,
    edges: np.ndarray,
    index: np.ndarray,
    n_colours: int,
) -> np.ndarray:
    """Quality cues of a candidate mask, each >= 0 and all but the edge cue in [0, 1] (the
    scorer weighs them).

    Args:
        mask: (h, w) bool final candidate. raw: (h, w) bool its rough initial mask.
        points: (P, 2) int XY positive clicks (P may be 0).
        edges: (h, w) float32 edge strength. index: (h, w) uint8 palette index.

    Returns:
        (6,) float64: centrality of the clicks (distance to the mask boundary over the largest
        such distance; 0.5 without clicks), colour separation from a surrounding ring
        (1 - Bhattacharyya coefficient of palette histograms), mean edge strength on the mask
        boundary (``edges`` is ~1 at its 99th percentile, so this may exceed 1), IoU with
        ``raw``, fraction of the image border covered, area fraction.
    """
    area = int(mask.sum())
    if area == 0:
        return np.zeros(6)
    m8 = mask.astype(np.uint8)
    if len(points):
        dist = cv2.distanceTransform(np.pad(m8, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        cent = float(np.mean(dist[points[:, 1], points[:, 0]]) / max(float(dist.max()), 1e-6))
    else:
        cent = 0.5
    r = max(2, int(round(0.15 * np.sqrt(area))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    ring = cv2.dilate(m8, kernel).astype(bool) & ~mask
    h_in = np.bincount(index[mask], minlength=n_colours).astype(np.float64)
    h_out = np.bincount(index[ring], minlength=n_colours).astype(np.float64)
    h_in /= max(h_in.sum(), 1.0)
    h_out /= max(h_out.sum(), 1.0)
    sep = 1.0 - float(np.sqrt(h_in * h_out).sum()) if ring.any() else 0.0
    inner = cv2.erode(m8, np.ones((3, 3), np.uint8)).astype(bool)
    boundary = mask & ~inner
    edge = float(edges[boundary].mean()) if boundary.any() else 0.0
    agree = float((mask & raw).sum() / max(int((mask | raw).sum()), 1))
    border = float(np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]).mean())
    return np.array([cent, sep, edge, agree, border, area / mask.size])


def signed_distance_logits(masks: np.ndarray, pad: int, clip: float) -> np.ndarray:
    """Masks in the work frame -> smooth logits on the padded square.

    The logit is the signed distance to the mask boundary in work pixels (positive inside,
    +-0.5 at the pixels next to the boundary), clipped to ``[-clip, clip]``, so bilinear
    resampling puts the zero crossing on the computed boundary.

    Args:
        masks: (M, h, w) bool with h, w <= pad.

    Returns:
        (M, pad, pad) float32; the padding lies outside every mask.
    """
    m, h, w = masks.shape
    out = np.full((m, pad, pad), -clip, np.float32)
    for i in range(m):
        canvas = np.zeros((pad, pad), np.uint8)
        canvas[:h, :w] = masks[i]
        if not canvas.any():
            continue
        if canvas.all():
            out[i] = clip
            continue
        inside = cv2.distanceTransform(canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        outside = cv2.distanceTransform(1 - canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        sdf = np.where(canvas > 0, inside - 0.5, 0.5 - outside)
        out[i] = np.clip(sdf, -clip, clip)
    return out
