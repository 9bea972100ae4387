"""Record logs of resumable folder runs (``<output>.records.jsonl``).

A folder run appends one JSON line per finished image to a log next to its output and fsyncs
it, so an interruption (a crash, Ctrl-C, a killed job) loses only the images in flight. The
log's first line is ``{"settings": ...}``: everything that decides the outputs (model id,
thresholds, prompts ...), so a rerun resumes only a run of the same settings, and a log of
other settings is refused instead of mixing two runs' outputs. Each further line is one
image's record, keyed by its ``file_name``; a later record of a file replaces an earlier one
(a retried failure), and a torn last line (a crash mid-write) is ignored.

A run stopped by Ctrl-C (or SIGTERM) writes what it finished and raises
:class:`RunInterrupted`, whose message (:func:`interrupted_message`) the CLI prints last on
standard error: how many images are done, of them how many by earlier runs, and how many failed.

``tasks.everything.annotate_folder`` (``sam-composer everything DIR``) and the folder mode of
``sam-composer instances`` / ``text`` keep such logs. Reading one (:func:`read_log`, with
:func:`log_path` and :data:`LOG_SUFFIX`) lives in :mod:`composer.io.records`, which readers of a
run's outputs below the runner share; they are re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..io.records import LOG_SUFFIX as LOG_SUFFIX
from ..io.records import log_path as log_path
from ..io.records import read_log as read_log
from ..io.visualize import json_finite


class _NotRecorded:
    """The type of :data:`NOT_RECORDED`."""

    def __repr__(self) -> str:
        return "NOT_RECORDED"


#: An alias (:class:`RecordLog`'s ``aliases``) for a setting that an earlier log does not
#: hold at all (written before the setting was recorded): such a log reads as holding the
#: value this run records.
NOT_RECORDED: Any = _NotRecorded()


def json_normal(obj: Any) -> Any:
    """``obj`` as it reads back from a log: tuples as lists, NaN and infinity as None."""
    return json_finite(json.loads(json.dumps(obj)))


def resume_message(log: str | os.PathLike[str], done: int, total: int) -> str:
    """The line a resumed folder run prints: how many of its ``total`` images an earlier run
    finished (``done``; failures are retried, so not among them) and how many are left."""
    return f"resuming {log}: {done} of {total} images done earlier, {total - done} to go"


def finished_message(done: int, total: int, failed: int, output: str | os.PathLike[str],
                     interrupted: bool = False) -> str:
    """The line a folder run prints at its end, also when Ctrl-C (or SIGTERM) stopped it: the
    images finished (``done``, earlier runs' included) and failed of ``total``, and where
    they are listed (``output``)."""
    return (f"{done} of {total} images done, {failed} failed"
            + (" (interrupted)" if interrupted else "") + f" -> {output}")


def interrupted_message(done: int, total: int, failed: int, earlier: int = 0,
                        resumable: bool = True) -> str:
    """The line (for standard error) a folder run stopped by Ctrl-C or SIGTERM ends with: the
    images finished of ``total`` (``done``, of which ``earlier`` by earlier runs) and failed,
    and what a rerun does (``resumable``: resumes; else starts afresh)."""
    line = f"interrupted: {done} of {total} images done"
    if earlier:
        line += f" ({earlier} earlier)"
    line += f", {failed} failed; "
    return line + ("run the same command to resume" if resumable
                   else "a rerun starts afresh (this run does not resume)")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a signal the CLI turns into one) stopped a folder run after it wrote what it
    had finished; ``message`` is :func:`interrupted_message`'s line, which the CLI prints on
    standard error. A KeyboardInterrupt, so callers that catch that still do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def segmenter_settings(segmenter: Any) -> dict[str, Any]:
    """The segmenter settings that change its masks beyond its ``model_id``: mask refinement,
    mask ranking and flip TTA (a dataclass setting by its repr, another object by its type)."""

    def setting(name: str) -> Any:
        v = getattr(segmenter, name, None)
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return repr(v) if dataclasses.is_dataclass(v) else type(v).__name__

    return {k: setting(k) for k in ("mask_refine", "mask_rank", "flip_tta")}


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"name old (now new)"`` for each differing setting, nested settings by their own name
    (``config.pred_iou_thresh`` as ``pred_iou_thresh``) unless two groups share it; a
    setting one side does not hold reads "not recorded"."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old), flat(new)
    keys = sorted(a.keys() | b.keys(), key=str)
    leaves = [k.rsplit(".", 1)[-1] for k in keys]

    def name(key: str) -> str:
        leaf = key.rsplit(".", 1)[-1]
        return leaf if leaves.count(leaf) == 1 else key

    def value(d: dict[str, Any], key: str) -> str:
        return repr(d[key]) if key in d else "not recorded"

    return [f"{name(k)} {value(a, k)} (now {value(b, k)})"
            for k in keys if (k in a, a.get(k)) != (k in b, b.get(k))]


def _unalias(
    old: Any, new: Any, aliases: Mapping[tuple[str, ...], Sequence[Any]]
) -> Any:
    """``old`` (a log's settings) with each aliased value replaced by ``new``'s value there."""
    if not isinstance(old, dict):
        return old
    old = copy.deepcopy(old)
    for keys, spellings in aliases.items():
        o, n = old, new
        for key in keys[:-1]:
            o = o.get(key) if isinstance(o, dict) else None
            n = n.get(key) if isinstance(n, dict) else None
        last = keys[-1]
        if not (isinstance(o, dict) and isinstance(n, dict) and last in n):
            continue
        if last not in o:
            if any(s is NOT_RECORDED for s in spellings):
                o[last] = copy.deepcopy(n[last])
        elif o[last] in json_normal([s for s in spellings if s is not NOT_RECORDED]):
            o[last] = n[last]
    return old


def _without(settings: Any, paths: Sequence[tuple[str, ...]]) -> Any:
    """A copy of ``settings`` without the keys at ``paths`` (key paths into nested dicts)."""
    if not isinstance(settings, dict) or not paths:
        return settings
    settings = copy.deepcopy(settings)
    for keys in paths:
        d = settings
        for key in keys[:-1]:
            d = d.get(key) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(keys[-1], None)
    return settings


class RecordLog:
    """The record log of one folder run: the earlier run's records to keep, then an append-only,
    fsync'ed file while used as a context manager.

    Args:
        path: the log file (:func:`log_path` of the run's output).
        settings: what decides the outputs (JSON-like; compared after :func:`json_normal`).
        resume: keep the records of an earlier run of the same settings (those that are not
            failures make a log of other settings an error); False deletes the old log.
        overwrite_hint: how the caller starts afresh, named in the error.
        aliases: other spellings of a setting that mean the recorded value, by its key path,
            e.g. ``{("config", "zoom_small"): ["auto"]}`` when "auto" resolves to the recorded
            fraction: an earlier log that holds one of them resumes (older logs recorded the
            spelling, and a user may spell out what "auto" resolves to); :data:`NOT_RECORDED`
            among them: a log without the setting at all (written before it was recorded)
            resumes too.
        dropped: key paths of settings that do not decide this run's outputs, left out of the
            comparison (``settings`` may still hold them: they are written to the log), e.g.
            ``[("segmenter",)]`` for automatic masks, which never used the segmenter's
            predict-time settings that older versions recorded.

    Attributes:
        settings: ``settings`` as written to the log.
        records: the earlier run's records by ``file_name`` (empty when not resuming), failures
            included (the caller retries them), then those :meth:`append` logs, each kept here
            before its line is written: a run stopped while a line goes to disk lists every
            record the log holds.

    Raises:
        ValueError: (``resume``) the log holds finished images of other settings, or was written
            without recorded settings; the message names each changed setting.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        settings: dict[str, Any],
        *,
        resume: bool = True,
        overwrite_hint: str = "--overwrite",
        aliases: Mapping[tuple[str, ...], Sequence[Any]] | None = None,
        dropped: Sequence[tuple[str, ...]] = (),
    ) -> None:
        self.path = Path(path)
        self.settings = json_normal(settings)
        old, records = read_log(self.path) if resume else (None, {})
        new = _without(self.settings, dropped)
        old = _without(old, dropped)
        if old is not None and aliases:
            old = _unalias(old, new, aliases)
        if old != new:
            if any("error" not in rec for rec in records.values()):
                what = (
                    "was written without recorded settings"
                    if old is None
                    else "holds outputs of other settings: "
                    + ", ".join(settings_diff(old, new))
                )
                raise ValueError(
                    f"{self.path} {what}; write to a fresh output folder (--out) or recompute "
                    f"every image ({overwrite_hint})"
                )
            records = {}  # only failures: nothing to keep
        if not records and self.path.exists():  # no finished work to keep (or not resuming)
            self.path.unlink()
        self.records: dict[str, Any] = records
        self._file: IO[str] | None = None

    def __enter__(self) -> RecordLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        size = self.path.stat().st_size
        if not size:
            self._write({"settings": self.settings})
        else:
            # a run killed mid-write left a torn last line: end it, or the next record would
            # be glued to it and dropped (with it) by the next resume
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                torn = f.read(1) != b"\n"
            if torn:
                self._file.write("\n")
                self._file.flush()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, rec: dict[str, Any]) -> None:
        """Log one image's record (with its ``file_name``) durably, and keep it in ``records``.

        Raises:
            ValueError: ``rec`` has no ``file_name``, or the log is not open.
        """
        if "file_name" not in rec:
            raise ValueError(f"a record needs a file_name, got keys {sorted(rec)}")
        file = self._open_file()
        line = json.dumps(json_finite(rec), allow_nan=False) + "\n"
        # kept before it is written: a Ctrl-C that lands while the line goes to disk (the
        # fsync takes milliseconds) left a record that the log holds out of what the stopped
        # run listed and counted
        self.records[rec["file_name"]] = rec
        _write_line(file, line)

    def _write(self, rec: dict[str, Any]) -> None:
        _write_line(self._open_file(), json.dumps(json_finite(rec), allow_nan=False) + "\n")

    def _open_file(self) -> IO[str]:
        if self._file is None:
            raise ValueError(f"{self.path} is not open: use the RecordLog in a with block")
        return self._file


def _write_line(file: IO[str], line: str) -> None:
    """``line`` appended to ``file`` durably (flushed and fsync'ed)."""
    file.write(line)
    file.flush()
    os.fsync(file.fileno())
