"""Argument checks shared by the benchmarks: refuse a bad value before any model loads or any
timing runs, with ``parser.error`` (one line, exit status 2), not a traceback at the end."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def check_at_least(
    parser: argparse.ArgumentParser, checks: Iterable[tuple[str, float | None, float]]
) -> None:
    """``parser.error`` for the first ``(flag, value, least)`` whose value (unless None) is below
    ``least``."""
    for flag, value, least in checks:
        if value is not None and value < least:
            parser.error(f"{flag} must be >= {least:g}, got {value}")


def check_json(parser: argparse.ArgumentParser, path: str | Path | None) -> None:
    """``--json`` is written after the benchmark: refuse a folder there and create missing
    parent folders now, so the numbers are not lost at the end."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        parser.error(f"--json {path} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--json {path}: cannot create its folder ({e})")


def run_main(main: Callable[[], Any]) -> Any:
    """Run a benchmark's ``main``: bad input found during the run (a missing dataset, an unknown
    model; the library's ``ValueError``) or a missing optional package ends with one line on
    stderr and exit status 2, as a bad flag does, not a traceback. ``SAM_COMPOSER_TRACEBACK=1``
    shows the traceback as well."""
    try:
        return main()
    except (ValueError, ImportError) as e:
        if os.environ.get("SAM_COMPOSER_TRACEBACK"):
            traceback.print_exc()
        extra = ""
        if isinstance(e, ImportError):
            extra = " (an optional package this benchmark needs: see its docstring)"
        print(f"error: {e}{extra}", file=sys.stderr)
        raise SystemExit(2) from None
