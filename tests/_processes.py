"""Forking in tests: not from a process that may hold a CUDA context.

CUDA does not survive ``fork()``: a child forked after the parent initialised CUDA may hang
even if it never touches the GPU. On a GPU machine a pytest-xdist worker holds a CUDA context
once it has run any test on CUDA (``device="auto"`` included), and which tests a worker runs
varies from run to run; so tests that fork on purpose do it from a fresh process wherever
torch sees a GPU. On CPU-only machines nothing changes.
"""

from __future__ import annotations


def gpu_visible() -> bool:
    """Whether torch sees a CUDA device here (then this process may hold a CUDA context)."""
    import torch

    return bool(torch.cuda.is_available())
