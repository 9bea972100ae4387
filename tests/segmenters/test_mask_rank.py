"""Contrast ranking of multimask outputs (``composer.refine.ContrastRank``, ``mask_rank``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from _modules import load_file

from composer.refine import ContrastRank

_Cones = load_file(Path(__file__).with_name("test_flip_tta.py"), "_flip_tta_for_rank")._Cones


def _brute_contrast(rank: ContrastRank, image: np.ndarray, mask: np.ndarray) -> float:
    """The definition on the whole image, without the bounding-box crop."""
    bw = rank.band_pixels(mask.shape)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * bw + 1, 2 * bw + 1))
    m8 = mask.astype(np.uint8)
    ring = (cv2.dilate(m8, k) > 0) & ~mask
    inner = mask & ~(cv2.erode(m8, k) > 0)
    if ring.sum() < rank.min_pixels or inner.sum() < rank.min_pixels:
        return 0.0
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.int64) * rank.bins // 256

    def hist(sel: np.ndarray) -> np.ndarray:
        q = lab[sel]
        h = np.bincount((q[:, 0] * rank.bins + q[:, 1]) * rank.bins + q[:, 2], minlength=rank.bins**3)
        return h / h.sum()

    return 1.0 - float(np.sqrt(hist(inner) * hist(ring)).sum())


def _disk_image(h: int = 120, w: int = 160, centre=(60, 80), radius: int = 25) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    image = np.full((h, w, 3), (90, 140, 90), np.uint8)
    image[disk] = (220, 40, 40)
    return image, disk


def test_contrast_is_high_across_a_colour_edge_and_zero_inside_a_uniform_region() -> None:
    rank = ContrastRank(band=8.0, ref_size=160)
    image, disk = _disk_image()
    lab = rank.lab(image)
    assert rank.contrast(lab, disk) == pytest.approx(1.0)
    inside = np.zeros_like(disk)
    inside[50:70, 70:90] = True  # a square within the disk: the same colour on both sides
    assert rank.contrast(lab, inside) == pytest.approx(0.0, abs=1e-9)
    half = disk.copy()
    half[:, 80:] = False  # half the disk: its straight cut has red on both sides
    assert 0.2 < rank.contrast(lab, half) < 0.9
    # empty and full masks, and too few pixels on one side, score 0
    assert rank.contrast(lab, np.zeros_like(disk)) == 0.0 and rank.contrast(lab, np.ones_like(disk)) == 0.0
    np.testing.assert_allclose(rank.contrasts(image, np.stack([disk, inside, half])),
                               [1.0, 0.0, rank.contrast(lab, half)], atol=1e-6)


def test_contrasts_of_a_large_image_are_measured_at_max_side() -> None:
    image, disk = _disk_image()  # 160 px wide
    half = disk.copy()
    half[:, 80:] = False
    masks = np.stack([disk, half])
    exact = ContrastRank(band=8.0, ref_size=160, max_side=0).contrasts(image, masks)
    # within max_side: the same numbers
    np.testing.assert_array_equal(ContrastRank(band=8.0, ref_size=160, max_side=160).contrasts(image, masks), exact)
    big = cv2.resize(image, None, fx=8, fy=8, interpolation=cv2.INTER_NEAREST)  # 1280 px
    big_masks = np.stack([cv2.resize(m.astype(np.uint8), None, fx=8, fy=8, interpolation=cv2.INTER_NEAREST) > 0
                          for m in masks])
    scaled = ContrastRank(band=8.0, ref_size=160, max_side=320).contrasts(big, big_masks)
    np.testing.assert_allclose(scaled, exact, atol=0.05)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrast_in_the_bounding_box_equals_the_whole_image_definition(seed) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (70, 90, 3), np.uint8)
    image[:, 45:] //= 3  # two halves of different brightness
    mask = np.zeros((70, 90), bool)
    y, x = rng.integers(0, 40), rng.integers(0, 60)  # may touch the image border
    mask[y : y + rng.integers(8, 30), x : x + rng.integers(8, 30)] = True
    for rank in (ContrastRank(band=6.0, ref_size=90), ContrastRank(band=12.0, ref_size=90, bins=16)):
        assert rank.contrast(rank.lab(image), mask) == pytest.approx(_brute_contrast(rank, image, mask), abs=1e-9)


def test_contrast_rank_refuses_bad_arguments() -> None:
    for kwargs in ({"weight": -1.0}, {"weight": float("nan")}, {"band": 0.0}, {"ref_size": 0}, {"bins": 1},
                   {"max_side": -1}):
        with pytest.raises(ValueError):
            ContrastRank(**kwargs)
    rank = ContrastRank()
    with pytest.raises(ValueError, match="uint8"):
        rank.lab(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        rank.contrast(rank.lab(np.zeros((4, 4, 3), np.uint8)), np.zeros((5, 4), bool))
    assert rank.lab(np.zeros((4, 4), np.uint8)).shape == (4, 4, 3)  # grey images work


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A 256x256 image with a red disk of radius 12 px at (192, 128): the right half, where
    _Cones predicts the same IoU (0.5) for its three masks of radii 6, 12 and 24 px."""
    yy, xx = np.mgrid[:256, :256]
    image = np.full((256, 256, 3), (90, 140, 90), np.uint8)
    image[(yy - 128) ** 2 + (xx - 192) ** 2 <= 12**2] = (220, 40, 40)
    # _Cones puts x at x * s + 0.5 input pixels (s = 2 here), SAM's frame: this point's cones are
    # centred on the centre of the disk's centre pixel, (192.5, 128.5) in continuous pixels
    at = 0.5 - 0.5 / 2
    return image, np.array([[[192 + at, 128 + at]]], np.float32)


def test_predict_ranks_multimask_outputs_by_iou_plus_contrast() -> None:
    seg = _Cones()
    rank = ContrastRank(weight=0.5)
    seg.mask_rank = rank
    image, pts = _scene()
    emb = seg.embed(image)
    assert "image" in emb.extras  # mask_rank alone makes embed keep the image
    dets = seg.predict(emb, points=pts, labels=[[1]])
    c = dets.extras["contrast"]
    np.testing.assert_allclose(dets.extras["predicted_iou"], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(dets.scores, 0.5 + 0.5 * c, rtol=1e-6)
    assert int(np.argmax(c)) == 1 and c[1] > 0.9  # the mask that is the disk
    assert dets.meta["rank"] == dataclasses.asdict(rank)
    off = seg.predict(emb, points=pts, labels=[[1]], rank="off")
    assert off.meta["rank"] is None and "contrast" not in off.extras
    np.testing.assert_allclose(off.scores, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(off.masks.to_dense(), dets.masks.to_dense())
    # one mask per prompt: nothing to rank, the predicted IoU stays the score
    single = seg.predict(emb, points=pts, labels=[[1]], multimask=False)
    assert single.meta["rank"] is None and "contrast" not in single.extras
    # an explicit rank on a segmenter without one; a click session picks the disk
    seg.mask_rank = None
    emb2 = seg.embed(image)
    assert "image" not in emb2.extras
    with pytest.raises(ValueError, match="carries none"):
        seg.predict(emb2, points=pts, labels=[[1]], rank=rank)
    plain = seg.predict(emb2, points=pts, labels=[[1]])  # "auto" without mask_rank: IoU alone
    assert plain.meta["rank"] is None
    seg.mask_rank = rank
    fallback = seg.predict(emb2, points=pts, labels=[[1]])  # no image: quietly IoU alone
    assert fallback.meta["rank"] is None
    with pytest.raises(ValueError, match="rank must be"):
        seg.predict(emb, points=pts, labels=[[1]], rank="contrast")
    with pytest.raises(ValueError, match="rank must be"):  # refused even with one mask per prompt
        seg.predict(emb, points=pts, labels=[[1]], multimask=False, rank="contrast")

    from composer.interactive import ClickSession

    masks, scores = ClickSession(seg, image, emb).click((192, 128), 1)
    assert int(np.argmax(scores)) == 1
