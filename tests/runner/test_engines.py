"""composer.runner: local processes and Ray actors give every item's result or error once."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from _engine_items import Offset, add, failing_setup
from PIL import Image

from composer.automatic import AmgConfig
from composer.runner import LocalEngine, RayEngine, make_engine
from composer.segmenters import load_segmenter
from tasks.everything import annotate_folder


def _check(results, n: int) -> set[int]:
    """Every index once; item 3 failed on one line; the others are item + 100. Worker pids."""
    assert sorted(i for i, _, _ in results) == list(range(n))
    pids = set()
    for i, value, error in results:
        if i == 3:
            assert value is None and error == "ValueError: item three is bad second line"
        else:
            assert error is None and value[0] == i + 100
            pids.add(value[1])
    return pids


def test_local_engine_in_this_process_and_in_workers():
    items = list(range(7))
    one = list(LocalEngine(1).imap(Offset(100), add, items))
    assert [i for i, _, _ in one] == items  # in order, here
    assert _check(one, 7) == {os.getpid()}
    many = list(LocalEngine(2, threads=1).imap(Offset(100), add, items))
    pids = _check(many, 7)
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_local_engine_reports_a_failed_setup_per_item():
    results = list(LocalEngine(2).imap(failing_setup, add, [0, 1, 2]))
    assert sorted(i for i, _, _ in results) == [0, 1, 2]
    assert all(v is None and e for _, v, e in results)
    with pytest.raises(RuntimeError, match="no model here"):  # in this process: raised
        list(LocalEngine(1).imap(failing_setup, add, [0]))


def nap(state: tuple[int, int], item: int) -> int:
    """Item 0 returns at once; the others take 10 minutes unless stopped."""
    import signal
    import time

    if item == 0:
        return signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    time.sleep(600)
    return item


@pytest.mark.parametrize("where", ["consumer", "generator"])
def test_local_engine_workers_stop_at_once_on_ctrl_c(where):
    """Ctrl-C during a run of worker processes could leave the command waiting for a worker
    forever (a worker interrupted inside the pool's queue code), and workers went on with
    images after it. Now the workers ignore SIGINT and the parent terminates them."""
    import multiprocessing
    import threading
    import time

    engine = LocalEngine(workers=2, threads=1)
    threads = set(threading.enumerate())
    t0 = time.monotonic()
    results = []
    with pytest.raises(KeyboardInterrupt):
        it = engine.imap(Offset(0), nap, list(range(5)))
        results.append(next(it))
        if where == "consumer":  # Ctrl-C while the caller records a result
            raise KeyboardInterrupt
        it.throw(KeyboardInterrupt)  # Ctrl-C while the engine waits for results
    del it
    assert results == [(0, True, None)]  # the worker ignores SIGINT
    # the pool's manager and queue-feeder threads are done too: they outlived the run (into
    # the caller's next work, the next test) before
    assert set(threading.enumerate()) <= threads
    deadline = time.monotonic() + 60
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()
    assert time.monotonic() - t0 < 300  # not the 600 s an item takes


def test_local_engine_left_unread_stops_its_workers_and_threads():
    """A caller that stops reading (closes the iterator, or drops it) ends the run as Ctrl-C
    does: the workers are ended, and the pool's own threads are gone when close() returns."""
    import multiprocessing
    import threading

    threads = set(threading.enumerate())
    it = LocalEngine(workers=2, threads=1).imap(Offset(0), nap, list(range(5)))
    assert next(it) == (0, True, None)
    it.close()  # items 1-4 would take 10 minutes each
    assert set(threading.enumerate()) <= threads
    assert not multiprocessing.active_children()


def test_engine_arguments():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        LocalEngine(0)
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("dask")
    with pytest.raises(ValueError, match="address is for the Ray engine"):
        make_engine("local", address="auto")
    assert isinstance(make_engine("ray", 2), RayEngine)
    assert list(LocalEngine(2).imap(Offset(0), add, [])) == []


@pytest.fixture(scope="module")
def folder(tmp_path_factory, grabcut_dir) -> Path:
    """Three small real photos and one unreadable file."""
    src = tmp_path_factory.mktemp("images")
    for k, photo in enumerate(sorted((grabcut_dir / "data_GT").glob("*.jpg"))[:3]):
        im = Image.open(photo)
        im.thumbnail((160, 160))
        im.save(src / f"{k}.jpg")
    (src / "9.png").write_text("not an image")
    return src


def _annotate(folder: Path, out: Path, engine) -> dict:
    seg = load_segmenter("composer_tiny", device="cpu")
    config = AmgConfig.for_segmenter(seg, points_per_side=8)
    return annotate_folder(folder, seg, out / "a.json", config=config, engine=engine,
                           resume=False)


def _same_run(a: dict, b: dict) -> None:
    assert a["images"] == b["images"] and a["failures"] == b["failures"]
    assert len(a["annotations"]) == len(b["annotations"]) > 0
    for x, y in zip(a["annotations"], b["annotations"], strict=True):
        assert x["segmentation"] == y["segmentation"] and x["bbox"] == y["bbox"]
        assert np.isclose(x["predicted_iou"], y["predicted_iou"], atol=1e-5)


def test_annotate_folder_with_worker_processes(folder, tmp_path):
    seq = _annotate(folder, tmp_path / "seq", None)
    par = _annotate(folder, tmp_path / "par", LocalEngine(2, threads=1))
    _same_run(seq, par)
    assert [f["file_name"] for f in par["failures"]] == ["9.png"]
    log = (tmp_path / "par" / "a.json.records.jsonl").read_text().splitlines()
    assert json.loads(log[0])["settings"]["model_id"] == seq["info"]["model_id"]
    assert len(log) == 1 + 4  # settings, then one record per image as it finished


def _cli_handler(signum, frame):  # stands for the CLI's, which turns SIGTERM into Ctrl-C
    raise KeyboardInterrupt


@contextlib.contextmanager
def _ray_session(ray):
    """A local Ray instance, started by the engine while a SIGTERM handler like the CLI's is
    in place; yields the SIGTERM handler found after.

    Ray's own limit on a worker's start is raised: a worker process that has not registered
    with its raylet within ``worker_register_timeout_seconds`` (60 s) is killed, and after 5
    such starts every item fails with ActorUnschedulableError; on a heavily loaded machine a
    worker's Python and Ray imports alone can take that long. A slow start makes the test
    slow, not failed. (Starts that do fail are an error of each item, not a hang.)

    The environment variables that ray.init sets in this process (RAY_AUTH_MODE,
    RAY_USAGE_STATS_ENABLED, PYTHONBREAKPOINT), which the commands that later tests of this
    worker start would inherit, are put back after.
    """
    assert not ray.is_initialized()  # else the engine starts nothing and checks nothing
    environ = dict(os.environ)
    env_patch = pytest.MonkeyPatch()
    try:
        env_patch.setenv("RAY_worker_register_timeout_seconds", "600")  # read by the raylet
        before = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _cli_handler)
        try:
            # Ray workers import the setups and functions by module name: give them the
            # folder of _engine_items
            tests_dir = str(Path(__file__).resolve().parents[1])
            env = {"PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}
            RayEngine(2, init_kwargs={"num_cpus": 2, "runtime_env": {"env_vars": env}})._ray()
            after = signal.getsignal(signal.SIGTERM)
        finally:
            signal.signal(signal.SIGTERM, before)
        yield after
    finally:
        ray.shutdown()
        env_patch.undo()
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update(environ)


def test_ray_engine(folder, tmp_path):
    """One test, one Ray session (under pytest-xdist the tests of a module can go to two
    workers, each starting Ray). Each actor started costs seconds of imports, more under
    load: the setups and items come from a light module (_engine_items), and one actor
    checks what needs no two."""
    ray = pytest.importorskip("ray") if os.environ.get("CI") != "true" else __import__("ray")
    with _ray_session(ray) as handler:
        # ray.init replaced it with its own sys.exit handler: SIGTERM then skipped the CLI's
        # stop (no summary of the finished images) and left that handler in the process
        assert handler is _cli_handler
        # no node of the instance (2 CPUs) could ever hold an actor of 3 CPUs: an error at
        # once, where the run waited for good
        with pytest.raises(ValueError, match="each needs 3 CPUs .* has 2; use --threads-per-worker 2"):
            list(RayEngine(1, cpus_per_worker=3).imap(Offset(100), add, [0]))
        # three actors on 2 CPUs: the third is never placed while the other two live, and the
        # item handed to it went to one of them at the end (the run waited for it for good)
        results = list(RayEngine(3).imap(Offset(100), add, list(range(7))))
        assert os.getpid() not in _check(results, 7)
        # the one actor dies in its setup: its item fails with the setup's error, and the
        # items no actor is left for name it too
        failed = sorted(RayEngine(1).imap(failing_setup, add, [0, 1, 2]))
        assert [i for i, _, _ in failed] == [0, 1, 2]
        assert all(v is None and "no model here" in e for _, v, e in failed)
        assert [e.startswith("RuntimeError: no Ray worker left") for _, _, e in failed] == [
            False, True, True]
        # the segmenter reaches the actor and gives what it gives in this process (one
        # actor: each loads the model; two actors sharing items are checked above)
        _same_run(_annotate(folder, tmp_path / "seq", None),
                  _annotate(folder, tmp_path / "ray", RayEngine(1)))


class _FakeRef:
    def __init__(self, actor: _FakeActor, call) -> None:
        self.actor, self.call = actor, call


class _FakeActor:
    """An actor of :class:`_FakeRay`, run in this process once placed."""

    def __init__(self, ray: _FakeRay, setup, fn) -> None:
        self.ray, self.k, self.setup, self.fn = ray, len(ray.actors), setup, fn
        self.ready = SimpleNamespace(remote=lambda: _FakeRef(self, lambda: True))
        self.run = SimpleNamespace(remote=lambda i, item: _FakeRef(self, lambda: self._run(i, item)))

    def _run(self, i, item):
        from composer.runner.engines import _call

        if (self.k, i) in self.ray.crash:  # the item kills the actor running it
            self.ray.dead.add(self.k)
        if self.k in self.ray.dead:
            raise RuntimeError(f"actor {self.k} died")
        self.ray.ran.append((self.k, i))
        self.ray.events.append(("run", self.k, i))
        return _call(self.setup(), self.fn, i, item)


class _FakeRay:
    """Stands for the ray module: ``nodes()`` as given; actors run in this process, but only
    those numbered in ``placed`` (and, once ``busy`` waits have timed out, all): the others
    wait for CPUs, as on a busy or too small cluster. A ``wait`` that Ray would never answer
    (no timeout, no call of a placed actor among the refs) fails instead of hanging."""

    def __init__(self, nodes, placed=(), busy: int | None = None,
                 placed_after: dict[int, int] | None = None, kill_too_late=(),
                 crash=()) -> None:
        self.crash = set(crash)  # (actor, item index) calls that kill the actor
        self._nodes, self.placed, self.busy = nodes, set(placed), busy
        # actor -> number of calls run after which it is placed (a late start)
        self.placed_after = dict(placed_after or {})
        # actors a kill reaches only after they ran what they had (it is recorded, no more)
        self.kill_too_late = set(kill_too_late)
        self.actors: list[_FakeActor] = []
        self.ran: list[tuple[int, int]] = []  # (actor, item index) of each call run
        self.events: list[tuple] = []  # ("run", actor, item) and ("kill", actor), in order
        self.dead: set[int] = set()
        self.timeouts = self.killed = 0

    def is_initialized(self) -> bool:
        return True

    def nodes(self):
        return self._nodes

    def remote(self, num_cpus: int):
        def actor_class(cls):
            def new(setup, fn, threads, tune):
                self.actors.append(_FakeActor(self, setup, fn))
                return self.actors[-1]
            return SimpleNamespace(remote=new)
        return actor_class

    def wait(self, refs, num_returns=1, timeout=None):
        self.placed |= {k for k, n in self.placed_after.items() if len(self.ran) >= n}
        # a dead actor's calls answer at once (with its death)
        ready = [r for r in refs if r.actor.k in self.placed or r.actor.k in self.dead]
        if ready:
            return ready[:1], [r for r in refs if r is not ready[0]]
        assert timeout is not None and self.timeouts < 10, "Ray would wait here for good"
        self.timeouts += 1
        if self.busy is not None and self.timeouts >= self.busy:
            self.placed = set(range(len(self.actors)))  # the cluster's CPUs are free again
        return [], list(refs)

    def get(self, ref):
        return ref.call()

    def kill(self, actor) -> None:
        self.killed += 1
        self.events.append(("kill", actor.k))
        if actor.k not in self.kill_too_late:
            self.dead.add(actor.k)


def _node(cpus: float, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, "memory": 1e9}}


def test_ray_engine_refuses_workers_that_no_node_can_hold(monkeypatch):
    """No alive node has the CPUs of one actor (--threads-per-worker above them): Ray kept
    the actors waiting, and the run waited for good without a word. Now it is a one-line
    ValueError (the CLI's error) before any actor starts."""
    fake = _FakeRay([_node(2), _node(64, alive=False)])
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(ValueError, match=r"^no Ray worker can start: each needs 4 CPUs "
                       r"\(--threads-per-worker 4\) but the largest Ray node \(the local "
                       r"instance\) has 2; use --threads-per-worker 2 or less"):
        list(RayEngine(2, cpus_per_worker=4).imap(Offset(0), add, [0, 1]))
    fake._nodes = [_node(0.5)]
    with pytest.raises(ValueError, match="has 0.5; give Ray CPUs"):
        list(RayEngine(1).imap(Offset(0), add, [0]))
    assert fake.actors == []


@pytest.mark.parametrize("nodes, cluster, fits", [
    ([_node(4), _node(8)], False, True),  # one node holds it (busy or not)
    ([_node(4, alive=False), _node(2)], False, False),  # a dead node holds nothing
    ([], False, False),
    ([_node(0)], True, True),  # a cluster of no CPUs at all waits for its autoscaler
    ([_node(0)], False, False),  # a local instance has none
    ([_node(0), _node(2)], True, False),
])
def test_ray_placement_error(nodes, cluster, fits):
    from composer.runner.engines import _placement_error

    assert (_placement_error(nodes, 3, cluster) is None) == fits


def test_ray_engine_hands_on_the_items_of_workers_never_placed(monkeypatch):
    """Three actors where two fit (a run's own actors hold the CPUs the third waits for):
    the item handed to the third waited for good after the others were done. Now a free
    actor takes it too, the first result is kept, and each item comes once."""
    fake = _FakeRay([_node(2)], placed={0, 1})
    monkeypatch.setitem(sys.modules, "ray", fake)
    results = list(RayEngine(3).imap(Offset(100), add, list(range(7))))
    _check(results, 7)
    assert sorted(i for _, i in fake.ran) == list(range(7))  # each run once, none by actor 2
    assert {k for k, _ in fake.ran} == {0, 1} and fake.killed == 3
    assert fake.timeouts == 0  # nothing waited


def test_ray_engine_ends_the_worker_whose_item_it_hands_on(monkeypatch):
    """The item of an actor not started went to a free actor while the waiting actor stayed:
    placed later, it ran that image beside the other (both writing its files, and the one
    second to start killed mid-item at the end, after removing the first one's masks). Now
    the waiting actor is ended before its item is handed on, and is ended once."""
    fake = _FakeRay([_node(2)], placed={0, 1})
    monkeypatch.setitem(sys.modules, "ray", fake)
    _check(list(RayEngine(3).imap(Offset(100), add, list(range(7)))), 7)
    handed = [e for e in fake.events if e[0] == "run" and e[2] == 2]
    assert len(handed) == 1 and handed[0][1] != 2
    assert fake.events.index(("kill", 2)) < fake.events.index(handed[0])
    assert sorted(e[1] for e in fake.events if e[0] == "kill") == [0, 1, 2]


def test_ray_engine_reports_a_handed_on_item_whose_new_actor_dies(monkeypatch):
    """The free actor that took the item of an actor never placed died on it: the run then
    waited for good on the unplaced actor's copy. Now that actor was ended on the hand-off,
    its copy fails at once, and the item is reported failed with the death."""
    fake = _FakeRay([_node(1)], placed={0}, crash={(0, 1)})
    monkeypatch.setitem(sys.modules, "ray", fake)
    results = sorted(RayEngine(2).imap(Offset(100), add, [0, 1]))
    assert [(i, e) for i, _, e in results] == [(0, None), (1, "RuntimeError: actor 0 died")]
    assert results[0][1][0] == 100 and results[1][1] is None


def test_ray_engine_lets_a_call_still_out_finish_before_it_kills(monkeypatch):
    """The actor whose item was handed on answered first after all (the kill came too late):
    the run ended at that answer and killed the free actor mid-item, the copy it was running
    of the same image (its files half rewritten). Now the calls still out finish first."""
    fake = _FakeRay([_node(2)], placed={0, 1}, placed_after={2: 6}, kill_too_late={2})
    monkeypatch.setitem(sys.modules, "ray", fake)
    results = list(RayEngine(3).imap(Offset(100), add, list(range(7))))
    _check(results, 7)
    assert ("run", 2, 2) in fake.events  # the late actor answered item 2 first
    copy = [e for e in fake.events if e[0] == "run" and e[2] == 2 and e[1] != 2]
    assert len(copy) == 1, fake.events  # the free actor's copy ran to its end ...
    assert fake.events.index(copy[0]) < fake.events.index(("kill", copy[0][1]))  # ... then the kill
    assert fake.timeouts == 0


def test_ray_engine_warns_of_a_cluster_whose_nodes_are_all_too_small(monkeypatch, caplog):
    """On a cluster (an address) an autoscaler may add a node that fits: the run is not
    refused (as a local instance's is) but says, in one line, what it waits for."""
    fake = _FakeRay([_node(2), _node(3)], placed={0, 1})
    monkeypatch.setitem(sys.modules, "ray", fake)
    with caplog.at_level(logging.WARNING, logger="composer.runner.engines"):
        results = list(RayEngine(2, address="auto", cpus_per_worker=4)
                       .imap(Offset(100), add, [0, 1]))
    _check(results, 2)
    assert [r.getMessage() for r in caplog.records] == [
        "no Ray worker can start: each needs 4 CPUs (--threads-per-worker 4) but the largest "
        "node of the Ray cluster has 3; use --threads-per-worker 3 or less (the CPUs each Ray "
        "worker reserves), or wait for the cluster to add a node that size (an autoscaler); "
        "the workers wait for one (Ctrl-C stops the run)"]


def test_ray_engine_says_once_that_workers_wait_for_cpus(monkeypatch, caplog):
    """A cluster with no free CPUs (here: none at all, as an autoscaling one's head node):
    no error, and one warning line while nothing finishes, not one per wait."""
    fake = _FakeRay([_node(0)], busy=3)
    monkeypatch.setitem(sys.modules, "ray", fake)
    engine = RayEngine(2, address="auto")
    engine.pending_log_s = 0.01  # the fake waits for nothing anyway
    with caplog.at_level(logging.WARNING, logger="composer.runner.engines"):
        results = list(engine.imap(Offset(100), add, list(range(5))))
    _check(results, 5)
    assert fake.timeouts == 3
    assert [r.getMessage() for r in caplog.records] == [
        "2 of 2 Ray workers not started after 0.01 s (each waits for 1 CPU(s) free on one node, "
        "or is still setting up); the started ones go on"]


def _interrupt_at(monkeypatch, name: str):
    """Make annotate_folder's per-image step raise KeyboardInterrupt (Ctrl-C) at image
    ``name``; returns the real step, to put back."""
    import tasks.everything as everything

    real = everything._annotate_one

    def one(state, item):
        if item[1].endswith(name):
            raise KeyboardInterrupt
        return real(state, item)

    monkeypatch.setattr(everything, "_annotate_one", one)
    return real


def test_an_interrupted_annotate_folder_writes_the_finished_images(folder, tmp_path, monkeypatch):
    """Ctrl-C before the first periodic write left no annotations.json, only the record log."""
    import tasks.everything as everything

    real = _interrupt_at(monkeypatch, "1.jpg")
    seg = load_segmenter("composer_tiny", device="cpu")
    config = AmgConfig.for_segmenter(seg, points_per_side=8)
    with pytest.raises(KeyboardInterrupt):
        annotate_folder(folder, seg, tmp_path / "a.json", config=config)
    cut = json.loads((tmp_path / "a.json").read_text())
    assert cut["info"]["interrupted"] is True
    assert [im["file_name"] for im in cut["images"]] == ["0.jpg"] and cut["annotations"]
    monkeypatch.setattr(everything, "_annotate_one", real)
    done = annotate_folder(folder, seg, tmp_path / "a.json", config=config)
    assert [im["file_name"] for im in done["images"]] == ["0.jpg", "1.jpg", "2.jpg"]
    assert "interrupted" not in done["info"]


def test_an_interrupted_run_leaves_out_a_replaced_image_not_redone_yet(folder, tmp_path, monkeypatch):
    """Ctrl-C listed an image replaced since the last run, but not redone yet, with the old
    picture's size and masks."""
    import shutil

    import tasks.everything as everything

    src = tmp_path / "src"
    shutil.copytree(folder, src)
    seg = load_segmenter("composer_tiny", device="cpu")
    config = AmgConfig.for_segmenter(seg, points_per_side=8)
    annotate_folder(src, seg, tmp_path / "a.json", config=config)
    Image.fromarray(np.full((50, 70, 3), 90, np.uint8)).save(src / "1.jpg")
    st = os.stat(src / "1.jpg")
    os.utime(src / "1.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    real = _interrupt_at(monkeypatch, "1.jpg")
    with pytest.raises(KeyboardInterrupt):
        annotate_folder(src, seg, tmp_path / "a.json", config=config)
    cut = json.loads((tmp_path / "a.json").read_text())
    assert cut["info"]["interrupted"] is True
    assert [im["file_name"] for im in cut["images"]] == ["0.jpg", "2.jpg"]
    monkeypatch.setattr(everything, "_annotate_one", real)
    done = annotate_folder(src, seg, tmp_path / "a.json", config=config)
    assert [(im["file_name"], im["height"], im["width"]) for im in done["images"]][1] == ("1.jpg", 50, 70)


def _signals_at_start(state, item):
    """In a worker: whether it inherited SIGINT ignored, its SIGTERM handling, its pid. With
    ``item = (i, folder, n)`` it first waits until ``n`` workers have checked in there, so
    that each of ``n`` items is taken by another worker."""
    import signal
    import time
    from pathlib import Path

    from composer.runner import engines

    _, folder, n = item
    Path(folder, str(os.getpid())).touch()
    # a bound for a broken pool only: each worker spawns and imports torch first, which took
    # up to 25 s on a loaded 2-core machine; a worker that gave up early could take a
    # second item (one pid fewer than the test expects)
    deadline = time.monotonic() + 600
    while len(list(Path(folder).iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    term = signal.getsignal(signal.SIGTERM)
    return (engines._WORKER_STATE["sigint_at_start"] is signal.SIG_IGN,
            "ignored" if term is signal.SIG_IGN else "default", os.getpid())


def test_every_worker_starts_with_ctrl_c_ignored(tmp_path):
    """A spawned worker imports the package and torch before its initializer ignores SIGINT;
    a Ctrl-C in those seconds printed a KeyboardInterrupt traceback from each worker. Every
    worker (the pool starts one per submit) now inherits SIGINT ignored, and this process's
    handler is put back. SIGTERM is left to the workers' default unless this process handles
    it (the CLI), when the workers ignore it and the parent ends them."""
    import signal
    import threading

    assert threading.current_thread() is threading.main_thread()  # where signals can be set
    before = signal.getsignal(signal.SIGINT)
    (tmp_path / "a").mkdir()
    items = [(i, str(tmp_path / "a"), 3) for i in range(3)]
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # whatever an earlier test left
    try:
        results = list(LocalEngine(3, threads=1).imap(Offset(0), _signals_at_start, items))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGINT) is before
    values = [r[1] for r in results]
    assert len({pid for _, _, pid in values}) == 3, results  # three workers, each checked
    assert all(at_start and term == "default" for at_start, term, _ in values), values
    previous = signal.signal(signal.SIGTERM, lambda *a: None)  # as the CLI's handler
    try:
        (tmp_path / "b").mkdir()
        items = [(i, str(tmp_path / "b"), 2) for i in range(2)]
        results = list(LocalEngine(2, threads=1).imap(Offset(0), _signals_at_start, items))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [r[1][1] for r in results] == ["ignored", "ignored"], results


class Huge:
    """A setup too large for the spawn pipe's buffer (a segmenter's weights)."""

    def __init__(self) -> None:
        self.blob = b"x" * (8 << 20)

    def __call__(self) -> int:
        return len(self.blob)


def length(state: int, item: int) -> int:
    return state + item


def test_a_large_setup_reaches_the_workers_through_a_file(tmp_path, monkeypatch):
    """A large setup handed over as initializer arguments sat in the spawn pipe, and a worker
    that died before reading it (a script without the __main__ guard) left the parent blocked
    on the write for good. It now goes through a temporary file, removed after the run."""
    import concurrent.futures as cf
    import pickle
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    handed: list[int] = []
    real_pool = cf.ProcessPoolExecutor

    def pool(*args, **kwargs):  # what goes through the spawn pipe: the initializer's args
        handed.append(len(pickle.dumps(kwargs["initargs"])))
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(cf, "ProcessPoolExecutor", pool)
    results = sorted(LocalEngine(2, threads=1).imap(Huge(), length, [0, 1, 2]))
    assert handed and handed[0] < 10_000  # a path, not the 8 MB setup
    assert results == [(i, (8 << 20) + i, None) for i in range(3)]
    assert list(tmp_path.iterdir()) == []  # the setup file is gone
