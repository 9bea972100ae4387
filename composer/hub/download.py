"""The weights cache: resolve a name or path to a local file, download and import with checksums.

The cache directory is ``$SAM_COMPOSER_HOME`` (default ``~/.cache/sam-composer``); a registered
file lives there under its spec's ``filename``. Nothing is downloaded unless asked for. A file
only enters the cache verified: it is written to a ``<filename>.<random>.part`` file in the cache
directory (created with the permissions the umask allows, so a shared cache stays readable),
its checksums are checked, then it is renamed into place with ``os.replace`` (atomic on one file
system). Any failure removes the partial file; one left by a process that was killed outright
is removed by the next download or import of the same file once it is an hour old.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.resources
import logging
import os
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .._home import home_dir
from .registry import WEIGHTS, WeightsSpec, find_spec, get_spec

logger = logging.getLogger(__name__)

__all__ = [
    "cache_dir",
    "cached_path",
    "download",
    "import_checkpoint",
    "list_weights",
    "resolve_checkpoint",
    "verify",
]

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
#: Called as ``progress(bytes_done, bytes_total_or_None)`` while a file is copied.
ProgressFn = Callable[[int, "int | None"], None]


def cache_dir() -> Path:
    """The weights cache directory: ``$SAM_COMPOSER_HOME`` or ``~/.cache/sam-composer``.

    Read from the environment on every call and made absolute (a relative
    ``$SAM_COMPOSER_HOME`` is taken from the current folder), so a path handed out keeps its
    meaning after the process changes folder. The directory is created only when written to.
    """
    return home_dir()


def cached_path(spec: WeightsSpec | str) -> Path:
    """Where the file of ``spec`` (a spec or a registered name) lives: its packaged path for
    weights that ship inside the package, else ``cache_dir() / spec.filename``. The file may
    not exist."""
    if isinstance(spec, str):
        spec = get_spec(spec)
    if spec.packaged is not None:
        packaged = Path(str(importlib.resources.files("composer").joinpath(spec.packaged)))
        if packaged.is_file() or spec.url is None:
            return packaged
    return cache_dir() / spec.filename


def _lookup(name: str, path: Path) -> WeightsSpec | None:
    """The spec registered as ``name``, or whose file name is ``name`` (e.g.
    "sam_vit_b_01ec64.pth" not in the working folder: the cached copy, where `weights import`
    and `download` put it)."""
    spec = find_spec(name)
    if spec is None and path.name == name:
        spec = next((s for s in WEIGHTS.values() if s.filename == name), None)
    return spec


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str], download: bool = False, arch: str | None = None
) -> Path:
    """Turn an explicit path or a registered weights name into a local checkpoint file.

    Order: an existing file path is returned as is; a registered name (or the bare file name
    of registered weights, e.g. "sam_vit_b_01ec64.pth") gives its packaged file or its cached
    file; a missing registered file is downloaded only when ``download`` is True.

    Args:
        name_or_path: a checkpoint path, or a name in ``WEIGHTS`` such as "sam_vit_b".
        download: fetch (and verify) a registered file that is not cached yet.
        arch: the architecture the caller builds: registered weights of another architecture
            are refused (the message names the one they are for).

    Returns:
        Path of an existing file.

    Raises:
        ValueError: a path that does not exist or is not a file; an unknown name (the message
            lists the registered names); or registered weights that are not cached while
            ``download`` is False (the message names the file, its URL and the command that
            fetches it); registered weights of an architecture other than ``arch``. Download
            failures are ValueErrors too, see :func:`download`.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = os.fspath(name_or_path)
    # A folder that happens to bear a registered name (e.g. an output folder "sam_vit_b" in
    # the working folder) does not hide the registered weights.
    spec = _lookup(name, path)
    if spec is None and path.exists():
        # a training run's folder (sam-composer train --out) holds its weights as model.pt
        inside = [f.name for f in (path / "model.pt", path / "last.pt") if f.is_file()]
        hint = f" (it holds {' and '.join(inside)}: pass {path / inside[0]})" if inside else ""
        raise ValueError(f"checkpoint {path} exists but is not a file{hint}")
    if spec is not None and arch is not None and spec.arch != arch:
        raise ValueError(
            f"weights {spec.name!r} are for architecture {spec.arch!r}, not {arch!r}; "
            f"use --model {spec.arch} (load_segmenter({spec.arch!r}))"
        )
    if spec is None:
        if isinstance(name_or_path, str) and os.sep not in name and not path.suffix:
            raise ValueError(
                f"{name!r} is neither an existing file nor a registered weights name; "
                f"registered weights: {', '.join(sorted(WEIGHTS))}"
            )
        raise ValueError(f"checkpoint file {path} does not exist")

    local = cached_path(spec)
    if local.is_file():
        return local
    if spec.url is None:
        raise ValueError(
            f"weights {spec.name!r} should ship with sam-composer at {local}, but the file is "
            "missing; reinstall the package"
        )
    if download:
        return _download_spec(spec, force=False, progress=None)
    raise ValueError(
        f"weights {spec.name!r} are not in the cache: expected the file {local}. "
        f"Fetch it with `sam-composer weights download {spec.name}` (downloads {spec.url}), "
        "or call composer.hub.resolve_checkpoint(name, download=True). Offline: download that URL on another machine, then run "
        f"`sam-composer weights import PATH --name {spec.name}`."
    )


def download(name: str, force: bool = False, *, progress: ProgressFn | None = None) -> Path:
    """Download registered weights into the cache, verifying their checksums.

    Args:
        name: a registered weights name (compared ignoring case and ``-``/``_``, as
            :func:`composer.hub.registry.find_spec` does).
        force: download again even if the file is already cached.
        progress: optional callback ``progress(bytes_done, bytes_total_or_None)`` (the CLI
            draws its progress bar with it; library code prints nothing).

    Returns:
        Path of the verified cached file.

    Raises:
        ValueError: unknown name; weights without a URL; a network failure or an HTTP error
            status (the message says how to proceed offline); a cache folder that cannot be
            written or a full disk (named as such, not as being offline); or a checksum
            mismatch (expected and actual digests are named). In every failure the cache is
            left without a partial file.
    """
    spec = get_spec(name)
    if spec.url is None:
        raise ValueError(f"weights {name!r} ship with sam-composer and have no download URL")
    target = cached_path(spec)
    if target.is_file() and not force:
        logger.info("weights %s already cached at %s", name, target)
        return target
    return _download_spec(spec, force=force, progress=progress)


def import_checkpoint(path: str | os.PathLike[str], name: str | None = None) -> Path:
    """Copy a checkpoint obtained elsewhere into the cache, after verifying its checksum.

    Args:
        path: the local file.
        name: registered weights it should be. By default the spec whose ``filename`` equals
            the file's name, else the spec whose checksums the file matches.

    Returns:
        Path of the verified cached copy.

    Raises:
        ValueError: ``path`` is not a file; ``name`` is unknown or has no checksum; the file
            matches no registered weights; or its checksum differs from the spec's (expected
            and actual digests are named, and nothing is written to the cache).
    """
    src = Path(path).expanduser()
    if not src.is_file():
        raise ValueError(f"cannot import {src}: not an existing file")
    spec = get_spec(name) if name is not None else _spec_for_filename(src.name)
    if spec is not None and not spec.checksums:
        raise ValueError(f"weights {spec.name!r} record no checksum, so a file cannot be verified")
    directory = cache_dir()
    if spec is not None and (directory / spec.filename).resolve() == src.resolve():
        _check(spec, _file_digests(src), f"file {src}")
        return src
    if spec is not None:
        _refuse_packaged(spec)

    out, tmp = _open_part(directory, spec.filename if spec is not None else "import")
    try:
        with out, src.open("rb") as fin:
            try:
                digests = _copy_hashing(fin, out, None, None)
            except _WriteError as err:
                raise ValueError(_write_failed(directory, err.error)) from err.error
            _sync(out, directory)
        if spec is None:
            spec = _spec_for_digests(digests, src)
            _refuse_packaged(spec)
        _check(spec, digests, f"file {src}")
        target = directory / spec.filename
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("imported %s as weights %s at %s", src, spec.name, target)
    return target


def _refuse_packaged(spec: WeightsSpec) -> None:
    """Raise for weights that ship inside the package: the package's own copy is always the
    one loaded, so a cached copy would never be read."""
    if spec.url is None and spec.packaged is not None:
        raise ValueError(f"weights {spec.name!r} ship with sam-composer ({cached_path(spec)}); "
                         "there is nothing to import")


def verify(name: str) -> Path:
    """Check the checksums of the local file of registered weights.

    Returns:
        Path of the verified file.

    Raises:
        ValueError: unknown name, file not present, no checksum recorded, or a mismatch.
    """
    spec = get_spec(name)
    local = cached_path(spec)
    if not local.is_file():
        raise ValueError(f"weights {name!r} are not present at {local}")
    if not spec.checksums:
        raise ValueError(f"weights {name!r} record no checksum to verify against")
    _check(spec, _file_digests(local), f"file {local}")
    return local


def list_weights() -> list[dict[str, Any]]:
    """One row per registered weights, in registration order.

    Returns:
        Dicts with ``name``, ``arch``, ``file`` (file name), ``path`` (full local path, which
        may not exist), ``cached`` (whether that file exists), ``license`` and ``url`` (None for
        packaged-only weights).
    """
    rows = []
    for spec in WEIGHTS.values():
        local = cached_path(spec)
        rows.append(
            {
                "name": spec.name,
                "arch": spec.arch,
                "file": spec.filename,
                "path": str(local),
                "cached": local.is_file(),
                "license": spec.license,
                "url": spec.url,
            }
        )
    return rows


# ------------------------------------------------------------------ internals
def _download_spec(spec: WeightsSpec, *, force: bool, progress: ProgressFn | None) -> Path:
    if spec.url is None:  # callers check; repeated for the type checker
        raise ValueError(f"weights {spec.name!r} have no download URL")
    target = cache_dir() / spec.filename
    # A unique .part name: concurrent downloads of the same file never write into each other.
    out, tmp = _open_part(target.parent, spec.filename)
    logger.info("downloading weights %s from %s", spec.name, spec.url)
    try:
        with out:
            try:
                with urllib.request.urlopen(spec.url, timeout=_TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    digests = _copy_hashing(response, out, progress, total)
            except _WriteError as err:
                # a full disk is not a network problem: say where the space is missing
                raise ValueError(_write_failed(target.parent, err.error)) from err.error
            except urllib.error.HTTPError as err:
                raise ValueError(
                    f"could not download weights {spec.name!r} from {spec.url}: the server "
                    f"answered HTTP {err.code} ({err.reason}). Download the file another way "
                    f"and run `sam-composer weights import PATH --name {spec.name}`."
                ) from err
            except (OSError, http.client.HTTPException) as err:
                # URLError, HTTPError, timeouts and resets are all OSErrors.
                reason = getattr(err, "reason", None) or err
                raise ValueError(
                    f"could not download weights {spec.name!r} from {spec.url}: {reason}. "
                    "If this machine is offline, download that URL elsewhere and run "
                    f"`sam-composer weights import PATH --name {spec.name}`."
                ) from err
            if total is not None and out.tell() != total:
                raise ValueError(
                    f"incomplete download of {spec.url}: got {out.tell()} of {total} bytes"
                )
            _sync(out, target.parent)
        _check(spec, digests, f"download of {spec.url}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("weights %s verified and saved to %s", spec.name, target)
    return target


class _WriteError(Exception):
    """Writing the local copy failed (e.g. a full disk), as opposed to reading the source."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _cache_hint(directory: Path) -> str:
    if os.environ.get("SAM_COMPOSER_HOME") and directory == cache_dir():
        return " (the folder $SAM_COMPOSER_HOME names)"
    return ""


def _write_failed(directory: Path, err: OSError) -> str:
    return (
        f"could not write to the weights cache {directory}{_cache_hint(directory)}: "
        f"{err.strerror or err}; free some space there or set SAM_COMPOSER_HOME to another "
        "folder"
    )


def _sync(out: BinaryIO, directory: Path) -> None:
    """Flush ``out`` to disk before it is renamed into place: a crash must not leave a
    truncated file under the name of verified weights."""
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as err:
        raise ValueError(_write_failed(directory, err)) from err


#: a ``.part`` file not written to for this long belongs to a download or import that died
#: (killed, power cut): the next one of the same file removes it (they can be gigabytes)
STALE_PART_S = 3600.0


_PART_NAME = re.compile(r".+\.[0-9a-f]{12}\.part")


def _remove_stale_parts(directory: Path) -> None:
    """Remove ``<stem>.<random>.part`` files (any weights' or an import's) in ``directory``
    left by a process that died before its ``finally`` ran. A live download writes its file
    every few seconds, so only files untouched for :data:`STALE_PART_S` go; failures to remove
    are ignored."""
    now = time.time()
    try:
        parts = [p for p in directory.glob("*.part") if _PART_NAME.fullmatch(p.name)]
    except OSError:
        return
    for part in parts:
        try:
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
                logger.info("removed %s, left by an interrupted download", part)
        except OSError:
            continue


def _open_part(directory: Path, stem: str) -> tuple[BinaryIO, Path]:
    """Create ``directory`` if needed and a new ``<stem>.<random>.part`` file in it.

    The file is created with mode 0o666 less the umask, as a plain ``open`` would (a
    ``tempfile.mkstemp`` file is 0o600, and weights renamed from it would be unreadable to the
    other users of a shared cache).

    Raises:
        ValueError: the folder cannot be created or written (it is a file, read-only, ...).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(directory)
        while True:
            tmp = directory / f"{stem}.{secrets.token_hex(6)}.part"
            try:
                fd = os.open(tmp, flags, 0o666)
            except FileExistsError:
                if not directory.is_dir():
                    raise
                continue  # another download drew the same name: draw again
            return os.fdopen(fd, "wb"), tmp
    except OSError as err:
        raise ValueError(
            f"cannot use {directory} as the weights cache{_cache_hint(directory)}: {err}; "
            "set SAM_COMPOSER_HOME to a writable folder"
        ) from err


def _copy_hashing(
    src: BinaryIO | Any, dst: BinaryIO | None, progress: ProgressFn | None, total: int | None
) -> dict[str, str]:
    """Stream ``src`` into ``dst`` (if given) and return its hex sha256 and md5.

    Raises:
        _WriteError: writing ``dst`` failed (errors reading ``src`` propagate as they are).
    """
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    done = 0
    while chunk := src.read(_CHUNK):
        sha256.update(chunk)
        md5.update(chunk)
        if dst is not None:
            try:
                dst.write(chunk)
            except OSError as err:
                raise _WriteError(err) from err
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def _file_digests(path: Path) -> dict[str, str]:
    with path.open("rb") as fin:
        return _copy_hashing(fin, None, None, None)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file, read in chunks (what identifies a file-backed input: a
    detector's results or weights, a training json)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fin:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _matches(spec: WeightsSpec, digests: dict[str, str]) -> bool:
    # A recorded digest may be a prefix (e.g. the six digits of an official file name).
    return bool(spec.checksums) and all(
        digests[algo].startswith(expected) for algo, expected in spec.checksums.items()
    )


def _check(spec: WeightsSpec, digests: dict[str, str], what: str) -> None:
    """Raise ValueError naming expected and actual digests unless all recorded ones match."""
    for algo, expected in spec.checksums.items():
        actual = digests[algo]
        if not actual.startswith(expected):
            kind = "" if len(expected) == len(actual) else " starting with"
            raise ValueError(
                f"checksum mismatch for {what} (weights {spec.name!r}): expected {algo}{kind} "
                f"{expected}, got {actual}; the file is corrupt, truncated or not these weights"
            )


def _spec_for_filename(filename: str) -> WeightsSpec | None:
    for spec in WEIGHTS.values():
        if spec.filename == filename:
            return spec
    return None


def _spec_for_digests(digests: dict[str, str], src: Path) -> WeightsSpec:
    for spec in WEIGHTS.values():
        if _matches(spec, digests):
            return spec
    raise ValueError(
        f"{src} (sha256 {digests['sha256']}) matches no registered weights; pass the name "
        f"explicitly. Registered weights: {', '.join(sorted(WEIGHTS))}"
    )
