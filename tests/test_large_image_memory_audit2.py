"""Large-image memory audit of GrabCutRefine's label maps (and grey images) and the
Felzenszwalb-Huttenlocher classic edges. Every output must equal the code as first written
(kept here as the oracle), bit for bit; memory is measured with tracemalloc on moderately sized images, with generous
margins, and each bound fails on the old code."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
from _memory import traced_peak

import composer.refine as refine
import tasks.edges_classic as classic_mod
from composer.refine import GrabCutRefine, refine_masks
from tasks.edges_classic import FelzHuttEdges


# --------------------------------------------------------------------------- oracles
def _oracle_grabcut(ref, img, crop_mask, bw, points, labels, origin):
    """``GrabCutRefine._grabcut`` as first written."""
    crop = crop_mask.astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * bw + 1, 2 * bw + 1))
    inner = cv2.erode(crop, kernel, borderType=cv2.BORDER_REPLICATE)
    outer = cv2.dilate(crop, kernel, borderType=cv2.BORDER_REPLICATE)
    tri = np.where(crop > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    tri[inner > 0] = cv2.GC_FGD
    tri[outer == 0] = cv2.GC_BGD
    clicked = np.zeros_like(crop)
    if points is not None and labels is not None:
        radius = max(2, bw // 3)
        ox, oy = origin
        ch, cw = crop.shape
        for (x, y), lab in zip(points, labels, strict=True):
            if lab not in (0, 1) or not (ox <= x < ox + cw and oy <= y < oy + ch):
                continue
            value = cv2.GC_FGD if lab == 1 else cv2.GC_BGD
            cv2.circle(tri, (int(x) - ox, int(y) - oy), radius, int(value), -1)
            cv2.circle(clicked, (int(x) - ox, int(y) - oy), radius, 1, -1)
    fg = (tri == cv2.GC_FGD) | (tri == cv2.GC_PR_FGD)
    if fg.all() or not fg.any():
        return None
    if not np.ptp(img.reshape(-1, 3), axis=0).any():
        return None
    band = (tri == cv2.GC_PR_FGD) | (tri == cv2.GC_PR_BGD) | (clicked > 0)
    bgr = np.ascontiguousarray(img[..., ::-1])
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(ref.seed)
    try:
        cv2.grabCut(
            bgr, tri, (0, 0, 0, 0), bgd_model, fgd_model, int(ref.iters), cv2.GC_INIT_WITH_MASK
        )
    except cv2.error:
        return None
    refined = (tri == cv2.GC_FGD) | (tri == cv2.GC_PR_FGD)
    if not refined.any():
        return None
    return refined, band


def _oracle_refine(ref, image, mask, points=None, labels=None):
    """``GrabCutRefine.__call__`` as first written (a grey image made RGB whole)."""
    m = np.array(mask, dtype=bool)
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if not m.any() or m.all():
        return m
    pts = labs = None
    if points is not None and labels is not None:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        labs = np.asarray(labels).reshape(-1)
    h, w = m.shape
    bw = ref.band_pixels((h, w))
    y0, y1, x0, x1 = refine._padded_bbox(m, 3 * bw)
    scale = 1.0
    if ref.max_side and max(h, w) > ref.max_side:
        scale = ref.max_side / max(h, w)
    if scale == 1.0:
        out = _oracle_grabcut(ref, img[y0:y1, x0:x1], m[y0:y1, x0:x1], bw, pts, labs, (x0, y0))
        if out is not None:
            m[y0:y1, x0:x1] = out[0]
        return m
    ch, cw = y1 - y0, x1 - x0
    sw, sh = max(1, int(round(cw * scale))), max(1, int(round(ch * scale)))
    crop = m[y0:y1, x0:x1]
    small_img = cv2.resize(img[y0:y1, x0:x1], (sw, sh), interpolation=cv2.INTER_AREA)
    small = cv2.resize(crop.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) >= 0.5
    if not small.any() or small.all():
        return m
    small_pts = None if pts is None else (pts - (x0, y0)) * (sw / cw, sh / ch)
    bws = max(2, int(round(bw * scale)))
    out = _oracle_grabcut(ref, small_img, small, bws, small_pts, labs, (0, 0))
    if out is None:
        return m
    refined, band = out
    up = cv2.resize(refined.astype(np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR) >= 0.5
    up_band = cv2.resize(band.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_NEAREST)
    np.copyto(crop, up, where=up_band.view(bool))
    return m


def _oracle_felz(image, scales, sigma, min_size):
    """``FelzHuttEdges`` as first written (an int32 count)."""
    from skimage.segmentation import felzenszwalb

    img = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    count = np.zeros(img.shape[:2], dtype=np.int32)
    for k in scales:
        labels = felzenszwalb(img, scale=float(k), sigma=sigma, min_size=int(min_size))
        count += classic_mod.segment_boundaries(labels)
    n = len(scales)
    counts = np.arange(n + 1)
    table = np.where(counts > 0, (counts - 0.5) / n, 0.0).astype(np.float32)
    return table[count]


# --------------------------------------------------------------------------- inputs
def _scene(h: int, w: int, seed: int):
    """(h, w, 3) uint8 image with a large ellipse (about half of it) and a small one on a
    gradient with noise, and coarse (blocky, shifted) masks of them: (image, [big, small])."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(60, 140, h, dtype=np.float32).astype(np.uint8)[:, None]
    img[..., 1] = np.linspace(90, 150, w, dtype=np.float32).astype(np.uint8)[None, :]
    img[..., 2] = 120
    big = np.zeros((h, w), np.uint8)
    cv2.ellipse(big, (w // 2, h // 2), (int(0.4 * w), int(0.4 * h)), 10, 0, 360, 1, -1)
    small = np.zeros((h, w), np.uint8)
    cv2.ellipse(small, (int(w * 0.85), int(h * 0.15)), (w // 25, h // 20), 0, 0, 360, 1, -1)
    img[big > 0] = (200, 50, 60)
    img[small > 0] = (30, 200, 40)
    noisy = cv2.add(img, rng.integers(0, 14, (h, w, 3), dtype=np.uint8))
    masks = []
    for m, shift in ((big, (7, -5)), (small, (4, 4))):
        step = 12
        low = cv2.resize(m, (w // step, h // step), interpolation=cv2.INTER_AREA)
        up = cv2.resize(low, (w, h), interpolation=cv2.INTER_NEAREST) > 0
        masks.append(np.roll(up, shift, axis=(0, 1)))
    return noisy, masks


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32) if a.dtype == np.float32 else a


# --------------------------------------------------------------------------- bit identity
def test_grabcut_refine_equals_the_first_version() -> None:
    """GrabCutRefine (scaled path, full-resolution path, clicks, grey images, masks at the
    border, refine_masks on two threads) against the code as first written, bit for bit."""
    image, (big, small) = _scene(600, 900, seed=1)
    border = np.zeros(big.shape, bool)
    border[:150, :300] = True
    pts = np.array([[450.0, 300.0], [5.0, 5.0], [1e6, 3.0]])
    lab = np.array([1, 0, 1])
    changed = 0
    for ref in (GrabCutRefine(max_side=256), GrabCutRefine(max_side=0, iters=1)):
        for m in (big, small, border):
            for p, lb in ((None, None), (pts, lab)):
                got = ref(image, m, p, lb)
                assert np.array_equal(got, _oracle_refine(ref, image, m, p, lb))
                changed += int((got != m).any())
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        assert np.array_equal(ref(grey, big), _oracle_refine(ref, grey, big))
    assert changed >= 8  # GrabCut moved most masks: the comparisons are not of no-ops
    masks = np.stack([big, small, big | small])
    want = np.stack([_oracle_refine(GrabCutRefine(max_side=256), image, m) for m in masks])
    refine_masks(GrabCutRefine(max_side=256), image, masks, threads=2)
    assert np.array_equal(masks, want)


def test_felzenszwalb_edges_equal_the_int32_count_version() -> None:
    rng = np.random.default_rng(3)
    image, _ = _scene(90, 120, seed=3)
    for img, scales in (
        (image, (30.0, 100.0, 400.0)),
        (image[..., 1], (50.0, 200.0)),  # grey
        (rng.integers(0, 256, (40, 70, 3), dtype=np.uint8), (10.0,)),
    ):
        got = FelzHuttEdges(scales=scales, min_size=20)(img).edges
        want = _oracle_felz(img, scales, 0.8, 20)
        assert got.dtype == np.float32 and (want > 0).any()
        assert np.array_equal(got, want)


# --------------------------------------------------------------------------- memory
def test_full_resolution_grabcut_label_maps_are_uint8(monkeypatch) -> None:
    """GrabCut at full resolution (max_side=0) on a 0.5-MP crop: besides OpenCV's own
    memory, the label maps and the BGR copy (the first version held an int64 trimap and a
    gathered copy of the image: 12 bytes per crop pixel measured; now 5)."""
    image, (big, _) = _scene(600, 900, seed=4)
    ref = GrabCutRefine(max_side=0, iters=1)
    y0, y1, x0, x1 = refine._padded_bbox(big, 3 * ref.band_pixels(big.shape))
    crop = (y1 - y0) * (x1 - x0)
    mask = big.copy()
    peak = traced_peak(ref.refine_inplace, image, mask)
    assert (mask != big).any()
    assert peak < 9.0 * crop, f"full-resolution GrabCut peaked at {peak / crop:.2f} B/px"


def test_felzenszwalb_keeps_one_byte_per_pixel_alive_across_scales(monkeypatch) -> None:
    """skimage's felzenszwalb is the peak (about 330 bytes a pixel inside each call); what the
    edge task keeps alive while it runs must be the one-byte count, not an int32 one (4)."""
    import skimage.segmentation

    image, _ = _scene(300, 400, seed=5)
    pixels = 300 * 400
    alive = []

    def spy(img, **kwargs):
        alive.append(tracemalloc.get_traced_memory()[0])
        return skimage.segmentation.felzenszwalb(img, **kwargs)

    monkeypatch.setattr(classic_mod, "felzenszwalb", spy)
    tracemalloc.start()
    try:
        edges = FelzHuttEdges(scales=(100.0, 400.0), min_size=50)(image).edges
    finally:
        tracemalloc.stop()
    assert len(alive) == 2 and edges.max() > 0
    worst = max(alive) / pixels
    assert worst < 2.0, f"{worst:.1f} bytes per pixel alive during a segmentation"


def test_a_grey_image_is_made_rgb_only_inside_the_box() -> None:
    """A small mask on a grey 3-MP image: the first version repeated the whole image into
    three channels (3 bytes a pixel) before cropping; now only the padded box is."""
    image, (_, small) = _scene(1500, 2000, seed=6)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    ref = GrabCutRefine(max_side=256)
    mask = small.copy()
    peak = traced_peak(ref.refine_inplace, grey, mask)
    assert (mask != small).any()
    assert peak < 1.0 * grey.size, f"peaked at {peak / grey.size:.2f} bytes per image pixel"
