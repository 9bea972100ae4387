"""Weights registry, verified cache, downloads (file:// only) and checkpoint loading."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
import torch
from hub_support import digests, files, register_weights, tiny_model
from torch import nn

from composer import hub
from composer.hub import registry
from composer.hub.registry import WeightsSpec


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _model() -> nn.Module:
    return tiny_model()


def _digests(path: Path) -> dict[str, str]:
    return digests(path.read_bytes())


def _register(monkeypatch: pytest.MonkeyPatch, path: Path, **overrides: object) -> WeightsSpec:
    """Register a temporary spec whose URL is ``path`` as file:// (removed after the test)."""
    sha = _digests(path)["sha256"] if path.exists() else "0" * 64
    fields: dict[str, object] = {"sha256": sha, **overrides}
    return register_weights(monkeypatch, path.as_uri(), **fields)  # type: ignore[arg-type]


_files = files


# ------------------------------------------------------------------ registry
def test_official_specs_record_full_checksums_matching_file_names() -> None:
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
        spec = hub.get_spec(name)
        prefix = re.fullmatch(r"sam_vit_[blh]_([0-9a-f]{6})\.pth", spec.filename).group(1)
        assert spec.md5.startswith(prefix)
        assert spec.url == "https://dl.fbaipublicfiles.com/segment_anything/" + spec.filename
    for spec in (
        hub.get_spec(n) for n in ("sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam_vit_t")
    ):
        assert len(spec.sha256) == 64 and len(spec.md5) == 32
        assert spec.license == "Apache-2.0" and spec.metrics["params"] > 0
    mobile = hub.get_spec("mobile_sam_vit_t")
    assert mobile.arch == "vit_t" and mobile.url.endswith(
        "MobileSAM/raw/master/weights/mobile_sam.pt"
    )


def test_get_spec_unknown_name_lists_registered() -> None:
    with pytest.raises(ValueError, match="unknown weights 'nope'.*sam_vit_b.*sam_vit_h"):
        hub.get_spec("nope")


def test_register_is_idempotent_and_refuses_silent_replacement(
    monkeypatch: pytest.MonkeyPatch, payload: Path
) -> None:
    spec = _register(monkeypatch, payload)
    assert hub.register(spec) is spec
    other = WeightsSpec(
        name=spec.name, arch="tiny", url=spec.url, filename="other.pth", md5="abcdef"
    )
    with pytest.raises(ValueError, match="already registered"):
        hub.register(other)
    hub.register(other, replace=True)
    assert hub.get_spec(spec.name).filename == "other.pth"


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"sha256": None, "md5": None}, "neither sha256 nor md5"),
        ({"sha256": "ABCDEF"}, "lowercase hex"),
        ({"md5": "abc"}, "6 to 32 digits"),
        ({"url": None}, "url or a packaged path"),
        ({"filename": "a/b.pth"}, "bare file name"),
    ],
)
def test_spec_validation(overrides: dict, match: str) -> None:
    fields = dict(name="x", arch="tiny", url="file:///x", filename="x.pth", sha256="a" * 64)
    with pytest.raises(ValueError, match=match):
        WeightsSpec(**{**fields, **overrides})


# ------------------------------------------------------------------ download
def test_download_verifies_then_renames_atomically(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, payload, md5=_digests(payload)["md5"])
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        replaced.append((os.fspath(src), os.fspath(dst)))
        assert Path(src).read_bytes() == payload.read_bytes()  # complete before the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    seen: list[tuple[int, int | None]] = []
    path = hub.download(spec.name, progress=lambda done, total: seen.append((done, total)))

    assert path == home / spec.filename
    assert path.read_bytes() == payload.read_bytes()
    assert _files(home) == [path]  # no .part left behind
    assert len(replaced) == 1
    src, dst = replaced[0]
    assert Path(src).parent == home and Path(src).name.startswith(spec.filename)
    assert src.endswith(".part") and Path(dst) == path
    assert seen[-1] == (payload.stat().st_size, payload.stat().st_size)

    # Cached: a second call does not fetch again, force=True does.
    payload.write_bytes(b"changed upstream")
    assert hub.download(spec.name) == path and len(replaced) == 1
    with pytest.raises(ValueError, match="checksum mismatch"):
        hub.download(spec.name, force=True)
    assert _files(home) == [path]  # the good copy survives a failed re-download


def test_download_checksum_mismatch_writes_nothing(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, payload, sha256="0" * 64)
    actual = _digests(payload)["sha256"]
    with pytest.raises(ValueError) as err:
        hub.download(spec.name)
    message = str(err.value)
    assert "checksum mismatch" in message and "0" * 64 in message and actual in message
    assert _files(home) == []


def test_download_verifies_md5_name_prefix(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md5 = _digests(payload)["md5"]
    spec = _register(monkeypatch, payload, sha256=None, md5=md5[:6])
    assert hub.download(spec.name).read_bytes() == payload.read_bytes()
    wrong = format((int(md5[:6], 16) + 1) % 16**6, "06x")
    spec = _register(monkeypatch, payload, name="tmp2", sha256=None, md5=wrong, filename="t2.pth")
    with pytest.raises(ValueError, match=f"expected md5 starting with {wrong}, got {md5}"):
        hub.download(spec.name)
    assert not (home / "t2.pth").exists()


def test_download_failure_is_a_clear_offline_error(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, tmp_path / "missing.pth")
    with pytest.raises(ValueError) as err:
        hub.download(spec.name)
    message = str(err.value)
    assert "could not download" in message and spec.url in message
    assert f"sam-composer weights import PATH --name {spec.name}" in message
    assert _files(home) == []


# ------------------------------------------------------------------ resolve / list / import
def test_missing_weights_message_names_file_url_and_command(home: Path) -> None:
    spec = hub.get_spec("sam_vit_b")
    with pytest.raises(ValueError) as err:
        hub.resolve_checkpoint("sam_vit_b")
    message = str(err.value)
    assert spec.url in message
    assert "sam-composer weights download sam_vit_b" in message
    assert str(home / spec.filename) in message
    assert _files(home) == []


def test_resolve_order(home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub.resolve_checkpoint(payload) == payload  # an existing path is itself
    assert hub.resolve_checkpoint(str(payload)) == payload
    spec = _register(monkeypatch, payload)
    with pytest.raises(ValueError, match="not in the cache"):
        hub.resolve_checkpoint(spec.name)
    path = hub.resolve_checkpoint(spec.name, download=True)
    assert path == home / spec.filename and path.is_file()
    assert hub.resolve_checkpoint(spec.name) == path  # now cached, no download asked
    # the bare file name of registered weights finds the cached copy from any folder
    monkeypatch.chdir(payload.parent.parent)
    assert hub.resolve_checkpoint(spec.filename) == path
    with pytest.raises(ValueError, match="neither an existing file nor a registered.*sam_vit_b"):
        hub.resolve_checkpoint("sam_vit_q")
    with pytest.raises(ValueError, match="does not exist"):
        hub.resolve_checkpoint(home / "nothing.pth")
    with pytest.raises(ValueError, match="not a file"):
        hub.resolve_checkpoint(home)


def test_import_checkpoint(
    home: Path, payload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, payload)
    assert {r["name"]: r["cached"] for r in hub.list_weights()}[spec.name] is False

    # A corrupt copy is refused and nothing lands in the cache.
    bad = tmp_path / "bad.pth"
    bad.write_bytes(payload.read_bytes()[:-10])
    with pytest.raises(ValueError, match="checksum mismatch.*expected sha256"):
        hub.import_checkpoint(bad, name=spec.name)
    assert _files(home) == []

    # Identified by its checksum when neither name nor file name says what it is.
    path = hub.import_checkpoint(payload)
    assert path == home / spec.filename and path.read_bytes() == payload.read_bytes()
    assert _files(home) == [path]
    row = {r["name"]: r for r in hub.list_weights()}[spec.name]
    assert row["cached"] is True and row["path"] == str(path) and row["file"] == spec.filename
    assert hub.verify(spec.name) == path

    # Identified by file name; explicit name; unknown content.
    path.unlink()
    renamed = tmp_path / spec.filename
    renamed.write_bytes(payload.read_bytes())
    assert hub.import_checkpoint(renamed) == path
    assert hub.import_checkpoint(payload, name=spec.name) == path
    with pytest.raises(ValueError, match="matches no registered weights"):
        hub.import_checkpoint(bad)
    with pytest.raises(ValueError, match="not an existing file"):
        hub.import_checkpoint(tmp_path / "absent.pth")
    assert _files(home) == [path]


# ------------------------------------------------------------------ reading and loading
def test_truncated_file_error_names_path(payload: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(payload.read_bytes()[: payload.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(truncated)) + ".*truncated"):
        hub.load_state_dict_file(truncated)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(empty)) + ".*empty"):
        hub.load_state_dict_file(empty)
    with pytest.raises(ValueError, match="does not exist"):
        hub.load_state_dict_file(tmp_path / "absent.pth")


class _Opaque:
    """Not loadable under weights_only=True."""


def test_untrusted_objects_and_non_state_dicts_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.pth"
    torch.save({"w": torch.zeros(1), "obj": _Opaque()}, pickled)
    with pytest.raises(ValueError, match=re.escape(str(pickled)) + ".*weights_only"):
        hub.load_state_dict_file(pickled)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        hub.load_state_dict_file(listed)
    mixed = tmp_path / "mixed.pth"
    torch.save({"w": torch.zeros(1), "step": 3}, mixed)
    with pytest.raises(ValueError, match="not a state dict of tensors.*'step'"):
        hub.load_state_dict_file(mixed)


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "module"])
def test_wrapped_state_dicts_are_unwrapped(tmp_path: Path, wrapper: str) -> None:
    state = _model().state_dict()
    if wrapper == "module":
        obj: object = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = {wrapper: state, "epoch": 7, "optimizer": {"lr": 0.1}}
    path = tmp_path / "wrapped.pth"
    torch.save(obj, path)
    loaded = hub.load_state_dict_file(path)
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_checkpoint_names_mismatched_keys(tmp_path: Path) -> None:
    state = _model().state_dict()  # keys 0.weight, 0.bias, 2.weight, 2.bias
    renamed = {k.replace("2.", "head."): v for k, v in state.items()}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    model = _model()
    with pytest.raises(ValueError) as err:
        hub.load_checkpoint(model, path)
    message = str(err.value)
    assert str(path) in message
    assert "2 missing keys" in message and "2.weight" in message and "2.bias" in message
    assert "2 unexpected keys" in message and "head.weight" in message

    result = hub.load_checkpoint(model, path, strict=False)
    assert set(result.missing_keys) == {"2.weight", "2.bias"}
    assert set(result.unexpected_keys) == {"head.weight", "head.bias"}
    assert torch.equal(model[0].weight, state["0.weight"])

    shaped = dict(state, **{"0.weight": torch.zeros(5, 2)})
    torch.save(shaped, path)
    with pytest.raises(ValueError, match=r"0\.weight: file \(5, 2\) vs model \(3, 2\)"):
        hub.load_checkpoint(model, path, strict=False)

    many = {f"extra.{i}": torch.zeros(1) for i in range(15)} | state
    torch.save(many, path)
    with pytest.raises(ValueError, match=r"15 unexpected keys.*\(\+5 more\)"):
        hub.load_checkpoint(model, path)


def test_load_checkpoint_hints_at_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "whole.pth"
    torch.save({f"encoder.{k}": v for k, v in _model().state_dict().items()}, path)
    with pytest.raises(ValueError, match="under the prefix 'encoder.'"):
        hub.load_checkpoint(_model(), path)


def test_load_checkpoint_by_registered_name(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _register(monkeypatch, payload)
    model = _model()
    with pytest.raises(ValueError, match=f"sam-composer weights download {spec.name}"):
        hub.load_checkpoint(model, spec.name)
    result = hub.load_checkpoint(model, spec.name, download=True)
    assert result.path == home / spec.filename
    assert result.missing_keys == () and result.unexpected_keys == ()
    expected = torch.load(payload, weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        hub.load_checkpoint("not a model", payload)  # type: ignore[arg-type]


def test_build_sam_reports_uncached_weights_as_such(home: Path) -> None:
    from composer.sam.build import build_sam

    with pytest.raises(ValueError) as err:
        build_sam("vit_b", checkpoint="sam_vit_b")
    message = str(err.value)
    assert message.startswith("weights 'sam_vit_b' are not in the cache")
    assert "does not fit" not in message and "resolve_checkpoint(name, download=True)" in message


def test_weights_of_another_architecture_are_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """`export --model vit_t --checkpoint composer_tiny` said composer_tiny was not a registered
    name: its module had not been imported, so it was not registered yet (the hub, a lower
    layer, does not import the model packages; build_sam registers the packaged weights)."""
    from composer.sam.build import build_sam
    from composer.sam.composer_tiny import build_composer_tiny

    monkeypatch.delitem(registry.WEIGHTS, "composer_tiny")  # as before anything imported it
    with pytest.raises(ValueError) as err:
        build_sam("vit_t", checkpoint="composer_tiny")
    assert str(err.value) == (
        "weights 'composer_tiny' are for architecture 'composer_tiny', not 'vit_t'; "
        "use --model composer_tiny (load_segmenter('composer_tiny'))"
    )
    with pytest.raises(ValueError, match="weights 'sam_vit_b' are for architecture 'vit_b', not 'composer_tiny'"):
        build_composer_tiny(checkpoint="sam_vit_b")
    with pytest.raises(ValueError, match="registered weights: composer_tiny, mobile_sam_vit_t"):
        build_sam("vit_t", checkpoint="nonesuch")


def test_weights_list_shows_the_packaged_model(capsys: pytest.CaptureFixture[str]) -> None:
    from composer.cli import main

    assert main(["weights", "list"]) == 0
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("composer_tiny "))
    assert row.split()[2] == "yes"


def test_weights_download_verifies_a_corrupt_cached_file(
    home: Path, payload: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from composer.cli import main

    spec = _register(monkeypatch, payload)
    home.mkdir()
    (home / spec.filename).write_bytes(b"truncated")
    assert main(["weights", "download", spec.name]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and f"weights download {spec.name} --force" in err
    assert main(["weights", "download", spec.name, "--force"]) == 0
    assert _digests(home / spec.filename) == _digests(payload)
    assert main(["weights", "download", spec.name]) == 0  # a good cached file passes
    assert str(home / spec.filename) in capsys.readouterr().out
