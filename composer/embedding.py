"""Image embeddings and the cache that lets every task share one encoder pass per image."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._atomic import atomic_write

if TYPE_CHECKING:
    from .segmenters.base import Segmenter

logger = logging.getLogger(__name__)

CropBox = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class ImageEmbedding:
    """The encoder output of one image (or one crop of it).

    Frozen, and checked on construction (the checks below raise ``TypeError`` or
    ``ValueError`` naming the value). ``extras`` is kept as a read-only mapping; the tensors
    themselves cannot be made read-only, so an embedding that an :class:`EmbeddingCache` hands
    out is the caller's own copy (see :meth:`clone`).

    ``==`` and ``hash`` are those of the object (identity), so an embedding can key a dict or
    sit in a set; compare contents with ``torch.equal(a.features, b.features)`` and the sizes.

    Attributes:
        features: (1, C, h, w) floating-point image embedding, all finite (for SAM:
            (1, 256, 64, 64) float32).
        original_size: (H, W) of the image (or crop) that was embedded, in pixels; positive ints.
        input_size: (h, w) of the image after resizing its longest side to ``pad_size``,
            before padding; the valid region of the padded input. Positive ints, at most
            ``pad_size``, and ``original_size`` scaled by one factor (to within a pixel of
            rounding on either side).
        pad_size: side of the square, padded encoder input (1024 for SAM); a positive int.
        model_id: id of the model that produced the embedding; decoding with another model
            raises ``ValueError``.
        crop_box: optional XYXY int box (x0, y0, x1, y1) of the crop in the full image's
            pixels (x1, y1 exclusive); its size is ``original_size``. Fractional values are
            refused (:func:`as_crop_box`).
        extras: further named tensors a backend needs (multi-scale features, the image itself).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    pad_size: int
    model_id: str
    crop_box: CropBox | None = None
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        feats = self.features
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(feats).__name__}")
        if feats.ndim != 4 or feats.shape[0] != 1 or 0 in feats.shape:
            raise ValueError(f"features must be (1, C, h, w) with C, h, w > 0, got {tuple(feats.shape)}")
        if not feats.is_floating_point():
            raise ValueError(f"features must be floating point, got {feats.dtype}")
        if not _all_finite(feats):
            raise ValueError("features hold NaN or infinite values")
        original, inp, pad = check_sizes(self.original_size, self.input_size, self.pad_size)
        if not isinstance(self.model_id, str):
            raise TypeError(f"model_id must be a str, got {self.model_id!r}")
        if not self.model_id:
            raise ValueError("model_id must not be empty")
        box = None if self.crop_box is None else as_crop_box(self.crop_box)
        if box is not None and (box[3] - box[1], box[2] - box[0]) != original:
            raise ValueError(f"crop_box {box} is {box[2] - box[0]}x{box[3] - box[1]} pixels, "
                             f"but original_size is {original} (H, W)")
        if not isinstance(self.extras, Mapping):
            raise TypeError(f"extras must be a mapping of names to tensors, got {type(self.extras).__name__}")
        for k, v in self.extras.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise TypeError(f"extras must map str names to tensors; {k!r} holds {type(v).__name__}")
        object.__setattr__(self, "original_size", original)
        object.__setattr__(self, "input_size", inp)
        object.__setattr__(self, "pad_size", pad)
        object.__setattr__(self, "crop_box", box)
        if not isinstance(self.extras, _Extras):
            object.__setattr__(self, "extras", _Extras(self.extras))

    def clone(self) -> ImageEmbedding:
        """A copy with its own tensors (``Tensor.clone``): in-place changes to either side do
        not reach the other. The checks are not run again."""
        out = object.__new__(ImageEmbedding)
        for f in dataclasses.fields(self):
            object.__setattr__(out, f.name, getattr(self, f.name))
        object.__setattr__(out, "features", self.features.clone())
        object.__setattr__(out, "extras", _Extras({k: v.clone() for k, v in self.extras.items()}))
        return out

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

    def check_fits(self, pad_size: int, grid: Sequence[int] | None = None,
                   channels: int | None = None) -> None:
        """Raise ``ValueError`` unless the features fit a decoder of ``pad_size`` inputs.

        ``check_model`` trusts the id; this checks the sizes an id does not pin down: an
        embedding built by hand under a model's id, or made by the same weights at another
        input size under the same id (a fixed ``model_id`` in PyTorch; an ONNX export's id
        always names its input size). Its prompts would be scaled into the wrong input
        frame, and a decoder with fixed shapes (an ONNX graph) fails with its own error, or
        decodes the wrong frame silently.

        Args:
            pad_size: side of the decoder's square model input.
            grid: (h, w) feature grid the decoder reads; None skips the check.
            channels: feature channels it reads; None skips the check (a decoder may project
                them first).
        """
        shape = tuple(self.features.shape)
        want_grid = None if grid is None else tuple(int(v) for v in grid)
        if (
            self.pad_size != pad_size
            or (want_grid is not None and shape[-2:] != want_grid)
            or (channels is not None and shape[1] != channels)
        ):
            what = "features" if channels is None else f"{channels}-channel features"
            of = "" if want_grid is None else f" of a {want_grid} grid"
            raise ValueError(
                f"embedding features {shape} with pad_size {self.pad_size} do not fit this "
                f"model, which decodes {what}{of} over a {pad_size} input"
            )


def check_sizes(original_size: Any, input_size: Any, pad_size: Any
                ) -> tuple[tuple[int, int], tuple[int, int], int]:
    """The sizes of an :class:`ImageEmbedding` as Python ints, checked as it checks them:
    ``original_size`` and ``input_size`` (H, W) pairs of positive ints, ``pad_size`` a
    positive int at least ``input_size``'s longer side, and ``input_size`` ``original_size``
    resized by one factor (to within a pixel of rounding). Callers that embed run it before
    the encoder, so that bad sizes cost no encoder pass.

    Raises:
        TypeError: a size that is no int.
        ValueError: a size that is not positive, not a pair, or sizes that do not fit.
    """
    original = _size_pair(original_size, "original_size")
    inp = _size_pair(input_size, "input_size")
    pad = _int_value(pad_size, "pad_size")
    if pad <= 0:
        raise ValueError(f"pad_size must be a positive int, got {pad_size!r}")
    if max(inp) > pad:
        raise ValueError(f"input_size {inp} does not fit in the padded {pad}x{pad} input")
    if not _one_scale(original, inp):
        raise ValueError(f"input_size {inp} is not original_size {original} resized by one factor")
    return original, inp, pad


def image_hash(image: np.ndarray) -> str:
    """sha1 of an (H, W, 3) uint8 image's shape and pixel bytes."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha1(str((arr.shape, str(arr.dtype))).encode())
    h.update(arr.data)
    return h.hexdigest()


def as_crop_box(crop_box: Any) -> CropBox:
    """``crop_box`` as an XYXY tuple of four Python ints (x0, y0, x1, y1), x1 > x0 >= 0 and
    y1 > y0 >= 0 (x1, y1 exclusive).

    Integral floats (``10.0``) and numpy integers are accepted; fractional values are refused
    rather than truncated (a crop is a whole number of pixels: round the box yourself, in the
    direction you mean).

    Raises:
        ValueError: not four finite numbers, a fractional or boolean value, or an empty or
            negative box.
    """
    if isinstance(crop_box, torch.Tensor):
        crop_box = crop_box.tolist()
    try:
        nums = [] if isinstance(crop_box, (str, bytes)) else list(
            np.asarray(crop_box, dtype=object).reshape(-1))
    except (TypeError, ValueError):  # ragged or not a sequence
        nums = []
    if len(nums) != 4 or not all(_is_number(v) and math.isfinite(v) for v in nums):
        raise ValueError(f"crop_box must be 4 finite XYXY numbers, got {crop_box!r}")
    if any(float(v) != int(v) for v in nums):
        raise ValueError(f"crop_box must be whole pixels, got {tuple(float(v) for v in nums)}; "
                         "round it first (the crop is not truncated for you)")
    x0, y0, x1, y1 = (int(v) for v in nums)
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise ValueError(f"crop_box must have 0 <= x0 < x1 and 0 <= y0 < y1, got {(x0, y0, x1, y1)}")
    return (x0, y0, x1, y1)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def crop_image(image: np.ndarray, crop_box: Any) -> np.ndarray:
    """The ``crop_box`` (XYXY whole pixels, see :func:`as_crop_box`) of an (H, W, ...) image,
    a view.

    Raises:
        ValueError: a malformed box, or one not inside the image.
    """
    x0, y0, x1, y1 = as_crop_box(crop_box)
    h, w = image.shape[:2]
    if not (x1 <= w and y1 <= h):
        raise ValueError(f"crop_box {(x0, y0, x1, y1)} is not inside the {w}x{h} image")
    return image[y0:y1, x0:x1]


class EmbeddingCache:
    """Shared embedding store keyed by (model id, pixel-content hash, crop box).

    A memory LRU bounded by ``max_bytes`` and an optional disk tier (``disk_dir``) that stores
    tensors as ``.npz`` without pickle, next to a JSON header with a sha256 checksum of the
    tensors and the header's fields; a corrupt disk entry (damaged, of another key, or failing
    the :class:`ImageEmbedding` checks) is logged and recomputed. ``get`` hands out copies
    (:meth:`ImageEmbedding.clone`), so no caller's in-place change reaches the cache. Counters:
    ``hits`` (memory or disk), ``misses``, ``encoder_calls`` and ``disk_hits``. Safe to share
    across threads: threads that ask for the same image at once share one encoder pass (the
    others wait for it and count as hits).

    Args:
        max_bytes: memory budget for cached tensors (default 2 GiB), a whole number of bytes
            (``4e9`` passes); 0 disables the memory tier.
        disk_dir: optional folder for the persistent tier (made on the first write).

    Raises:
        TypeError: ``max_bytes`` is not a number.
        ValueError: ``max_bytes`` is negative, fractional or not finite, or ``disk_dir`` is
            an existing file.
    """

    def __init__(self, max_bytes: int = 2 << 30, disk_dir: str | os.PathLike[str] | None = None) -> None:
        if not _is_number(max_bytes):
            raise TypeError(f"max_bytes must be a number of bytes, got {max_bytes!r}")
        # an int is whole as it is (``sys.maxsize`` for no limit: through float it was not)
        whole = isinstance(max_bytes, (int, np.integer)) or (
            math.isfinite(max_bytes) and float(max_bytes).is_integer())
        if not (whole and max_bytes >= 0):
            raise ValueError(f"max_bytes must be a whole number of bytes >= 0, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        if self.disk_dir is not None and self.disk_dir.exists() and not self.disk_dir.is_dir():
            # else every write failed (logged) and every read missed, all run long
            raise ValueError(f"disk_dir {str(self.disk_dir)!r} is a file, not a folder")
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
            crop_box: optional XYXY box in ``image`` pixels, whole pixels (integral floats
                pass; fractional values are refused, see :func:`as_crop_box`); the crop is
                embedded and the returned embedding records the box. It is the crop's
                embedding: ``predict`` takes prompts in the crop's pixels and returns masks of
                the crop's size (add ``crop_box[:2]`` to map them back; the tasks' zoom does
                this).

        Returns:
            The caller's own copy of the cached embedding (:meth:`ImageEmbedding.clone`, a
            memory copy of its tensors): changing its tensors in place does not reach the
            cache or any other caller. The cache stores tensors detached from autograd, so
            its embeddings carry no graph and no gradient flows through them into the encoder.

        An entry cached without the pixels that ``segmenter`` now keeps in ``extras["image"]``
        (made while its ``mask_refine``, ``flip_tta`` and ``mask_rank`` were off) gets them.

        Raises:
            ValueError: a malformed or fractional ``crop_box``, or one not inside the image;
                ``segmenter.embed`` returned an embedding of another ``model_id`` than the
                segmenter's, or of another ``original_size`` than the pixels it was given.
            TypeError: ``segmenter.embed`` returned no :class:`ImageEmbedding`. Nothing is
                cached then.
        """
        from .io.image import load_image

        arr = load_image(image)
        box: CropBox | None = None
        if crop_box is not None:
            box = as_crop_box(crop_box)
            crop_image(arr, box)  # inside the image, checked before any lookup
        return self._shared(arr, segmenter, box).clone()

    def _shared(self, arr: np.ndarray, segmenter: Segmenter, box: CropBox | None) -> ImageEmbedding:
        """The cached entry itself (not a copy) of ``arr``'s ``box`` by ``segmenter``."""
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
        pixels = arr if box is None else crop_image(arr, box)
        emb = segmenter.embed(pixels)
        _check_embedded(emb, segmenter, key[0], pixels.shape[:2])
        if emb.features.requires_grad or any(v.requires_grad for v in emb.extras.values()):
            # an entry holding the encoder's autograd graph keeps its activations alive (GBs
            # for a ViT, uncounted by max_bytes) for as long as it is cached
            emb = dataclasses.replace(emb, features=emb.features.detach(),
                                      extras={k: v.detach() for k, v in emb.extras.items()})
        if box is not None:
            emb = dataclasses.replace(emb, crop_box=box)
        with self._lock:
            self.misses += 1
            self.encoder_calls += 1
            self._put(key, emb)
        try:
            self._save_disk(key, emb)
        except Exception as exc:  # a disk entry that cannot be written must not lose the embedding
            logger.warning("embedding cache cannot write to %s (%s: %s); keeping the entry in "
                           "memory only", self.disk_dir, type(exc).__name__, exc)
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
        meta = {
            "key": [key[0], key[1], list(key[2]) if key[2] else None],
            "original_size": list(emb.original_size),
            "input_size": list(emb.input_size),
            "pad_size": emb.pad_size,
            "model_id": emb.model_id,
            "crop_box": list(emb.crop_box) if emb.crop_box else None,
            # numpy has no bfloat16 or float8: such tensors are stored as float32 (exactly)
            # and cast back
            "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in tensors.items()},
        }
        header = {"format": _DISK_FORMAT, "sha256": _entry_digest(data, meta), **meta}
        _write_atomic(data_path, data)
        _write_atomic(head_path, json.dumps(header).encode())

    def _load_disk(self, key: tuple[str, str, CropBox | None]) -> ImageEmbedding | None:
        """The disk entry of ``key``, or None (a miss) when there is none, or it is of an older
        format, damaged (the checksum covers the tensors and the header's fields), of another
        key, or fails the :class:`ImageEmbedding` checks; a damaged entry is logged and
        removed."""
        if self.disk_dir is None:
            return None
        data_path, head_path = self._paths(key)
        if not data_path.exists() or not head_path.exists():
            return None
        try:
            header = json.loads(head_path.read_text())
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            if header.get("format") != _DISK_FORMAT:
                # an entry of an older version (its checksum did not cover the header): recomputed
                logger.info("embedding cache entry %s has an older format; recomputing", data_path.name)
                return None
            raw = data_path.read_bytes()
            meta = {k: v for k, v in header.items() if k not in ("format", "sha256")}
            if _entry_digest(raw, meta) != header["sha256"]:
                raise ValueError("checksum mismatch")
            if meta["key"] != [key[0], key[1], list(key[2]) if key[2] else None]:
                raise ValueError(f"the entry is of another key {meta['key']!r}")
            if meta["model_id"] != key[0] or meta["crop_box"] != meta["key"][2]:
                raise ValueError("the header's model id or crop box differs from its key")
            dtypes = meta.get("dtypes") or {}
            # the verified bytes, not the file again: another process may have replaced it
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                features = _from_numpy(npz["features"], dtypes.get("features"))
                extras = {k[len("extra__"):]: _from_numpy(npz[k], dtypes.get(k))
                          for k in npz.files if k.startswith("extra__")}
            return ImageEmbedding(  # checked on construction: shapes, sizes, finite features
                features=features,
                original_size=tuple(meta["original_size"]),  # type: ignore[arg-type]
                input_size=tuple(meta["input_size"]),  # type: ignore[arg-type]
                pad_size=meta["pad_size"],
                model_id=meta["model_id"],
                crop_box=meta["crop_box"],
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


#: version of the disk tier's entries; 2: the checksum covers the header's fields too
_DISK_FORMAT = 2


def _entry_digest(data: bytes, meta: Mapping[str, Any]) -> str:
    """sha256 of a disk entry's ``.npz`` bytes and its header fields (canonical JSON)."""
    h = hashlib.sha256(data)
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def _check_embedded(emb: Any, segmenter: Segmenter, model_id: str, size: tuple[int, ...]) -> None:
    """Refuse what ``segmenter.embed`` returned for pixels of ``size`` (H, W) unless it is an
    :class:`ImageEmbedding` of those pixels by ``model_id`` (the cache key's): stored, another
    object or another model's embedding was served to every later caller (and its disk entry
    refused as corrupt on every load), and another size's embedding gave masks of that size.

    Raises:
        TypeError: not an :class:`ImageEmbedding`.
        ValueError: of another model id, or of another image size.
    """
    who = f"{type(segmenter).__name__}.embed (model_id {model_id!r})"
    if not isinstance(emb, ImageEmbedding):
        raise TypeError(f"{who} returned {type(emb).__name__}, not an ImageEmbedding")
    if emb.model_id != model_id:
        raise ValueError(f"{who} returned an embedding of model {emb.model_id!r}; an embedding "
                         "must carry the model_id of the segmenter that made it")
    if emb.original_size != tuple(size):
        raise ValueError(f"{who} returned an embedding of original_size {emb.original_size} "
                         f"for an image of {tuple(size)} (H, W)")


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
    # a random name (writers of one entry in other threads or processes never write into
    # each other's), not mkstemp: the file keeps the umask's permissions (shared cache folders)
    with atomic_write(path, "wb", unique=True) as f:
        f.write(data)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy of ``t``; the floating dtypes numpy lacks (bfloat16, the float8s) as
    float32, which holds their values exactly."""
    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()
    return t.numpy()


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


class _Extras(Mapping[str, torch.Tensor]):
    """A read-only copy of an embedding's ``extras`` dict (a plain class: it pickles)."""

    def __init__(self, items: Mapping[str, torch.Tensor]) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite; a sum first (a NaN or inf anywhere makes it
    non-finite), the exact check only when the sum is not finite (it may overflow).

    The sum accumulates in float32 (float64 only for float64 values): Apple's MPS has no
    float64, so a float64 sum refused every embedding made there; float32 is also the faster
    sum on a CPU, and a sum that overflows it only costs the exact check.
    """
    with torch.no_grad():
        acc = torch.float64 if t.dtype == torch.float64 else torch.float32
        if bool(torch.isfinite(t.sum(dtype=acc))):
            return True
        return bool(torch.isfinite(t).all())


def _int_value(v: Any, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    return int(v)


def _size_pair(value: Any, name: str) -> tuple[int, int]:
    """``value`` as a (height, width) pair of positive Python ints."""
    pair = value.tolist() if isinstance(value, np.ndarray) and value.ndim == 1 else value
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise ValueError(f"{name} must be an (H, W) pair of ints, got {value!r}")
    h, w = (_int_value(v, name) for v in pair)
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


def _one_scale(original: tuple[int, int], resized: tuple[int, int]) -> bool:
    """Whether ``resized`` (h, w) is ``original`` (H, W) scaled by one factor s, each side
    rounded (by up to half a pixel, a side of 1 from anything smaller), allowing either
    original side to be a pixel off (a crop mapped between two scales of one image)."""
    lo, hi = 0.0, math.inf
    for o, r in zip(original, resized, strict=True):
        lo = max(lo, 0.0 if r == 1 else (r - 0.5) / (o + 1))
        hi = min(hi, math.inf if o == 1 else (r + 0.5) / (o - 1))
    return lo <= hi
