"""On-disk cache of frozen-backbone features per (image, augmentation variant).

Training a neck + decoder on a frozen CNN backbone needs the backbone's output only once per
image and augmentation variant. Each entry is one uncompressed ``.npz`` (no pickle) holding the
backbone feature maps (float16), the low-res label layers, the valid map and the input size,
written to a ``*.part`` file of the writer's own and renamed, so an interrupted build resumes
where it stopped and runs that share the folder may write one entry at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_write
from .data import ItemRef, PreparedSample, SegmentationItem, Variant, index_masks, prepare_sample

logger = logging.getLogger(__name__)


def default_cache_root() -> Path:
    """``$SAM_COMPOSER_HOME/train_features`` (default ``~/.cache/sam-composer/train_features``)."""
    home = os.environ.get("SAM_COMPOSER_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "sam-composer"
    return base / "train_features"


def image_to_input(model: Any, image: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 input-frame image -> (1, 3, S, S) float normalised, padded model input."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    x = x.to(model.pixel_mean.device)
    return model.preprocess(x)[None]


@torch.no_grad()
def cache_embeddings(model: Any, samples: Iterable[PreparedSample]) -> None:
    """Embed each sample's image once with ``model``'s image encoder (in eval mode) and keep
    the (1, C, g, g) float embedding on the CPU in ``sample.embedding``, dropping the image.

    For a frozen encoder: :class:`~composer.training.trainer.Trainer` and
    :func:`~composer.training.evaluate.evaluate_samples` then decode from the cached
    embedding instead of running the encoder on every step. Do not use it when the encoder
    is trained (the cached embeddings would be the encoder's before training).

    Samples that already carry an embedding are left as they are.

    Raises:
        ValueError: a sample has neither an embedding nor an image (e.g. one built from
            cached features).
    """
    enc = model.image_encoder
    modes = [(m, m.training) for m in enc.modules()]
    enc.eval()
    try:
        for s in samples:
            if s.embedding is not None:
                continue
            if s.image is None:
                raise ValueError(f"sample {s.image_id} has no image to embed")
            s.embedding = enc(image_to_input(model, s.image)).cpu()
            s.image = None
    finally:
        for m, mode in modes:
            m.training = mode


def _loaded(item: SegmentationItem | ItemRef) -> SegmentationItem:
    """``item`` itself, or the item that the reference ``item`` loads (its id checked)."""
    if isinstance(item, SegmentationItem):
        return item
    loaded = item.load()
    if loaded.image_id != item.image_id:
        raise ValueError(f"item reference {item.image_id!r} loaded item {loaded.image_id!r}")
    return loaded


class FeatureCache:
    """Backbone features of (item, variant) pairs, stored under ``root/<name>``.

    Args:
        name: identifies backbone, input size and low-res size (a sub-folder), e.g.
            ``"efficientnet_lite0-512-128"``; a different backbone must use another name.
        root: cache root (default :func:`default_cache_root`).
    """

    def __init__(self, name: str, root: str | os.PathLike[str] | None = None) -> None:
        if not name or "/" in name:
            raise ValueError(f"cache name must be a non-empty folder name, got {name!r}")
        self.dir = Path(root) if root is not None else default_cache_root()
        self.dir = self.dir / name

    def path(self, image_id: str, variant: Variant) -> Path:
        key = hashlib.sha1(f"{image_id}|{variant.key()}".encode()).hexdigest()[:20]
        return self.dir / f"{key}.npz"

    @torch.no_grad()
    def build(
        self,
        model: Any,
        items: Iterable[SegmentationItem | ItemRef],
        variants: Callable[[Any], Sequence[Variant]],
        low_res: int,
        on_item: Callable[[str, int], None] | None = None,
    ) -> list[Path]:
        """Compute and store the entries that are missing; return all entries' paths in order.

        Args:
            model: a ``Sam`` whose ``image_encoder`` has ``forward_backbone`` (run in eval mode).
            items: source items, or references to them (:class:`~composer.training.data.ItemRef`,
                e.g. :func:`~composer.training.data.bsds_item_refs`): a reference is loaded
                only when one of its entries is missing, so a rebuild of a complete cache
                decodes no image and no ground truth.
            variants: item -> its variants; it is given the reference itself for an
                ``ItemRef`` (so it may read its ``image_id`` only); the entries are keyed by
                the id and the variant.
            low_res: side of the low-res frame of the stored layers.
            on_item: optional callback(image_id, new_entries) after each item (progress).

        Raises:
            ValueError: a reference loads an item of another id.
        """
        encoder = model.image_encoder
        if not hasattr(encoder, "forward_backbone"):
            raise TypeError(
                f"{type(encoder).__name__} has no forward_backbone; cannot cache features"
            )
        was_training = model.training
        model.eval()
        self.dir.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        try:
            for item in items:
                new = 0
                loaded: SegmentationItem | None = None
                for v in variants(item):
                    path = self.path(item.image_id, v)
                    paths.append(path)
                    if path.exists():
                        continue
                    if loaded is None:
                        loaded = _loaded(item)  # an ItemRef is read once, and only now
                    # Corner-sampled layers: load() subsamples them at f // 2, which lands
                    # on the model's low-res pixel centres; entries stay as earlier builds
                    # wrote them.
                    sample = prepare_sample(
                        loaded, v, encoder.img_size, low_res, layer_sampling="corner"
                    )
                    assert sample.image is not None
                    feats = encoder.forward_backbone(image_to_input(model, sample.image))
                    self._write(path, sample, feats)
                    new += 1
                if on_item is not None:
                    on_item(item.image_id, new)
        finally:
            model.train(was_training)
        return paths

    @staticmethod
    def _write(path: Path, sample: PreparedSample, feats: Sequence[torch.Tensor]) -> None:
        arrays: dict[str, Any] = {
            f"f{i}": f[0].detach().to(torch.float16).cpu().numpy() for i, f in enumerate(feats)
        }
        arrays.update(
            layers=sample.layers,
            valid=sample.valid,
            input_size=np.asarray(sample.input_size, np.int64),
            image_id=np.asarray(sample.image_id),
        )
        # a temporary file of this writer's own (<key>.npz.<random>.part, removed on an
        # error): runs sharing the cache folder (the default one) may write one entry at once
        with atomic_write(path, "wb", unique=True) as f:
            np.savez(f, **arrays)

    @staticmethod
    def load(
        path: str | os.PathLike[str],
        min_area: int = 16,
        max_area_frac: float = 0.95,
        low_res: int | None = None,
    ) -> PreparedSample:
        """One entry as a :class:`PreparedSample` with ``features`` ((C, h, w) float16 tensors).

        Args:
            path: the entry.
            min_area: see :func:`~composer.training.data.index_masks`.
            max_area_frac: see :func:`~composer.training.data.index_masks`.
            low_res: subsample the stored layers (nearest, pixel centres) to this side, an
                integer divisor of the stored side (e.g. 128 -> 64 for a stride-32 model).
        """
        with np.load(path, allow_pickle=False) as z:
            n = sum(1 for k in z.files if k.startswith("f") and k[1:].isdigit())
            feats = tuple(torch.from_numpy(z[f"f{i}"].copy()) for i in range(n))
            layers, valid = z["layers"].copy(), z["valid"].copy()
            if low_res is not None and low_res != layers.shape[-1]:
                f = layers.shape[-1] // low_res
                if f < 1 or f * low_res != layers.shape[-1]:
                    raise ValueError(f"cannot subsample {layers.shape[-1]} px layers to {low_res}")
                layers = np.ascontiguousarray(layers[:, f // 2 :: f, f // 2 :: f])
                valid = np.ascontiguousarray(valid[f // 2 :: f, f // 2 :: f])
            sample = PreparedSample(
                image_id=str(z["image_id"]),
                image=None,
                layers=layers,
                valid=valid,
                input_size=(int(z["input_size"][0]), int(z["input_size"][1])),
                features=feats,
            )
        sample.masks_index = index_masks(layers, valid, min_area, max_area_frac)
        return sample

    def load_all(
        self,
        paths: Sequence[Path],
        min_area: int = 16,
        max_area_frac: float = 0.95,
        low_res: int | None = None,
    ) -> list[PreparedSample]:
        """Load entries into memory, skipping (and logging) damaged ones and ones without masks."""
        out = []
        for p in paths:
            try:
                s = self.load(p, min_area, max_area_frac, low_res)
            except Exception as exc:  # a damaged entry is rebuilt on the next build()
                logger.warning("feature cache entry %s unreadable (%s); removing it", p, exc)
                Path(p).unlink(missing_ok=True)
                continue
            if len(s.masks_index):
                out.append(s)
        return out
