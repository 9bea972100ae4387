"""composer.refine: running-sum box means, the colour guided filter, GrabCut band refinement."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from _processes import gpu_visible

from composer.refine import GrabCutRefine, GuidedFilter, box_mean


def _brute_box_mean(x: np.ndarray, r: int) -> np.ndarray:
    h, w = x.shape
    out = np.empty_like(x, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            out[i, j] = x[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].mean()
    return out


@pytest.mark.parametrize("r", [1, 2, 5, 9, 40])
def test_box_mean_is_the_clipped_window_mean(r):
    x = np.random.default_rng(r).random((13, 17)).astype(np.float32)
    got = box_mean(torch.from_numpy(x)[None, None], r)[0, 0].numpy()
    np.testing.assert_allclose(got, _brute_box_mean(x, r), atol=1e-5)
    t = torch.from_numpy(x)
    assert torch.equal(box_mean(t, 0), t)  # radius 0: the map itself


def _guided_reference(image: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter written out per pixel (float64, brute-force windows)."""
    guide = image.astype(np.float64) / 255.0
    h, w = p.shape
    a = np.zeros((h, w, 3))
    b = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            win = (slice(max(0, i - r), i + r + 1), slice(max(0, j - r), j + r + 1))
            Iw = guide[win].reshape(-1, 3)
            pw = p[win].reshape(-1)
            mu, pm = Iw.mean(0), pw.mean()
            cov = (Iw - mu).T @ (Iw - mu) / len(pw)
            a[i, j] = np.linalg.solve(cov + eps * np.eye(3), (Iw * pw[:, None]).mean(0) - mu * pm)
            b[i, j] = pm - a[i, j] @ mu
    ma = np.stack([_brute_box_mean(a[..., c], r) for c in range(3)], -1)
    return (ma * guide).sum(-1) + _brute_box_mean(b, r)


def test_guided_filter_matches_the_per_pixel_definition():
    rng = np.random.default_rng(0)
    image = (rng.random((14, 19, 3)) * 255).astype(np.uint8)
    p = rng.random((14, 19)).astype(np.float32)
    got = GuidedFilter(image, 2, 1e-2)(torch.from_numpy(p)[None])[0].numpy()
    np.testing.assert_allclose(got, _guided_reference(image, p, 2, 1e-2), atol=1e-4)


def test_guided_filter_moves_a_misplaced_transition_to_the_image_edge():
    # image: dark left of column 30, bright from it; the mask's soft edge is centred at 36
    image = np.full((40, 64, 3), 40, np.uint8)
    image[:, 30:] = 200
    cols = np.arange(64, dtype=np.float32)
    prob = 1 / (1 + np.exp(-(cols - 36) / 1.5))
    p = torch.from_numpy(np.tile(prob, (40, 1)))[None, None]
    q = GuidedFilter(image, 8, 1e-2)(p)[0, 0].numpy()
    assert q.shape == (40, 64)
    step_p, step_q = np.diff(prob), np.diff(q[20])
    assert int(np.argmax(step_p)) == 35  # the input's steepest step: 35 -> 36
    assert int(np.argmax(step_q)) == 29  # the output's: 29 -> 30, the image edge
    assert step_q[29] > 3 * np.delete(step_q, 29).max()
    # left of the edge the map is flattened towards zero, right of it kept above
    assert q[20, :30].max() < 0.05 and q[20, 30] > 0.25
    assert np.isclose(q[20, 1:29], q[20, 1:29].mean(), atol=0.02).all()


def test_guided_filter_on_a_flat_guide_only_smooths_and_grey_guides_work():
    p = torch.rand(2, 1, 20, 25)
    flat = GuidedFilter(np.full((20, 25, 3), 128, np.uint8), 3, 1e-3)(p)
    # zero guide variance: a = 0, so q is the mean of the window means of p
    np.testing.assert_allclose(flat.numpy(), box_mean(box_mean(p, 3), 3).numpy(), atol=1e-5)
    grey = GuidedFilter(np.full((20, 25), 0.5, np.float32), 3, 1e-3)(p[:, 0])
    assert grey.shape == (2, 20, 25)
    np.testing.assert_allclose(grey.numpy(), flat[:, 0].numpy(), atol=1e-5)


def test_guided_filter_window_agrees_with_the_whole_image_inside():
    rng = np.random.default_rng(1)
    image = (rng.random((50, 60, 3)) * 255).astype(np.uint8)
    p = torch.from_numpy(rng.random((50, 60)).astype(np.float32))
    gf = GuidedFilter(image, 3, 1e-2)
    whole = gf(p[None])[0]
    y0, y1, x0, x1 = 10, 45, 0, 30
    part = gf(p[y0:y1, x0:x1][None], (y0, y1, x0, x1))[0]
    m = 2 * gf.radius
    # exact away from the window's inner sides (the left side is the image's own border)
    np.testing.assert_allclose(
        part[m:-m, : -m].numpy(), whole[y0 + m : y1 - m, x0 : x1 - m].numpy(), atol=1e-5
    )


def test_guided_filter_rejects_bad_arguments():
    image = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="radius"):
        GuidedFilter(image, 0, 1e-2)
    with pytest.raises(ValueError, match="eps"):
        GuidedFilter(image, 2, 0.0)
    with pytest.raises(ValueError, match="guide image"):
        GuidedFilter(np.zeros((10, 12, 2), np.uint8), 2, 1e-2)
    gf = GuidedFilter(image, 2, 1e-2)
    with pytest.raises(ValueError, match="guide window is"):
        gf(torch.zeros(1, 10, 13))
    with pytest.raises(ValueError, match="not inside"):
        gf(torch.zeros(1, 5, 5), (8, 13, 0, 5))
    with pytest.raises(ValueError, match="window is"):
        gf(torch.zeros(1, 5, 6), (0, 5, 0, 5))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _ellipse_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy textured background, a noisy red ellipse; and a coarse mask of it: the ellipse
    drawn on a grid of 40-px cells, upsampled bilinearly (a low-res decoder's boundary) and
    shifted by (6, 4) px."""
    rng = np.random.default_rng(1)
    image = rng.integers(90, 140, (240, 320, 3)).astype(np.uint8)
    gt = np.zeros((240, 320), np.uint8)
    cv2.ellipse(gt, (150, 120), (80, 55), 20, 0, 360, 1, -1)
    obj = np.clip(rng.normal((200, 40, 50), 12, (240, 320, 3)), 0, 255).astype(np.uint8)
    image[gt > 0] = obj[gt > 0]
    low = cv2.resize(gt.astype(np.float32), (8, 6), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(low, (320, 240), interpolation=cv2.INTER_LINEAR) > 0.5
    coarse = np.roll(coarse, (4, 6), axis=(0, 1))
    return image, gt > 0, coarse


def test_grabcut_refine_snaps_a_coarse_boundary_to_the_object() -> None:
    image, gt, coarse = _ellipse_scene()
    before = _iou(coarse, gt)
    out = GrabCutRefine(band=16)(image, coarse)
    assert out.dtype == bool and out.shape == gt.shape
    assert before < 0.9
    assert _iou(out, gt) > 0.97


def test_grabcut_refine_relabels_only_the_band_and_honours_clicks() -> None:
    image, gt, _ = _ellipse_scene()
    # a mask that misses the object's right half: far from its boundary nothing may change
    half = gt.copy()
    half[:, 150:] = False
    ref = GrabCutRefine(band=8, ref_size=320)
    bw = ref.band_pixels(gt.shape)
    assert bw == 8
    out = ref(image, half)
    dist_out = cv2.distanceTransform((~half).astype(np.uint8), cv2.DIST_L2, 5)
    dist_in = cv2.distanceTransform(half.astype(np.uint8), cv2.DIST_L2, 5)
    far = (dist_out > bw + 1) | (dist_in > bw + 1)
    assert np.array_equal(out[far], half[far])
    assert _iou(out, gt) > _iou(half, gt) + 0.05  # the band grew onto the object
    # a negative click inside the band stays background
    y, x = 120, 150 + bw // 2
    assert gt[y, x]
    clicked = ref(image, half, points=np.array([[x, y], [100, 120]]), labels=np.array([0, 1]))
    assert not clicked[y, x]
    # clicks outside the image or padding labels are ignored
    same = ref(image, half, points=np.array([[-5, 3], [x, y]]), labels=np.array([1, -1]))
    assert np.array_equal(same, out)


def test_grabcut_refine_leaves_degenerate_masks_and_refuses_bad_input() -> None:
    image, gt, coarse = _ellipse_scene()
    ref = GrabCutRefine()
    empty = np.zeros_like(gt)
    assert not ref(image, empty).any()
    assert ref(image, ~empty).all()
    grey = ref(image[..., 0], coarse)
    assert grey.shape == gt.shape
    inplace = coarse.copy()
    assert ref.refine_inplace(image, inplace) and np.array_equal(inplace, ref(image, coarse))
    assert not ref.refine_inplace(image, empty.copy())
    with pytest.raises(ValueError, match="bool array"):
        ref.refine_inplace(image, coarse.astype(np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        ref(image, coarse[:-1])
    with pytest.raises(ValueError, match="uint8"):
        ref(image.astype(np.float32), coarse)
    for bad in ({"band": 0}, {"iters": 0}, {"ref_size": 0}, {"max_side": -1}):
        with pytest.raises(ValueError):
            GrabCutRefine(**bad)


def test_grabcut_refine_never_empties_a_thin_mask() -> None:
    """A mask thinner than the band has no sure foreground: GrabCut may relabel all of it as
    background, and then the model's mask is kept (it did empty 200 of 200 random 2-13 px
    squares on real images with the default band)."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (320, 320, 3)).astype(np.uint8)  # no object to snap to
    ref = GrabCutRefine(band=16, ref_size=320)
    kept = 0
    for side in (3, 6, 10, 14):
        mask = np.zeros((320, 320), bool)
        mask[100:100 + side, 150:150 + side] = True
        out = ref(image, mask)
        assert out.any(), side
        kept += int(np.array_equal(out, mask))
    assert kept >= 1  # the fallback ran (GrabCut emptied at least one of them)


def test_grabcut_refine_of_a_large_image_works_at_max_side() -> None:
    """An image larger than ``max_side`` is refined at that scale: about the full-resolution
    result (and as good against the truth), far from the band untouched; an image within
    ``max_side`` is refined exactly as at full resolution."""
    image, gt, coarse = _ellipse_scene()
    big = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)  # 1280 x 960
    big_gt = cv2.resize(gt.astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST) > 0
    big_coarse = cv2.resize(coarse.astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST) > 0
    full = GrabCutRefine(band=16, max_side=0)(big, big_coarse)
    scaled_ref = GrabCutRefine(band=16, max_side=640)
    scaled = scaled_ref(big, big_coarse, points=np.array([[600, 480]]), labels=np.array([1]))
    assert _iou(full, big_gt) > 0.97 and _iou(scaled, big_gt) > 0.97 and _iou(full, scaled) > 0.97
    bw = scaled_ref.band_pixels(big.shape[:2])
    dist_out = cv2.distanceTransform((~big_coarse).astype(np.uint8), cv2.DIST_L2, 5)
    dist_in = cv2.distanceTransform(big_coarse.astype(np.uint8), cv2.DIST_L2, 5)
    far = (dist_out > bw + 8) | (dist_in > bw + 8)  # + a few px for the nearest upsampling
    assert np.array_equal(scaled[far], big_coarse[far])
    within = GrabCutRefine(band=16, max_side=320)(image, coarse)
    assert np.array_equal(within, GrabCutRefine(band=16, max_side=0)(image, coarse))


def test_refine_masks_in_threads_equals_one_thread() -> None:
    """Masks refined side by side (each its own seeded GrabCut) equal those refined in turn."""
    from skimage import data

    from composer.refine import refine_masks

    image = np.ascontiguousarray(data.astronaut()[::2, ::2, :3])
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 256, 256), bool)
    for i in range(6):  # coarse blocky masks of different places and sizes
        y, x = rng.integers(20, 150, 2)
        hh, ww = rng.integers(40, 100, 2)
        masks[i, y : y + hh, x : x + ww] = True
    pts = [np.array([[x + 5.0, y + 5.0]]) for y, x in (np.argwhere(m)[0] for m in masks)]
    lbl = [np.array([1])] * 6
    refiner = GrabCutRefine(band=16, iters=2)
    serial, parallel = masks.copy(), masks.copy()
    refine_masks(refiner, image, serial, pts, lbl, threads=1)
    for _ in range(2):  # the pool is reused across calls
        again = masks.copy()
        refine_masks(refiner, image, again, pts, lbl, threads=3)
        np.testing.assert_array_equal(again, serial)
        parallel = again
    assert (parallel != masks).any()  # GrabCut did change them
    with pytest.raises(ValueError, match="point sets"):
        refine_masks(refiner, image, masks.copy(), pts[:2], lbl[:2])
    with pytest.raises(ValueError, match="bool"):  # a worker's error reaches the caller
        refine_masks(refiner, image, masks.astype(np.uint8), threads=2)


def test_refine_masks_works_in_a_forked_child() -> None:
    """A child forked after the pool exists (evaluation workers) gets a pool of its own."""
    if not gpu_visible():
        _fork_after_the_pool()
        return
    # This process may hold a CUDA context (a GPU machine's worker after a CUDA test), and
    # CUDA does not survive fork(): the same parent-and-forked-child check runs in a fresh
    # process, which never touches CUDA.
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        pool.submit(_fork_after_the_pool).result(timeout=180)


def _fork_after_the_pool() -> None:
    """Refine in this process (its pool starts), then in a forked child: the same masks."""
    import multiprocessing as mp

    from composer.refine import refine_masks

    image, masks = _fork_case()
    refine_masks(GrabCutRefine(), image, masks.copy(), threads=2)  # the parent's pool exists
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply_async(_refine_in_child).get(timeout=60)
    expected = masks.copy()
    refine_masks(GrabCutRefine(), image, expected, threads=1)
    np.testing.assert_array_equal(child, expected)


def _fork_case() -> tuple[np.ndarray, np.ndarray]:
    image, gt, coarse = _ellipse_scene()
    return image, np.stack([coarse, gt])


def _refine_in_child() -> np.ndarray:
    from composer.refine import refine_masks

    image, masks = _fork_case()
    refine_masks(GrabCutRefine(), image, masks, threads=2)
    return masks
