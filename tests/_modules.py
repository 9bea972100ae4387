"""Loading a script of the repository (a recipe, another test file) as a module, by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_file(path: Path, name: str | None = None) -> ModuleType:
    """Execute the Python file ``path`` as a fresh module named ``name`` (default: its stem)."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_recipe(stem: str) -> ModuleType:
    """``recipes/<stem>.py`` as a module."""
    return load_file(REPO / "recipes" / f"{stem}.py")
