"""Odd conditions for the batch runner, the embedding cache's disk tier and the official-style
predictor, found by an audit: concurrent writers of one cache entry, a corrupt entry in a
folder that cannot be modified, an entry cached without the image a refining segmenter needs,
an item or result that cannot cross to a worker process, and a ``set_image`` that fails after
another image was set."""

from __future__ import annotations

import logging
import pathlib
import threading

import numpy as np
import pytest
import torch

from composer.embedding import EmbeddingCache, ImageEmbedding
from composer.runner import LocalEngine
from composer.segmenters import load_segmenter


class FakeSegmenter:
    """An encoder of 1 MiB embeddings; ``barrier`` makes concurrent callers finish together."""

    model_id = "fake"

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        self.barrier = barrier

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        if self.barrier is not None:
            self.barrier.wait(timeout=30)
        h, w = image.shape[:2]
        s = 64 / max(h, w)  # the input frame: the image resized to a longest side of 64
        return ImageEmbedding(torch.ones(1, 64, 64, 64), (h, w), (round(h * s), round(w * s)), 64,
                              self.model_id)


IMAGE = np.zeros((20, 30, 3), np.uint8)


def test_concurrent_writers_of_one_cache_entry_leave_it_readable(tmp_path, caplog):
    # four caches on one folder miss the same image at once and write its entry together
    for trial in range(10):
        folder = tmp_path / str(trial)
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=EmbeddingCache(disk_dir=folder).get,
                                    args=(IMAGE, FakeSegmenter(barrier))) for _ in range(4)]
        with caplog.at_level(logging.WARNING, logger="composer.embedding"):
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            reader = EmbeddingCache(disk_dir=folder)
            emb = reader.get(IMAGE, FakeSegmenter())
        assert reader.disk_hits == 1 and reader.encoder_calls == 0, caplog.text
        assert emb.features.shape == (1, 64, 64, 64)
        assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".npz"]  # no .part left
    assert "cannot write" not in caplog.text and "corrupt" not in caplog.text


def test_a_corrupt_entry_in_a_folder_that_cannot_be_modified_is_recomputed(tmp_path, monkeypatch,
                                                                           caplog):
    EmbeddingCache(disk_dir=tmp_path).get(IMAGE, FakeSegmenter())
    npz = next(tmp_path.glob("*.npz"))
    npz.write_bytes(b"not an npz")

    def refuse(self: pathlib.Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "unlink", refuse)  # a read-only (shared) cache folder
    cache = EmbeddingCache(disk_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="composer.embedding"):
        emb = cache.get(IMAGE, FakeSegmenter())
    assert emb.original_size == (20, 30) and cache.encoder_calls == 1
    assert "corrupt" in caplog.text


def _setup() -> int:
    return 0


def _lock_for_one(state: int, item: object) -> object:
    """A result that cannot be pickled back for item 1; the item itself for the others."""
    return threading.Lock() if item == 1 else item


def test_an_item_or_result_that_cannot_be_pickled_fails_alone_in_worker_processes():
    items: list[object] = [0, 1, 2, lambda: 3, 4]  # 1: unpicklable result; 3: unpicklable item
    results = sorted(LocalEngine(2, threads=1).imap(_setup, _lock_for_one, items),
                     key=lambda r: r[0])
    assert [i for i, _, _ in results] == [0, 1, 2, 3, 4]
    assert [(v, e) for i, v, e in results if i in (0, 2, 4)] == [(0, None), (2, None), (4, None)]
    for i in (1, 3):
        assert results[i][1] is None and results[i][2] and "pickle" in results[i][2]


def test_a_failed_set_image_leaves_no_image_set():
    seg = load_segmenter("composer_tiny", device="cpu")
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    seg.set_image(image)
    with pytest.raises(ValueError, match="empty"):
        seg.set_image(image[:0])
    assert not seg.is_image_set
    with pytest.raises(RuntimeError, match="no image is set"):  # not the previous image's masks
        seg.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    seg.set_image(image)
    masks, _, _ = seg.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    assert masks.shape[1:] == (48, 64)


@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_an_entry_cached_without_the_image_gets_it_for_a_refining_segmenter(tmp_path, tier):
    rng = np.random.default_rng(0)
    image = (rng.random((72, 96, 3)) * 60).astype(np.uint8)
    image[15:55, 20:70] += 150
    plain = load_segmenter("composer_tiny", device="cpu")
    plain.mask_refine, plain.flip_tta, plain.mask_rank = None, False, None
    seg = load_segmenter("composer_tiny", device="cpu")  # refines, mirrors and ranks by default
    assert seg.model_id == plain.model_id and seg.mask_refine is not None
    cache = EmbeddingCache(disk_dir=tmp_path)
    assert "image" not in cache.get(image, plain).extras
    if tier == "disk":
        cache = EmbeddingCache(disk_dir=tmp_path)
    emb = cache.get(image, seg)
    assert cache.encoder_calls == (1 if tier == "memory" else 0)
    fresh = seg.predict(seg.embed(image), points=[[45, 35]])
    cached = seg.predict(emb, points=[[45, 35]])
    assert np.array_equal(fresh.masks.to_dense(), cached.masks.to_dense())
    np.testing.assert_allclose(fresh.scores, cached.scores, rtol=1e-5)
