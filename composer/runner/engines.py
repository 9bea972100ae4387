"""Engines that map a function over many items with per-worker state: local processes or Ray.

A batch run over images needs, in every worker, something expensive to build once (a
segmenter, a task) and then a cheap call per image. An engine gets both as picklable
callables: ``setup()`` builds the worker's state once, ``fn(state, item)`` handles one item.
``imap`` yields ``(index, result, error)`` as items finish, in any order, so the caller can
record each result at once (an interruption loses only unfinished items); an exception in
``fn`` is that item's ``error`` (one line, ``"Type: message"``) and the run goes on.

- :class:`LocalEngine` (default): ``workers=1`` runs in this process; more workers are spawned
  processes (``concurrent.futures`` with the ``spawn`` start method, so CUDA and threads are
  safe), each with ``threads`` torch/OpenCV threads.
- :class:`RayEngine`: one Ray actor per worker, on a local Ray instance or a cluster
  (``address``); needs the ``ray`` extra (``pip install "sam-composer[ray]"``).

Both send the state's recipe (``setup``) to each worker once and only items and results per
call; results must be picklable (plain dicts, numpy arrays, ``Detections``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ..allocator import allocator_tuned, tune_allocator

logger = logging.getLogger(__name__)

Result = tuple[int, Any, str | None]


def error_text(exc: BaseException) -> str:
    """``"Type: message"`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Engine(Protocol):
    """Maps ``fn(state, item)`` over items, ``state = setup()`` built once per worker."""

    workers: int

    def imap(self, setup: Callable[[], Any], fn: Callable[[Any, Any], Any],
             items: Sequence[Any]) -> Iterator[Result]: ...


def _set_threads(threads: int | None) -> None:
    if not threads:
        return
    import cv2
    import torch

    torch.set_num_threads(int(threads))
    cv2.setNumThreads(int(threads))


def _call(state: Any, fn: Callable[[Any, Any], Any], index: int, item: Any) -> Result:
    try:
        return index, fn(state, item), None
    except Exception as exc:  # one bad item must not stop the run
        logger.info("item %d failed", index, exc_info=True)
        return index, None, error_text(exc)


# Per-process state of LocalEngine's worker processes (set by the pool initializer).
_WORKER_STATE: dict[str, Any] = {}


def _stop_signals() -> list[int]:
    """SIGTERM and SIGHUP where this platform has them."""
    return [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
            if s is not None]


def _init_worker(setup: Callable[[], Any], threads: int | None, tune: bool = False,
                 ignore_stop: tuple[int, ...] = ()) -> None:
    # what the worker inherited, before it sets anything (the tests read it)
    _WORKER_STATE["sigint_at_start"] = signal.getsignal(signal.SIGINT)
    # Ctrl-C in a terminal signals the whole process group: the parent handles it (and stops
    # the workers); a worker interrupted inside the pool's queue code could die holding its
    # lock and leave the parent waiting for it forever
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # likewise the stop signals the parent handles itself (the CLI: SIGTERM, SIGHUP to the
    # process group, as `timeout` and a closed terminal send them): a worker that died of
    # one first had its image logged as failed before the parent's own stop came
    for sig in ignore_stop:
        signal.signal(sig, signal.SIG_IGN)
    _set_threads(threads)
    if tune:  # as the parent process (composer.allocator)
        tune_allocator()
    _WORKER_STATE["state"] = setup()


@contextlib.contextmanager
def _started_ignoring_sigint() -> Iterator[None]:
    """Processes started inside begin with SIGINT ignored: an ignored signal stays ignored
    across exec, and Python then installs no KeyboardInterrupt handler of its own. A spawned
    worker imports this package (and torch) before its initializer can ignore Ctrl-C itself,
    and a Ctrl-C in those seconds printed each worker's KeyboardInterrupt traceback. This
    process ignores SIGINT only while the workers are launched (off the main thread, where
    signals cannot be set, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


class _SetupFile:
    """A ``setup`` pickled to a file, loaded by each worker.

    Handing a large ``setup`` (a segmenter) to the workers as initializer arguments puts it
    in the spawn pipe, which the parent writes while still holding the pipe's read end: a
    worker that dies before reading it all (e.g. a script without ``if __name__ ==
    "__main__":``, whose spawned copy fails while re-running the script) leaves the parent
    blocked on that write for good. A file path keeps the spawn data small, so the death is
    seen and reported (``BrokenProcessPool``) instead.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self) -> Any:
        import pickle

        with open(self.path, "rb") as f:
            setup = pickle.load(f)
        return setup()


def _run_in_worker(fn: Callable[[Any, Any], Any], index: int, item: Any) -> Result:
    return _call(_WORKER_STATE["state"], fn, index, item)


class LocalEngine:
    """This machine: ``workers`` processes (1: this process, no pickling at all).

    Args:
        workers: worker processes (>= 1).
        threads: torch/OpenCV threads per worker process (None: leave the defaults; with
            several workers on few cores, 1 avoids oversubscription). Ignored for
            ``workers=1``, which uses this process's settings.
    """

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.workers = int(workers)
        self.threads = None if threads is None else int(threads)

    def __repr__(self) -> str:
        return f"LocalEngine(workers={self.workers}, threads={self.threads})"

    def imap(self, setup: Callable[[], Any], fn: Callable[[Any, Any], Any],
             items: Sequence[Any]) -> Iterator[Result]:
        if not items:
            return
        if self.workers == 1:
            state = setup()
            for i, item in enumerate(items):
                yield _call(state, fn, i, item)
            return
        import pickle
        import tempfile

        ctx = multiprocessing.get_context("spawn")
        fd, setup_path = tempfile.mkstemp(prefix="sam-composer-setup-", suffix=".pkl")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(setup, f, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            os.unlink(setup_path)
            raise
        # stop signals that this process handles (not the default action): the workers leave
        # them to it, and are ended by it (_stop) when they come
        ignore_stop = tuple(int(sig) for sig in _stop_signals()
                            if signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None))
        pool: cf.ProcessPoolExecutor | None = None
        finished = False
        try:
            pool = cf.ProcessPoolExecutor(
                max_workers=min(self.workers, len(items)), mp_context=ctx,
                initializer=_init_worker,
                initargs=(_SetupFile(setup_path), self.threads, allocator_tuned(), ignore_stop),
            )
            # the submits launch the workers (one per submit, up to max_workers): all of
            # them start with SIGINT ignored
            with _started_ignoring_sigint():
                futures = {pool.submit(_run_in_worker, fn, i, item): i
                           for i, item in enumerate(items)}
            try:
                for fut in cf.as_completed(futures):
                    # dropped here: a finished future holds its result, and a long run must
                    # not keep every image's result alive until the end
                    index = futures.pop(fut)
                    try:
                        result = fut.result()
                    except cf.BrokenExecutor as exc:
                        # a worker died (killed, out of memory, failed setup): this item and
                        # the ones still queued cannot finish; each is reported as failed
                        result = index, None, error_text(exc) or "worker process died"
                    except Exception as exc:
                        # the item or its result could not be sent between processes (not
                        # picklable): that item's failure, as its exceptions are; the rest go on
                        result = index, None, error_text(exc)
                    del fut
                    yield result
                    del result
            finally:
                for fut in futures:
                    fut.cancel()
            finished = True
        finally:
            try:
                if pool is not None and finished:
                    pool.shutdown(wait=True)
                elif pool is not None:
                    _stop(pool)
            finally:
                os.unlink(setup_path)


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """End a pool whose run was cut short (Ctrl-C, or the caller stopped reading): the queued
    items are dropped and the workers terminated, not awaited. An item a worker was on is not
    reported, so a resumed run does it again; waiting for it (``shutdown(wait=True)``) could
    hang for good after a KeyboardInterrupt inside the pool's own code.

    The pool's manager thread (which, seeing its workers gone, closes the call queue and ends
    its feeder thread) is given up to 10 s to finish, so that no thread of the run outlives
    it; a manager stuck on a lock the interrupted code held is left behind, not waited on."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.kill()  # the workers may ignore SIGTERM (_init_worker); they hold no results
    for proc in processes:
        proc.join(timeout=10)
    if isinstance(manager, threading.Thread) and manager is not threading.current_thread():
        manager.join(timeout=10)


class _RayWorker:
    """A Ray actor's body: the state built once, then one call per item."""

    def __init__(self, setup: Callable[[], Any], fn: Callable[[Any, Any], Any],
                 threads: int, tune: bool = False) -> None:
        _set_threads(threads)
        if tune:  # as the driver process (composer.allocator)
            tune_allocator()
        self.fn = fn
        self.state = setup()

    def ready(self) -> bool:
        """Answers once the actor is placed and its state built."""
        return True

    def run(self, index: int, item: Any) -> Result:
        return _call(self.state, self.fn, index, item)


def _largest_node_cpus(nodes: Sequence[dict[str, Any]]) -> float:
    """The most CPUs of one alive node of ``ray.nodes()`` (0 when there is none)."""
    cpus = [float((node.get("Resources") or {}).get("CPU", 0) or 0)
            for node in nodes if node.get("Alive")]
    return max(cpus, default=0.0)


def _placement_error(nodes: Sequence[dict[str, Any]], cpus_per_worker: int,
                     cluster: bool) -> str | None:
    """Why no actor of ``cpus_per_worker`` CPUs can ever start on these nodes; None when one
    can (now, or once busy nodes free their CPUs).

    A cluster (``cluster``) whose alive nodes have no CPUs at all (a head node with
    ``--num-cpus 0``, its workers yet to come) can only be waiting for its autoscaler to add
    nodes: that is left to wait, as a busy cluster is."""
    largest = _largest_node_cpus(nodes)
    if largest >= cpus_per_worker or (cluster and largest == 0):
        return None
    where = "node of the Ray cluster" if cluster else "Ray node (the local instance)"
    fix = (f"use --threads-per-worker {int(largest)} or less (the CPUs each Ray worker reserves)"
           if largest >= 1 else "give Ray CPUs (num_cpus)")
    return (f"no Ray worker can start: each needs {cpus_per_worker} CPUs "
            f"(--threads-per-worker {cpus_per_worker}) but the largest {where} has "
            f"{largest:g}; {fix}")


class RayEngine:
    """Ray actors, one per worker, each holding its own ``setup()`` state.

    Args:
        workers: actors (>= 1).
        address: a Ray cluster address (e.g. ``"auto"`` or ``"ray://host:10001"``); None
            starts (or reuses) a local Ray instance.
        cpus_per_worker: CPUs each actor reserves; also its torch/OpenCV threads.
        init_kwargs: extra arguments of ``ray.init`` (a local instance gets
            ``include_dashboard=False`` and ``num_cpus`` of this machine's CPUs or
            ``workers * cpus_per_worker``, the more, unless given).

    An actor no node of a local instance could ever hold (``cpus_per_worker`` above its CPUs)
    is a ``ValueError`` before any actor starts, not a wait for good; on a cluster
    (``address``) it is a warning line, since an autoscaler may add a node that fits. Actors that wait for CPUs
    (a busy cluster, or fewer CPUs than ``workers * cpus_per_worker``) leave the items to
    the actors that did start, which at the end also take the items handed to actors still
    not started (those are then ended, so that no image is done twice at once); the run ends
    once every item is in and the calls still out have finished, none cut off mid-item. When
    nothing finishes for :attr:`pending_log_s` seconds while actors wait, one warning line
    says how many (again only when that number changes).
    """

    #: seconds without any finished item after which the actors not yet started are logged
    pending_log_s: float = 60.0

    def __init__(self, workers: int = 2, address: str | None = None, cpus_per_worker: int = 1,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if int(cpus_per_worker) < 1:
            raise ValueError(f"cpus_per_worker must be >= 1, got {cpus_per_worker}")
        self.workers = int(workers)
        self.address = address
        self.cpus_per_worker = int(cpus_per_worker)
        self.init_kwargs = dict(init_kwargs or {})

    def __repr__(self) -> str:
        return f"RayEngine(workers={self.workers}, address={self.address!r})"

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise ImportError(
                'the Ray engine needs Ray: pip install "sam-composer[ray]"'
            ) from exc
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address is None:
                kwargs.setdefault("num_cpus", max(os.cpu_count() or 1,
                                                  self.workers * self.cpus_per_worker))
            # ray.init puts its own SIGTERM handler (sys.exit) in place of this process's: a
            # handler already there (the CLI's, which stops a run as Ctrl-C does and writes
            # what it finished; nohup's SIG_IGN) is put back
            kept = {sig: signal.getsignal(sig) for sig in _stop_signals()}
            ray.init(address=self.address, **kwargs)
            if threading.current_thread() is threading.main_thread():
                for sig, handler in kept.items():
                    if handler not in (signal.SIG_DFL, None):
                        signal.signal(sig, handler)
        return ray

    def _check_placeable(self, ray: Any) -> None:
        """A ``ValueError`` when no alive node of the local instance has the CPUs of one actor
        (:func:`_placement_error`); for a cluster (``address``), whose autoscaler may add a
        node that fits, a warning line, and the actors wait."""
        try:
            nodes = ray.nodes()
        except Exception:  # the check is a courtesy: a cluster that cannot say is not refused
            logger.debug("ray.nodes() failed; the actors' placement is not checked", exc_info=True)
            return
        cluster = self.address is not None
        problem = _placement_error(nodes, self.cpus_per_worker, cluster=cluster)
        if problem and cluster:
            # a cluster's autoscaler may still add a node that fits: waited for, but said
            logger.warning("%s, or wait for the cluster to add a node that size (an "
                           "autoscaler); the workers wait for one (Ctrl-C stops the run)",
                           problem)
        elif problem:
            raise ValueError(problem)

    def imap(self, setup: Callable[[], Any], fn: Callable[[Any, Any], Any],
             items: Sequence[Any]) -> Iterator[Result]:
        if not items:
            return
        ray = self._ray()
        self._check_placeable(ray)
        worker: Any = ray.remote(num_cpus=self.cpus_per_worker)(_RayWorker)
        actors = [worker.remote(setup, fn, self.cpus_per_worker, allocator_tuned())
                  for _ in range(min(self.workers, len(items)))]
        # each actor answers ready() once placed and set up, before its first item
        starting = {actor.ready.remote(): k for k, actor in enumerate(actors)}
        started: set[int] = set()  # actors that answered (ran, or died): not waiting
        pending: dict[Any, tuple[int, int]] = {}  # an item's call: (item index, actor)
        copies: dict[int, int] = {}  # calls out per item index (2: handed on, see below)
        done: set[int] = set()  # item indices yielded
        queue = list(enumerate(items))[::-1]

        def submit(k: int, i: int, item: Any) -> None:
            pending[actors[k].run.remote(i, item)] = (i, k)
            copies[i] = copies.get(i, 0) + 1

        ended: set[int] = set()  # actors killed here, their items handed on

        def end(k: int) -> None:
            ended.add(k)
            with contextlib.suppress(Exception):
                ray.kill(actors[k])

        def next_for(k: int) -> None:
            """Actor ``k`` is free: the next item, or, with none left, an item that waits on
            an actor not started (which may never be placed while this run holds the CPUs).
            That actor is ended first: started later, it would run the item beside ``k`` (two
            calls writing one image's files), and be killed mid-item when the run ends."""
            if queue:
                submit(k, *queue.pop())
                return
            for i, j in pending.values():
                if j not in started and j not in ended and copies[i] == 1 and i not in done:
                    end(j)
                    submit(k, i, items[i])
                    return

        last_death = ""
        logged_waiting = 0
        try:
            for k in range(len(actors)):
                if queue:
                    submit(k, *queue.pop())
            while any(i not in done for i, _ in pending.values()):
                ready, _ = ray.wait([*pending, *starting], num_returns=1,
                                    timeout=self.pending_log_s)
                if not ready:  # nothing finished for a while
                    if starting and len(starting) != logged_waiting:
                        logged_waiting = len(starting)
                        logger.warning(
                            "%d of %d Ray workers not started after %g s (each waits for "
                            "%d CPU(s) free on one node, or is still setting up); the started "
                            "ones go on", len(starting), len(actors), self.pending_log_s,
                            self.cpus_per_worker)
                    continue
                ref = ready[0]
                if ref in starting:
                    # placed and set up, or dead (its item's call tells the death, as before):
                    # either way its item is not handed on
                    started.add(starting.pop(ref))
                    with contextlib.suppress(Exception):  # read, so Ray reports no unread error
                        ray.get(ref)
                    continue
                i, k = pending.pop(ref)
                copies[i] -= 1
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the actor died (its setup failed, or it crashed)
                    if k not in ended:  # not one ended here on purpose
                        last_death = error_text(exc)
                    if i not in done and not copies[i]:  # no other call can still give it
                        done.add(i)
                        yield i, None, last_death
                    continue  # this actor is gone; the others take the rest
                started.add(k)
                if i not in done:
                    done.add(i)
                    yield result
                    del result
                if k not in ended:
                    next_for(k)
            while queue:  # every actor died
                i, _ = queue.pop()
                yield i, None, f"RuntimeError: no Ray worker left (the last died of {last_death})"
            # calls still out are of items given already (an actor ended on handing its item
            # on may have answered first): those of live actors run to their end, as a kill
            # mid-item could leave that image's files half rewritten (or removed)
            running = [ref for ref, (_, k) in pending.items() if k in started and k not in ended]
            while running:
                (ref,), running = ray.wait(running, num_returns=1)
                with contextlib.suppress(Exception):
                    ray.get(ref)
        finally:
            for k, actor in enumerate(actors):
                if k not in ended:
                    ray.kill(actor)


def make_engine(name: str = "local", workers: int = 1, threads: int | None = None,
                address: str | None = None) -> Engine:
    """An engine by name: ``"local"`` (:class:`LocalEngine`) or ``"ray"`` (:class:`RayEngine`,
    ``threads`` CPUs per actor, default 1)."""
    key = str(name).strip().lower()
    if key == "local":
        if address is not None:
            raise ValueError("an address is for the Ray engine; the local engine has none")
        return LocalEngine(workers, threads)
    if key == "ray":
        return RayEngine(workers, address=address, cpus_per_worker=threads or 1)
    raise ValueError(f"unknown engine {name!r}: use local or ray")
