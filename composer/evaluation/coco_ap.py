"""COCO/LVIS instance AP and AR with pycocotools' COCOeval.

The numbers are pycocotools' own (``evaluate`` + ``accumulate``); only the summary is
recomputed from ``eval["precision"]`` / ``eval["recall"]`` with the same formula as
``COCOeval.summarize``, because ``summarize`` hard-codes ``maxDets=100`` for the first AP
line and the indices 0..2 of ``params.maxDets`` (wrong for LVIS' 300 detections).

LVIS ground truth (image records with ``neg_category_ids`` / ``not_exhaustive_category_ids``)
is evaluated with LVIS' federated protocol, as the official ``lvis`` API does: an image keeps
at most ``max_dets[-1]`` detections over all categories (300), detections of a category that
the image neither has nor lists as absent are dropped (nobody checked it there), unmatched
detections of a category whose annotation is not exhaustive in that image are ignored
instead of counted as false positives, and AP is also reported per category frequency
(``APr``, ``APc``, ``APf``: rare, common, frequent). Plain COCOeval on an LVIS file counts
those detections as false positives and gives a lower AP.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .._atomic import atomic_write
from ..data.coco import load_coco
from ..structures import Detections
from .base import quiet_call

logger = logging.getLogger(__name__)

IOU_TYPES = ("segm", "bbox")
AREAS = ("all", "small", "medium", "large")


def summarize(
    E: COCOeval,
    ap: bool,
    iou_thr: float | None = None,
    area: str = "all",
    max_dets: int | None = None,
) -> float:
    """One summary number of an evaluated + accumulated COCOeval, as ``COCOeval.summarize``.

    Args:
        E: a COCOeval after ``evaluate()`` and ``accumulate()``.
        ap: precision (AP) if True, recall (AR) if False.
        iou_thr: one IoU threshold (e.g. 0.5), or None to average over ``params.iouThrs``.
        area: area range label: ``all``, ``small``, ``medium`` or ``large``.
        max_dets: one of ``params.maxDets`` (default: the last).

    Returns:
        The mean over valid entries (categories, thresholds, recall points), or -1.0 when no
        entry is defined (pycocotools' convention, e.g. no GT in that area range).

    Raises:
        ValueError: ``area``, ``iou_thr`` or ``max_dets`` is not among the eval's parameters.
    """
    p = E.params
    md = p.maxDets[-1] if max_dets is None else int(max_dets)
    if area not in p.areaRngLbl:
        raise ValueError(f"area {area!r} not in {p.areaRngLbl}")
    if md not in p.maxDets:
        raise ValueError(f"max_dets {md} not in {p.maxDets}")
    aind = p.areaRngLbl.index(area)
    mind = list(p.maxDets).index(md)
    s = E.eval["precision"] if ap else E.eval["recall"]  # (T, R, K, A, M) or (T, K, A, M)
    if iou_thr is not None:
        t = np.flatnonzero(np.isclose(p.iouThrs, iou_thr))
        if t.size == 0:
            raise ValueError(f"iou_thr {iou_thr} not in {p.iouThrs.tolist()}")
        s = s[t]
    s = s[..., aind, mind]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def standard_stats(E: COCOeval, max_dets: Sequence[int]) -> dict[str, float]:
    """The 12 COCO summary numbers under readable names.

    ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` at the largest ``max_dets``;
    ``AR@<m>`` for every m in ``max_dets``; ``ARs@<M>``, ``ARm@<M>``, ``ARl@<M>`` at the
    largest M. With ``max_dets = (1, 10, 100)`` these equal ``COCOeval.stats`` in order.
    """
    big = int(max_dets[-1])
    out = {
        "AP": summarize(E, True, None, "all", big),
        "AP50": summarize(E, True, 0.5, "all", big),
        "AP75": summarize(E, True, 0.75, "all", big),
        "APs": summarize(E, True, None, "small", big),
        "APm": summarize(E, True, None, "medium", big),
        "APl": summarize(E, True, None, "large", big),
    }
    for m in max_dets:
        out[f"AR@{int(m)}"] = summarize(E, False, None, "all", int(m))
    for short, area in (("s", "small"), ("m", "medium"), ("l", "large")):
        out[f"AR{short}@{big}"] = summarize(E, False, None, area, big)
    return out


def check_max_dets(max_dets: Sequence[int]) -> tuple[int, ...]:
    md = tuple(int(m) for m in max_dets)
    if not md or any(m <= 0 for m in md) or list(md) != sorted(set(md)):
        raise ValueError(f"max_dets must be increasing positive ints, got {tuple(max_dets)}")
    return md


def check_iou_types(iou_types: Sequence[str] | str) -> tuple[str, ...]:
    types = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
    bad = [t for t in types if t not in IOU_TYPES]
    if not types or bad:
        raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {types}")
    return types


class FederatedCOCOeval(COCOeval):
    """COCOeval with LVIS' rule for categories not exhaustively annotated in an image: their
    unmatched detections are ignored, not false positives.

    Args:
        not_exhaustive: image id -> category ids whose annotation in that image is not
            exhaustive (LVIS' ``not_exhaustive_category_ids``).
    """

    def __init__(self, coco_gt: COCO, coco_dt: COCO, iou_type: str,
                 not_exhaustive: Mapping[int, set[int]]) -> None:
        super().__init__(coco_gt, coco_dt, iou_type)
        self.not_exhaustive = not_exhaustive

    def evaluateImg(self, imgId: int, catId: int, aRng: Any, maxDet: int) -> dict[str, Any] | None:  # noqa: N802, N803
        out = super().evaluateImg(imgId, catId, aRng, maxDet)
        if out is not None and catId in self.not_exhaustive.get(imgId, ()):
            out["dtIgnore"] = np.logical_or(out["dtIgnore"], out["dtMatches"] == 0)
        return out


def federated_info(coco_gt: COCO) -> dict[str, dict[int, set[int]]] | None:
    """LVIS' per-image category lists, or None for a COCO-style (exhaustive) dataset.

    Returns:
        ``{"checked": image id -> categories present (in the ground truth) or listed as
        absent (``neg_category_ids``), "not_exhaustive": image id -> its
        ``not_exhaustive_category_ids``}``.
    """
    images = coco_gt.dataset.get("images", [])
    keys = ("neg_category_ids", "not_exhaustive_category_ids")
    if not any(k in im for im in images for k in keys):
        return None
    checked = {int(im["id"]): {int(c) for c in im.get("neg_category_ids") or []} for im in images}
    for ann in coco_gt.dataset.get("annotations", []):
        checked.setdefault(int(ann["image_id"]), set()).add(int(ann["category_id"]))
    not_exhaustive = {
        int(im["id"]): {int(c) for c in im.get("not_exhaustive_category_ids") or []}
        for im in images
    }
    return {"checked": checked, "not_exhaustive": not_exhaustive}


def frequency_ap(E: COCOeval, max_dets: int | None = None) -> dict[str, float]:
    """AP over the categories of each LVIS frequency group (``frequency`` ``r``/``c``/``f`` of
    the ground truth's categories): ``{"APr", "APc", "APf"}``; -1 for a group with no
    evaluated category; empty when the categories carry no frequency."""
    cats = E.cocoGt.cats
    p = E.params
    freq = [cats[c].get("frequency") for c in p.catIds]
    if not any(freq):
        return {}
    md = p.maxDets[-1] if max_dets is None else int(max_dets)
    mind = list(p.maxDets).index(md)
    aind = p.areaRngLbl.index("all")
    out = {}
    for f in ("r", "c", "f"):
        k = [i for i, fr in enumerate(freq) if fr == f]
        s = E.eval["precision"][:, :, k, aind, mind]
        valid = s[s > -1]
        out[f"AP{f}"] = float(np.mean(valid)) if valid.size else -1.0
    return out


class CocoResults:
    """Accumulates COCO result entries per image and runs COCOeval on them.

    Shared by :class:`CocoEvaluator` and the class-agnostic ``ProposalEvaluator``.
    """

    def __init__(self, coco_gt: COCO | str | os.PathLike | Mapping[str, Any]) -> None:
        self.coco_gt = load_coco(coco_gt)
        self._entries: dict[int, list[dict[str, Any]]] = {}
        self._warned_scores = False

    def reset(self) -> None:
        self._entries = {}

    @property
    def image_ids(self) -> list[int]:
        """Processed image ids, sorted (the set COCOeval is restricted to)."""
        return sorted(self._entries)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """All result entries (image_id, category_id, bbox XYWH, score, segmentation, area)."""
        return [e for i in sorted(self._entries) for e in self._entries[i]]

    def add(
        self,
        image_id: Hashable,
        dets: Detections,
        need_masks: bool,
        category_id: int | None = None,
    ) -> None:
        """Store one image's detections as COCO entries.

        Raises:
            ValueError: unknown image id, a detection size that differs from the GT image,
                or masks missing while ``need_masks``.
            TypeError: ``dets`` is not Detections.
        """
        if not isinstance(dets, Detections):
            raise TypeError(f"expected Detections, got {type(dets).__name__}")
        try:
            iid = int(image_id)  # type: ignore[call-overload]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"COCO image ids are integers, got {image_id!r}") from exc
        rec = self.coco_gt.imgs.get(iid)
        if rec is None:
            raise ValueError(f"image id {iid} is not in the ground truth")
        size = dets.image_size
        if size is not None and size != (int(rec["height"]), int(rec["width"])):
            raise ValueError(
                f"detections for image {iid} have size {size}, ground truth has "
                f"{(int(rec['height']), int(rec['width']))}"
            )
        if need_masks and len(dets) and dets.masks is None:
            raise ValueError(f"segm evaluation needs masks; detections for image {iid} have none")
        if dets.scores is None and len(dets) and not self._warned_scores:
            logger.warning("detections without scores are ranked as if all scored 1.0")
            self._warned_scores = True
        if iid in self._entries:
            logger.warning("image %s processed twice; keeping the latest detections", iid)
        self._entries[iid] = (
            dets.to_coco(image_id=iid, category_id=category_id) if len(dets) else []
        )

    def discard(self, image_id: Hashable) -> None:
        """Forget one processed image (no-op if it was not processed)."""
        try:
            iid = int(image_id)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return
        self._entries.pop(iid, None)

    def cocoeval(
        self, iou_type: str, max_dets: Sequence[int], use_cats: bool = True
    ) -> COCOeval | None:
        """Evaluated and accumulated COCOeval, or None if no image was processed.

        Processed images without any detection are scored too (``loadRes`` rejects an empty
        list, so an empty result set is built directly): COCOeval then gives 0 where the GT
        has objects and -1 where it has none (e.g. no large objects), as with detections.
        """
        entries = self.entries
        if not self._entries:
            return None
        fed = federated_info(self.coco_gt) if use_cats else None
        if fed is not None:
            entries = _federated_entries(entries, fed["checked"], int(max_dets[-1]))
        results = []
        for e in entries:
            r = dict(e)  # loadRes adds keys at the top level only
            if iou_type == "segm":
                if "segmentation" not in r:
                    raise ValueError("segm evaluation needs masks in every detection")
                # with a bbox present loadRes takes the *box* area as the instance area,
                # which changes the small/medium/large split (detectron2 drops it too)
                r.pop("bbox", None)
                r.pop("area", None)
            else:
                r.pop("segmentation", None)
                r.pop("area", None)
            results.append(r)
        if results:
            coco_dt = quiet_call(self.coco_gt.loadRes, results)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": list(self.coco_gt.dataset["images"]),
                "categories": list(self.coco_gt.dataset["categories"]),
                "annotations": [],
            }
            quiet_call(coco_dt.createIndex)
        if fed is not None:
            E: COCOeval = FederatedCOCOeval(self.coco_gt, coco_dt, iou_type, fed["not_exhaustive"])
        else:
            E = COCOeval(self.coco_gt, coco_dt, iou_type)
        E.params.imgIds = self.image_ids
        E.params.maxDets = list(max_dets)
        E.params.useCats = int(bool(use_cats))
        quiet_call(E.evaluate)
        quiet_call(E.accumulate)
        return E

    def write(self, path: str | os.PathLike) -> Path:
        """Write all entries as a COCO results json list; returns the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, "w") as f:  # <name>.part, removed on an error
            f.write(json.dumps(self.entries))
        return out


def _federated_entries(
    entries: Sequence[dict[str, Any]], checked: Mapping[int, set[int]], per_image: int
) -> list[dict[str, Any]]:
    """LVIS' results step: the ``per_image`` best-scored entries of each image over all
    categories, then only those of categories checked in that image (present or absent)."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for e in entries:
        by_image.setdefault(int(e["image_id"]), []).append(e)
    out = []
    for iid, es in by_image.items():
        best = sorted(es, key=lambda e: -float(e["score"]))[:per_image]
        ok = checked.get(iid, set())
        out += [e for e in best if int(e["category_id"]) in ok]
    return out


class CocoEvaluator:
    """COCO-style instance AP/AR (mask and box) over the processed images.

    Args:
        coco_gt: ground truth: a pycocotools ``COCO``, a json path (COCO or LVIS) or a dict.
        iou_types: any of ``"segm"`` and ``"bbox"``.
        max_dets: detections per image for AR (``AR@m`` each) and AP (the last); default
            COCO's (1, 10, 100), or LVIS' (1, 10, 300) for LVIS ground truth.
        results_file: when given, ``evaluate()`` writes the COCO results json there.

    Metrics (values in [0, 1]; -1 where pycocotools has no defined value, e.g. no small GT):
        ``<type>/AP``, ``/AP50``, ``/AP75``, ``/APs``, ``/APm``, ``/APl``, ``/AR@<m>`` for each
        m, ``/ARs@<M>``, ``/ARm@<M>``, ``/ARl@<M>``, for each type in ``iou_types``; on LVIS
        ground truth (federated protocol, see the module doc) also ``/APr``, ``/APc``,
        ``/APf``. Only processed images count (an image with no detections counts if
        processed).
    """

    def __init__(
        self,
        coco_gt: COCO | str | os.PathLike | Mapping[str, Any],
        iou_types: Sequence[str] = ("segm", "bbox"),
        max_dets: Sequence[int] | None = None,
        results_file: str | os.PathLike | None = None,
    ) -> None:
        self.iou_types = check_iou_types(iou_types)
        if max_dets is not None:
            check_max_dets(max_dets)  # bad values fail before the ground truth loads
        self.results_file = None if results_file is None else Path(results_file)
        self._results = CocoResults(coco_gt)
        self.coco_gt = self._results.coco_gt
        if max_dets is None:
            max_dets = (1, 10, 300) if federated_info(self.coco_gt) else (1, 10, 100)
        self.max_dets = check_max_dets(max_dets)
        self.evals: dict[str, COCOeval] = {}

    def reset(self) -> None:
        self._results.reset()
        self.evals = {}

    def process(self, image_id: Hashable, prediction: Detections) -> None:
        """Record one image's detections.

        Args:
            image_id: the ground truth's integer image id.
            prediction: Detections in original-image pixels with ``labels`` (category ids),
                ``scores`` and, for ``"segm"``, ``masks``.

        Raises:
            ValueError: unknown image id, missing labels or masks, wrong image size.
        """
        if isinstance(prediction, Detections) and len(prediction) and prediction.labels is None:
            raise ValueError(
                "CocoEvaluator needs labels (category ids); use ProposalEvaluator for class-agnostic masks"
            )
        self._results.add(image_id, prediction, need_masks="segm" in self.iou_types)

    def discard(self, image_id: Hashable) -> None:
        """Forget one processed image (the runner's undo for an image that failed elsewhere)."""
        self._results.discard(image_id)

    def evaluate(self) -> dict[str, float]:
        """pycocotools metrics; all -1 (undefined, with a warning) when no image was processed.

        Processed images with no detections at all score 0 where the ground truth has
        objects and -1 where it has none, as pycocotools does (with a warning).
        """
        if self.results_file is not None:
            self._results.write(self.results_file)
        out: dict[str, float] = {}
        self.evals = {}
        for t in self.iou_types:
            E = self._results.cocoeval(t, self.max_dets, use_cats=True)
            if not self._results.entries:
                logger.warning(
                    "CocoEvaluator: no detections on %d processed images; %s metrics are 0 "
                    "(-1 where the ground truth has no object)",
                    len(self._results.image_ids),
                    t,
                )
            if E is None:
                # no image processed (every one failed): undefined, pycocotools' -1, not 0
                logger.warning("CocoEvaluator: no image was processed; %s metrics are -1", t)
                stats = dict.fromkeys(_stat_names(self.max_dets), -1.0)
            else:
                self.evals[t] = E
                stats = standard_stats(E, self.max_dets)
                if isinstance(E, FederatedCOCOeval):
                    stats.update(frequency_ap(E))
            out.update({f"{t}/{k}": v for k, v in stats.items()})
        return out

    @property
    def image_ids(self) -> list[int]:
        return self._results.image_ids


def _stat_names(max_dets: Sequence[int]) -> list[str]:
    big = int(max_dets[-1])
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    names += [f"AR@{int(m)}" for m in max_dets]
    names += [f"AR{s}@{big}" for s in ("s", "m", "l")]
    return names
