"""Image embeddings and the cache that lets every task share one encoder pass per image."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .segmenters.base import Segmenter

logger = logging.getLogger(__name__)

CropBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class ImageEmbedding:
    """The encoder output of one image (or one crop of it).

    Attributes:
        features: (1, C, h, w) float32 image embedding (for SAM: (1, 256, 64, 64)).
        original_size: (H, W) of the image (or crop) that was embedded, in pixels.
        input_size: (h, w) of the image after resizing its longest side to ``pad_size``,
            before padding; the valid region of the padded input.
        pad_size: side of the square, padded encoder input (1024 for SAM).
        model_id: id of the model that produced the embedding; decoding with another model
            raises ``ValueError``.
        crop_box: optional XYXY box (x0, y0, x1, y1) of the crop in the full image's pixels.
        extras: further named tensors a backend needs (multi-scale features, the image itself).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    pad_size: int
    model_id: str
    crop_box: CropBox | None = None
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __repr__(self) -> str:
        # shapes, not the tensors (nor the image in extras)
        def brief(t: torch.Tensor) -> str:
            return f"<{' x '.join(map(str, t.shape))} {str(t.dtype).replace('torch.', '')} {t.device}>"

        extras = ", ".join(f"{k}: {brief(v)}" for k, v in self.extras.items())
        return (f"ImageEmbedding(model_id={self.model_id!r}, features={brief(self.features)}, "
                f"original_size={tuple(self.original_size)}, input_size={tuple(self.input_size)}, "
                f"pad_size={self.pad_size}, crop_box={self.crop_box}, extras={{{extras}}})")

    @property
    def nbytes(self) -> int:
        total = self.features.element_size() * self.features.nelement()
        for t in self.extras.values():
            total += t.element_size() * t.nelement()
        return int(total)

    def check_model(self, model_id: str) -> None:
        if self.model_id != model_id:
            raise ValueError(
                f"embedding was made by model {self.model_id!r} and cannot be decoded by {model_id!r}"
            )


def image_hash(image: np.ndarray) -> str:
    """sha1 of an (H, W, 3) uint8 image's shape and pixel bytes."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha1(str((arr.shape, str(arr.dtype))).encode())
    h.update(arr.data)
    return h.hexdigest()


def crop_image(image: np.ndarray, crop_box: CropBox) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    h, w = image.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"crop_box {crop_box} is not inside the {w}x{h} image")
    return image[y0:y1, x0:x1]


class EmbeddingCache:
    """Shared embedding store keyed by (model id, pixel-content hash, crop box).

    A memory LRU bounded by ``max_bytes`` and an optional disk tier (``disk_dir``) that stores
    tensors as ``.npz`` without pickle, next to a JSON header with a sha256 checksum; a corrupt
    disk entry is logged and recomputed. Counters: ``hits`` (memory or disk), ``misses``,
    ``encoder_calls`` and ``disk_hits``. Safe to share across threads: threads that ask for the
    same image at once share one encoder pass (the others wait for it and count as hits).

    Args:
        max_bytes: memory budget for cached tensors (default 2 GiB); 0 disables the memory tier.
        disk_dir: optional folder for the persistent tier.
    """

    def __init__(self, max_bytes: int = 2 << 30, disk_dir: str | os.PathLike[str] | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._store: OrderedDict[tuple[str, str, CropBox | None], ImageEmbedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        # keys being loaded or encoded now: a thread asking for one waits for that result
        self._pending: dict[tuple[str, str, CropBox | None], _Pending] = {}
        self.hits = 0
        self.misses = 0
        self.encoder_calls = 0
        self.disk_hits = 0

    # ---------------------------------------------------------------- public
    def get(self, image: Any, segmenter: Segmenter, crop_box: CropBox | None = None) -> ImageEmbedding:
        """The embedding of ``image`` (or of its ``crop_box``) by ``segmenter``, computed at most once.

        Args:
            image: (H, W, 3) uint8 RGB array, a path or a PIL image.
            segmenter: anything with ``model_id`` and ``embed(image)``.
            crop_box: optional XYXY int box in ``image`` pixels; the crop is embedded and the
                returned embedding records the box. It is the crop's embedding: ``predict``
                takes prompts in the crop's pixels and returns masks of the crop's size
                (add ``crop_box[:2]`` to map them back; the tasks' zoom does this).

        An entry cached without the pixels that ``segmenter`` now keeps in ``extras["image"]``
        (made while its ``mask_refine``, ``flip_tta`` and ``mask_rank`` were off) gets them.

        Raises:
            ValueError: a malformed ``crop_box``, or one not inside the image.
        """
        from .io.image import load_image

        arr = load_image(image)
        box: CropBox | None = None
        if crop_box is not None:
            values = np.asarray(crop_box, dtype=np.float64).reshape(-1)
            if values.shape != (4,) or not np.isfinite(values).all():
                raise ValueError(f"crop_box must be 4 finite XYXY numbers, got {crop_box!r}")
            x0, y0, x1, y1 = (int(v) for v in values)
            box = (x0, y0, x1, y1)
        key = (segmenter.model_id, image_hash(arr), box)
        while True:
            with self._lock:
                emb = self._store.get(key)
                if emb is not None:
                    self._store.move_to_end(key)
                    self.hits += 1
                else:
                    waiting = self._pending.get(key)
                    lead = waiting is None
                    pending = _Pending() if waiting is None else waiting
                    self._pending[key] = pending
            if emb is not None:
                return self._with_image(key, emb, segmenter, arr, box)
            if lead:
                break  # this thread computes the entry
            # another thread is loading or encoding this image: one encoder pass, not one each
            pending.done.wait()
            if pending.result is not None:
                with self._lock:
                    self.hits += 1
                return self._with_image(key, pending.result, segmenter, arr, box)
            # that thread failed: try again (this thread may compute it now)
        try:
            emb = self._compute(key, segmenter, arr, box)
            pending.result = emb
        finally:
            with self._lock:
                del self._pending[key]
            pending.done.set()
        return emb

    def _compute(self, key: tuple[str, str, CropBox | None], segmenter: Segmenter,
                 arr: np.ndarray, box: CropBox | None) -> ImageEmbedding:
        """The entry of ``key`` from the disk tier, else from ``segmenter``; stored in both."""
        emb = self._load_disk(key)
        if emb is not None:
            with self._lock:
                self.hits += 1
                self.disk_hits += 1
                self._put(key, emb)
            return self._with_image(key, emb, segmenter, arr, box)
        pixels = arr if box is None else crop_image(arr, box)  # type: ignore[arg-type]
        emb = segmenter.embed(pixels)
        if box is not None:
            emb = _with_crop(emb, box)  # type: ignore[arg-type]
        with self._lock:
            self.misses += 1
            self.encoder_calls += 1
            self._put(key, emb)
        try:
            self._save_disk(key, emb)
        except OSError as exc:  # a disk tier that cannot be written must not lose the embedding
            logger.warning("embedding cache cannot write to %s (%s); keeping the entry in memory only",
                           self.disk_dir, exc)
        return emb

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "encoder_calls": self.encoder_calls,
                "disk_hits": self.disk_hits,
                "entries": len(self._store),
                "bytes": self._bytes,
            }

    def clear(self) -> None:
        with self._lock:
            self._store.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    def _with_image(self, key: tuple[str, str, CropBox | None], emb: ImageEmbedding,
                    segmenter: Segmenter, arr: np.ndarray, box: CropBox | None) -> ImageEmbedding:
        """``emb`` with the pixels ``segmenter`` keeps now (``image_extras``: ``mask_refine``,
        ``flip_tta``, ``mask_rank``) when it was cached without them, by a segmenter of the same
        model with these off; else ``emb`` itself (the masks must not depend on what the cache
        held)."""
        extras_of = getattr(segmenter, "image_extras", None)
        if extras_of is None or "image" in emb.extras:
            return emb
        extra = extras_of(arr if box is None else crop_image(arr, box))
        if not extra:
            return emb
        emb = dataclasses.replace(emb, extras={**emb.extras, **extra})
        with self._lock:
            self._put(key, emb)
        return emb

    # ---------------------------------------------------------------- memory tier
    def _put(self, key: tuple[str, str, CropBox | None], emb: ImageEmbedding) -> None:
        size = emb.nbytes
        if size > self.max_bytes:
            return
        if key in self._store:
            self._bytes -= self._store.pop(key).nbytes
        self._store[key] = emb
        self._bytes += size
        while self._bytes > self.max_bytes and self._store:
            _, old = self._store.popitem(last=False)
            self._bytes -= old.nbytes

    # ---------------------------------------------------------------- disk tier
    def _paths(self, key: tuple[str, str, CropBox | None]) -> tuple[Path, Path]:
        assert self.disk_dir is not None
        name = hashlib.sha1(repr(key).encode()).hexdigest()
        return self.disk_dir / f"{name}.npz", self.disk_dir / f"{name}.json"

    def _save_disk(self, key: tuple[str, str, CropBox | None], emb: ImageEmbedding) -> None:
        """Write ``emb`` as the disk entry of ``key``.

        Each writer fills its own temporary files and renames them into place, so threads or
        processes writing the same entry at once never mix their bytes (the entry stays
        readable, and its checksum matches).

        Raises:
            OSError: the disk tier cannot be written (no temporary file is left behind).
        """
        if self.disk_dir is None:
            return
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        data_path, head_path = self._paths(key)
        tensors = {"features": emb.features, **{f"extra__{k}": v for k, v in emb.extras.items()}}
        arrays = {k: _to_numpy(v) for k, v in tensors.items()}
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        header = {
            "key": [key[0], key[1], list(key[2]) if key[2] else None],
            "sha256": digest,
            "original_size": list(emb.original_size),
            "input_size": list(emb.input_size),
            "pad_size": emb.pad_size,
            "model_id": emb.model_id,
            "crop_box": list(emb.crop_box) if emb.crop_box else None,
            # numpy has no bfloat16: such tensors are stored as float32 (exactly) and cast back
            "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
        }
        _write_atomic(data_path, data)
        _write_atomic(head_path, json.dumps(header).encode())

    def _load_disk(self, key: tuple[str, str, CropBox | None]) -> ImageEmbedding | None:
        if self.disk_dir is None:
            return None
        data_path, head_path = self._paths(key)
        if not data_path.exists() or not head_path.exists():
            return None
        try:
            header = json.loads(head_path.read_text())
            raw = data_path.read_bytes()
            if hashlib.sha256(raw).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch")
            dtypes = header.get("dtypes") or {}
            # the verified bytes, not the file again: another process may have replaced it
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                features = _from_numpy(npz["features"], dtypes.get("features"))
                extras = {k[len("extra__"):]: _from_numpy(npz[k], dtypes.get(k))
                          for k in npz.files if k.startswith("extra__")}
            return ImageEmbedding(
                features=features,
                original_size=tuple(header["original_size"]),  # type: ignore[arg-type]
                input_size=tuple(header["input_size"]),  # type: ignore[arg-type]
                pad_size=int(header["pad_size"]),
                model_id=str(header["model_id"]),
                crop_box=tuple(header["crop_box"]) if header["crop_box"] else None,  # type: ignore[arg-type]
                extras=extras,
            )
        except Exception as exc:  # a damaged cache entry must never stop the run
            logger.warning("embedding cache entry %s is corrupt (%s); recomputing", data_path.name, exc)
            for p in (data_path, head_path):
                try:
                    p.unlink(missing_ok=True)
                except OSError:  # a read-only cache folder: the entry stays, and is not used
                    pass
            return None


class _Pending:
    """An entry one thread is computing; the others wait on ``done`` for its ``result`` (None:
    the computing thread failed)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: ImageEmbedding | None = None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file of this writer's own, renamed into place.

    Raises:
        OSError: the file cannot be written (the temporary file is removed).
    """
    # a random name, not mkstemp: the file keeps the umask's permissions (shared cache folders)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy of ``t``; bfloat16, which numpy lacks, as float32 (exact)."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _from_numpy(arr: np.ndarray, dtype: Any) -> torch.Tensor:
    """A tensor copy of a stored array, cast to the recorded torch ``dtype`` name (None: as
    stored, an entry written before dtypes were recorded).

    Raises:
        ValueError: ``dtype`` names no torch dtype.
    """
    t = torch.from_numpy(arr.copy())
    if dtype is None:
        return t
    want = getattr(torch, str(dtype), None)
    if not isinstance(want, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return t.to(want)


def _with_crop(emb: ImageEmbedding, box: CropBox) -> ImageEmbedding:
    return ImageEmbedding(emb.features, emb.original_size, emb.input_size, emb.pad_size,
                          emb.model_id, box, emb.extras)
