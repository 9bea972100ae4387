"""composer._atomic.atomic_write: "write to <name>.part, then rename" for the PNG and JSON
writers, the embedding disk cache, the feature cache, COCO results and checkpoints (downloads
and the ONNX export keep their own)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from composer._atomic import atomic_write


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes that grow a file past ``limit`` bytes fail with OSError (EFBIG), as on a full
    disk, in this process (RLIMIT_FSIZE; SIGXFSZ ignored so the write fails, not the process)."""
    if sys.platform != "linux":
        pytest.skip("RLIMIT_FSIZE is used on Linux only")
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_writes_then_replaces_and_leaves_no_part(tmp_path) -> None:
    out = tmp_path / "a.json"
    out.write_text("old")
    with atomic_write(out, "w") as f:
        f.write("néw")
        assert (tmp_path / "a.json.part").is_file() and out.read_text() == "old"
    assert out.read_bytes() == "néw".encode() and os.listdir(tmp_path) == ["a.json"]
    with atomic_write(tmp_path / "b.bin") as f:
        f.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_an_error_in_the_block_keeps_the_old_file_and_removes_the_part(tmp_path, error) -> None:
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    with pytest.raises(error), atomic_write(out) as f:
        f.write(b"half")
        raise error()
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("size", [1 << 17, 3000])
def test_a_full_disk_keeps_the_old_file_and_removes_the_part(tmp_path, size) -> None:
    """Past the limit in a write (1 << 17 bytes), or in the flush on close (3000 bytes, held
    in the file's buffer until then)."""
    if size == 3000 and os.stat(tmp_path).st_blksize < 4096:
        pytest.skip("the file's buffer (the folder's block size) holds less than 3000 bytes")
    out = tmp_path / "a.bin"
    out.write_bytes(b"old")
    with pytest.raises(OSError), file_size_limit(2048), atomic_write(out) as f:
        f.write(b"x" * size)
        assert size > 3000 or f.tell() == 3000 and os.path.getsize(f"{out}.part") == 0
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_unique_names_let_concurrent_writers_not_write_into_each_other(tmp_path) -> None:
    out = tmp_path / "e.bin"
    with atomic_write(out, unique=True) as a, atomic_write(out, unique=True) as b:
        names = sorted(p.name for p in tmp_path.iterdir())
        assert len(names) == 2 and all(n.startswith("e.bin.") and n.endswith(".part")
                                       for n in names)
        a.write(b"a" * 10)
        b.write(b"b" * 10)
    # b's block ends first, then a's: the last writer to finish wins, whole
    assert out.read_bytes() == b"a" * 10 and os.listdir(tmp_path) == ["e.bin"]


def record_fsync_and_replace(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The os.fsync (of a file or a folder) and os.replace calls from now on, in order."""
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        # fstat, not /proc/self/fd (Linux only): macOS opens and fsyncs a folder too
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        calls.append(f"replace {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def test_fsync_before_the_rename_and_the_folder_after(tmp_path, monkeypatch) -> None:
    calls = record_fsync_and_replace(monkeypatch)
    for kw in ({}, {"fsync": True}, {"fsync": True, "sync_dir": True}):
        calls.clear()
        with atomic_write(tmp_path / "c", "w", **kw) as f:
            f.write("c")
        expected = ["replace c.part -> c"]
        if kw.get("fsync"):
            expected.insert(0, "fsync file")
        if kw.get("sync_dir"):
            expected.append("fsync folder")
        assert calls == expected


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("unique", [False, True])
def test_the_file_has_the_umasks_permissions(tmp_path, unique) -> None:
    """Not mkstemp's 0600: a shared cache folder's entries stay readable by the group."""
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "p", unique=unique) as f:
            f.write(b"p")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o644


def test_other_modes_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="not 'ab'"), atomic_write(tmp_path / "x", "ab"):
        pass
    assert os.listdir(tmp_path) == []


def test_a_failed_clean_up_does_not_hide_the_error(tmp_path, monkeypatch) -> None:
    """Ctrl-C (or a full disk) mid-write and a .part that cannot be removed (a read-only
    remount, a scanner holding it on Windows): the caller got the removal's OSError."""
    out = tmp_path / "a.bin"

    def unlink(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(f"cannot remove {self}")

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt), atomic_write(out) as f:
        f.write(b"half")
        raise KeyboardInterrupt
    assert not out.exists()


def test_a_part_it_could_not_open_is_not_removed(tmp_path, monkeypatch) -> None:
    """The temporary name taken (another writer's file): the open fails and the other
    writer's file was deleted by the clean-up meant for this call's own."""
    import uuid

    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=7))
    theirs = tmp_path / f"e.bin.{uuid.UUID(int=7).hex}.part"
    theirs.write_bytes(b"another writer's")
    with pytest.raises(FileExistsError), atomic_write(tmp_path / "e.bin", unique=True):
        pass
    assert theirs.read_bytes() == b"another writer's"
    assert not (tmp_path / "e.bin").exists()
