"""BSDS500 segmentation regions as point-prompt targets (one object per region).

The paper evaluates single-point segmentation on datasets of object masks; BSDS500 offers
human segmentations instead. Here each region of one annotator's segmentation becomes a
target mask, so the point protocol runs on BSDS images that a model never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..structures import Detections, Masks
from .bsds import BSDS500


@dataclass
class RegionItem:
    """One BSDS image with its regions as ``gt`` Detections (masks, ``ann_id`` = region label)."""

    image_id: str
    path: Path
    gt: Detections

    def load_image(self) -> np.ndarray:
        from ..io.image import load_image

        return load_image(self.path)


class BSDSRegions:
    """BSDS500 regions of one annotator per image, large enough to click.

    Args:
        split: BSDS split (``"test"`` for reporting; models must not train on it).
        annotator: which annotator's segmentation (0 = the first; wraps if an image has fewer).
        min_area_fraction: drop regions smaller than this fraction of the image (default 1%).
        max_regions: keep at most this many regions per image, largest first.
        root: dataset folder (default: ``dataset_dir("bsds500")``).
    """

    def __init__(self, split: str = "test", annotator: int = 0, min_area_fraction: float = 0.01,
                 max_regions: int = 8, root: str | Path | None = None) -> None:
        if not 0 <= min_area_fraction < 1:
            raise ValueError(f"min_area_fraction must be in [0, 1), got {min_area_fraction}")
        if max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {max_regions}")
        self.bsds = BSDS500(split, root=root)
        self.annotator = int(annotator)
        self.min_area_fraction = float(min_area_fraction)
        self.max_regions = int(max_regions)
        self.name = f"bsds500_{split}_regions"

    def __len__(self) -> int:
        return len(self.bsds)

    def __getitem__(self, index: int) -> RegionItem:
        """The image's kept regions.

        Raises:
            ValueError: the .mat has no annotators, or no region reaches ``min_area_fraction``
                (the image would count as evaluated with nothing to click).
        """
        sample = self.bsds[index]
        gts = sample.ground_truth
        if not gts:
            raise ValueError(f"BSDS500 image {sample.image_id!r}: {sample.gt_path} has no annotators")
        seg = np.asarray(gts[self.annotator % len(gts)]["segmentation"])
        labels, counts = np.unique(seg, return_counts=True)
        keep = counts >= self.min_area_fraction * seg.size
        labels, counts = labels[keep], counts[keep]
        if not len(labels):
            raise ValueError(
                f"BSDS500 image {sample.image_id!r}: no region of {sample.gt_path} covers "
                f"min_area_fraction={self.min_area_fraction:g} of the image"
            )
        order = np.argsort(-counts, kind="stable")[: self.max_regions]
        labels = labels[order]
        dense = seg[None] == labels[:, None, None]
        masks = Masks.from_dense(dense)
        gt = Detections.from_masks(masks, labels=np.ones(len(labels), np.int64),
                                   extras={"ann_id": labels.astype(np.int64)}, meta={"image_id": sample.image_id})
        return RegionItem(sample.image_id, sample.image_path, gt)

    def __iter__(self) -> Any:
        for i in range(len(self)):
            yield self[i]
