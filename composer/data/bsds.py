"""BSDS500 reader: images, per-annotator ground truth (.mat) and the official benchmark fixtures.

Layout under ``dataset_dir("bsds500")`` (see its SOURCE.md)::

    images/{train,val,test}/<id>.jpg        481x321 or 321x481 RGB
    groundTruth/{train,val,test}/<id>.mat   variable ``groundTruth``: 1xN cell of structs with
                                            ``Segmentation`` (H, W uint16) and ``Boundaries``
    bench_reference/                        MATLAB self-test inputs and golden outputs
    ucm2_reference/                         gPb-owt-ucm results on the test split
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.io

from .paths import dataset_dir

SPLITS = ("train", "val", "test")


def _root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else dataset_dir("bsds500")


def load_ground_truth(path: str | Path) -> list[dict[str, np.ndarray]]:
    """Read one BSDS ``groundTruth`` .mat file.

    Args:
        path: the .mat file.

    Returns:
        One dict per annotator: ``"segmentation"`` (H, W) int32 region labels 1..K and
        ``"boundaries"`` (H, W) bool boundary pixels.

    Raises:
        ValueError: the file is missing or not a readable .mat, has no ``groundTruth``, or an
            annotator is not a struct with 2-D ``Segmentation`` and ``Boundaries`` of one size;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ground-truth file not found: {path}")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises IndexError, MatReadError, ... on a corrupt file
        raise ValueError(f"cannot read {path} as a .mat file: {type(exc).__name__}: {exc}") from exc
    if "groundTruth" not in mat:
        raise ValueError(f"{path} has no 'groundTruth' variable (found {sorted(mat)})")
    cell = mat["groundTruth"]
    out = []
    for k in range(cell.size):
        try:
            s = cell.flat[k]
            seg = np.asarray(s["Segmentation"][0, 0], dtype=np.int32)
            bdry = np.asarray(s["Boundaries"][0, 0]).astype(bool)
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: annotator {k} is not a struct with Segmentation and Boundaries ({exc})"
            ) from None
        if seg.ndim != 2 or seg.shape != bdry.shape:
            raise ValueError(
                f"{path}: annotator {k} has Segmentation {seg.shape} and Boundaries {bdry.shape}; "
                "expected two (H, W) maps of one size"
            )
        out.append({"segmentation": seg, "boundaries": bdry})
    return out


def load_ucm2(path: str | Path, sample: bool = True) -> np.ndarray:
    """Read a ``ucm2`` .mat map (double size, (2H+1, 2W+1)).

    Args:
        path: the .mat file holding variable ``ucm2``.
        sample: return the pixel-grid map ``ucm2[2::2, 2::2]`` (the benchmark's ``ucm2(3:2:end,
            3:2:end)``), (H, W); otherwise the raw (2H+1, 2W+1) map.

    Returns:
        float64 map in [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ucm2 file not found: {path}")
    mat = scipy.io.loadmat(str(path))
    if "ucm2" not in mat:
        raise ValueError(f"{path} has no 'ucm2' variable (found {sorted(mat)})")
    ucm = np.asarray(mat["ucm2"], dtype=np.float64)
    return ucm[2::2, 2::2] if sample else ucm


def load_png_map(path: str | Path) -> np.ndarray:
    """Read a soft boundary PNG as stored by BSDS benchmarks: (H, W) uint8 (value / 255 = strength)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"boundary map not found: {path}")
    arr = np.asarray(Image.open(path))
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(f"{path}: expected an 8-bit grey PNG, got shape {arr.shape} {arr.dtype}")
    return arr


def load_eval_bdry(folder: str | Path) -> dict[str, float]:
    """Parse ``eval_bdry.txt`` (``bestT bestR bestP bestF R_max P_max F_max Area_PR``)."""
    vals = np.loadtxt(Path(folder) / "eval_bdry.txt", ndmin=1)
    keys: tuple[str, ...] = ("ODS_threshold", "ODS_recall", "ODS_precision", "ODS")
    keys += ("OIS_recall", "OIS_precision", "OIS", "AP")
    if vals.size != len(keys):
        raise ValueError(f"{folder}/eval_bdry.txt: expected 8 numbers, got {vals.size}")
    return {k: float(v) for k, v in zip(keys, vals, strict=True)}


def load_eval_bdry_thr(folder: str | Path) -> np.ndarray:
    """Parse ``eval_bdry_thr.txt``: (T, 4) float64 rows ``[threshold, R, P, F]``."""
    return np.loadtxt(Path(folder) / "eval_bdry_thr.txt", ndmin=2)


def load_eval_bdry_img(folder: str | Path) -> np.ndarray:
    """Parse ``eval_bdry_img.txt``: (N, 5) float64 rows ``[index (1-based), best_t, R, P, F]``."""
    return np.loadtxt(Path(folder) / "eval_bdry_img.txt", ndmin=2)


def bench_reference_dir(root: str | Path | None = None) -> Path:
    """The official benchmark's self-test folder (``bench_reference``)."""
    path = _root(root) / "bench_reference"
    if not path.is_dir():
        raise ValueError(f"BSDS500 bench_reference not found at {path}")
    return path


def ucm2_reference_dir(root: str | Path | None = None) -> Path:
    """The gPb-owt-ucm reference results folder (``ucm2_reference``)."""
    path = _root(root) / "ucm2_reference"
    if not path.is_dir():
        raise ValueError(f"BSDS500 ucm2_reference not found at {path}")
    return path


@dataclass
class BSDSSample:
    """One BSDS500 image; the image and annotations load on first access.

    Attributes:
        image_id: file stem, e.g. ``"100007"``.
        image_path: the .jpg.
        gt_path: the groundTruth .mat.
    """

    image_id: str
    image_path: Path
    gt_path: Path

    @cached_property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        from composer.io.image import load_image

        return load_image(self.image_path)

    @cached_property
    def ground_truth(self) -> list[dict[str, np.ndarray]]:
        """Per annotator ``{"segmentation": (H, W) int32, "boundaries": (H, W) bool}``."""
        return load_ground_truth(self.gt_path)

    @property
    def boundaries(self) -> list[np.ndarray]:
        """Per annotator (H, W) bool boundary maps."""
        return [g["boundaries"] for g in self.ground_truth]


class BSDS500:
    """The BSDS500 images of one split with their ground truth, in sorted id order.

    Ids sort as strings, like MATLAB's ``dir`` (so ``10081`` comes after ``100099``): the order of
    the rows in the official ``eval_bdry_img.txt`` files.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (the benchmark split, 200 images).
        root: dataset folder; default ``composer.data.paths.dataset_dir("bsds500")``.

    Raises:
        ValueError: an unknown split, a missing folder, no .mat files, or an image without its
            .mat or a .mat without its image; the message names the path.
    """

    def __init__(self, split: str = "test", root: str | Path | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.root = _root(root)
        self.image_dir = self.root / "images" / split
        self.gt_dir = self.root / "groundTruth" / split
        for d in (self.image_dir, self.gt_dir):
            if not d.is_dir():
                raise ValueError(f"BSDS500 {split} split incomplete: expected folder {d}")
        ids = sorted(p.stem for p in self.gt_dir.glob("*.mat"))
        if not ids:
            raise ValueError(f"no ground-truth .mat files in {self.gt_dir}")
        missing = [i for i in ids if not (self.image_dir / f"{i}.jpg").is_file()]
        if missing:
            raise ValueError(
                f"{len(missing)} images missing in {self.image_dir}, e.g. {missing[0]}.jpg"
            )
        # an image without ground truth would drop out of the split's numbers unseen
        known = set(ids)
        unlabelled = sorted(p.stem for p in self.image_dir.glob("*.jpg") if p.stem not in known)
        if unlabelled:
            raise ValueError(
                f"{len(unlabelled)} images in {self.image_dir} have no ground truth, "
                f"e.g. {self.gt_dir / unlabelled[0]}.mat"
            )
        self.ids: list[str] = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int | str) -> BSDSSample:
        if isinstance(index, str):
            if index not in self.ids:
                raise KeyError(f"image id {index!r} not in BSDS500 {self.split}")
            iid = index
        else:
            iid = self.ids[index]
        return BSDSSample(iid, self.image_dir / f"{iid}.jpg", self.gt_dir / f"{iid}.mat")

    def __iter__(self) -> Iterator[BSDSSample]:
        for i in range(len(self.ids)):
            yield self[i]

    def __repr__(self) -> str:
        return f"BSDS500(split={self.split!r}, n={len(self)}, root={str(self.root)!r})"
