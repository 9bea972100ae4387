"""A user's own ``tasks`` module (invoke's tasks.py, say) must not break sam-composer with
"'tasks' is not a package": the commands that need the task adapters say what hides them."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from composer import _tasks_import
from composer._tasks_import import ShadowedTasksError, shadowing_tasks, tasks_import


def test_own_tasks_package_is_found() -> None:
    assert shadowing_tasks() is None
    with tasks_import():
        from tasks.base import TaskContext
    assert TaskContext.__module__ == "tasks.base"


def test_other_import_errors_pass_through() -> None:
    with pytest.raises(ImportError) as info, tasks_import():
        from tasks.base import NoSuchName  # noqa: F401
    assert type(info.value) is ImportError  # ours is found: not a shadowing error


def test_an_imported_foreign_tasks_module_is_named(monkeypatch, tmp_path) -> None:
    fake = types.ModuleType("tasks")
    fake.__file__ = str(tmp_path / "tasks.py")
    for name in [n for n in sys.modules if n == "tasks" or n.startswith("tasks.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tasks", fake)
    assert shadowing_tasks() == str(tmp_path / "tasks.py")
    with pytest.raises(ShadowedTasksError, match="tasks.py hides sam-composer's task adapters"), \
            tasks_import():
        from tasks.base import TaskContext  # noqa: F401


def test_a_foreign_tasks_first_on_sys_path_is_found_without_running_it(monkeypatch, tmp_path) -> None:
    (tmp_path / "tasks.py").write_text("raise SystemExit('the user module ran')\n")
    for name in [n for n in sys.modules if n == "tasks" or n.startswith("tasks.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert shadowing_tasks() == str(tmp_path / "tasks.py")
    with pytest.raises(ShadowedTasksError):
        _tasks_import.check_tasks_found()


def _run_module(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "composer", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_python_m_composer_in_a_folder_with_tasks_py(tmp_path) -> None:
    """``python -m`` puts the current folder first on sys.path: eval used to fail deep inside
    with "'tasks' is not a package" after loading the model; now it stops at once, names the
    file and never runs it. Commands without tasks are unaffected."""
    marker = tmp_path / "ran"
    (tmp_path / "tasks.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    r = _run_module(["eval", "points", "--dataset", "grabcut", "--limit", "1", "--clicks", "1",
                     "--out", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"a module named 'tasks' at {tmp_path / 'tasks.py'} hides" in r.stderr
    assert "segmenter:" not in r.stdout  # refused before any model loads
    assert not marker.exists()
    r = _run_module(["weights", "list"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "composer_tiny" in r.stdout
