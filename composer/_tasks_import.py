"""Late imports of the task adapters (the top-level ``tasks`` package installed beside
``composer``), with a clear error when a user's own ``tasks`` module shadows them.

``python -m composer ...`` and ``python script.py`` put the current (or the script's) folder
first on ``sys.path``, so a ``tasks.py`` or ``tasks/`` there (invoke's task files, for one) is
found before ours, and ``from tasks.base import ...`` failed with "'tasks' is not a package".
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

#: where sam-composer's own ``tasks`` package sits: beside the ``composer`` folder
OWN_TASKS = Path(__file__).resolve().parents[1] / "tasks"


class ShadowedTasksError(ImportError):
    """The ``tasks`` that Python finds first is not sam-composer's task adapters."""


def shadowing_tasks() -> str | None:
    """The path of a ``tasks`` module or package that is not sam-composer's (the one
    ``import tasks`` finds, or has already imported), or None when ours is found."""
    module = sys.modules.get("tasks")
    if module is not None:
        places = list(getattr(module, "__path__", None) or [])
        origin = getattr(module, "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec("tasks")
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        places = list(spec.submodule_search_locations or [])
        origin = spec.origin
    found = [Path(p) for p in places] or ([Path(origin).parent] if origin else [])
    if any(p.resolve() == OWN_TASKS for p in found):
        return None
    return str(origin or (found[0] if found else "an unknown place"))


def _error(other: str) -> ShadowedTasksError:
    return ShadowedTasksError(
        f"a module named 'tasks' at {other} hides sam-composer's task adapters ({OWN_TASKS}); "
        "rename it, or run from another folder (python -m and scripts put their folder first "
        "on sys.path; the sam-composer command does not)"
    )


def check_tasks_found() -> None:
    """Raise :class:`ShadowedTasksError` when ``import tasks`` would find another module than
    sam-composer's (found without importing it, so its code does not run)."""
    other = shadowing_tasks()
    if other is not None:
        raise _error(other)


@contextlib.contextmanager
def tasks_import() -> Iterator[None]:
    """Wrap ``from tasks... import ...``: an ImportError caused by another ``tasks`` on
    ``sys.path`` becomes a :class:`ShadowedTasksError` that names it."""
    try:
        yield
    except ShadowedTasksError:
        raise
    except ImportError as exc:
        other = shadowing_tasks()
        if other is None:
            raise
        raise _error(other) from exc
