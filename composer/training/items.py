"""The training item: one image with its label layers (what every data source yields).

Its own module so that :mod:`~composer.training.data` (the sources),
:mod:`~composer.training.synthetic` and :mod:`~composer.training.samples` can all use it;
every name here is importable from :mod:`~composer.training.data` as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_LABEL = 65535  # layer value of pixels excluded from loss and clicks (e.g. GrabCut's 128)


@dataclass(frozen=True)
class SegmentationItem:
    """One training image with its masks.

    Attributes:
        image_id: unique id within its source (e.g. ``"bsds/train/2092"``).
        image: (H, W, 3) uint8 RGB in original pixels.
        layers: (A, H, W) uint16 label layers in original pixels; 0 = no mask, k in
            1..65534 = mask k of that layer, :data:`IGNORE_LABEL` = ignored pixel.
    """

    image_id: str
    image: np.ndarray
    layers: np.ndarray

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}"
            )
        if self.layers.ndim != 3 or self.layers.shape[1:] != self.image.shape[:2]:
            raise ValueError(
                f"layers must be (A, H, W) with (H, W) = {self.image.shape[:2]}, got {self.layers.shape}"
            )
