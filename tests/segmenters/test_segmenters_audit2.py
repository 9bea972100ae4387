"""Second audit of the segmenters and ``composer.refine``: regressions for what it fixed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from composer import refine
from composer.refine import GrabCutRefine, refine_masks


def _square_scene(size: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A dark textured square on a light textured background, and the square's mask."""
    rng = np.random.default_rng(0)
    img = (rng.integers(0, 30, (size, size, 3)) + 100).astype(np.uint8)
    lo, hi = size // 4, 3 * size // 4
    img[lo:hi, lo:hi] = (rng.integers(0, 30, (hi - lo, hi - lo, 3)) + 20).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    mask[lo:hi, lo:hi] = True
    return img, mask


@pytest.mark.parametrize("max_side", [0, 100])
def test_grabcut_refine_honours_clicks_when_the_image_is_larger_than_max_side(max_side) -> None:
    """A negative click inside the mask ends outside it and a positive click next to it ends
    inside, whether the image is refined at full resolution or scaled to ``max_side``. The
    scaled path copied back only GrabCut's band: the click disks (fixed, so not in the band)
    kept the decoder's labels, and the clicks were ignored on images above 1024 px."""
    img, mask = _square_scene()
    refiner = GrabCutRefine(band=16, ref_size=512, max_side=max_side)
    neg, pos = (100, 100), (40, 100)  # deep inside the mask; outside it, within the crop
    out = refiner(img, mask, np.array([neg, pos]), np.array([0, 1]))
    assert not out[neg[1], neg[0]]
    assert out[pos[1], pos[0]]
    # away from the clicks the object is kept
    assert out[60:140, 120:140].all() and not out[:30].any()


def test_grabcut_refine_scaled_path_without_clicks_is_unchanged_by_the_click_fix() -> None:
    """Without clicks the scaled path copies back only the band, as before."""
    img, mask = _square_scene()
    out = GrabCutRefine(band=16, ref_size=512, max_side=100)(img, mask)
    band = GrabCutRefine(band=16, ref_size=512).band_pixels(mask.shape)
    far = np.ones_like(mask)
    far[50 - 2 * band : 150 + 2 * band, 50 - 2 * band : 150 + 2 * band] = False
    assert not out[far].any()
    assert out[50 + 2 * band : 150 - 2 * band, 50 + 2 * band : 150 - 2 * band].all()


def test_refine_pool_of_another_thread_count_does_not_shut_down_a_pool_in_use() -> None:
    """Asking for a pool of another size shut the current one down; a thread that had just
    obtained it (``refine_masks`` of a predict with another number of masks, in a concurrent
    caller) then failed with "cannot schedule new futures after shutdown"."""
    first = refine._pool(3)
    refine._pool(2)
    assert first.submit(lambda: 7).result() == 7


def test_concurrent_refine_masks_with_different_mask_counts_all_succeed() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (24, 24, 3), np.uint8)
    base = np.zeros((24, 24), bool)
    base[6:18, 6:18] = True
    refiner = GrabCutRefine(band=2, ref_size=24, iters=1)
    want = refiner(img, base)
    errors: list[str] = []
    wrong: list[int] = []

    def work(n: int) -> None:
        for _ in range(40):
            masks = np.repeat(base[None], n, 0)
            try:
                refine_masks(refiner, img, masks, threads=n)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(exc))
                return
            wrong.extend(int((m ^ want).sum()) for m in masks if (m ^ want).any())

    threads = [threading.Thread(target=work, args=(n,)) for n in (2, 3, 4, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert wrong == []  # the same masks whatever the threads
