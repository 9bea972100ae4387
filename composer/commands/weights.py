"""``sam-composer weights list | download NAME | import PATH [--name NAME]``."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list, download or import model weights")
    wsub = p.add_subparsers(dest="action", metavar="ACTION")
    wsub.required = True
    wsub.add_parser("list", help="registered weights and whether they are cached").set_defaults(func=run_list)
    d = wsub.add_parser("download", help="download and verify registered weights (needs network)")
    d.add_argument("name", help="registered weights name (see `weights list`; case and -/_ "
                   "ignored); progress is shown on stderr")
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.set_defaults(func=run_download)
    i = wsub.add_parser("import", help="verify a local weights file and copy it into the cache")
    i.add_argument("path", help="weights file to verify and copy into the cache")
    i.add_argument("--name", default=None, help="registered name (default: found by the file name, else by its checksum)")
    i.set_defaults(func=run_import)


def _registry() -> Any:
    """The hub with every weights family registered (SAM specs register on import)."""
    from .. import hub
    from ..models.detectors import register_detector_weights
    from ..sam import composer_tiny  # noqa: F401  (registers the packaged weights)

    register_detector_weights()
    return hub


def run_list(args: argparse.Namespace) -> int:
    hub = _registry()

    rows = hub.list_weights()
    wn = max([len(r["name"]) for r in rows] + [4])
    wa = max([len(r["arch"]) for r in rows] + [4])
    wf = max([len(r["file"]) for r in rows] + [4])
    print(f"{'name':<{wn}}  {'arch':<{wa}}  {'cached':<6}  {'file':<{wf}}  license")
    for r in rows:
        cached = "yes" if r["cached"] else "no"
        print(f"{r['name']:<{wn}}  {r['arch']:<{wa}}  {cached:<6}  {r['file']:<{wf}}  {r['license']}")
    print(f"cache: {hub.cache_dir()}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    hub = _registry()

    spec = hub.get_spec(args.name)
    was_cached = hub.cached_path(spec).is_file()
    progress = _Progress(spec.name, sys.stderr)
    try:
        path = hub.download(args.name, force=args.force, progress=progress)
    finally:
        progress.close()
    if was_cached and not args.force and spec.checksums:
        # download() returns a file already in the cache as it is: verify it, so a corrupt or
        # truncated cached file is not reported as good weights
        try:
            hub.verify(args.name)
        except ValueError as exc:
            raise ValueError(
                f"{exc}; fetch it again with `sam-composer weights download {args.name} --force`"
            ) from None
    print(f"{args.name}: {path}")
    return 0


class _Progress:
    """Draws download progress on ``stream``: one line redrawn in place on a terminal, else
    (a log file, a CI job) a new line every 10% or 100 MiB, so logs stay short."""

    _STEP_BYTES = 100 << 20

    def __init__(self, name: str, stream: TextIO) -> None:
        self.name, self.stream = name, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last: int | None = None
        self.drawn = False

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            step = done * 100 // total if self.tty else done * 10 // total * 10
            text = f"{min(step, 100)}% of {_size(total)}"
        else:
            step = done >> 20 if self.tty else done // self._STEP_BYTES
            text = _size(done)
        if step == self.last:
            return
        self.last = step
        line = f"downloading {self.name}: {text}"
        self.stream.write(f"\r{line}\033[K" if self.tty else line + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def run_import(args: argparse.Namespace) -> int:
    hub = _registry()

    path = hub.import_checkpoint(args.path, name=args.name)
    print(f"imported {args.path} -> {path}")
    return 0
