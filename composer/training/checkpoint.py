"""Training checkpoints: the atomic write of a trainer's state, and reading and checking it.

:class:`~composer.training.trainer.Trainer` gathers its state (model, optimizer, gradient
scaler, step, elapsed time, RNG states, history) and applies a loaded one; this module owns the
file: where it lies (``checkpoint_dir/last.pt``), how it is written (``*.part``, flushed to
the disk, then renamed: a crash mid-write never replaces a good checkpoint) and how a file on
disk is read back.

Every file written here carries a SHA-256 digest of its content (:func:`state_digest`, under
:data:`DIGEST_KEY`, both from :mod:`composer.hub.digest`, where the hub's weights loader checks
it too), checked when it is read: torch's zip format does not check its own CRCs
on load, so a changed byte inside the tensor data otherwise loaded silently as damaged
weights or optimizer moments. A file without a digest (written before digests) is read
unchecked.

A checkpoint is untrusted input: it is read with ``weights_only=True`` and checked against the
trainer (:func:`check_training_state`) before anything is loaded, so a refused file leaves the
trainer as it was. Nothing here deletes or rewrites a file it cannot use; each error names the
file and what to do.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..hub.checkpoint import save_state_file
from ..hub.digest import DIGEST_KEY as DIGEST_KEY  # re-exported: tests and recipes use it here
from ..hub.digest import state_digest as state_digest
from ..hub.digest import verify_digest

logger = logging.getLogger(__name__)

#: the file name of a trainer's checkpoint in its ``checkpoint_dir``
CHECKPOINT_NAME = "last.pt"

#: what a training state holds (:meth:`~composer.training.trainer.Trainer.state_dict`)
STATE_KEYS = ("model", "optimizer", "scaler", "step", "elapsed", "rng", "torch_rng", "history")

#: what to do with a file whose content does not match its digest
DAMAGED_ADVICE = (
    "delete it to train afresh, put back a good copy of it, or use another checkpoint folder "
    "(sam-composer train: another --out)"
)

#: what to do with a training state of another model or of other trained parameters
KEEP_ADVICE = (
    "the file is kept: resume it with the model and settings that wrote it, or use another "
    "checkpoint folder (sam-composer train: another --out)"
)
#: what to do with a readable file that holds no training state
FOREIGN_ADVICE = (
    "the file is kept: move it away (or delete it) to train afresh, or use another "
    "checkpoint folder (sam-composer train: another --out)"
)


class _Mismatch(ValueError):
    """A training state of another model, or of other trained parameters."""


# GradScaler.state_dict()'s keys when the scaler is enabled (a disabled one saves {})
_SCALER_KEYS = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}


class TrainerLike(Protocol):
    """What a training state is taken from and loaded into (a
    :class:`~composer.training.trainer.Trainer`)."""

    step: int
    elapsed: float
    history: list[dict[str, float]]

    @property
    def model(self) -> Any: ...  # a Sam

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def scaler(self) -> Any: ...  # torch's GradScaler

    @property
    def rng(self) -> np.random.Generator: ...


def checkpoint_file(checkpoint_dir: str | os.PathLike[str] | None) -> Path:
    """``checkpoint_dir/last.pt``.

    Raises:
        ValueError: ``checkpoint_dir`` is not set.
    """
    if not checkpoint_dir:
        raise ValueError("TrainConfig.checkpoint_dir is not set")
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def save_training_state(state: Mapping[str, Any], out: Path) -> Path:
    """Write ``state`` with its digest (:data:`DIGEST_KEY`) to ``out`` atomically and durably
    (:func:`~composer.hub.checkpoint.save_state_file`: ``*.part``, fsync, rename); returns
    ``out``.

    Raises:
        OSError: the file cannot be written; an existing ``out`` is unchanged.
        TypeError: ``state`` holds a value the digest does not cover (see
            :func:`state_digest`); nothing is written.
    """
    return save_state_file({**state, DIGEST_KEY: state_digest(state)}, out)


def _verify_digest(state: Any, source: str) -> None:
    """Check ``state`` against its recorded digest and remove that (a state without one, from
    before digests or built in memory, passes unchecked); see
    :func:`~composer.hub.digest.verify_digest`.

    Raises:
        ValueError: the content does not match the digest; names ``source``.
    """
    if not verify_digest(state, source, DAMAGED_ADVICE):
        logger.debug("%s holds no content digest (written before digests): not checked", source)


def training_state(trainer: TrainerLike) -> dict[str, Any]:
    """Everything needed to continue (the keys of :data:`STATE_KEYS`)."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "step": trainer.step,
        "elapsed": trainer.elapsed,
        "rng": trainer.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "history": trainer.history,
    }


def load_training_state(trainer: TrainerLike, state: Any, source: str = "the state") -> None:
    """Check ``state`` (:func:`check_training_state`), then load it into ``trainer``.

    A state that holds a digest (a checkpoint file's, read with ``torch.load``) is checked
    against it first; :func:`read_training_state` has done that and removed the digest.

    Raises:
        ValueError: ``state`` does not match its digest or does not fit ``trainer`` (named
            as ``source``); nothing was loaded (unchecked, torch's loading stops at the first
            mismatch, halfway).
    """
    if isinstance(state, dict) and DIGEST_KEY in state:
        state = dict(state)  # the caller's state keeps its digest
        _verify_digest(state, source)
    check_training_state(
        state, trainer.model, trainer.optimizer, trainer.rng.bit_generator, source
    )
    trainer.model.load_state_dict(state["model"], strict=True)
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state["scaler"]:
        # a run saved where the scaler was off (the CPU) stored {}: an enabled scaler (the
        # run resumed on CUDA) refuses to load that, so it starts from its initial scale
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.step = int(state["step"])
    trainer.elapsed = float(state["elapsed"])
    trainer.rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    trainer.history = list(state["history"])


def resume_training(trainer: TrainerLike, file: Path) -> bool:
    """Load the training state in ``file`` into ``trainer``; False if there is no file.

    A file that cannot be used is neither deleted nor written, and ``trainer`` stays as it
    was.

    Raises:
        ValueError: see :func:`has_checkpoint`, :func:`read_training_state` and
            :func:`check_training_state`; a readable file that does not fit says that it is
            kept and what to do.
        OSError: see :func:`has_checkpoint` and :func:`read_training_state`.
    """
    if not has_checkpoint(file):
        return False
    state = read_training_state(file)
    try:
        load_training_state(trainer, state, source=str(file))
    except ValueError as exc:
        advice = KEEP_ADVICE if isinstance(exc, _Mismatch) else FOREIGN_ADVICE
        raise ValueError(f"{exc}; {advice}") from None
    return True


def has_checkpoint(file: Path) -> bool:
    """Whether ``file`` is there to resume from.

    Raises:
        ValueError: the path exists but is not a file.
        OSError: it cannot be looked at (e.g. a folder on the way may not be searched).
    """
    try:
        exists, is_file = file.exists(), file.is_file()
    except OSError as exc:
        raise _unreadable(file, exc) from exc
    if exists and not is_file:
        raise ValueError(f"{file} is not a file; remove it or use a fresh checkpoint folder")
    return is_file


def read_training_state(file: Path) -> Any:
    """The object stored in ``file`` (CPU tensors, ``weights_only``), checked against its
    digest (:data:`DIGEST_KEY`, then removed; a file without one is not checked);
    :func:`check_training_state` then says whether it is a usable training state.

    Raises:
        ValueError: the file cannot be loaded (damaged, cut off, empty, or no torch
            checkpoint), or its content does not match its digest (a changed byte that
            torch loads without a word); the message names the file and the load error.
        OSError: the file cannot be read (no permission, a failing disk): the same ``OSError``
            subclass, naming the file and saying it is kept.
    """
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            # no permission, a failing disk: nothing is known of the file's content, which
            # may be a good training state, so no "delete it"
            raise _unreadable(file, exc) from exc
        damage: Exception = exc  # torch.load reads some cut-off files with EINVAL
    except Exception as exc:  # torch.load raises many kinds on a damaged file (IndexError too)
        damage = exc
    else:
        _verify_digest(state, str(file))
        return state
    raise ValueError(
        f"{file} cannot be read as a training state ({_load_error(file, damage)}): it is "
        "damaged, cut off or no checkpoint of a trainer; delete it to train afresh, or use "
        "another checkpoint folder (sam-composer train: another --out)"
    ) from None


def _unreadable(file: Path, exc: OSError) -> OSError:
    """``exc`` retold: names ``file``, keeps its class (PermissionError ...) and errno."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    message = (
        f"cannot read {file} ({reason}); the file is kept and may be a good training state: "
        "make it readable (its permissions, the disk) and rerun, or use another checkpoint "
        "folder (sam-composer train: another --out)"
    )
    try:
        return type(exc)(exc.errno, message) if exc.errno is not None else type(exc)(message)
    except Exception:  # an OSError subclass with another constructor
        return OSError(message)


def _load_error(file: Path, exc: Exception) -> str:
    """torch.load's error in a few words (its messages run to paragraphs, and the one for an
    unreadable pickle suggests ``weights_only=False``, i.e. running the file's code)."""
    try:
        if file.stat().st_size == 0:
            return "an empty file"
    except OSError:
        pass
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if isinstance(exc, pickle.UnpicklingError) and marker in text:
        text = text.split(marker, 1)[1].strip()
    first = text.splitlines()[0].split(". ")[0].strip() if text else ""
    name = type(exc).__name__
    return (f"{name}: {first}" if first else name)[:200]


def check_training_state(
    state: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    bit_generator: np.random.BitGenerator,
    source: str = "the state",
) -> None:
    """Check that ``state`` is a training state this trainer can load, changing nothing.

    Args:
        state: what :func:`read_training_state` read (or a ``Trainer.state_dict()``).
        model: the trainer's model; the saved weights must have its keys and shapes.
        optimizer: the trainer's optimizer; the saved one must have trained the same
            parameters (the same groups, sizes and per-parameter state shapes).
        bit_generator: the trainer's sampling RNG's bit generator (the saved state must be one
            of its kind).
        source: how messages name the state (a file's path).

    Raises:
        ValueError: ``state`` is not a training state (e.g. model weights alone, as in
            ``model.pt``), or one of another model or of other trained parameters; the
            message names ``source`` and what does not match.
    """
    _check_state_of(state, model, source)
    _check_optimizer(state["optimizer"], optimizer, model, source)
    _check_counters(state, bit_generator, source)


def precheck_checkpoint(
    file: Path, model: torch.nn.Module, bit_generator: np.random.BitGenerator | None = None
) -> bool:
    """What can be checked of the training state in ``file`` before a trainer exists: that it
    can be read and matches its digest (:func:`read_training_state`), is a training state (its optimizer state, scaler, step, time, RNG states and
    history of the right kinds) and is one of ``model``'s architecture; whether its optimizer
    trained the same parameters as the trainer's is checked when :func:`resume_training`
    loads it. ``sam-composer train`` calls it before embedding the images, which can take
    minutes. False if there is no file.

    Args:
        file: the checkpoint.
        model: the model the trainer will train.
        bit_generator: one of the trainer's sampling RNG's kind (default: ``PCG64``, that of
            ``np.random.default_rng``, which :class:`~composer.training.trainer.Trainer` uses).

    Raises:
        ValueError, OSError: as :func:`resume_training`, changing nothing.
    """
    if not has_checkpoint(file):
        return False
    # read here and again at resume: holding the state (weights and optimizer moments: GBs
    # for a ViT) through minutes of embedding would cost more than a second read
    state = read_training_state(file)
    source = str(file)
    try:
        _check_state_of(state, model, source)
        _optimizer_parts(state["optimizer"], source)
        _check_counters(state, bit_generator or np.random.PCG64(), source)
    except ValueError as exc:
        advice = KEEP_ADVICE if isinstance(exc, _Mismatch) else FOREIGN_ADVICE
        raise ValueError(f"{exc}; {advice}") from None
    return True


def _check_state_of(state: Any, model: torch.nn.Module, source: str) -> None:
    """``state`` is a mapping of a training state's keys whose weights fit ``model``."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} is not a training state (it holds a {type(state).__name__})")
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{source} is not a training state: it holds model weights alone (as model.pt "
            "does), without the optimizer, step and RNG states to resume"
        )
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise ValueError(f"{source} is not a training state (it has no {', '.join(missing)})")
    _check_model(state["model"], model, source)


def _check_model(saved: Any, model: torch.nn.Module, source: str) -> None:
    if not isinstance(saved, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in saved.values()
    ):
        raise ValueError(f"{source} is not a training state (its 'model' is not a dict of tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    reshaped = [k for k in own if k in saved and tuple(saved[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's weights missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unknown to it (e.g. {', '.join(unexpected[:3])})")
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} of other shapes (e.g. {k}: saved {tuple(saved[k].shape)}, "
            f"model {tuple(own[k].shape)})"
        )
    raise _Mismatch(
        f"{source} is not a training state of this model (another architecture?): "
        + "; ".join(parts)
    )


def _check_optimizer(
    saved: Any, optimizer: torch.optim.Optimizer, model: torch.nn.Module, source: str
) -> None:
    """The saved optimizer state must be of the parameters this optimizer trains: torch checks
    the groups' sizes itself but not the shapes of the per-parameter state, which failed at
    the first step deep inside AdamW (or trained with another parameter's moments)."""
    groups, per_param = _optimizer_parts(saved, source)
    saved_sizes = [len(g["params"]) for g in groups]
    own_sizes = [len(g["params"]) for g in optimizer.param_groups]
    hint = "another TrainConfig.freeze, e.g. sam-composer train's --train-encoder"
    if saved_sizes != own_sizes:
        raise _Mismatch(
            f"{source} was written while other parameters were trained: its optimizer holds "
            f"{saved_sizes} parameters per group, this trainer {own_sizes} ({hint})"
        )
    names = {id(p): n for n, p in model.named_parameters()}
    params = {}
    for saved_group, own_group in zip(groups, optimizer.param_groups, strict=True):
        params.update(dict(zip(saved_group["params"], own_group["params"], strict=True)))
    for key, entry in per_param.items():
        param = params[key]  # every key is a listed parameter's (_optimizer_parts)
        for what, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != param.shape:
                raise _Mismatch(
                    f"{source} was written while other parameters were trained: its optimizer's "
                    f"{what} for {names.get(id(param), key)} has shape {tuple(value.shape)}, the "
                    f"parameter {tuple(param.shape)} ({hint})"
                )


def _optimizer_parts(saved: Any, source: str) -> tuple[list[Any], Mapping[Any, Any]]:
    """The parameter groups and per-parameter state of ``saved``, an optimizer's state
    whatever it trained: each per-parameter state belongs to a parameter a group lists.

    Raises:
        ValueError: ``saved`` is no optimizer state.
    """
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    per_param = saved.get("state") if isinstance(saved, Mapping) else None
    if (
        not isinstance(groups, list)
        or not isinstance(per_param, Mapping)
        or not all(
            isinstance(g, Mapping)
            and isinstance(g.get("params"), list)
            and all(isinstance(p, int) for p in g["params"])
            for g in groups
        )
    ):
        raise ValueError(f"{source} is not a training state (its 'optimizer' is no optimizer state)")
    listed = {p for g in groups for p in g["params"]}
    for key, entry in per_param.items():
        if key not in listed or not isinstance(entry, Mapping):
            raise ValueError(
                f"{source} is not a training state (its optimizer has state for parameter "
                f"{key!r}, which none of its groups lists)"
            )
    return groups, per_param


def _check_counters(state: Mapping[str, Any], bit_generator: Any, source: str) -> None:
    """The scaler, step, time, RNG states and history: what loading them would trip over."""

    def refuse(what: str) -> None:
        raise ValueError(f"{source} is not a training state (its {what})")

    scaler = state["scaler"]
    if not isinstance(scaler, Mapping) or (scaler and not _SCALER_KEYS <= set(scaler)):
        refuse("'scaler' is no gradient scaler state")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        refuse(f"'step' is {step!r}, not a whole number >= 0")
    elapsed = state["elapsed"]
    if (
        isinstance(elapsed, bool)
        or not isinstance(elapsed, (int, float))
        or not (math.isfinite(elapsed) and elapsed >= 0)
    ):
        refuse(f"'elapsed' is {elapsed!r}, not a number of seconds >= 0")
    if not isinstance(state["history"], list):
        refuse("'history' is not a list")
    probe = type(bit_generator)()
    try:
        probe.state = state["rng"]
    except (TypeError, ValueError, KeyError) as exc:
        refuse(f"'rng' is no {type(bit_generator).__name__} state: {exc}")
    torch_rng, own = state["torch_rng"], torch.get_rng_state()
    if (
        not isinstance(torch_rng, torch.Tensor)
        or torch_rng.dtype != own.dtype
        or torch_rng.shape != own.shape
    ):
        refuse(f"'torch_rng' is no CPU generator state ({own.numel()} bytes)")
