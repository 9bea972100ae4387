"""Resuming from a checkpoint that cannot be used: each case is one clear error that names the
file and what to do, the file stays on disk as it was, and the trainer as it was (tiny CPU
model)."""

from __future__ import annotations

import copy
import errno
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from composer.cli import main
from composer.training.checkpoint import DIGEST_KEY
from composer.training.trainer import Trainer
from tests.training.test_odd_inputs_training import _one_step_argv, _tiny
from tests.training.test_train_cli import _coco_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Any]:
    """A good last.pt of two steps: its bytes and its state, without the digest (the tests
    edit it: as a file written before digests, it is checked for what it holds alone)."""
    folder = tmp_path_factory.mktemp("saved")
    _tiny(folder, steps=2, checkpoint_every=2).fit()
    data = (folder / "last.pt").read_bytes()
    state = torch.load(folder / "last.pt", weights_only=True)
    del state[DIGEST_KEY]
    return {"bytes": data, "state": state}


def _snapshot(t: Trainer) -> dict[str, Any]:
    return {
        "weights": {k: v.clone() for k, v in t.model.state_dict().items()},
        "optimizer": len(t.optimizer.state),
        "counters": (t.step, t.elapsed, len(t.history)),
        "rng": t.rng.bit_generator.state,
    }


def _refused(tmp_path: Path, error: type[Exception], **kw: Any) -> str:
    """Resume from tmp_path/last.pt, which must fail with ``error``; the file is unchanged,
    the trainer unchanged. Returns the message."""
    file = tmp_path / "last.pt"
    before = file.read_bytes()
    t = _tiny(tmp_path, **kw)
    snap = _snapshot(t)
    with pytest.raises(error) as info:
        t.resume()
    message = str(info.value)
    assert str(file) in message and "\n" not in message
    assert file.read_bytes() == before
    after = _snapshot(t)
    assert after["optimizer"] == snap["optimizer"] and after["counters"] == snap["counters"]
    assert after["rng"] == snap["rng"]
    assert all(torch.equal(v, after["weights"][k]) for k, v in snap["weights"].items())
    return message


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (0, r"\(an empty file\)"),
        (1, r"\(UnpicklingError: Unsupported operand \d+\)"),  # torch's text: "weights_only=False"
        (300_000, r"\(RuntimeError: PytorchStreamReader failed reading zip archive: failed "
                  r"finding central directory\)"),
    ],
)
def test_a_damaged_checkpoint_is_named_in_a_few_words(tmp_path, saved, cut, reason) -> None:
    """torch.load's errors run to paragraphs; for a file cut to its first byte the first line
    advised loading it with weights_only=False (running code from the file)."""
    (tmp_path / "last.pt").write_bytes(saved["bytes"][:cut])
    message = _refused(tmp_path, ValueError)
    assert "weights_only" not in message and "miniz" not in message
    assert "cannot be read as a training state " in message
    assert "damaged, cut off" in message and "delete it to train afresh" in message
    assert len(re.findall(reason, message)) == 1


def test_any_load_error_of_a_damaged_file_is_named(tmp_path) -> None:
    """A one-byte pickle (a STOP) makes torch.load raise IndexError, which resume let through
    as a bare traceback ('pop from empty list')."""
    (tmp_path / "last.pt").write_bytes(b".")
    message = _refused(tmp_path, ValueError)
    assert "(IndexError: pop from empty list): it is damaged" in message


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (PermissionError(errno.EACCES, "Permission denied"), PermissionError),
        (OSError("read failed"), OSError),  # no errno
        (OSError(errno.EIO, "Input/output error"), OSError),
    ],
)
def test_an_unreadable_checkpoint_is_named_and_kept(tmp_path, saved, monkeypatch, error, kind):
    """An OSError other than torch's EINVAL for a cut-off file says nothing of the content:
    resume re-raised it as it came (without errno or filename: naming no file at all)."""
    (tmp_path / "last.pt").write_bytes(saved["bytes"])

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(torch, "load", unreadable)
    message = _refused(tmp_path, kind)
    assert message.count(str(tmp_path / "last.pt")) == 1
    assert "the file is kept" in message and "delete" not in message
    assert "another --out" in message


def test_a_checkpoint_that_cannot_be_looked_at_is_named(tmp_path, saved, monkeypatch) -> None:
    """The existence test itself may fail (a folder on the way that may not be searched)."""
    file = tmp_path / "last.pt"
    file.write_bytes(saved["bytes"])
    real_stat = Path.stat

    def stat(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == file:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_stat(self, *args, **kwargs)

    t = _tiny(tmp_path)
    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(PermissionError, match=r"cannot read .*last\.pt \(Permission denied\); "
                       "the file is kept"):
        t.resume()
    monkeypatch.undo()
    assert file.read_bytes() == saved["bytes"] and t.step == 0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda s: s["model"], "it holds model weights alone (as model.pt does)"),
        (lambda s: torch.zeros(3), r"(it holds a Tensor)"),  # was an IndexError traceback
        (lambda s: None, "(it holds a NoneType)"),
        (lambda s: {**s, "optimizer": {}}, "(its 'optimizer' is no optimizer state)"),
        (lambda s: {**s, "rng": {"bit_generator": "MT19937"}}, "(its 'rng' is no PCG64 state"),
        (lambda s: {**s, "torch_rng": torch.zeros(5, dtype=torch.uint8)}, "'torch_rng' is no"),
        (lambda s: {**s, "step": -1}, "(its 'step' is -1, not a whole number >= 0)"),
    ],
)
def test_a_file_that_is_no_training_state_is_refused_whole(tmp_path, saved, content, reason):
    """Before, a state refused late (the RNG states) had already loaded the weights and the
    step; a caller going on trained from a half-loaded trainer."""
    torch.save(content(copy.deepcopy(saved["state"])), tmp_path / "last.pt")
    message = _refused(tmp_path, ValueError)
    assert "last.pt is not a training state" in message and reason in message
    assert "the file is kept: move it away (or delete it) to train afresh" in message


def _swap_moments(state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's moments of two parameters of different shapes swapped."""
    moments = state["optimizer"]["state"]
    shapes = {k: tuple(v["exp_avg"].shape) for k, v in moments.items()}
    a = next(iter(moments))
    b = next(k for k in moments if shapes[k] != shapes[a])
    moments[a], moments[b] = moments[b], moments[a]
    return state


@pytest.mark.parametrize(
    ("content", "trainer", "reason"),
    [
        (lambda s: {**s, "model": dict(list(s["model"].items())[:-1])}, {},
         "is not a training state of this model (another architecture?): 1 of the model's "
         "weights missing (e.g. mask_decoder.iou_prediction_head.layers.2.bias)"),
        (lambda s: {**s, "model": {**s["model"], "image_encoder.pos_embed": torch.zeros(7)}}, {},
         "1 of other shapes (e.g. image_encoder.pos_embed: saved (7,), model (1, 8, 8, 32))"),
        (lambda s: s, {"freeze": ()},  # the encoder trained too: other optimizer groups
         "was written while other parameters were trained: its optimizer holds [60, 76] "
         "parameters per group, this trainer [76, 97] (another TrainConfig.freeze"),
        (_swap_moments, {},  # torch loads it; the first step failed deep inside AdamW
         "was written while other parameters were trained: its optimizer's exp_avg for "),
    ],
)
def test_a_training_state_of_another_model_or_config_is_refused_whole(
    tmp_path, saved, content, trainer, reason
) -> None:
    """torch's strict load copies the matching weights before it raises, and the optimizer
    was loaded after the weights: a refused file left the model half-loaded."""
    torch.save(content(copy.deepcopy(saved["state"])), tmp_path / "last.pt")
    message = _refused(tmp_path, ValueError, **trainer)
    assert reason in message
    assert message.endswith("the file is kept: resume it with the model and settings that "
                             "wrote it, or use another checkpoint folder (sam-composer train: "
                             "another --out)")


def test_load_state_dict_checks_before_it_loads(tmp_path, saved) -> None:
    t = _tiny(tmp_path)
    snap = _snapshot(t)
    state = copy.deepcopy(saved["state"])
    state["rng"] = {"bit_generator": "MT19937"}
    with pytest.raises(ValueError, match=r"^the state is not a training state \(its 'rng'"):
        t.load_state_dict(state)
    assert t.step == snap["counters"][0] and len(t.optimizer.state) == 0
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in snap["weights"].items())
    t.load_state_dict(saved["state"])  # a good one loads
    assert t.step == 2


def test_train_command_names_a_damaged_last_pt_and_keeps_it(tmp_path, capsys) -> None:
    """A last.pt that torch.load fails on with IndexError ended `sam-composer train` with a
    traceback; and it was found only after the embedding of every image (minutes on a real
    set) and the held-out evaluation before training."""
    ann, images = _coco_dataset(tmp_path, n=2)
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b".")
    assert main(_one_step_argv(ann, images, out, "0.5")) == 2
    captured = capsys.readouterr()
    assert "embedding" not in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sam-composer train: error: ")
    assert f"{out / 'last.pt'} cannot be read as a training state" in err
    assert "another --out" in err
    assert (out / "last.pt").read_bytes() == b"." and not (out / "model.pt").exists()


def test_a_state_saved_with_an_enabled_scaler_resumes_on_the_cpu(tmp_path, saved) -> None:
    """The check admits what an enabled GradScaler (a CUDA run) saves; on the CPU the
    disabled scaler ignores it."""
    state = copy.deepcopy(saved["state"])
    state["scaler"] = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                       "growth_interval": 2000, "_growth_tracker": 3}
    torch.save(state, tmp_path / "last.pt")
    t = _tiny(tmp_path)
    assert t.resume() and t.step == 2
    del state["scaler"]["scale"]
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="'scaler' is no gradient scaler state"):
        _tiny(tmp_path).resume()


def test_train_command_refuses_another_models_last_pt_before_embedding(tmp_path, capsys) -> None:
    from composer.training.checkpoint import STATE_KEYS

    ann, images = _coco_dataset(tmp_path, n=2)
    out = tmp_path / "run"
    out.mkdir()
    state = {k: {} for k in STATE_KEYS} | {"model": {"backbone.weight": torch.zeros(3)}}
    torch.save(state, out / "last.pt")
    assert main(_one_step_argv(ann, images, out, "0.5")) == 2
    captured = capsys.readouterr()
    assert "embedding" not in captured.out
    assert "is not a training state of this model (another architecture?)" in captured.err
    assert "the file is kept" in captured.err and not (out / "model.pt").exists()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda s: {**s, "rng": {"bit_generator": "MT19937"}}, "(its 'rng' is no PCG64 state"),
        (lambda s: {**s, "optimizer": {}}, "(its 'optimizer' is no optimizer state)"),
        (lambda s: {**s, "step": -1}, "(its 'step' is -1, not a whole number >= 0)"),
    ],
)
def test_train_command_refuses_a_last_pt_without_a_training_state_before_embedding(
    tmp_path, capsys, damage, reason
) -> None:
    """The check before the embedding looked at the keys and the weights only: a last.pt of
    this model with an unusable RNG, optimizer or step was refused after every image was
    embedded and the held-out set evaluated (docs/training.md: all but another
    --train-encoder setting are found before the embedding)."""
    ann, images = _coco_dataset(tmp_path, n=2)
    out = tmp_path / "run"
    argv = _one_step_argv(ann, images, out, "0.5")
    assert main(argv) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    del state[DIGEST_KEY]  # an edited file with its digest is refused as damaged
    torch.save(damage(state), out / "last.pt")
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "embedding" not in captured.out
    assert "last.pt is not a training state" in captured.err and reason in captured.err
    assert "the file is kept: move it away (or delete it)" in captured.err
