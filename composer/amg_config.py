"""Settings of automatic mask generation (:class:`AmgConfig`; the defaults are the official
``SamAutomaticMaskGenerator``'s), used by :class:`composer.automatic.AutomaticMaskGenerator`
and importable from :mod:`composer.automatic` too."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .amg_utils import build_layer_point_grids

#: AmgConfig fields a segmenter may recommend through its ``amg_thresholds``.
RECOMMENDABLE_FIELDS = ("pred_iou_thresh", "stability_score_thresh", "stability_score_offset")


@dataclass(frozen=True)
class AmgConfig:
    """Settings of automatic mask generation; the defaults are the official generator's.

    Attributes:
        points_per_side: grid points along each side of the image (``points_per_side**2``
            prompts); ``None`` when ``point_grids`` is given.
        point_grids: explicit grids, one per crop layer, each (N, 2) float XY in [0, 1] of the
            crop. Exclusive with ``points_per_side``. Stored as nested tuples so that configs
            compare and hash; ``layer_grids()`` returns arrays.
        points_per_batch: point prompts decoded per forward pass; bounds memory.
        pred_iou_thresh: keep masks whose predicted IoU is > this (0 disables the filter).
        stability_score_thresh: keep masks whose stability score is >= this, in [0, 1] (0
            disables).
        stability_score_offset: logit offset of the stability score's two thresholds.
        box_nms_thresh: box IoU threshold of the NMS within each crop.
        crop_n_layers: crop layers below the full image; layer i has ``(2**i)**2`` crops.
        crop_nms_thresh: box IoU threshold of the NMS across crops.
        crop_overlap_ratio: overlap of first-layer crops as a fraction of the short side.
        crop_n_points_downscale_factor: layer i uses ``points_per_side / factor**i`` per side.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this (pixels),
            then rerun NMS.
        max_mask_area_fraction: if set, drop candidate masks covering more than this fraction
            of the image (the paper's SA-1B filter used 0.95); off by default as officially.
        multimask: three masks per point prompt (official) instead of one.
        keep_low_res_logits: keep each output's low-res logits in
            ``extras["low_res_logits"]`` ((N, h, w) float32, in its crop's low-res frame).
        max_side: None (official: every candidate at full resolution), or a side: an image
            whose longest side exceeds it is processed at that size (the candidates'
            upsampling, stability, boxes, NMS and small-region removal, with
            ``min_mask_region_area`` scaled alike) from the embeddings of the full image (and
            its crops), and the kept masks are upsampled to full resolution (bilinear, 0.5) at
            the end. The cost then follows ``max_side``, not the photo's megapixels; images up
            to that size are processed exactly as without it.
    """

    points_per_side: int | None = 32
    point_grids: tuple[tuple[tuple[float, float], ...], ...] | None = None
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    max_mask_area_fraction: float | None = None
    multimask: bool = True
    keep_low_res_logits: bool = False
    max_side: int | None = None

    def __post_init__(self) -> None:
        """Check the settings.

        Raises:
            ValueError: a setting out of its range (NaN included), a count that is not an
                integer, both or neither of ``points_per_side`` and ``point_grids``, or a grid
                that is not (N, 2) XY in [0, 1].
        """
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        for name in ("points_per_side", "points_per_batch", "crop_n_layers",
                     "crop_n_points_downscale_factor", "max_side"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral)
            ):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.points_per_side is not None and int(self.points_per_side) < 1:
            raise ValueError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if int(self.crop_n_layers) < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {self.crop_n_layers}")
        if self.point_grids is not None:
            grids = []
            for i, grid in enumerate(self.point_grids):
                g = np.asarray(grid, dtype=np.float64)
                if g.size == 0:
                    g = g.reshape(0, 2)
                if g.ndim != 2 or g.shape[1] != 2:
                    raise ValueError(
                        f"point_grids[{i}] must be an (N, 2) array of XY points (point_grids "
                        f"holds one grid per crop layer), got shape {g.shape}"
                    )
                if not np.all(np.isfinite(g)) or (g.size and (g.min() < 0 or g.max() > 1)):
                    raise ValueError(f"point_grids[{i}] must hold finite XY values in [0, 1]")
                grids.append(g)
            if len(grids) < self.crop_n_layers + 1:
                raise ValueError(
                    f"point_grids has {len(grids)} grids; crop_n_layers={self.crop_n_layers} "
                    f"needs {self.crop_n_layers + 1}"
                )
            as_tuples = tuple(tuple((float(x), float(y)) for x, y in g) for g in grids)
            object.__setattr__(self, "point_grids", as_tuples)
        if int(self.points_per_batch) < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {self.points_per_batch}")
        for name in (
            "pred_iou_thresh",
            "stability_score_thresh",
            "stability_score_offset",
            "crop_overlap_ratio",
        ):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        # a stability score is at most 1: above that every mask would go, silently (e.g. a
        # percentage, 95); a predicted IoU may exceed 1, so its threshold has no upper bound
        if not 0.0 <= self.stability_score_thresh <= 1.0:
            raise ValueError(
                f"stability_score_thresh must be in [0, 1], got {self.stability_score_thresh}"
            )
        if self.stability_score_offset < 0:
            raise ValueError(
                f"stability_score_offset must be >= 0, got {self.stability_score_offset}"
            )
        for name in ("box_nms_thresh", "crop_nms_thresh"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.crop_overlap_ratio < 1.0:
            raise ValueError(f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio}")
        if int(self.crop_n_points_downscale_factor) < 1:
            raise ValueError(
                f"crop_n_points_downscale_factor must be >= 1, got {self.crop_n_points_downscale_factor}"
            )
        if not (np.isfinite(self.min_mask_region_area) and self.min_mask_region_area >= 0):
            raise ValueError(f"min_mask_region_area must be finite and >= 0, got {self.min_mask_region_area}")
        frac = self.max_mask_area_fraction
        if frac is not None and not 0.0 < frac <= 1.0:
            raise ValueError(f"max_mask_area_fraction must be in (0, 1] or None, got {frac}")
        if self.max_side is not None and int(self.max_side) < 1:
            raise ValueError(f"max_side must be >= 1 or None, got {self.max_side}")

    @classmethod
    def for_segmenter(
        cls, segmenter: Any, base: AmgConfig | None = None, **overrides: Any
    ) -> AmgConfig:
        """``base`` (default: the official defaults) with the segmenter's recommended quality
        thresholds, then ``overrides``.

        A segmenter whose IoU head or logit scale differs from SAM's may carry
        ``amg_thresholds`` (a dict of ``pred_iou_thresh`` / ``stability_score_thresh`` /
        ``stability_score_offset`` values chosen on validation data, e.g. composer_tiny's by
        ``recipes/calibrate_amg.py``); SAM and segmenters without it keep ``base``'s values.
        A threshold override of None means "not given" (a CLI flag left at its default).
        """
        cfg = cls() if base is None else base
        recommended = getattr(segmenter, "amg_thresholds", None) or {}
        values: dict[str, Any] = {
            k: float(v) for k, v in recommended.items() if k in RECOMMENDABLE_FIELDS
        }
        values.update(
            (k, v) for k, v in overrides.items() if v is not None or k not in RECOMMENDABLE_FIELDS
        )
        return dataclasses.replace(cfg, **values) if values else cfg

    def layer_grids(self) -> list[np.ndarray]:
        """(N_i, 2) float64 XY grids in [0, 1], one per crop layer."""
        if self.point_grids is not None:
            return [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in self.point_grids]
        return build_layer_point_grids(
            int(self.points_per_side),  # type: ignore[arg-type]
            int(self.crop_n_layers),
            int(self.crop_n_points_downscale_factor),
        )
