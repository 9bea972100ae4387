"""Recipes that write at the end refuse a bad --json up front, and a worker pool is shut down
when a run fails midway."""

from __future__ import annotations

import pytest
from _modules import load_recipe


def test_calibrate_amg_refuses_a_json_folder_before_loading(tmp_path, capsys):
    mod = load_recipe("calibrate_amg")
    with pytest.raises(SystemExit) as exc:
        mod.main(["--model", "no_such_model", "--json", str(tmp_path)])
    assert exc.value.code == 2
    assert "--json" in capsys.readouterr().err


def test_calibrate_amg_creates_the_json_parent(tmp_path, monkeypatch):
    mod = load_recipe("calibrate_amg")

    def stop(*args, **kwargs):
        raise ValueError("stop here")

    monkeypatch.setattr("composer.load_segmenter", stop)
    target = tmp_path / "new" / "deeper" / "rows.json"
    with pytest.raises(SystemExit):
        mod.main(["--json", str(target)])
    assert target.parent.is_dir()


def test_edges_classic_pool_ends_when_a_method_fails(tmp_path, monkeypatch):
    mod = load_recipe("edges_classic_bsds500")
    calls = []

    class FakePool:
        def __init__(self, n):
            calls.append(("start", n))

        def imap(self, fn, jobs):
            return map(fn, jobs)

        def terminate(self):
            calls.append("terminate")

        def join(self):
            calls.append("join")

    class FakeContext:
        def Pool(self, n):  # noqa: N802 - multiprocessing's name
            return FakePool(n)

    class FakeBSDS:
        def __init__(self, *a, **k):
            pass

        def __iter__(self):
            return iter([object(), object()])

    def boom(*args, **kwargs):
        raise RuntimeError("a worker died")

    monkeypatch.setattr(mod.multiprocessing, "get_context", lambda kind: FakeContext())
    monkeypatch.setattr(mod, "BSDS500", FakeBSDS)
    monkeypatch.setattr(mod, "run_method", boom)
    with pytest.raises(RuntimeError, match="a worker died"):
        mod.main(["--method", "canny", "--workers", "2", "--out", str(tmp_path / "o")])
    assert calls == [("start", 2), "terminate", "join"]
