"""The ``sam-composer`` command (also ``python -m composer``).

Each sub-command lives in ``composer/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``. Bad input prints a one-line error and exits with status 2, and so does
running out of memory (e.g. a huge grid).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._tasks_import import ShadowedTasksError, check_tasks_found
from .allocator import tune_allocator

COMMANDS = (
    "segment", "everything", "instances", "text", "eval", "train", "weights", "export", "convert",
    "demo", "env",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam-composer",
        description="Composable zero-shot segmentation with Segment Anything models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress details (also accepted after the command)")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"sam-composer {__version__}",
                        help="print the version and exit (`sam-composer env` tells more)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"composer.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"composer.commands.{name}":
                continue  # command not part of this build
            raise
        module.add_parser(sub)
    for command in sub.choices.values():
        _add_verbose(command)
    return parser


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """``-v`` also after the command (``sam-composer eval points ... -v``), in every nested
    sub-command; SUPPRESS keeps a ``-v`` given before the command when this one is absent."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for leaf in action.choices.values():
                _add_verbose(leaf)
    if "-v" not in parser._option_string_actions:
        parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="log progress details (also accepted before the command)")


#: options whose value is a comma list of coordinates, which may start with a minus sign
_COORD_OPTIONS = ("--point", "--box")
_NEGATIVE_LIST = re.compile(r"^-[\d.]")


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--point -5,-5`` as ``--point=-5,-5``: argparse reads a value that starts with a minus
    sign and is not a plain number as an option, and reports the value as missing."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] in _COORD_OPTIONS and _NEGATIVE_LIST.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


#: destinations of path arguments (a name in some: --detector ssd, --boxes gt, which never
#: start with "~")
_PATH_DESTS = (
    "image", "input", "path", "out", "checkpoint", "coco", "images", "data", "val_data",
    "val_images", "detector", "detector_weights", "boxes", "clip_weights",
)


def _expand_home(args: argparse.Namespace) -> None:
    """``~`` in path arguments where the shell left it (``--out=~/x``, a quoted ``"~/x"``):
    taken literally it made a folder named ``~`` in the working directory."""
    for dest in _PATH_DESTS:
        value = getattr(args, dest, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, dest, os.path.expanduser(value))


def _check_out_writable(out: str) -> None:
    """Fail before any model loads or image is processed when ``--out`` cannot be written: the
    nearest existing folder at or above it (the command creates the rest) must be writable.

    Raises:
        ValueError: a file or a broken symbolic link stands where a folder of ``--out`` is
            needed, or the folder is not writable.
    """
    path = Path(out).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # mkdir said only "File exists"
            raise ValueError(f"--out {out}: {existing} is a broken symbolic link "
                             f"(to {os.readlink(existing)})")
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file, not a folder")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write in {existing} (permission denied)")


#: commands that run the task adapters of the top-level ``tasks`` package
_TASK_COMMANDS = ("eval", "everything", "instances", "text")


def _stdout_is_closed() -> bool:
    """Whether standard output's reader has gone (a pipe closed early). If so, standard output
    is pointed at the null device, so the interpreter's final flush raises nothing more."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # a stream without a descriptor
        return False
    try:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, AttributeError):  # no poll (Windows): a broken pipe there is stdout's
        closed = True
    if closed:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        except OSError:
            pass
    return closed


#: the signals (SIGTERM, SIGHUP) that stopped the command as a Ctrl-C would
_STOPPED_BY: list[int] = []


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        # the command's own process (not a call from Python): reuse heap memory for the
        # CPU's tensors instead of fresh pages (composer.allocator; the results are the same)
        tune_allocator()
    _STOPPED_BY.clear()
    with _stop_signals_as_ctrl_c(argv is None):
        return _main(argv)


@contextlib.contextmanager
def _stop_signals_as_ctrl_c(install: bool) -> Iterator[None]:
    """While the command runs (``install``: its own process), SIGTERM and SIGHUP (`kill`,
    `timeout`, a batch scheduler, a closed terminal) stop it as Ctrl-C does, so a folder run
    ends its worker processes (else orphaned, each holding a model) and writes what it
    finished; the exit status is then 128 + the signal's number. The earlier handlers are put
    back after (a Python caller's process keeps its own)."""
    import signal

    def _stop(signum: int, frame: object) -> None:
        _STOPPED_BY.append(signum)
        raise KeyboardInterrupt

    previous = {}
    if install and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:  # not nohup's
                previous[sig] = signal.signal(sig, _stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    args.argv = list(sys.argv[1:] if argv is None else argv)  # reports record the command
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        _expand_home(args)
        out = getattr(args, "out", None)
        if out is not None and not str(out).strip():
            raise ValueError("--out is empty; name a folder (or file) to write")
        # every --out but convert's (a json file for some formats) names a folder to write
        if out and getattr(args, "out_is_folder", True) and Path(out).exists() and not Path(out).is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        if out:
            _check_out_writable(out)
        if args.command in _TASK_COMMANDS:
            check_tasks_found()  # before a model loads (and without running the other module)
        return int(args.func(args) or 0)
    except BrokenPipeError as exc:
        if _stdout_is_closed():  # the reader went away (`| head`): stop quietly, as `yes` does
            return 141
        print(f"sam-composer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as exc:
        # OSError: an output path that is a file, not writable, or a full disk
        print(f"sam-composer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        # an optional dependency whose extra is not installed (ray, onnx, edges): the message
        # names the pip command, or a user's own `tasks` module hides ours (ShadowedTasksError);
        # any other ImportError is a bug and keeps its traceback
        if "sam-composer[" not in str(exc) and not isinstance(exc, ShadowedTasksError):
            raise
        print(f"sam-composer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
            raise  # torch's CUDA out-of-memory error is a RuntimeError; others are bugs
        # e.g. a points-per-side of 100000: a one-line error, not a traceback
        print(f"sam-composer {args.command}: error: out of memory ({str(exc)[:200] or type(exc).__name__}); "
              "use smaller settings (grid, batch, image side) or a larger machine", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # a folder run's RunInterrupted says how many images are done and how to go on
        print(getattr(exc, "message", None) or "interrupted", file=sys.stderr)
        return 128 + _STOPPED_BY[-1] if _STOPPED_BY else 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
