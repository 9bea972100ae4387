"""Prompt simulation of SAM's interactive training (Kirillov et al., 2023, appendix A).

Per mask: the first prompt is a point sampled uniformly inside the mask or the mask's box with
noise (std 10% of the side, at most 20 px per coordinate); later rounds add a point sampled
uniformly from the error region of the previous prediction (positive on false negatives,
negative on false positives) and always feed the previous low-res logits back as the mask
prompt. Two rounds add no point: one inserted at random among the corrective rounds and the
last one, so the model learns to refine from its own mask.

Frames: masks live in the low-res frame (L x L, the padded model input scaled to L); points and
boxes are returned in the model-input frame (pixels of the padded ``img_size`` square), as the
prompt encoder expects. A low-res pixel (x, y) maps to input pixel ((x + 0.5) * s, (y + 0.5) * s)
with s = img_size / L.
"""

from __future__ import annotations

import cv2
import numpy as np


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float64 XYXY box of a (L, L) bool mask in low-res pixel edges (x1, y1 exclusive).

    Raises:
        ValueError: the mask is empty.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("cannot take the box of an empty mask")
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def jitter_box(
    box: np.ndarray,
    rng: np.random.Generator,
    frac: float = 0.1,
    max_px: float = 20.0,
    bounds: tuple[float, float] | None = None,
) -> np.ndarray:
    """Add SAM's box noise: per coordinate N(0, (frac * side)^2), clipped to +-max_px.

    Args:
        box: (4,) float XYXY in input-frame pixels.
        rng: random generator.
        frac: noise std as a fraction of the box width (x) or height (y).
        max_px: largest shift of any coordinate in pixels.
        bounds: optional (width, height) of the frame; the box is clipped into it.

    Returns:
        (4,) float64 XYXY with x0 < x1 and y0 < y1.
    """
    box = np.asarray(box, np.float64)
    if box.shape != (4,) or not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"box must be a (4,) XYXY with positive size, got {box}")
    w, h = box[2] - box[0], box[3] - box[1]
    std = frac * np.array([w, h, w, h])
    noise = np.clip(rng.normal(0.0, 1.0, 4) * std, -max_px, max_px)
    out = box + noise
    if bounds is not None:
        out[[0, 2]] = np.clip(out[[0, 2]], 0, bounds[0])
        out[[1, 3]] = np.clip(out[[1, 3]], 0, bounds[1])
    # Keep a valid box: a collapsed side falls back to the noiseless coordinates.
    if out[2] <= out[0]:
        out[[0, 2]] = box[[0, 2]]
    if out[3] <= out[1]:
        out[[1, 3]] = box[[1, 3]]
    return out


def sample_in_region(region: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """A uniform random (x, y) low-res pixel of a (L, L) bool region; None if it is empty."""
    idx = np.flatnonzero(region)
    if len(idx) == 0:
        return None
    k = int(idx[rng.integers(len(idx))])
    return k % region.shape[1], k // region.shape[1]


def sample_near_centre(
    region: np.ndarray, rng: np.random.Generator, min_frac: float = 0.7
) -> tuple[int, int] | None:
    """A uniform random (x, y) low-res pixel of a (L, L) bool region among those at least
    ``min_frac`` of the largest distance from its boundary (the frame's border counts as
    boundary): a click near the middle of the region, where users (and the point protocol,
    whose first click is the farthest point) click on what they mean. None if it is empty."""
    if not region.any():
        return None
    dt = _distance_to_boundary(region)
    return sample_in_region(dt >= min_frac * dt.max(), rng)


def _distance_to_boundary(mask: np.ndarray) -> np.ndarray:
    """Float32 distance of each pixel of a (H, W) bool mask to the nearest pixel outside it,
    the frame's border counting as outside (0 off the mask)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def corrective_points(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One corrective click per mask, uniform over the error region.

    Args:
        pred: (M, L, L) bool predicted masks.
        gt: (M, L, L) bool ground-truth masks.
        valid: (L, L) or (M, L, L) bool pixels that may be clicked.
        rng: random generator.

    Returns:
        coords (M, 2) float64 XY in low-res pixels (pixel indices) and labels (M,) int64:
        1 on a false negative, 0 on a false positive, -1 (coords 0) when there is no error.
    """
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"pred and gt must both be (M, L, L), got {pred.shape} and {gt.shape}")
    err = (pred != gt) & valid
    coords = np.zeros((len(gt), 2), np.float64)
    labels = np.full(len(gt), -1, np.int64)
    for i in range(len(gt)):
        p = sample_in_region(err[i], rng)
        if p is not None:
            coords[i] = p
            labels[i] = 1 if gt[i, p[1], p[0]] else 0
    return coords, labels


def center_click(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) pixel of a (H, W) bool mask farthest from its boundary (max of the distance transform).

    The image border counts as boundary (the mask is padded with background first), as in the
    RITM/SAM single-click protocol.

    Raises:
        ValueError: the mask is empty.
    """
    if not mask.any():
        raise ValueError("cannot click into an empty mask")
    k = int(np.argmax(_distance_to_boundary(mask)))
    return k % mask.shape[1], k // mask.shape[1]


def round_plan(num_corrective: int, no_point_rounds: int, rng: np.random.Generator) -> list[bool]:
    """For rounds 1..R-1, whether the round adds a corrective point (True) or not (False).

    SAM: ``num_corrective`` = 8 point rounds and ``no_point_rounds`` = 2, one inserted at a
    random position among the point rounds and one at the end (11 rounds with the first).

    Args:
        num_corrective: rounds that add a point.
        no_point_rounds: 0, 1 (only at the end) or 2 (one random, one at the end).
        rng: random generator.
    """
    if num_corrective < 0 or no_point_rounds not in (0, 1, 2):
        raise ValueError(
            f"need num_corrective >= 0 and no_point_rounds in 0..2, got {num_corrective}, {no_point_rounds}"
        )
    plan = [True] * num_corrective
    if no_point_rounds == 2:
        # Inserted after at least one corrective point when there is one.
        lo = 1 if num_corrective else 0
        plan.insert(int(rng.integers(lo, num_corrective + 1)), False)
    if no_point_rounds >= 1:
        plan.append(False)
    return plan


def to_input_frame(xy: np.ndarray, low_res: int, img_size: int) -> np.ndarray:
    """Low-res pixel indices (..., 2) -> input-frame pixel coordinates of the pixel centres."""
    return (np.asarray(xy, np.float64) + 0.5) * (img_size / low_res)
