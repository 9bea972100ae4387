"""The setups and per-item functions that the engine tests hand to worker processes and Ray
actors, in a module of their own: a worker imports the module that defines them (by name) to
unpickle them, and this one imports nothing heavy. The test module imports torch, torchvision
and the tasks: seconds of CPU for every Ray actor started, which on a loaded 2-core machine
made the Ray tests take minutes."""

from __future__ import annotations

import os


class Offset:
    """A picklable setup: the worker's state is (offset, pid of the worker)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __call__(self) -> tuple[int, int]:
        return self.offset, os.getpid()


def add(state: tuple[int, int], item: int) -> tuple[int, int]:
    """``state``'s offset plus ``item``, and the worker's pid; item 3 fails (two lines)."""
    if item == 3:
        raise ValueError("item three is bad\nsecond line")
    return state[0] + item, state[1]


def failing_setup() -> None:
    raise RuntimeError("no model here")
