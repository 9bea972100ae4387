"""Hub audit: cache permissions and location, write failures, HTTP answers, name normalisation,
re-fetch hints and CLI progress. Never touches the network: file:// URLs, or a local
http.server on 127.0.0.1."""

from __future__ import annotations

import errno
import http.server
import importlib
import io
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_support import digests, files, register_weights, tiny_model

from composer import hub
from composer.hub import registry
from composer.hub.registry import WeightsSpec

download_module = importlib.import_module("composer.hub.download")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections anywhere but 127.0.0.1 fail the test."""
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        if not (isinstance(address, tuple) and address[0] == "127.0.0.1"):
            raise AssertionError(f"tests must not touch the network ({address!r})")
        real_connect(self, address)

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host != "127.0.0.1":  # no name lookups either
            raise AssertionError(f"tests must not touch the network ({host!r})")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


_model = tiny_model
_files = files


def _register(
    monkeypatch: pytest.MonkeyPatch, url: str, data: bytes, **overrides: object
) -> WeightsSpec:
    return register_weights(monkeypatch, url, digests(data)["sha256"], **overrides)


@pytest.fixture
def server(payload: Path) -> Iterator[str]:
    """A local HTTP server: /ok the payload, /redirect to /ok, /short a body shorter than its
    Content-Length, /empty a zero-byte body, anything else 404."""
    data = payload.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/ok")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path in ("/ok", "/short", "/empty"):
                body = {"/ok": data, "/short": data[:100], "/empty": b""}[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data if self.path != "/empty" else b"")))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ------------------------------------------------------------------ cache files and folder
def test_cached_weights_honour_the_umask(
    home: Path, payload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_022: None
) -> None:
    """A shared cache: files were created by mkstemp (0o600), unreadable to other users."""
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    path = hub.download(spec.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.unlink()
    path = hub.import_checkpoint(payload, name=spec.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_folder_named_like_registered_weights_does_not_hide_them(
    home: Path, payload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output folder called "tmp_weights" in the working folder made the registered name
    an error ("exists but is not a file")."""
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    work = tmp_path / "work"
    (work / spec.name).mkdir(parents=True)
    (work / "not_registered").mkdir()
    monkeypatch.chdir(work)
    assert hub.resolve_checkpoint(spec.name, download=True) == home / spec.filename
    with pytest.raises(ValueError, match="not_registered exists but is not a file$"):
        hub.resolve_checkpoint("not_registered")
    # a training run's folder: the error points at its weights
    (work / "run").mkdir()
    (work / "run" / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"run exists but is not a file \(it holds model.pt: pass run/model.pt\)"):
        hub.resolve_checkpoint("run")


def test_a_relative_cache_dir_is_made_absolute(
    payload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative $SAM_COMPOSER_HOME gave relative paths, wrong after a change of folder."""
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM_COMPOSER_HOME", "rel/cache")
    assert hub.cache_dir() == tmp_path / "rel" / "cache"
    path = hub.resolve_checkpoint(spec.name, download=True)
    assert path.is_absolute()
    monkeypatch.chdir(payload.parent)
    assert path.is_file() and hub.load_state_dict_file(path).keys() == _model().state_dict().keys()


def test_an_unusable_cache_dir_is_a_clear_error(
    payload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$SAM_COMPOSER_HOME naming a file raised a bare FileExistsError."""
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    not_a_folder = tmp_path / "cache_is_a_file"
    not_a_folder.write_bytes(b"x")
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(not_a_folder))
    for call in (lambda: hub.download(spec.name), lambda: hub.import_checkpoint(payload)):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert str(not_a_folder) in message and "SAM_COMPOSER_HOME" in message
    assert not_a_folder.read_bytes() == b"x"


def test_a_full_disk_is_not_reported_as_offline(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while writing the .part said "could not download ... If this machine is
    offline"."""
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    real_fdopen = os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, inner: io.BufferedWriter) -> None:
            self.inner = inner

        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self) -> int:
            return self.inner.fileno()

        def close(self) -> None:
            self.inner.close()
            super().close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    for call in (lambda: hub.download(spec.name), lambda: hub.import_checkpoint(payload)):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "No space left on device" in message and str(home) in message
        assert "offline" not in message
        assert _files(home) == []


def test_import_flushes_to_disk_before_the_rename(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash right after import could leave a truncated file under the verified name."""
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )
    hub.import_checkpoint(payload, name=spec.name)
    assert events == ["fsync", "replace"]


# ------------------------------------------------------------------ HTTP
def test_http_errors_name_the_status(
    home: Path, payload: Path, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, server + "/moved", payload.read_bytes())
    with pytest.raises(ValueError) as err:
        hub.download(spec.name)
    message = str(err.value)
    assert "HTTP 404" in message and spec.url in message
    assert f"sam-composer weights import PATH --name {spec.name}" in message
    assert _files(home) == []


def test_http_redirects_short_and_empty_bodies(
    home: Path, payload: Path, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload.read_bytes()
    spec = _register(monkeypatch, server + "/redirect", data)
    assert hub.download(spec.name).read_bytes() == data
    spec = _register(monkeypatch, server + "/short", data, name="short", filename="short.pth")
    with pytest.raises(ValueError, match=r"got 100 of \d+ bytes|IncompleteRead"):
        hub.download(spec.name)
    spec = _register(monkeypatch, server + "/empty", data, name="empty", filename="empty.pth")
    with pytest.raises(ValueError, match="checksum mismatch"):
        hub.download(spec.name)
    assert _files(home) == [home / "tmp_weights_v1.pth"]


def test_concurrent_downloads_of_one_file(
    home: Path, payload: Path, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload.read_bytes()
    spec = _register(monkeypatch, server + "/ok", data)
    results: list[object] = []

    def fetch() -> None:
        try:
            results.append(hub.download(spec.name, force=True))
        except BaseException as err:  # noqa: BLE001 (reported below)
            results.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [home / spec.filename] * 4
    assert _files(home) == [home / spec.filename]
    assert (home / spec.filename).read_bytes() == data


def test_an_interrupted_download_leaves_the_cache_as_it_was(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    good = hub.download(spec.name)

    def interrupt(done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hub.download(spec.name, force=True, progress=interrupt)
    assert _files(home) == [good] and good.read_bytes() == payload.read_bytes()


# ------------------------------------------------------------------ names and loading
def test_registry_names_are_normalised(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names such as "SAM-ViT-B" and " Tmp-Weights " were unknown weights."""
    assert hub.get_spec("SAM-ViT-B") is hub.get_spec("sam_vit_b")
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    assert hub.download("TMP-WEIGHTS") == home / spec.filename
    assert hub.resolve_checkpoint(" Tmp-Weights ") == home / spec.filename
    with pytest.raises(ValueError, match="unknown weights 'sam_vit_q'"):
        hub.get_spec("sam_vit_q")


def test_a_damaged_cached_file_says_how_to_fetch_it_again(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    path = hub.download(spec.name)
    path.write_bytes(payload.read_bytes()[:200])
    with pytest.raises(ValueError) as err:
        hub.load_checkpoint(_model(), spec.name)
    message = str(err.value)
    assert str(path) in message and "truncated" in message
    assert f"sam-composer weights download {spec.name} --force" in message
    # a damaged file outside the cache gets no such hint
    other = payload.parent / "other.pth"
    other.write_bytes(payload.read_bytes()[:200])
    with pytest.raises(ValueError) as err:
        hub.load_checkpoint(_model(), other)
    assert "--force" not in str(err.value)


# ------------------------------------------------------------------ CLI progress
def test_cli_download_shows_progress_when_stderr_is_not_a_tty(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`weights download` printed nothing for the minutes a 2.5 GB file takes."""
    from composer.cli import main

    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    assert main(["weights", "download", spec.name]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err
    lines = captured.err.splitlines()
    assert lines and lines[-1].startswith(f"downloading {spec.name}: 100% of")
    assert str(home / spec.filename) in captured.out


def test_cli_progress_lines() -> None:
    from composer.commands.weights import _Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    log = io.StringIO()
    progress = _Progress("w", log)
    total = 1000
    for done in range(0, total + 1, 10):
        progress(done, total)
    progress.close()
    assert log.getvalue().splitlines() == [
        f"downloading w: {p}% of 0.0 MiB" for p in range(0, 101, 10)
    ]

    tty = Tty()
    progress = _Progress("w", tty)
    for done in range(0, total + 1, 10):
        progress(done, total)
    progress.close()
    text = tty.getvalue()
    assert text.count("\r") == 101 and text.endswith("100% of 0.0 MiB\033[K\n")

    unknown = io.StringIO()
    progress = _Progress("w", unknown)
    for done in range(0, 250 << 20, 1 << 20):
        progress(done, None)
    assert len(unknown.getvalue().splitlines()) == 3  # one line per 100 MiB


def test_two_names_cannot_share_one_cache_file(
    home: Path, payload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second spec with the same file name was accepted; `resolve_checkpoint` of one name
    then returned the other's (unverified) cached file."""
    spec = _register(monkeypatch, payload.as_uri(), payload.read_bytes())
    hub.download(spec.name)
    other = WeightsSpec(
        name="other_weights",
        arch="tiny",
        url="file:///elsewhere.pth",
        filename=spec.filename,
        sha256="a" * 64,
    )
    with pytest.raises(ValueError, match="'other_weights' cannot use the file name.*'tmp_weights'"):
        hub.register(other)
    assert "other_weights" not in registry.WEIGHTS
    with pytest.raises(ValueError, match="is not a file"):
        hub.load_state_dict_file(tmp_path)


def test_wrong_architecture_error_names_the_files_architecture(tmp_path: Path) -> None:
    """Loading weights into the wrong --model listed keys only; it now names the file's
    architecture when it is a known one."""
    import torch

    from composer.sam import build_sam
    from composer.sam.composer_tiny import PACKAGED_WEIGHTS, build_composer_tiny

    with pytest.raises(ValueError, match=r"looks like a composer_tiny checkpoint \(--model composer_tiny\)"):
        build_sam("vit_t", PACKAGED_WEIGHTS)
    tiny_vit = tmp_path / "mobile.pt"
    torch.save(build_sam("vit_t", None).state_dict(), tiny_vit)
    with pytest.raises(ValueError, match=r"looks like a vit_t checkpoint"):
        build_composer_tiny(tiny_vit)
