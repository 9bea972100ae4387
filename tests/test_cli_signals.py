"""``sam-composer`` stopped by SIGTERM (``kill``, ``timeout``, a batch scheduler) or SIGHUP: it
stops as on Ctrl-C, so a folder run with worker processes ends them (they were orphaned, each
holding a model, with the setup's temporary file left behind) and writes what it finished; the
exit status is 128 + the signal's number."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def test_sigterm_stops_a_worker_run_as_ctrl_c_does(tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        img = (rng.random((96, 128, 3)) * 80).astype(np.uint8)
        img[20:60, 30:90] = (200, 60, 40)
        Image.fromarray(img).save(src / f"{i}.png")
    out = tmp_path / "out"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    cmd = [sys.executable, "-m", "composer", "everything", str(src), "--model", "classic",
           "--points-per-side", "6", "--workers", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log = out / "annotations.json.records.jsonl"
    # a bound for a broken run only (the loop ends when the image is listed): on a loaded
    # 2-core machine (load 10) the workers' start and the first image took 90 s
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:  # settings + one image
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    ps = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                        text=True).stdout
    children = [int(v) for v in ps.split()]
    assert children  # the worker processes (and multiprocessing's resource tracker)
    os.kill(proc.pid, signal.SIGTERM)  # the command only, as `kill PID` does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    doc = json.loads((out / "annotations.json").read_text())
    assert doc["info"].get("interrupted") is True and 1 <= len(doc["images"]) < 10
    assert err.splitlines()[-1] == (f"interrupted: {len(doc['images'])} of 10 images done, "
                                    "0 failed; run the same command to resume")
    assert list(tmp.glob("sam-composer-setup-*")) == []  # the workers' setup file is gone
    # no worker outlives the command (they were orphaned, holding their models)
    deadline = time.monotonic() + 30
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in children if _alive(pid)]
    assert not alive


def test_ctrl_c_of_a_folder_run_counts_the_finished_images(tmp_path):
    """Ctrl-C in a terminal (SIGINT to the whole process group) of a folder run: the last
    line on stderr counts the images done and says how to go on; the json lists them."""
    src = tmp_path / "images"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        img = (rng.random((48, 64, 3)) * 80).astype(np.uint8)
        img[10:30, 20:50] = (200, 60, 40)
        Image.fromarray(img).save(src / f"{i:02d}.png")
    out = tmp_path / "out"
    # SIGINT as in a terminal: a test run started in the background (`pytest &`) has it
    # ignored, and an ignored SIGINT stays ignored in the command (no KeyboardInterrupt). A
    # launcher puts it back to its default and execs the command (the same process): no
    # preexec_fn, which can deadlock the child of a process with threads (pytest-xdist's)
    launcher = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    cmd = [sys.executable, "-c", launcher, "-m", "composer", "everything", str(src), "--model",
           "classic", "--points-per-side", "4", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    log = out / "annotations.json.records.jsonl"
    # a bound for a broken run only: the loop ends when an image is logged
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:  # settings + one image
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    doc = json.loads((out / "annotations.json").read_text())
    assert doc["info"].get("interrupted") is True and 1 <= len(doc["images"]) < 12
    assert err.splitlines()[-1] == (f"interrupted: {len(doc['images'])} of 12 images done, "
                                    "0 failed; run the same command to resume")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_cli_puts_the_callers_signal_handlers_back(monkeypatch, capsys):
    """main() run as the command (argv None) handles SIGTERM/SIGHUP while it runs; a Python
    caller's process got those handlers for good (a later SIGTERM raised KeyboardInterrupt)."""
    from composer.cli import main

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(sys, "argv", ["sam-composer", "weights", "list"])
    assert main() == 0
    assert {sig: signal.getsignal(sig) for sig in before} == before
