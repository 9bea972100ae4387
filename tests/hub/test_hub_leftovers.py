"""A killed download's ``.part`` file is cleaned up by the next download or import, and
``torch.compile``'s ``_orig_mod.`` key prefix is removed like DataParallel's ``module.``."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from composer import hub
from composer.hub import registry
from composer.hub.checkpoint import load_state_dict_file
from composer.hub.registry import WeightsSpec


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WeightsSpec:
    """Registered weights served from a file:// URL (no network), cached under tmp_path/home."""
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path / "home"))
    src = tmp_path / "remote" / "w.pth"
    src.parent.mkdir()
    torch.save(_model().state_dict(), src)
    s = WeightsSpec(name="leftover_test", arch="tiny", url=src.as_uri(), filename="leftover_v1.pth",
                    sha256=hashlib.sha256(src.read_bytes()).hexdigest(), license="MIT")
    monkeypatch.setitem(registry.WEIGHTS, s.name, s)
    return s


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_download_removes_stale_parts_only(spec, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    stale = home / "leftover_v1.pth.0123456789ab.part"
    fresh = home / "leftover_v1.pth.ba9876543210.part"  # a download running right now
    other = home / "other_v1.pth.0123456789ab.part"      # another weights' killed download
    for p in (stale, fresh, other):
        p.write_bytes(b"x" * 10)
    _age(stale, 2 * 3600)
    _age(other, 2 * 3600)
    path = hub.download(spec.name)
    assert path.is_file() and path.name == "leftover_v1.pth"
    assert not stale.exists() and not other.exists()
    assert fresh.exists()


def test_import_removes_stale_parts(spec, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    stale = home / "leftover_v1.pth.0123456789ab.part"
    stale.write_bytes(b"x")
    _age(stale, 2 * 3600)
    src = tmp_path / "elsewhere.pth"
    src.write_bytes((tmp_path / "remote" / "w.pth").read_bytes())
    hub.import_checkpoint(src, name=spec.name)
    assert not stale.exists()


def test_any_stale_part_of_ours_goes_and_other_files_stay(tmp_path):
    """A name-less import wrote ``import.<random>.part`` and cleaned only those; the
    ``.part`` of a killed download of other weights stayed (and the reverse)."""
    from composer.hub.download import _remove_stale_parts

    ours = [tmp_path / "weights[1].pth.0123456789ab.part", tmp_path / "import.ba9876543210.part"]
    fresh = tmp_path / "other.pth.00000000000f.part"
    foreign = tmp_path / "movie.mkv.part"
    for p in (*ours, fresh, foreign):
        p.write_bytes(b"x")
        if p is not fresh:
            _age(p, 2 * 3600)
    _remove_stale_parts(tmp_path)
    assert not any(p.exists() for p in ours) and fresh.exists() and foreign.exists()


@pytest.mark.parametrize("prefixes", [["_orig_mod."], ["module.", "_orig_mod."],
                                      ["_orig_mod.", "module."]])
def test_wrapper_prefixes_are_removed(tmp_path, prefixes):
    state = _model().state_dict()
    wrapped = dict(state)
    for p in reversed(prefixes):
        wrapped = {p + k: v for k, v in wrapped.items()}
    torch.save(wrapped, tmp_path / "c.pth")
    got = load_state_dict_file(tmp_path / "c.pth")
    assert sorted(got) == sorted(state)
    for k, v in state.items():
        assert torch.equal(got[k], v)


def test_a_prefix_on_some_keys_only_stays(tmp_path):
    state = {"_orig_mod.a": torch.zeros(1), "b": torch.ones(1)}
    torch.save(state, tmp_path / "c.pth")
    assert sorted(load_state_dict_file(tmp_path / "c.pth")) == ["_orig_mod.a", "b"]


def test_compiled_submodules_averaged_models_and_safetensors_load(tmp_path):
    """Keys of a model whose image encoder alone was compiled (``enc._orig_mod.*``), an
    AveragedModel's EMA file (``module.*`` + ``n_averaged``) and a safetensors file under any
    name: 302 missing and 302 unexpected keys, a prefix that stayed, "not a PyTorch
    checkpoint"."""
    state = _model().state_dict()
    compiled = {k.replace("0.", "0._orig_mod.", 1) if k.startswith("0.") else k: v
                for k, v in state.items()}
    torch.save(compiled, tmp_path / "c.pth")
    got = load_state_dict_file(tmp_path / "c.pth")
    assert sorted(got) == sorted(state)
    ema = {**{"module." + k: v for k, v in state.items()}, "n_averaged": torch.tensor(7)}
    torch.save(ema, tmp_path / "ema.pth")
    assert sorted(load_state_dict_file(tmp_path / "ema.pth")) == sorted(state)
    safetensors = pytest.importorskip("safetensors.torch")
    for name in ("w.pth", "W.SAFETENSORS"):
        safetensors.save_file(state, str(tmp_path / name))
        got = load_state_dict_file(tmp_path / name)
        assert all(torch.equal(got[k], v) for k, v in state.items()) and len(got) == len(state)
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-8])  # the header kept, the last tensor cut
    with pytest.raises(ValueError, match="damaged safetensors file"):
        load_state_dict_file(tmp_path / "cut.pth")


def test_a_pickled_whole_model_says_what_to_save(tmp_path):
    torch.save(_model(), tmp_path / "m.pth")
    with pytest.raises(ValueError) as e:
        load_state_dict_file(tmp_path / "m.pth")
    assert "it pickles torch.nn.modules.container.Sequential" in str(e.value)
    assert "save model.state_dict() instead" in str(e.value) and "\x1b[" not in str(e.value)


def test_a_pickled_whole_model_is_named_in_torch_2_1s_wording_too(tmp_path, monkeypatch):
    """torch 2.1 (the oldest admitted) words the refusal "Unsupported class x.y", not
    "Unsupported global: GLOBAL x.y": the class went unnamed there."""
    torch.save(_model(), tmp_path / "m.pth")

    def refuse_like_torch_2_1(*args, **kwargs):
        raise pickle.UnpicklingError(
            "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
            "will likely succeed, but it can result in arbitrary code execution.Do it only if you "
            "get the file from a trusted source. WeightsUnpickler error: Unsupported class "
            "torch.nn.modules.container.Sequential")

    monkeypatch.setattr(torch, "load", refuse_like_torch_2_1)
    with pytest.raises(ValueError, match=r"\(it pickles torch\.nn\.modules\.container\.Sequential\)"
                       r", which weights_only=True refuses"):
        load_state_dict_file(tmp_path / "m.pth")


def test_importing_the_packaged_weights_is_refused(tmp_path, monkeypatch):
    """It copied the file into the cache, where nothing ever reads it."""
    from composer.hub.download import cached_path
    from composer.sam.composer_tiny import register_weights

    # the hub knows the packaged weights once composer.sam.composer_tiny is imported; run alone,
    # this file imported nothing that does
    register_weights()
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path / "home"))
    packaged = cached_path("composer_tiny")
    for name in (None, "composer_tiny"):
        with pytest.raises(ValueError, match="ship with sam-composer.*nothing to import"):
            hub.import_checkpoint(packaged, name=name)
    copy = tmp_path / "elsewhere.pt"
    copy.write_bytes(packaged.read_bytes())
    with pytest.raises(ValueError, match="weights .composer_tiny. ship with sam-composer"):
        hub.import_checkpoint(copy)
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())
