"""A killed download's ``.part`` file is cleaned up by the next download of the same file, and
``torch.compile``'s ``_orig_mod.`` key prefix is removed like DataParallel's ``module.``."""

from __future__ import annotations

import hashlib
import os
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


def test_download_removes_stale_parts_of_its_file_only(spec, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    stale = home / "leftover_v1.pth.0123456789ab.part"
    fresh = home / "leftover_v1.pth.ba9876543210.part"  # a download running right now
    other = home / "other_v1.pth.0123456789ab.part"      # another file's: not ours to judge
    for p in (stale, fresh, other):
        p.write_bytes(b"x" * 10)
    _age(stale, 2 * 3600)
    _age(other, 2 * 3600)
    path = hub.download(spec.name)
    assert path.is_file() and path.name == "leftover_v1.pth"
    assert not stale.exists()
    assert fresh.exists() and other.exists()


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


def test_glob_characters_in_a_file_name_are_literal(tmp_path):
    from composer.hub.download import _remove_stale_parts

    keep = tmp_path / "weightsX.pth.0123.part"
    mine = tmp_path / "weights[1].pth.0123.part"
    for p in (keep, mine):
        p.write_bytes(b"x")
        _age(p, 2 * 3600)
    _remove_stale_parts(tmp_path, "weights[1].pth")
    assert keep.exists() and not mine.exists()


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
