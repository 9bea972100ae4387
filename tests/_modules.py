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
    try:
        spec.loader.exec_module(module)
    finally:
        # most scripts put their folder (recipes/, benchmarks/, the repository) first on
        # sys.path each time they run, as a command would once: loaded by hundreds of tests in
        # one process the path grew by an entry per load. Only the first of equal entries
        # counts for an import, so dropping the later ones changes no import.
        seen: set[str] = set()
        sys.path[:] = [p for p in sys.path if not (p in seen or seen.add(p))]
    return module


def load_recipe(stem: str) -> ModuleType:
    """``recipes/<stem>.py`` as a module."""
    return load_file(REPO / "recipes" / f"{stem}.py")
