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


def test_bench_amg_keeps_the_official_timing_when_ours_fails(tmp_path, monkeypatch, capsys):
    import json

    from _modules import REPO, load_file

    mod = load_file(REPO / "benchmarks" / "bench_amg.py")
    image = tmp_path / "x.jpg"
    image.write_bytes(b"not read: the workers are replaced")
    timing = {"seconds": 60.0, "encoder_s": 50.0, "decoder_s": 5.0, "other_s": 5.0,
              "peak_rss_mb": 900.0, "python_heap_peak_mb": 10.0, "n_masks": 42}

    def run_worker(impl, args, out):
        if impl == "ours":
            raise RuntimeError("ours worker failed:\nboom")
        return dict(timing)

    monkeypatch.setattr(mod, "_run_worker", run_worker)
    out = tmp_path / "r.json"
    assert mod.main(["--image", str(image), "--json", str(out)]) == 1
    data = json.loads(out.read_text())
    assert data["official"] == timing
    assert "boom" in data["ours_error"] and "ours" not in data and "match" not in data
    assert "ours worker failed" in capsys.readouterr().err
