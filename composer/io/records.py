"""Reading the record log of a resumable folder run (``<output>.records.jsonl``).

The log is JSON lines: the first, ``{"settings": {...}}``, holds what decided the run's outputs;
each further line is one image's record, a JSON object keyed by its ``file_name`` (``"error"``
in it: the image failed). A later record of a file replaces an earlier one (a retried
failure), and a later settings line replaces an earlier one.

Writing, resuming and comparing settings live in :mod:`composer.runner.records`; this reader
sits in ``io`` so that readers of a run's outputs (``composer.io.formats``: ``sam-composer
convert`` of a folder) share it without importing the runner.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Suffix of a run's record log after its output file's name.
LOG_SUFFIX = ".records.jsonl"


def log_path(output: str | os.PathLike[str]) -> Path:
    """The record log of ``output`` (``annotations.json`` -> ``annotations.json.records.jsonl``)."""
    out = Path(output)
    return out.with_name(out.name + LOG_SUFFIX)


def read_log(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Settings header and per-image records (by ``file_name``) of an earlier, possibly
    interrupted, run.

    A line that is no record is skipped with a warning: a torn line (a crash mid-write), one
    that is not UTF-8 JSON, not a JSON object, a record without a string ``file_name``, or a
    settings line whose settings are not an object. Blank lines are skipped.

    Returns:
        ``(settings, records)``: the last settings line's dict (None when there is none) and
        each ``file_name``'s last record; ``(None, {})`` when there is no log.

    Raises:
        OSError: the log exists but cannot be read (a folder, no permission).
    """
    path = Path(path)
    settings: dict[str, Any] | None = None
    done: dict[str, Any] = {}
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return settings, done
    # binary lines (split on "\n" only, what the writer ends them with), each decoded on its
    # own: a corrupt line is skipped, not the whole log refused; read line by line, as a long
    # run's log can be large
    with f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                logger.warning("ignoring a torn record in %s (line %d)", path, number)
                continue
            if isinstance(rec, dict) and "settings" in rec:
                if isinstance(rec["settings"], dict):
                    settings = rec["settings"]
                    continue
            elif isinstance(rec, dict) and isinstance(rec.get("file_name"), str):
                done[rec["file_name"]] = rec
                continue
            logger.warning("ignoring line %d of %s: neither the settings nor a record with a "
                           "file_name", number, path)
    return settings, done
