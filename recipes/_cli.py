"""Shared command-line behaviour of the recipes: bad input ends a run with one line, not a traceback.

The library raises ``ValueError`` naming the offending value (an unknown model name, a missing
dataset or checkpoint, a bad setting). A recipe's ``main`` decorated with :func:`one_line_errors`
prints that message as ``error: ...`` on stderr and exits with status 2, as ``argparse`` does for
a bad flag. Set ``SAM_COMPOSER_TRACEBACK=1`` to see the traceback as well.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(main: F) -> F:
    """Wrap a recipe's ``main``: a ``ValueError`` becomes ``error: MESSAGE`` and exit status 2;
    Ctrl-C (a ``KeyboardInterrupt``) one line, a folder run's ``RunInterrupted`` message ("N of
    M images done ...; run the same command to resume") or ``interrupted``, and exit status 130,
    as ``sam-composer`` does (it was a traceback, which reads as a crash; the resumable stages
    have written what they finished before it propagates)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except ValueError as e:
            if os.environ.get("SAM_COMPOSER_TRACEBACK"):
                traceback.print_exc()
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt as e:
            if os.environ.get("SAM_COMPOSER_TRACEBACK"):
                traceback.print_exc()
            print(getattr(e, "message", None) or "interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]


def check_at_least(
    parser: argparse.ArgumentParser, checks: Iterable[tuple[str, float | None, float]]
) -> None:
    """``parser.error`` for the first ``(flag, value, least)`` whose value (unless None) is below
    ``least``: refused before any model is loaded, not after the work it would spoil."""
    for flag, value, least in checks:
        if value is not None and value < least:
            parser.error(f"{flag} must be >= {least:g}, got {value}")


def check_out_dir(
    parser: argparse.ArgumentParser, out: str | Path | None, flag: str = "--out"
) -> None:
    """``parser.error`` when ``out`` exists and is not a folder (the results would be lost when
    written there at the end of the run)."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        parser.error(f"{flag} {out} exists and is not a folder")


def check_same_run(checkpoint_dir: str | Path, settings: dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint_dir/last.pt`` written with other settings, as
    ``sam-composer train`` does (its ``run.json``); record the settings otherwise.

    ``Trainer.resume`` restores any same-architecture ``last.pt``, and a finished one is not
    trained again: without this, a rerun with another ``--lr``, ``--init``/``--weights`` or
    other data reports (and exports) the earlier run's weights as its own.

    Raises:
        ValueError: the folder holds a ``last.pt`` whose recorded settings differ.
    """
    import json

    folder = Path(checkpoint_dir)
    ident = folder / "run_settings.json"
    if (folder / "last.pt").is_file() and ident.is_file():
        before = json.loads(ident.read_text())
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise ValueError(
                f"{folder} holds a training run (last.pt) started with other settings "
                f"({', '.join(changed)}); rerun with the same ones to resume, or use a fresh folder"
            )
    folder.mkdir(parents=True, exist_ok=True)
    ident.write_text(json.dumps(settings, indent=2, sort_keys=True))


def file_digest(path: str | Path | None) -> str | None:
    """SHA-256 of a file (None for None or a missing file): the hub's chunked
    ``file_sha256``, which does not read a large checkpoint into memory at once."""
    from composer.hub.download import file_sha256

    if path is None or not Path(path).is_file():
        return None
    return file_sha256(path)
