"""A checkpoint's content digest and its atomic, durable write: a changed byte that torch
loads without a word is refused whole, a file from before digests still resumes, and a save
cut short leaves the previous ``last.pt`` as it was (tiny CPU model)."""

from __future__ import annotations

import errno
import io
import logging
import re
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from composer.cli import main
from composer.hub import digest as digest_module
from composer.training.checkpoint import (
    DIGEST_KEY,
    precheck_checkpoint,
    read_training_state,
    state_digest,
)
from tests.test_atomic import record_fsync_and_replace
from tests.training.test_checkpoint import _refused
from tests.training.test_odd_inputs_training import _one_step_argv, _tiny
from tests.training.test_train_cli import _coco_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    """The bytes of a last.pt of two steps, as the trainer writes it."""
    folder = tmp_path_factory.mktemp("good")
    _tiny(folder, steps=2, checkpoint_every=2).fit()
    return (folder / "last.pt").read_bytes()


def _tensor_data(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) in the file of each stored tensor's bytes (``<archive>/data/<n>``),
    largest first: torch stores them uncompressed, each behind a zip local header."""
    spans = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.file_size == 0:
                continue
            name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
            start = info.header_offset + 30 + name_len + extra_len
            assert info.compress_type == zipfile.ZIP_STORED
            spans.append((start, info.file_size))
    return sorted(spans, key=lambda span: -span[1])


def _flipped(data: bytes, where: int) -> bytes:
    damaged = bytearray(data)
    damaged[where] ^= 0x01
    return bytes(damaged)


@pytest.mark.parametrize("which", ["largest", "middle", "smallest"])
def test_a_flipped_byte_in_tensor_data_is_refused_whole(tmp_path, good, which) -> None:
    """torch.load reads such a file without a word (its zip CRCs are not checked on read):
    resume loaded the damaged weights or optimizer moments and trained on."""
    spans = _tensor_data(good)
    start, length = {"largest": spans[0], "middle": spans[len(spans) // 2],
                     "smallest": spans[-1]}[which]
    damaged = _flipped(good, start + length // 2)
    file = tmp_path / "last.pt"
    file.write_bytes(damaged)
    loaded = torch.load(file, map_location="cpu", weights_only=True)  # silently, as before
    assert loaded[DIGEST_KEY] != state_digest(loaded)
    message = _refused(tmp_path, ValueError)
    assert message == (
        f"{file} is damaged: its content does not match the SHA-256 digest written with it "
        "(a byte changed on the disk or in a copy); delete it to train afresh, put back a good "
        "copy of it, or use another checkpoint folder (sam-composer train: another --out)"
    )
    model = _tiny(tmp_path).model
    with pytest.raises(ValueError, match="is damaged: its content does not match"):
        precheck_checkpoint(file, model)


def test_a_flipped_byte_in_the_state_outside_tensors_is_refused(tmp_path, good) -> None:
    """A changed digit of the step or the history (the pickle) loads as another number."""
    state = torch.load(_write(tmp_path, good), weights_only=True)
    data = bytearray(good)
    where = data.find(struct.pack(">d", state["history"][0]["loss"]))
    assert where > 0  # pickle stores a float as 8 big-endian bytes
    data[where + 7] ^= 0x01
    _write(tmp_path, bytes(data))
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 2
    assert "is damaged: its content does not match" in _refused(tmp_path, ValueError)


def _write(folder: Path, data: bytes) -> Path:
    file = folder / "last.pt"
    file.write_bytes(data)
    return file


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9, 0.999])
def test_a_cut_off_checkpoint_is_refused(tmp_path, good, keep) -> None:
    _write(tmp_path, good[: int(len(good) * keep)])
    message = _refused(tmp_path, ValueError)
    assert "cannot be read as a training state" in message and "damaged, cut off" in message


def test_a_checkpoint_from_before_digests_resumes(tmp_path, good, caplog) -> None:
    """Written as the trainer wrote it before (no digest): loaded unchecked, a debug line."""
    state = torch.load(_write(tmp_path, good), weights_only=True)
    del state[DIGEST_KEY]
    torch.save(state, tmp_path / "last.pt")
    assert precheck_checkpoint(tmp_path / "last.pt", _tiny(tmp_path).model)
    t = _tiny(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="composer.training.checkpoint"):
        assert t.resume() and t.step == 2
    assert "holds no content digest (written before digests): not checked" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    t.fit()  # trains on, and its next checkpoint carries a digest
    assert DIGEST_KEY in torch.load(tmp_path / "last.pt", weights_only=True)


def test_the_digest_is_stable_across_save_load_save(tmp_path, good) -> None:
    first = torch.load(_write(tmp_path, good), weights_only=True)
    recorded = first[DIGEST_KEY]
    assert recorded == state_digest(first) and len(recorded) == 64
    t = _tiny(tmp_path)
    assert t.resume()
    assert state_digest(t.state_dict()) == recorded  # the loaded trainer holds that content
    again = t.save_checkpoint(tmp_path / "again.pt")
    second = torch.load(again, weights_only=True)
    assert second[DIGEST_KEY] == recorded
    assert read_training_state(again).keys() == set(first) - {DIGEST_KEY}
    # the content, not the order of the keys or the container: the same digest
    reordered = {k: first[k] for k in reversed(list(first))}
    assert state_digest(reordered) == recorded
    t.step += 1
    assert state_digest(t.state_dict()) != recorded


def test_the_digest_covers_types_and_values() -> None:
    base = {"a": torch.zeros(2), "n": 1, "f": [0.5, None]}
    digests = {
        state_digest(s)
        for s in (
            base,
            {**base, "a": torch.zeros(2, dtype=torch.float64)},  # same values, other dtype
            {**base, "a": torch.zeros(1, 2)},  # other shape
            {**base, "n": True},  # 1 and True compare equal
            {**base, "n": 1.0},
            {**base, "f": [0.5]},
            {**base, "f": [0.5, None, None]},
        )
    }
    assert len(digests) == 7
    with pytest.raises(TypeError, match="covers no object values"):
        state_digest({"x": object()})


def test_a_long_history_is_hashed_in_one_encoding_that_tells_values_apart(monkeypatch) -> None:
    """The per-step history (30000 dicts in a long run) went through the value-by-value walk,
    several times the file's write; a list of plain values is one JSON encoding now."""
    history = [{"step": i, "loss": 1.0 / (i + 1), "miou": None, "ok": True} for i in range(1000)]
    calls = []
    real_feed = digest_module._feed

    def counting_feed(h, value):
        calls.append(type(value))
        real_feed(h, value)

    monkeypatch.setattr(digest_module, "_feed", counting_feed)
    base = state_digest({"history": history, "w": torch.ones(3)})
    assert len(calls) < 10  # the state, its keys, the history, the tensor
    changed = []
    for key, value in (("loss", 0.5), ("step", 0.0), ("ok", 1), ("miou", 0), ("step", True)):
        edited = [dict(row) for row in history]
        edited[500][key] = value
        changed.append(state_digest({"history": edited, "w": torch.ones(3)}))
    assert len({base, *changed}) == 6
    # a list holding a tensor is walked item by item, as before
    assert state_digest({"l": [torch.ones(2), 1]}) != state_digest({"l": [torch.ones(2), 1.0]})


def test_the_digest_of_a_tensor_hashed_in_pieces_is_that_of_the_whole(monkeypatch) -> None:
    """A GPU tensor is copied to the CPU piece by piece; a transposed view counts by value."""
    t = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    whole = state_digest({"t": t, "u": t.t().contiguous()})
    monkeypatch.setattr(digest_module, "_HASH_CHUNK", 28)  # 7 floats a piece, 4 at the end
    assert state_digest({"t": t, "u": t.t().contiguous()}) == whole
    assert state_digest({"t": t.contiguous(), "u": t.t()}) == whole
    assert state_digest({"t": t, "u": t.t().contiguous() + 1}) != whole


@pytest.mark.parametrize("lr", [np.float32(1e-3), np.float64(1e-3)], ids=lambda v: type(v).__name__)
def test_a_numpy_learning_rate_checkpoints_and_resumes(tmp_path, lr) -> None:
    """A sweep's numpy lr reached the history and the optimizer's groups as a numpy scalar:
    np.float32 stopped training at the first checkpoint (the digest covers no float32), and
    np.float64 wrote a last.pt that weights_only loading refused on resume."""
    t = _tiny(tmp_path, steps=2, checkpoint_every=2, lr=lr, weight_decay=np.float32(0.1))
    assert type(t.config.lr) is float and t.config.lr == float(lr)
    t.fit()
    assert all(type(h["lr"]) is float for h in t.history)
    again = _tiny(tmp_path, steps=2, checkpoint_every=2, lr=lr, weight_decay=np.float32(0.1))
    assert again.resume() and again.step == 2


def test_load_state_dict_checks_a_digest_it_is_given(tmp_path, good) -> None:
    """A state read with torch.load keeps its digest; Trainer.load_state_dict checks it."""
    state = torch.load(_write(tmp_path, good), weights_only=True)
    t = _tiny(tmp_path)
    damaged = {**state, "step": 3}
    with pytest.raises(ValueError, match=r"^the state is damaged: its content does not match"):
        t.load_state_dict(damaged)
    assert t.step == 0
    t.load_state_dict(state)
    assert t.step == 2 and DIGEST_KEY in state  # the caller's dict is left as it was


def test_a_save_cut_short_leaves_the_previous_checkpoint(tmp_path, good, monkeypatch) -> None:
    """An error (a full disk) or Ctrl-C in the middle of writing: last.pt is the previous one
    and no half-written .part is left behind (it was, a file as large as the checkpoint)."""
    file = _write(tmp_path, good)
    real_save = torch.save

    def cut_short(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        f.truncate(len(good) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    t = _tiny(tmp_path)
    assert t.resume()
    t.step += 1
    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(OSError, match="No space left"):
        t.save_checkpoint()
    monkeypatch.undo()
    assert file.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert _tiny(tmp_path).resume()


def test_a_save_is_flushed_to_the_disk_before_it_replaces_the_file(tmp_path, monkeypatch):
    """Without an fsync before the rename, a power cut could leave last.pt empty (the new
    name written before the data on some file systems) instead of the previous one."""
    calls = record_fsync_and_replace(monkeypatch)
    t = _tiny(tmp_path)
    t.save_checkpoint()
    assert calls == ["fsync file", "replace last.pt.part -> last.pt", "fsync folder"]
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "last.pt.part").exists()


def test_train_command_refuses_a_damaged_last_pt_before_embedding(tmp_path, capsys) -> None:
    """Found before the images are embedded, and nothing in --out is written."""
    ann, images = _coco_dataset(tmp_path, n=2)
    out = tmp_path / "run"
    argv = _one_step_argv(ann, images, out, "0.5")
    assert main(argv) == 0
    weights = (out / "model.pt").read_bytes()
    last = out / "last.pt"
    start, length = _tensor_data(last.read_bytes())[0]
    damaged = _flipped(last.read_bytes(), start + length // 3)
    last.write_bytes(damaged)
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "embedding" not in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    assert f"{last} is damaged: its content does not match the SHA-256 digest" in err
    assert last.read_bytes() == damaged and (out / "model.pt").read_bytes() == weights


def _damaged_weights(good: bytes) -> tuple[bytes, dict[str, torch.Tensor]]:
    """``good`` with one bit flipped inside the model's largest weight, and the good weights."""
    weights = torch.load(io.BytesIO(good), weights_only=True)["model"]
    name = max(weights, key=lambda k: weights[k].numel())
    where = good.find(weights[name].numpy().tobytes())
    assert where > 0 and good.count(weights[name].numpy().tobytes()) == 1
    return _flipped(good, where + weights[name].numel() * 2 + 1), weights


def test_a_damaged_last_pt_loaded_as_weights_is_refused(tmp_path, good, capsys) -> None:
    """`--checkpoint run/last.pt` (the hub's loader) took the 'model' entry without checking
    the digest: a changed byte in the weights loaded silently as damaged weights."""
    from composer.hub.checkpoint import UnreadableCheckpoint, load_state_dict_file
    from composer.sam.build import build_sam

    damaged, weights = _damaged_weights(good)
    file = _write(tmp_path, damaged)
    expected = (
        f"{file} is damaged: its content does not match the SHA-256 digest written with it "
        "(a byte changed on the disk or in a copy); put back a good copy of it, or load other "
        "weights; a copy changed on purpose (e.g. saved without its optimizer state) loads once "
        "its 'content_sha256' entry is removed too"
    )
    with pytest.raises(UnreadableCheckpoint) as info:
        load_state_dict_file(file)
    assert str(info.value) == expected
    with pytest.raises(UnreadableCheckpoint, match="is damaged: its content does not match"):
        build_sam("vit_tiny_test", checkpoint=file)
    ann, images = _coco_dataset(tmp_path, n=2)
    argv = [*_one_step_argv(ann, images, tmp_path / "run", "0.5")]
    argv[argv.index("--random-init")] = "--checkpoint"
    argv.insert(argv.index("--checkpoint") + 1, str(file))  # start from last.pt's weights
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().endswith(expected)
    assert file.read_bytes() == damaged  # the file is kept as it was

    # the good file loads, its weights those the trainer wrote
    _write(tmp_path, good)
    loaded = load_state_dict_file(file)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())
    model = build_sam("vit_tiny_test", checkpoint=file)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert main(argv) == 0


def test_weights_without_a_digest_load_unchecked(tmp_path, good) -> None:
    """A last.pt from before digests, or plain weights, loads as before."""
    from composer.hub.checkpoint import load_state_dict_file

    state = torch.load(io.BytesIO(good), weights_only=True)
    del state[DIGEST_KEY]
    state["model"]["mask_decoder.iou_token.weight"] += 1  # edited: nothing to check it against
    torch.save(state, tmp_path / "old.pt")
    torch.save(state["model"], tmp_path / "plain.pt")
    for name in ("old.pt", "plain.pt"):
        loaded = load_state_dict_file(tmp_path / name)
        assert all(torch.equal(loaded[k], v) for k, v in state["model"].items())


def test_a_digest_over_lists_nested_too_deep_is_refused_naming_the_file(tmp_path) -> None:
    """A file (untrusted input) whose lists nest deeper than the stack: the hub's loader raised
    RecursionError out of the digest, not the error that names the file."""
    from composer.hub.checkpoint import UnreadableCheckpoint, load_state_dict_file

    nested: list[Any] = []
    for _ in range(5000):
        nested = [nested]
    file = tmp_path / "last.pt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # torch.save pickles it recursively
    try:
        torch.save({"model": {"w": torch.ones(2)}, "history": nested, DIGEST_KEY: "0" * 64}, file)
    finally:
        sys.setrecursionlimit(limit)
    damaged = f"^{re.escape(str(file))} is damaged: its content does not match"
    with pytest.raises(UnreadableCheckpoint, match=damaged):
        load_state_dict_file(file)
    with pytest.raises(ValueError, match=damaged):
        read_training_state(file)


def test_a_last_pt_slimmed_for_shipping_says_how_to_load_it(tmp_path, good) -> None:
    """Removing the optimizer state to ship a last.pt's weights (a usual edit) leaves the digest
    of the whole: the loader called it damaged and said only to put back a good copy."""
    from composer.hub.checkpoint import UnreadableCheckpoint, load_state_dict_file

    state = torch.load(io.BytesIO(good), weights_only=True)
    del state["optimizer"]
    torch.save(state, tmp_path / "slim.pt")
    with pytest.raises(UnreadableCheckpoint, match="is damaged") as info:
        load_state_dict_file(tmp_path / "slim.pt")
    assert str(info.value).endswith(
        "a copy changed on purpose (e.g. saved without its optimizer state) loads once its "
        "'content_sha256' entry is removed too"
    )
    del state[DIGEST_KEY]  # as the message says
    torch.save(state, tmp_path / "slim.pt")
    loaded = load_state_dict_file(tmp_path / "slim.pt")
    assert all(torch.equal(loaded[k], v) for k, v in state["model"].items())
