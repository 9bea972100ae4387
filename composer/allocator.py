"""The C heap under the CPU's tensors: glibc's thresholds for fresh memory maps, and trimming.

A CPU forward pass allocates and frees activations of a few MB to a few tens of MB. glibc
serves a block above its *mmap threshold* as a fresh memory map, and gives heap memory back to
the OS once more than its *trim threshold* is free at the top; either way the next
allocation of that size gets fresh pages, which the kernel zeroes on first touch (a minor
page fault per 4 KB). The thresholds start at 128 KB and adapt upwards only as blocks are
freed, so a process running composer_tiny's encoder kept paying for fresh pages: its encoder
pass took 1.22x as long as with the thresholds below.

:func:`tune_allocator` fixes the thresholds at 32 MiB (mmap; glibc's largest) and 64 MiB
(trim): blocks up to 32 MiB are reused from the heap, and at most 64 MiB of freed memory stays
with the process. Results do not change. The ``sam-composer`` command calls it at start, and
its worker processes and Ray actors do too; a Python program opts in with one call. It does
nothing where the C library is not glibc, when ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` is set (the user's own choice), or when ``SAM_COMPOSER_TUNE_MALLOC``
is ``0``. Numbers: ``benchmarks/bench_allocator.py``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Any

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: the values :func:`tune_allocator` sets (32 MiB is the largest mmap threshold glibc accepts
#: on 64-bit systems)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
#: the environment variable that turns :func:`tune_allocator` off ("0")
ENV_SWITCH = "SAM_COMPOSER_TUNE_MALLOC"

_tuned = False


@functools.cache
def _glibc() -> Any:
    """The process's glibc (``ctypes.CDLL``), or None elsewhere (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        return libc
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``; elsewhere nothing).

    A large photo's full-size masks are temporaries of tens of MB that glibc serves from the
    heap once its mmap threshold has grown; the small results kept between them pin the freed
    space, so a 6000 x 4000 image grew to 6 GB of resident memory within one batch of prompts
    (1.3 GB with a trim after each chunk). The results do not change.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def tune_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds (module docstring); True when they are set now or
    were set by an earlier call. Safe to call more than once."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get(ENV_SWITCH, "").strip() == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    libc = _glibc()
    if libc is None:
        return False
    # the trim threshold first: with the mmap threshold fixed, glibc no longer raises it
    ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    ok = ok and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    _tuned = ok
    return ok


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has set the thresholds in this process."""
    return _tuned
