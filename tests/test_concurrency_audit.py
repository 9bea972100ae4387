"""Concurrency, determinism and bounded memory: one segmenter or cache used by several threads,
pickled copies for worker processes, and what a long batch run keeps alive."""

from __future__ import annotations

import gc
import pickle
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import numpy as np
import pytest
import torch

from composer.embedding import EmbeddingCache, ImageEmbedding
from composer.interactive import ClickSession, ZoomIn
from composer.refine import ContrastRank, GrabCutRefine
from composer.runner import LocalEngine
from composer.segmenters.base import MaskLogits, PromptableSegmenter
from composer.structures import Prompts


class _SlowEncoder:
    """Counts ``embed`` calls; ``fail_first`` makes the first call raise. The first call
    returns (or raises) only once ``waiters`` other threads wait for it (see
    :func:`_get_in_threads`): a sleep let a thread that the OS descheduled for longer arrive
    after the entry was done, and with no memory tier it paid a second pass (a flaky count)."""

    model_id = "slow"

    def __init__(self, fail_first: bool = False) -> None:
        self.calls = 0
        self.fail_first = fail_first
        self.waiters = 0
        self._waiting_now = 0
        self._changed = threading.Condition()

    def wait_for(self, done: threading.Event, timeout: float | None = None) -> bool:
        """``done.wait()`` of a thread waiting for another's pass, counted."""
        with self._changed:
            self._waiting_now += 1
            self._changed.notify_all()
        return threading.Event.wait(done, timeout)

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        with self._changed:
            self.calls += 1
            first = self.calls == 1
            self._changed.notify_all()
            # (a second call meanwhile: the cache did not make that thread wait, a failure)
            if first and not self._changed.wait_for(
                lambda: self._waiting_now >= self.waiters or self.calls > 1, 60
            ):
                raise AssertionError(f"{self._waiting_now} of {self.waiters} threads waited")
        if first and self.fail_first:
            raise RuntimeError("encoder failed")
        h, w = image.shape[:2]
        return ImageEmbedding(torch.zeros(1, 4, 8, 8), (h, w), (h, w), max(h, w), self.model_id)


def _get_in_threads(cache: EmbeddingCache, seg: _SlowEncoder, image: np.ndarray, n: int) -> list:
    """``cache.get(image, seg)`` in ``n`` threads at once; ``seg``'s first pass ends once the
    other ``n - 1`` threads wait for it."""
    import composer.embedding as embedding_mod

    barrier = threading.Barrier(n)
    seg.waiters = n - 1

    class CountedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            return seg.wait_for(self, timeout)

    class Pending(embedding_mod._Pending):
        def __init__(self) -> None:
            super().__init__()
            self.done = CountedEvent()

    def one(_: int) -> ImageEmbedding | str:
        barrier.wait()
        try:
            return cache.get(image, seg)
        except RuntimeError as exc:
            return str(exc)

    with mock.patch.object(embedding_mod, "_Pending", Pending), ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.parametrize("max_bytes", [2 << 30, 0])
def test_cache_threads_asking_for_one_image_share_one_encoder_pass(max_bytes: int) -> None:
    # four threads asking at once each ran the encoder ("computed at most once" was not so)
    cache = EmbeddingCache(max_bytes=max_bytes)
    seg = _SlowEncoder()
    image = np.zeros((8, 8, 3), np.uint8)
    embs = _get_in_threads(cache, seg, image, 4)
    assert seg.calls == 1
    # one entry, handed out as four copies (a caller's in-place edit cannot reach the others)
    assert all(torch.equal(e.features, embs[0].features) for e in embs)
    assert len({e.features.data_ptr() for e in embs}) == 4
    stats = cache.stats()
    assert stats["encoder_calls"] == 1 and stats["misses"] == 1 and stats["hits"] == 3
    assert not cache._pending  # nothing left waiting


def test_cache_waiting_threads_retry_after_a_failed_encoder_pass() -> None:
    cache = EmbeddingCache()
    seg = _SlowEncoder(fail_first=True)
    out = _get_in_threads(cache, seg, np.zeros((8, 8, 3), np.uint8), 3)
    failed = [o for o in out if isinstance(o, str)]
    embs = [o for o in out if isinstance(o, ImageEmbedding)]
    assert failed == ["encoder failed"] and len(embs) == 2
    assert seg.calls == 2  # one retry, shared by the other waiter
    assert not cache._pending
    again = cache.get(np.zeros((8, 8, 3), np.uint8), seg)
    assert seg.calls == 2 and torch.equal(again.features, embs[0].features)


class _Cones(PromptableSegmenter):
    """A toy backend with flip TTA: cones around the first point in a 64x64 low-res frame.

    ``evict_between_batches`` empties the memo of mirrored embeddings after every direct
    decode, as other threads' images do on a shared segmenter.
    """

    model_id = "cones"
    low_res_size = (64, 64)
    flip_tta = True

    def __init__(self, evict_between_batches: bool = False) -> None:
        self.evict = evict_between_batches

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        h, w = image.shape[:2]
        s = 256 / max(h, w)
        return ImageEmbedding(
            torch.zeros(1, 1, 2, 2), (h, w), (int(h * s + 0.5), int(w * s + 0.5)), 256,
            self.model_id, extras=self.image_extras(image),
        )

    def decode(
        self, embedding: ImageEmbedding, prompts: Prompts, multimask: bool = True
    ) -> MaskLogits:
        if self.evict and "image" in embedding.extras:
            self.__dict__.get("_mirror_memo", {}).clear()
        oh, ow = embedding.original_size
        ih, iw = embedding.input_size
        p = torch.as_tensor(prompts.points[:, 0], dtype=torch.float32)
        x = (p[:, 0] + 0.5) * iw / ow / 4
        y = (p[:, 1] + 0.5) * ih / oh / 4
        yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
        d = torch.sqrt((xx - x[:, None, None]) ** 2 + (yy - y[:, None, None]) ** 2)
        radii = torch.tensor([3.0, 6.0, 12.0] if multimask else [6.0])
        logits = (radii[None, :, None, None] - d[:, None]) / 2
        iou = 0.5 + 0.4 * (p[:, 0] < ow / 2).float()[:, None] * torch.ones(1, len(radii))
        return MaskLogits(logits.float(), iou.float())


def _picture(h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_predict_mirrors_the_image_once_per_call_whatever_other_threads_do() -> None:
    # one predict of many prompts decodes them in batches; the mirrored embedding was looked up
    # per batch, so images of other threads pushing it out of the memo cost an encoder pass each
    seg = _Cones(evict_between_batches=True)
    seg.prompt_batch = 1
    emb = seg.embed(_picture())
    pts = np.array([[[10.0, 10.0]], [[30.0, 20.0]], [[50.0, 40.0]], [[5.0, 30.0]]], np.float32)
    dets = seg.predict(emb, points=pts, labels=np.ones((4, 1), int))
    assert seg.mirror_encoder_calls == 1
    quiet = _Cones()
    quiet.prompt_batch = 1
    ref = quiet.predict(quiet.embed(_picture()), points=pts, labels=np.ones((4, 1), int))
    assert np.array_equal(dets.masks.to_dense(), ref.masks.to_dense())
    assert np.array_equal(dets.scores, ref.scores)


def test_mirrored_embedding_keeps_no_second_copy_of_the_pixels() -> None:
    seg = _Cones()
    emb = seg.embed(_picture())
    assert "image" in emb.extras and "image" not in seg.mirrored_embedding(emb).extras


def test_pickled_segmenter_leaves_its_mirror_memo_behind() -> None:
    seg = _Cones()
    emb = seg.embed(_picture())
    before = seg.predict(emb, points=[[10, 10]], labels=[1])
    assert len(seg._mirror_memo) == 1
    copy = pickle.loads(pickle.dumps(seg))
    assert "_mirror_memo" not in copy.__dict__ and len(seg._mirror_memo) == 1
    after = copy.predict(emb, points=[[10, 10]], labels=[1])
    assert np.array_equal(before.masks.to_dense(), after.masks.to_dense())
    assert np.array_equal(before.scores, after.scores)


class _Blob:
    """A result that can be watched with a weak reference."""

    def __init__(self, n: int) -> None:
        self.data = np.ones(n, np.uint8)


def _nothing() -> None:
    return None


def _blob(state: None, item: int) -> _Blob:
    return _Blob(1 << 16)


def test_local_engine_workers_keep_no_finished_result_alive() -> None:
    # every finished future stayed in imap's dict, with its result, until the run ended
    seen = []
    gen = LocalEngine(2, threads=1).imap(_nothing, _blob, list(range(12)))
    for k, (_, res, err) in enumerate(gen):
        assert err is None
        seen.append(weakref.ref(res))
        del res
        if k == 8:
            gc.collect()
            assert sum(r() is not None for r in seen[:-1]) == 0
    assert len(seen) == 12


# ----------------------------------------------------------------- real backends in threads


def _scene(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    """A textured background with a bright ellipse and a dark square."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 110, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 < 1] = (220, 180, 40)
    img[10:40, 10:40] = (20, 30, 160)
    return img


def _work(seg: PromptableSegmenter, image: np.ndarray, emb: ImageEmbedding | None = None) -> list:
    """Masks and scores of first clicks, a box, a second click and a zoom-in click session."""
    e = seg.embed(image) if emb is None else emb
    h, w = image.shape[:2]
    out = []
    first = seg.predict(e, points=[[w // 2, h // 2]], labels=[1])
    box = seg.predict(e, boxes=[[5, 5, 45, 45]], multimask=False)
    low = first.extras["low_res_logits"][int(np.argmax(first.scores))]
    second = seg.predict(e, points=[[w // 2, h // 2], [20, 20]], labels=[1, 0],
                         mask_input=low[None, None], multimask=False)
    for d in (first, box, second):
        out += [d.masks.to_dense(), d.scores, d.extras["low_res_logits"]]
    session = ClickSession(seg, image, embedding=e, zoom_in=ZoomIn(min_crop=32))
    for xy, label in (((w // 2, h // 2), 1), ((w // 2 + 30, h // 2), 0), ((25, 25), 1)):
        masks, scores = session.click(xy, label)
        out += [masks, scores]
    return out


def _same(a: list, b: list, atol: float = 0.0) -> bool:
    """Equal lists of arrays; float32 arrays (the low-res logits) within ``atol``."""
    return len(a) == len(b) and all(
        np.allclose(x, y, rtol=0, atol=atol) if atol and x.dtype == np.float32 and x.ndim == 3
        else np.array_equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


def _check_threads(seg: PromptableSegmenter, logits_atol: float = 0.0) -> None:
    images = [_scene(0), _scene(1)]
    serial = [_work(seg, im) for im in images]
    embs = [seg.embed(im) for im in images]
    with ThreadPoolExecutor(3) as pool:
        # each thread its own image, then several threads decoding one shared embedding
        fresh = list(pool.map(lambda k: _work(seg, images[k % 2]), range(3)))
        shared = list(pool.map(lambda k: _work(seg, images[k % 2], embs[k % 2]), range(3)))
    for k in range(3):
        assert _same(fresh[k], serial[k % 2], logits_atol), f"thread {k}, own embedding"
        assert _same(shared[k], serial[k % 2], logits_atol), f"thread {k}, shared embedding"


def test_classic_in_threads_equals_one_thread() -> None:
    from composer.segmenters import ClassicConfig, ClassicSegmenter

    seg = ClassicSegmenter(ClassicConfig(work_size=96, n_superpixels=80))
    # every per-mask stage the shared predict path has: refinement, flip TTA, contrast rank
    seg.mask_refine = GrabCutRefine(band=8.0, iters=1)
    seg.flip_tta = True
    seg.mask_rank = ContrastRank()
    # its low-res logits are signed distances from OpenCV's precise distance transform, whose
    # last bits depend on where its buffers lie in memory (not on the thread): masks and scores
    # are compared exactly, the logits to within rounding
    _check_threads(seg, logits_atol=1e-4)


def test_composer_tiny_in_threads_equals_one_thread() -> None:
    from composer.sam.composer_tiny import PACKAGED_WEIGHTS
    from composer.segmenters import load_segmenter

    if not PACKAGED_WEIGHTS.is_file():
        pytest.skip("packaged composer_tiny weights missing")
    seg = load_segmenter("composer_tiny", device="cpu")
    assert seg.mask_refine is not None and seg.flip_tta and seg.mask_rank is not None
    _check_threads(seg)
