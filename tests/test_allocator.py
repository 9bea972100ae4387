"""glibc's heap thresholds (``composer.allocator``): set by the ``sam-composer`` process and
its workers, left alone for Python callers, the user's own ``MALLOC_*`` settings and the
``SAM_COMPOSER_TUNE_MALLOC=0`` switch. Each case runs in a fresh process: the thresholds are
per process and cannot be unset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from composer import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                        allocator.ENV_SWITCH)}
    env.update(extra)
    return env


def _python(code: str, env: dict[str, str], cwd: Path | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


_PROBE = """
    import json
    from composer import allocator
    first = allocator.allocator_tuned()
    ok = allocator.tune_allocator()
    print(json.dumps([first, ok, allocator.tune_allocator(), allocator.allocator_tuned()]))
"""


def test_tune_allocator_sets_the_thresholds_once() -> None:
    assert json.loads(_python(_PROBE, _env())) == [False, True, True, True]


@pytest.mark.parametrize("extra", [
    {allocator.ENV_SWITCH: "0"},
    {"MALLOC_TRIM_THRESHOLD_": "1048576"},
    {"MALLOC_MMAP_THRESHOLD_": "1048576"},
])
def test_the_switch_and_the_users_own_settings_leave_the_heap_alone(extra) -> None:
    assert json.loads(_python(_PROBE, _env(**extra))) == [False, False, False, False]


def test_the_command_tunes_its_process_and_a_python_call_does_not() -> None:
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "composer", "env", "--json"], env=_env(),
        capture_output=True, text=True, timeout=300, check=True).stdout)
    assert report["devices"]["malloc_tuned"] is True
    off = json.loads(subprocess.run(
        [sys.executable, "-m", "composer", "env", "--json"], env=_env(**{allocator.ENV_SWITCH: "0"}),
        capture_output=True, text=True, timeout=300, check=True).stdout)
    assert off["devices"]["malloc_tuned"] is False
    called = _python("""
        import contextlib, io, json
        from composer import allocator, cli
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert cli.main(["env", "--json"]) == 0
        print(json.dumps([json.loads(out.getvalue())["devices"]["malloc_tuned"],
                          allocator.allocator_tuned()]))
    """, _env())
    assert json.loads(called) == [False, False]


def test_worker_processes_follow_the_parent(tmp_path: Path) -> None:
    (tmp_path / "probe_workers.py").write_text(textwrap.dedent("""
        import json, sys
        from composer import allocator
        from composer.runner import LocalEngine

        def state(s, item):
            return s

        def main():
            if sys.argv[1] == "tuned":
                assert allocator.tune_allocator()
            results = LocalEngine(2, threads=1).imap(allocator.allocator_tuned, state, [0, 1])
            print(json.dumps(sorted(v for _, v, _ in results)))

        if __name__ == "__main__":
            main()
    """))
    for variant, expected in (("tuned", [True, True]), ("default", [False, False])):
        proc = subprocess.run([sys.executable, "probe_workers.py", variant], env=_env(),
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected
