"""ImageEmbedding's checks on construction, the cache's copies, its disk tier's damaged entries
and whole-pixel crop boxes."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import io
import json
import logging
import sys
import weakref
from typing import Any

import numpy as np
import pytest
import torch

from composer.embedding import EmbeddingCache, ImageEmbedding, as_crop_box, crop_image, image_hash


class _Toy:
    """Segmenter double: (1, 2, 4, 4) features that follow the pixels, the image in extras,
    the input frame of a 64-pixel longest side."""

    model_id = "toy-embed"

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        self.calls += 1
        h, w = image.shape[:2]
        s = 64 / max(h, w)
        feats = torch.full((1, 2, 4, 4), float(image.mean())) + torch.arange(32.0).reshape(1, 2, 4, 4)
        return ImageEmbedding(feats, (h, w), (round(h * s), round(w * s)), 64, self.model_id,
                              extras={"image": torch.tensor(image)})


IMAGE = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)


def _emb(**changes: Any) -> ImageEmbedding:
    args: dict[str, Any] = dict(features=torch.zeros(1, 2, 4, 4), original_size=(40, 60),
                                input_size=(43, 64), pad_size=64, model_id="m")
    args.update(changes)
    return ImageEmbedding(**args)


# --------------------------------------------------------------------------- copies
def test_a_callers_changes_to_its_embedding_do_not_reach_the_next_get() -> None:
    cache, seg = EmbeddingCache(), _Toy()
    first = cache.get(IMAGE, seg)  # the miss: the computed entry is not the caller's object
    want_feats, want_image = first.features.clone(), first.extras["image"].clone()
    first.features.mul_(0)
    first.extras["image"][:] = 0
    again = cache.get(IMAGE, seg)  # a hit
    with torch.inference_mode():  # in-place writes are allowed there, on inference tensors too
        again.features.add_(5)
    again.extras["image"].numpy()[0, 0] = 7  # a write through a numpy view, unseen by torch
    third = cache.get(IMAGE, seg)
    assert seg.calls == 1 and cache.hits == 2
    assert torch.equal(third.features, want_feats)
    assert torch.equal(third.extras["image"], want_image)


def test_fields_and_extras_cannot_be_replaced() -> None:
    emb = EmbeddingCache().get(IMAGE, _Toy())
    with pytest.raises(dataclasses.FrozenInstanceError):
        emb.original_size = (1, 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        emb.extras["image"] = torch.zeros(1)  # type: ignore[index]
    given = {"image": torch.zeros(2, 2, 3, dtype=torch.uint8)}
    made = _emb(original_size=(2, 2), input_size=(64, 64), extras=given)
    given.clear()  # the caller's dict is not the embedding's
    assert list(made.extras) == ["image"]


def test_clone_copies_the_tensors_and_pickles() -> None:
    import pickle

    emb = _emb(extras={"x": torch.ones(3)})
    twin = emb.clone()
    twin.features.add_(1)
    twin.extras["x"].add_(1)
    assert float(emb.features.sum()) == 0 and float(emb.extras["x"].sum()) == 3
    back = pickle.loads(pickle.dumps(emb))
    assert torch.equal(back.extras["x"], emb.extras["x"]) and back.original_size == (40, 60)


def test_embeddings_compare_and_hash_by_identity() -> None:
    """The dataclass's field-wise ``==`` compared the tensors with ``==``, whose truth value
    raised (RuntimeError: ambiguous), and ``hash`` raised on the extras mapping (TypeError):
    ``emb in some_list`` or a dict keyed by embeddings failed."""
    emb = _emb(extras={"x": torch.ones(3)})
    twin = emb.clone()
    assert emb == emb and emb != twin and not (emb == twin)
    assert emb in [twin, emb] and twin not in [emb]
    seen = {emb: "a", twin: "b"}
    assert seen[emb] == "a" and seen[twin] == "b" and len({emb, emb, twin}) == 2


# --------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(features=np.zeros((1, 2, 4, 4), np.float32)), TypeError, "torch.Tensor"),
        (dict(features=torch.zeros(2, 4, 4)), ValueError, r"\(1, C, h, w\)"),
        (dict(features=torch.zeros(2, 2, 4, 4)), ValueError, r"\(1, C, h, w\)"),
        (dict(features=torch.zeros(1, 0, 4, 4)), ValueError, r"\(1, C, h, w\)"),
        (dict(features=torch.zeros(1, 2, 4, 4, dtype=torch.int64)), ValueError, "floating point"),
        (dict(features=torch.full((1, 2, 4, 4), float("nan"))), ValueError, "NaN or infinite"),
        (dict(features=torch.tensor([1.0, float("inf")]).reshape(1, 1, 1, 2)), ValueError, "NaN"),
        (dict(original_size=(-40, 60)), ValueError, "original_size must be positive"),
        (dict(original_size=(0, 60)), ValueError, "original_size must be positive"),
        (dict(original_size=(40, 60, 3)), ValueError, r"original_size must be an \(H, W\) pair"),
        (dict(original_size=(40.5, 60)), TypeError, "original_size must be an int"),
        (dict(original_size=(True, 60)), TypeError, "original_size must be an int"),
        (dict(input_size=(43, 0)), ValueError, "input_size must be positive"),
        (dict(input_size=(43, 65)), ValueError, "does not fit in the padded 64x64"),
        (dict(pad_size=0, input_size=(43, 64)), ValueError, "pad_size must be a positive int"),
        (dict(pad_size=64.0), TypeError, "pad_size must be an int"),
        # (W, H) for (H, W): the masks would come out transposed
        (dict(original_size=(60, 40)), ValueError, "is not original_size .* resized by one factor"),
        (dict(input_size=(64, 64)), ValueError, "resized by one factor"),
        (dict(model_id=""), ValueError, "model_id must not be empty"),
        (dict(model_id=None), TypeError, "model_id"),
        (dict(crop_box=(0, 0, 60.5, 40)), ValueError, "whole pixels"),
        (dict(crop_box=(0, 0, 50, 40)), ValueError, r"50x40 pixels, but original_size is \(40, 60\)"),
        (dict(crop_box=(10, 10, 5, 50)), ValueError, "0 <= x0 < x1"),
        (dict(extras={"image": np.zeros((40, 60, 3))}), TypeError, "'image' holds ndarray"),
        (dict(extras=[("a", torch.zeros(1))]), TypeError, "extras must be a mapping"),
    ],
)
def test_construction_refuses_bad_values(changes, error, match) -> None:
    with pytest.raises(error, match=match):
        _emb(**changes)


def test_construction_normalises_good_values() -> None:
    emb = _emb(original_size=[np.int64(40), 60], input_size=np.array([43, 64]),
               pad_size=np.int32(64), crop_box=np.array([10.0, 5.0, 70.0, 45.0]))
    assert emb.original_size == (40, 60) and type(emb.original_size[0]) is int
    assert emb.input_size == (43, 64) and emb.pad_size == 64 and type(emb.pad_size) is int
    assert emb.crop_box == (10, 5, 70, 45) and all(type(v) is int for v in emb.crop_box)
    # a side of 1 may come from anything smaller, and either side may be a pixel off
    assert _emb(original_size=(1, 5000), input_size=(1, 64)).input_size == (1, 64)
    assert _emb(original_size=(341, 512), input_size=(683, 1024), pad_size=1024).pad_size == 1024
    # values too large to sum in float64 are still finite
    big = torch.full((1, 1, 2, 2), 1e308, dtype=torch.float64)
    assert _emb(features=big).features is big
    for half in (torch.float16, torch.bfloat16):
        assert _emb(features=torch.full((1, 2, 4, 4), 6e4, dtype=half)).features.dtype == half


class _NoFloat64(torch.overrides.TorchFunctionMode):
    """Torch as Apple's MPS runs it: asking for float64 raises (MPS has no float64)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        asked = [*args, *kwargs.values()]
        if func is torch.Tensor.double or any(a is torch.float64 for a in asked):
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype")
        return func(*args, **kwargs)


def test_the_finite_check_asks_for_no_float64() -> None:
    """The check summed in float64, which Apple's MPS has not: every embedding made on an MPS
    device was refused with a TypeError."""
    with _NoFloat64():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            assert _emb(features=torch.ones(1, 2, 4, 4, dtype=dtype)).features.dtype == dtype
            bad = torch.ones(1, 2, 4, 4, dtype=dtype)
            bad[0, 1, 2, 3] = float("nan")
            with pytest.raises(ValueError, match="NaN or infinite"):
                _emb(features=bad)
        # a float32 sum that overflows: the exact check says finite, or names the inf
        huge = torch.full((1, 2, 4, 4), 3e38)
        assert _emb(features=huge).features is huge
        huge[0, 0, 0, 0] = float("inf")
        with pytest.raises(ValueError, match="NaN or infinite"):
            _emb(features=huge)


class _Wrong(_Toy):
    """A backend whose ``embed`` returns what ``result(image)`` makes."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result

    def embed(self, image: np.ndarray) -> Any:
        self.calls += 1
        return self.result(image)


WRONG_RESULTS = {
    # a Tensor has .nbytes: it was stored, and handed out (cloned) by the next get
    "a tensor": (lambda im: torch.zeros(1, 2, 4, 4), TypeError, "returned Tensor, not an ImageEmbedding"),
    "None": (lambda im: None, TypeError, "returned NoneType"),
    # served to later callers (predict refuses it), its disk entry 'corrupt' on every load
    "another model's": (lambda im: dataclasses.replace(_Toy().embed(im), model_id="other"),
                        ValueError, "of model 'other'"),
    # masks of the wrong size, from memory and from the disk tier
    "another size's": (lambda im: _emb(original_size=(80, 120), input_size=(43, 64), model_id=_Toy.model_id),
                       ValueError, r"original_size \(80, 120\) for an image of \(40, 60\)"),
}


@pytest.mark.parametrize("wrong", list(WRONG_RESULTS))
@pytest.mark.parametrize("box", [None, (0, 0, 60, 40)])
def test_a_backends_wrong_embedding_is_refused_not_cached(tmp_path, wrong, box) -> None:
    result, error, match = WRONG_RESULTS[wrong]
    cache = EmbeddingCache(disk_dir=tmp_path)
    seg = _Wrong(result)
    for _ in range(2):  # refused every time, never served from memory
        with pytest.raises(error, match=match):
            cache.get(IMAGE, seg, crop_box=box)
    assert seg.calls == 2 and len(cache) == 0 and cache.misses == 0
    assert not list(tmp_path.iterdir())  # nothing written to the disk tier
    # the entry is computed once the backend is mended
    good = _Toy()
    assert cache.get(IMAGE, good, crop_box=box).original_size == (40, 60) and good.calls == 1


def test_the_cache_keeps_no_autograd_graph() -> None:
    """A backend that embeds with autograd on (a trainable encoder, no ``no_grad``): the cache
    held each entry's graph and with it the encoder's activations, which ``max_bytes`` does
    not count, for as long as the entry stayed cached."""
    weight = torch.ones(1, requires_grad=True)
    activations: list[torch.Tensor] = []

    def grad_embedding(image: np.ndarray) -> ImageEmbedding:
        emb = _Toy().embed(image)
        hidden = emb.features.expand(1, 2, 4, 4).contiguous() * weight  # an activation, saved
        activations.append(hidden)
        return dataclasses.replace(emb, features=hidden * weight,
                                   extras={**emb.extras, "grid": hidden.sum(1) * weight})

    cache = EmbeddingCache()
    seg = _Wrong(grad_embedding)
    first = cache.get(IMAGE, seg)
    assert first.features.grad_fn is None and not first.features.requires_grad
    assert not first.extras["grid"].requires_grad
    ((stored,),) = [list(cache._store.values())]
    assert stored.features.grad_fn is None and stored.extras["grid"].grad_fn is None
    assert torch.equal(first.features, _Toy().embed(IMAGE).features)
    ref = weakref.ref(activations.pop())
    gc.collect()
    assert ref() is None  # the graph, and the activation it saved, are gone
    assert cache.get(IMAGE, seg).features.grad_fn is None and seg.calls == 1


@pytest.mark.parametrize(
    "max_bytes, error, match",
    [
        (-1, ValueError, "whole number of bytes >= 0, got -1"),
        (1.5, ValueError, "got 1.5"),  # was 1, silently
        (float("nan"), ValueError, "got nan"),  # was int()'s "cannot convert float NaN"
        (float("inf"), ValueError, "got inf"),  # was int()'s OverflowError
        ("1GB", TypeError, "got '1GB'"),  # was "'<' not supported between str and int"
        (None, TypeError, "got None"),
        (True, TypeError, "got True"),  # was a budget of 1 byte
    ],
)
def test_cache_refuses_a_bad_max_bytes(max_bytes, error, match) -> None:
    with pytest.raises(error, match=match):
        EmbeddingCache(max_bytes=max_bytes)


def test_cache_budgets_of_whole_bytes_pass_and_a_file_is_no_disk_dir(tmp_path) -> None:
    assert EmbeddingCache(max_bytes=4e9).max_bytes == 4_000_000_000
    assert EmbeddingCache(max_bytes=np.int64(0)).max_bytes == 0
    # ints beyond float's 53 bits are whole too (they were refused once compared via float)
    for big in (sys.maxsize, 2**53 + 1, np.iinfo(np.int64).max, 10**400):
        assert EmbeddingCache(max_bytes=big).max_bytes == int(big)
    a_file = tmp_path / "cache"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        EmbeddingCache(disk_dir=a_file)
    cache = EmbeddingCache(disk_dir=tmp_path / "new")  # made on the first write
    cache.get(IMAGE, _Toy())
    assert len(list((tmp_path / "new").glob("*.npz"))) == 1


# --------------------------------------------------------------------------- crop boxes
def test_a_fractional_crop_box_is_refused_not_truncated() -> None:
    cache, seg = EmbeddingCache(), _Toy()
    with pytest.raises(ValueError, match=r"crop_box must be whole pixels, got \(10.5, 0.0, 50.2, 30.0\)"):
        cache.get(IMAGE, seg, crop_box=(10.5, 0, 50.2, 30))
    assert seg.calls == 0 and len(cache) == 0
    with pytest.raises(ValueError, match="whole pixels"):
        crop_image(IMAGE, (0.5, 0, 10, 10))
    with pytest.raises(ValueError, match="4 finite XYXY numbers"):
        as_crop_box((True, 0, 10, 10))
    # whole pixels spelled as floats, numpy or torch numbers: one entry, int boxes
    a = cache.get(IMAGE, seg, crop_box=(10.0, 0.0, 50.0, 30.0))
    b = cache.get(IMAGE, seg, crop_box=np.array([10, 0, 50, 30], np.int64))
    c = cache.get(IMAGE, seg, crop_box=torch.tensor([10, 0, 50, 30]))
    assert seg.calls == 1 and a.crop_box == b.crop_box == c.crop_box == (10, 0, 50, 30)
    assert a.original_size == (30, 40)


# --------------------------------------------------------------------------- disk tier
def _entry(tmp_path) -> tuple[Any, Any]:
    EmbeddingCache(disk_dir=tmp_path).get(IMAGE, _Toy())
    (npz,) = tmp_path.glob("*.npz")
    return npz, npz.with_suffix(".json")


def _reseal(npz, head, header: dict[str, Any]) -> None:
    """Write ``header`` with a checksum that matches it (an entry damaged consistently)."""
    meta = {k: v for k, v in header.items() if k not in ("format", "sha256")}
    h = hashlib.sha256(npz.read_bytes())
    h.update(json.dumps(meta, sort_keys=True).encode())
    head.write_text(json.dumps({**header, "sha256": h.hexdigest()}))


def _nan_features(npz, head, header):
    buf = io.BytesIO()
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["features"] = np.full_like(arrays["features"], np.nan)
    np.savez(buf, **arrays)
    npz.write_bytes(buf.getvalue())
    _reseal(npz, head, header)


# damage -> what the log says of it
DAMAGE = {
    "truncated data": (lambda npz, head, header: npz.write_bytes(npz.read_bytes()[:100]),
                       "corrupt (checksum mismatch)"),
    "truncated header": (lambda npz, head, header: head.write_text(head.read_text()[:30]),
                         "corrupt"),
    "header not an object": (lambda npz, head, header: head.write_text("[1, 2]"),
                             "corrupt (the header is not a JSON object)"),
    # sizes changed together keep the ImageEmbedding checks happy: only the checksum sees it
    "sizes edited": (lambda npz, head, header: head.write_text(json.dumps(
        {**header, "original_size": [20, 30], "input_size": [43, 64]})), "checksum mismatch"),
    "an older format": (lambda npz, head, header: head.write_text(json.dumps(
        {k: v for k, v in header.items() if k != "format"})), "has an older format"),
    # damage that matches its checksum (written so, or resealed): the other checks see it
    "another key's entry": (lambda npz, head, header: _reseal(
        npz, head, {**header, "key": [header["key"][0], "0" * 40, None]}),
        "the entry is of another key"),
    "NaN features, resealed": (_nan_features, "features hold NaN or infinite values"),
    "transposed sizes, resealed": (lambda npz, head, header: _reseal(
        npz, head, {**header, "original_size": [60, 40]}), "resized by one factor"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_disk_entry_is_recomputed(tmp_path, caplog, damage) -> None:
    npz, head = _entry(tmp_path)
    spoil, says = DAMAGE[damage]
    spoil(npz, head, json.loads(head.read_text()))
    seg = _Toy()
    cache = EmbeddingCache(disk_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="composer.embedding"):
        emb = cache.get(IMAGE, seg)
    assert seg.calls == 1 and cache.disk_hits == 0
    assert says in caplog.text
    fresh = _Toy().embed(IMAGE)
    assert emb.original_size == (40, 60) and torch.equal(emb.features, fresh.features)
    # the entry was written again, whole: the next cache reads it
    again = EmbeddingCache(disk_dir=tmp_path)
    assert torch.equal(again.get(IMAGE, _Toy()).features, fresh.features) and again.disk_hits == 1


def test_the_disk_entry_roundtrips_its_fields(tmp_path) -> None:
    seg = _Toy()
    EmbeddingCache(disk_dir=tmp_path).get(IMAGE, seg, crop_box=(10, 0, 50, 30))
    cache = EmbeddingCache(disk_dir=tmp_path)
    emb = cache.get(IMAGE, seg, crop_box=(10, 0, 50, 30))
    assert cache.disk_hits == 1 and seg.calls == 1
    assert emb.crop_box == (10, 0, 50, 30) and emb.original_size == (30, 40)
    assert emb.input_size == (48, 64) and emb.pad_size == 64
    assert torch.equal(emb.extras["image"], torch.tensor(IMAGE[0:30, 10:50]))
    assert image_hash(IMAGE) in json.loads(next(tmp_path.glob("*.json")).read_text())["key"]


FLOAT8 = [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]


@pytest.mark.parametrize("dtype", FLOAT8, ids=str)
def test_the_disk_tier_keeps_float8_embeddings(tmp_path, dtype) -> None:
    """numpy has no float8: writing the entry raised TypeError out of ``get``, after the
    embedding was computed (like bfloat16 before it)."""
    feats = (torch.arange(32.0).reshape(1, 2, 4, 4) / 4 - 3).to(dtype)
    seg = _Wrong(lambda im: dataclasses.replace(_Toy().embed(im), features=feats,
                                                extras={"scale": torch.ones(2).to(dtype)}))
    first = EmbeddingCache(disk_dir=tmp_path).get(IMAGE, seg)
    assert first.features.dtype == dtype and list(tmp_path.glob("*.npz"))
    again = EmbeddingCache(disk_dir=tmp_path)
    emb = again.get(IMAGE, seg)
    assert again.disk_hits == 1 and seg.calls == 1
    assert emb.features.dtype == dtype and emb.extras["scale"].dtype == dtype
    assert torch.equal(emb.features.float(), feats.float())


def test_a_disk_entry_that_cannot_be_written_keeps_the_embedding(tmp_path, caplog,
                                                                  monkeypatch) -> None:
    """Only an OSError was caught: any other error while writing the entry (a tensor numpy
    cannot hold) was raised out of ``get``, after the encoder pass."""
    import composer.embedding as mod

    def cannot(t: torch.Tensor) -> np.ndarray:
        raise TypeError("Got unsupported ScalarType")

    monkeypatch.setattr(mod, "_to_numpy", cannot)
    cache, seg = EmbeddingCache(disk_dir=tmp_path), _Toy()
    with caplog.at_level(logging.WARNING, logger="composer.embedding"):
        emb = cache.get(IMAGE, seg)
    assert "keeping the entry in memory only" in caplog.text and "TypeError" in caplog.text
    assert torch.equal(emb.features, _Toy().embed(IMAGE).features)
    assert not list(tmp_path.iterdir())
    cache.get(IMAGE, seg)
    assert seg.calls == 1 and cache.hits == 1
