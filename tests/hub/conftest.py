"""Fixtures of the hub tests: a private weights cache and a small real checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hub_support import tiny_model


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$SAM_COMPOSER_HOME`` for this test (not created)."""
    path = tmp_path / "home"
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(path))
    return path


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A small real checkpoint outside the cache, standing in for a remote file."""
    path = tmp_path / "remote" / "tiny_weights.pth"
    path.parent.mkdir()
    torch.manual_seed(0)
    torch.save(tiny_model().state_dict(), path)
    return path
