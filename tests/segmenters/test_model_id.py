"""A segmenter's derived model_id follows its weights when they change in place.

Before, the id was computed once at load: after fine-tuning the segmenter's own model in the
same process, the embedding cache (memory and disk) returned the old weights' embeddings, and
ONNX exports and reports carried the old id.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import composer
from composer import EmbeddingCache
from composer.predictor import SamPredictor


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((96, 128, 3), 40, np.uint8)
    img[20:70, 30:90] = (200, 180, 60)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


def _nudge(model: torch.nn.Module) -> None:
    """One optimiser step, as a fine-tuning loop makes it."""
    params = list(model.mask_decoder.parameters()) + list(model.image_encoder.parameters())[-2:]
    opt = torch.optim.SGD(params, lr=1e-2)
    loss = sum(p.float().square().sum() for p in params)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_composer_tiny_id_follows_weights_and_cache_recomputes(image, tmp_path) -> None:
    seg = composer.load_segmenter("composer_tiny")
    packaged = seg.model_id
    assert packaged.startswith("composer_tiny-packaged-")
    saved = {k: v.clone() for k, v in seg.model.state_dict().items()}

    cache = EmbeddingCache(disk_dir=tmp_path)
    before = cache.get(image, seg)
    assert cache.encoder_calls == 1

    _nudge(seg.model)
    tuned = seg.model_id
    assert tuned != packaged and tuned.startswith("composer_tiny-")
    # the old weights' entry is not taken for the new weights' (memory or disk)
    after = cache.get(image, seg)
    assert cache.encoder_calls == 2 and after.model_id == tuned
    assert not torch.equal(after.features, before.features)
    # an embedding of the old weights is refused by the tuned segmenter
    with pytest.raises(ValueError, match="cannot be decoded"):
        seg.predict(before, points=[[60, 45]])
    assert len(seg.predict(after, points=[[60, 45]])) == 3

    # back to the packaged weights: the same id again, and the cached entry serves
    seg.model.load_state_dict(saved)
    assert seg.model_id == packaged
    fresh = EmbeddingCache(disk_dir=tmp_path)
    again = fresh.get(image, seg)
    assert fresh.encoder_calls == 0 and torch.equal(again.features, before.features)


def test_cast_changes_the_id_and_pickles_keep_it(image) -> None:
    seg = composer.load_segmenter("composer_tiny")
    packaged = seg.model_id
    seg.predict(seg.embed(image), points=[[60, 45]])  # fills flip TTA's memo
    assert seg.__dict__.get("_mirror_memo")
    clone = pickle.loads(pickle.dumps(seg))
    assert clone.model_id == packaged
    assert not clone.__dict__.get("_mirror_memo")  # the memo stays in this process
    seg.model.half()
    assert seg.model_id != packaged


def test_given_model_id_is_kept(image) -> None:
    seg = composer.load_segmenter("composer_tiny", model_id="my-model")
    assert seg.model_id == "my-model"
    _nudge(seg.model)
    assert seg.model_id == "my-model"
    plain = SamPredictor(seg.model, model_id_prefix="mine-")
    assert plain.model_id.startswith("mine-")
    plain.model_id = "renamed"
    assert plain.model_id == "renamed" and plain.embed(image).model_id == "renamed"


def test_a_model_built_in_inference_mode_has_an_id() -> None:
    """Inference tensors keep no version counter (reading it raised RuntimeError)."""
    with torch.inference_mode():
        seg = composer.load_segmenter("composer_tiny")
        inside = seg.model_id
    assert seg.model_id == inside == composer.load_segmenter("composer_tiny").model_id


def _shifted(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every floating weight moved by 0.01."""
    out = copy.deepcopy(module)
    with torch.no_grad():
        for t in out.state_dict().values():
            if t.is_floating_point():
                t.add_(0.01)
    return out


def _assign_load(seg: SamPredictor) -> None:
    seg.model.load_state_dict(_shifted(seg.model).state_dict(), assign=True)


def _swap_decoder(seg: SamPredictor) -> None:
    seg.model.mask_decoder = _shifted(seg.model.mask_decoder)


def _write_through_data(seg: SamPredictor) -> None:
    """As EMA updates and older training loops do: ``.data`` keeps no version count."""
    new = _shifted(seg.model).state_dict()
    for name, t in seg.model.state_dict(keep_vars=True).items():
        t.data.copy_(new[name])


def _load_in_inference_mode(seg: SamPredictor) -> None:
    new = _shifted(seg.model).state_dict()
    with torch.inference_mode():
        seg.model.load_state_dict(new)


@pytest.mark.parametrize(
    "change", [_assign_load, _swap_decoder, _write_through_data, _load_in_inference_mode],
    ids=["assign", "swap", "data", "inference"])
def test_id_follows_weight_changes_that_bypass_version_counters(image, change) -> None:
    """New tensor objects (assign=True, a swapped submodule) and writes that leave no version
    count (``.data``, tensors made under inference_mode) change the id too: before, the cache
    served the old weights' embedding and predict took it."""
    if change is _load_in_inference_mode:
        with torch.inference_mode():
            seg = composer.load_segmenter("composer_tiny")
    else:
        seg = composer.load_segmenter("composer_tiny")
    cache = EmbeddingCache()
    old = cache.get(image, seg)
    packaged = seg.model_id
    change(seg)
    assert seg.model_id != packaged
    new = cache.get(image, seg)
    assert cache.encoder_calls == 2 and new.model_id == seg.model_id
    with pytest.raises(ValueError, match="cannot be decoded"):
        seg.predict(old, points=[[60, 45]])


def test_an_unchanged_model_and_a_deep_copy_keep_the_id(image) -> None:
    seg = composer.load_segmenter("composer_tiny")
    first = seg.model_id
    seg.predict(seg.embed(image), points=[[60, 45]])
    assert seg.model_id == first
    # a deep copy has the same weights in new tensors: the same id
    seg.model = copy.deepcopy(seg.model)
    assert seg.model_id == first


def test_setting_none_derives_the_id_afresh(image) -> None:
    seg = composer.load_segmenter("composer_tiny")
    packaged = seg.model_id
    seg.model_id = "fixed"
    assert seg.model_id == "fixed"
    seg.model_id = None
    assert seg.model_id == packaged


def test_the_weights_check_makes_no_float64_and_reads_bfloat16() -> None:
    """The probed values were cast to float64 on the model's device, which Apple's MPS refuses
    (every model_id, so every embed and predict, would have failed there); numpy has no
    bfloat16, so a bfloat16 model's values are read as float32."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from composer.predictor import _model_tensors, _weights_signature

    seg = composer.load_segmenter("composer_tiny")
    made: list[torch.dtype] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            made.extend(t.dtype for t in (out if isinstance(out, (tuple, list)) else [out])
                        if isinstance(t, torch.Tensor))
            return out

    tensors = _model_tensors(seg.model)
    with Spy():
        _weights_signature(tensors)
    assert made and torch.float64 not in made
    seg.model.to(torch.bfloat16)
    first = seg.model_id
    with torch.no_grad():
        for t in seg.model.state_dict().values():
            if t.is_floating_point():
                t.data.add_(1.0)  # through .data: only the probed values can tell
    assert seg.model_id != first


def test_the_same_weights_at_another_input_size_get_another_id(image) -> None:
    """composer_tiny's CNN encoder takes any multiple of its stride: its weights at a 256 input
    got the packaged 512 model's id, so an EmbeddingCache handed one the other's embedding (a
    grid over another frame), which predict then refused instead of recomputing."""
    from composer.sam.composer_tiny import PACKAGED_WEIGHTS, ComposerTinyConfig, build_composer_tiny

    seg = composer.load_segmenter("composer_tiny")
    small = SamPredictor(
        build_composer_tiny(PACKAGED_WEIGHTS, config=ComposerTinyConfig(img_size=256, embed_stride=16)),
        model_id_prefix="composer_tiny-packaged-",
    )
    assert seg.model_id.startswith("composer_tiny-packaged-512px-")
    assert small.model_id == seg.model_id.replace("-512px-", "-256px-")
    cache = EmbeddingCache()
    cache.get(image, seg)
    emb = cache.get(image, small)
    assert cache.encoder_calls == 2 and emb.pad_size == 256
    assert len(small.predict(emb, points=[[60, 45]])) == 3
