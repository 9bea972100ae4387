"""Class-agnostic object-proposal recall (SAM paper Table 4) with pycocotools.

COCOeval runs with ``params.useCats = 0`` ("as in proposal scoring") and
``params.maxDets = max_dets``; AR = recall averaged over the IoU thresholds .50:.05:.95,
read straight from ``eval["recall"]`` (``summarize`` hard-codes maxDets indices). Area
ranges use the GT's ``area`` (small < 32², medium 32²..96², large > 96²). Detections are
ranked by ``score`` and truncated at ``max_dets[-1]`` per image.

For LVIS ground truth (categories with a ``frequency`` of ``r``/``c``/``f``), AR@max is also
reported against the GT restricted to each frequency group (``AR_rare`` ...), as in Table 4.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from pycocotools.coco import COCO

from ..structures import Detections
from .coco_ap import CocoResults, check_iou_types, check_max_dets, summarize

logger = logging.getLogger(__name__)

_FREQ = {"f": "frequent", "c": "common", "r": "rare"}
_PREFIX = {"segm": "", "bbox": "box_"}


class ProposalEvaluator:
    """Class-agnostic mask (and box) average recall of object proposals.

    Args:
        coco_gt: ground truth: a pycocotools ``COCO``, a json path (COCO or LVIS) or a dict.
        max_dets: proposal budgets; ``AR@m`` for each, area and frequency splits at the last.
        iou_types: ``"segm"`` (mask AR, the paper's number) and/or ``"bbox"``.
        frequency_groups: for GT categories with a ``frequency`` field (LVIS), also report
            AR@max against the GT of each group.
        results_file: when given, ``evaluate()`` writes the COCO results json there.

    Metrics (in [0, 1]; -1 where undefined), mask keys without a type prefix, box keys with
    ``box_``: ``proposals/AR@<m>``, ``proposals/AR_small@<M>``, ``proposals/AR_medium@<M>``,
    ``proposals/AR_large@<M>``, LVIS only ``proposals/AR_frequent@<M>``, ``_common``,
    ``_rare``; ``proposals/box_AR@<m>`` ...
    """

    prefix = "proposals"

    def __init__(
        self,
        coco_gt: COCO | str | os.PathLike | Mapping[str, Any],
        max_dets: Sequence[int] = (10, 100, 1000),
        iou_types: Sequence[str] = ("segm", "bbox"),
        frequency_groups: bool = True,
        results_file: str | os.PathLike | None = None,
    ) -> None:
        self.max_dets = check_max_dets(max_dets)
        self.iou_types = check_iou_types(iou_types)
        self.frequency_groups = bool(frequency_groups)
        self.results_file = results_file
        self._results = CocoResults(coco_gt)
        self.coco_gt = self._results.coco_gt
        cats = self.coco_gt.dataset["categories"]
        if not cats:
            raise ValueError("ground truth has no categories")
        # any valid id works: with useCats=0 COCOeval ignores the detections' category
        self._any_cat = int(cats[0]["id"])

    def reset(self) -> None:
        self._results.reset()

    def process(self, image_id: Hashable, prediction: Detections) -> None:
        """Record one image's proposals.

        Args:
            image_id: the ground truth's integer image id.
            prediction: Detections in original-image pixels; ``scores`` rank the proposals
                (the paper: mean of predicted IoU and stability); ``masks`` for ``"segm"``.
                Labels are ignored.

        Raises:
            ValueError: unknown image id, missing masks, wrong image size.
        """
        self._results.add(
            image_id, prediction, need_masks="segm" in self.iou_types, category_id=self._any_cat
        )

    def discard(self, image_id: Hashable) -> None:
        """Forget one processed image (the runner's undo for an image that failed elsewhere)."""
        self._results.discard(image_id)

    def evaluate(self) -> dict[str, float]:
        """Class-agnostic AR; -1 (undefined, with a warning) when no image was processed.

        Processed images without any proposal score 0 where the ground truth has objects and
        -1 where it has none, as pycocotools does (with a warning).
        """
        if self.results_file is not None:
            self._results.write(self.results_file)
        out: dict[str, float] = {}
        groups = self._frequency_groups() if self.frequency_groups else {}
        big = self.max_dets[-1]
        for t in self.iou_types:
            keys = self._keys(t, groups)
            E = self._results.cocoeval(t, self.max_dets, use_cats=False)
            if not self._results.entries:
                logger.warning(
                    "ProposalEvaluator: no proposals on %d processed images; %s AR is 0 "
                    "(-1 where the ground truth has no object)",
                    len(self._results.image_ids),
                    t,
                )
            if E is None:  # no image processed (every one failed): undefined, not 0
                logger.warning("ProposalEvaluator: no image was processed; %s AR is -1", t)
                out.update(dict.fromkeys(keys, -1.0))
                continue
            pre = f"{self.prefix}/{_PREFIX[t]}"
            for m in self.max_dets:
                out[f"{pre}AR@{m}"] = summarize(E, False, None, "all", m)
            for area in ("small", "medium", "large"):
                out[f"{pre}AR_{area}@{big}"] = summarize(E, False, None, area, big)
            for group, cat_ids in groups.items():
                out[f"{pre}AR_{group}@{big}"] = self._group_ar(t, cat_ids)
        return out

    # ---------------------------------------------------------------- LVIS frequency groups
    def _keys(self, t: str, groups: Mapping[str, Any]) -> list[str]:
        pre = f"{self.prefix}/{_PREFIX[t]}"
        big = self.max_dets[-1]
        keys = [f"{pre}AR@{m}" for m in self.max_dets]
        keys += [f"{pre}AR_{a}@{big}" for a in ("small", "medium", "large")]
        keys += [f"{pre}AR_{g}@{big}" for g in groups]
        return keys

    def _frequency_groups(self) -> dict[str, set[int]]:
        groups: dict[str, set[int]] = {}
        for c in self.coco_gt.dataset["categories"]:
            f = c.get("frequency")
            if f in _FREQ:
                groups.setdefault(_FREQ[f], set()).add(int(c["id"]))
        return {g: groups[g] for g in ("frequent", "common", "rare") if g in groups}

    def _group_ar(self, iou_type: str, cat_ids: set[int]) -> float:
        """AR@max against the GT restricted to ``cat_ids`` (all proposals kept)."""
        data = dict(self.coco_gt.dataset)
        data["annotations"] = [a for a in data["annotations"] if int(a["category_id"]) in cat_ids]
        sub = CocoResults(data)  # load_coco copies the dict
        sub._entries = self._results._entries
        E = sub.cocoeval(iou_type, self.max_dets, use_cats=False)
        return -1.0 if E is None else summarize(E, False, None, "all", self.max_dets[-1])

    @property
    def image_ids(self) -> list[int]:
        return self._results.image_ids
