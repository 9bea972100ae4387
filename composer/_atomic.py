"""Writing a file atomically: into a temporary sibling (``<name>.part``), renamed over it.

A reader never sees half a file, and a crash, an error or Ctrl-C mid-write leaves an existing
file as it was; an error also removes the temporary file (a process killed outright leaves it,
and the next write of the same name overwrites it). This module imports nothing of the rest
of the package, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "sync_folder"]


@contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    fsync: bool = False,
    sync_dir: bool = False,
    unique: bool = False,
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` to write; renamed over ``path`` when the block ends.

    The file is created with ``open`` (the umask's permissions, as any new file, not
    ``mkstemp``'s 0600: folders may be shared). Text mode writes UTF-8.

    Args:
        path: the file to write; its folder must exist.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        fsync: flush the file's bytes to the disk before the rename (without it a power cut
            after the rename could leave ``path`` empty or cut off on file systems that write
            metadata before data).
        sync_dir: flush the folder's entry (the rename) to the disk afterwards, where the
            platform allows it (:func:`sync_folder`).
        unique: name the temporary file ``<name>.<random>.part`` and create it exclusively, so
            concurrent writers of one file never write into each other's; else
            ``<name>.part``.

    Yields:
        The open temporary file.

    Raises:
        ValueError: ``mode`` is not ``"wb"`` or ``"w"``.
        OSError: the file cannot be written or renamed; ``path`` is unchanged and the temporary
            file removed (where it can be: the error raised is the write's, not the removal's).
            An error in the block propagates the same way. A temporary file that cannot be
            opened is left as it is.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes with mode 'wb' or 'w', not {mode!r}")
    out = Path(path)
    if unique:
        tmp = out.with_name(f"{out.name}.{uuid.uuid4().hex}.part")
        mode = mode.replace("w", "x")
    else:
        tmp = out.with_name(out.name + ".part")
    # opened before the try: a file this call could not open (another writer's, a folder) is
    # not its to remove
    f = open(tmp, mode, encoding=None if "b" in mode else "utf-8")
    try:
        with f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        # the error (a full disk, Ctrl-C) is what the caller hears, not a failed clean-up's
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        sync_folder(out.parent)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename) to the disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where a folder cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still stands
        pass
    finally:
        os.close(fd)
