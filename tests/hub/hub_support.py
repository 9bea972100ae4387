"""Helpers shared by the hub tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from torch import nn

from composer.hub import registry
from composer.hub.registry import WeightsSpec


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))


def digests(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}


def register_weights(monkeypatch: pytest.MonkeyPatch, url: str, sha256: str,
                     **overrides: object) -> WeightsSpec:
    """Register a temporary spec ``tmp_weights`` (file ``tmp_weights_v1.pth``) at ``url``,
    removed after the test."""
    fields: dict[str, object] = dict(name="tmp_weights", arch="tiny", url=url,
                                     filename="tmp_weights_v1.pth", sha256=sha256, license="MIT")
    fields.update(overrides)
    spec = WeightsSpec(**fields)  # type: ignore[arg-type]
    monkeypatch.setitem(registry.WEIGHTS, spec.name, spec)
    return spec


def files(directory: Path) -> list[Path]:
    """Every file under ``directory`` (none when it does not exist), sorted."""
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []
