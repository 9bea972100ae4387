"""Reading checkpoint files safely and loading them strictly, with errors that name the keys."""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .._atomic import atomic_write
from .digest import verify_digest
from .download import cached_path, resolve_checkpoint
from .registry import WEIGHTS

logger = logging.getLogger(__name__)

__all__ = ["CheckpointLoad", "load_checkpoint", "load_state_dict_file", "save_state_file"]

_KEYS_SHOWN = 10
#: what to do with weights whose content does not match the digest written with them (a
#: last.pt slimmed for shipping, its optimizer state removed, no longer matches either)
_DAMAGED_ADVICE = (
    "put back a good copy of it, or load other weights; a copy changed on purpose (e.g. saved "
    "without its optimizer state) loads once its 'content_sha256' entry is removed too"
)
_WRAPPER_KEYS = ("model", "state_dict")
#: prefixes that wrappers put on every key of a state dict
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointLoad(NamedTuple):
    """What :func:`load_checkpoint` loaded.

    Attributes:
        path: the checkpoint file that was read.
        missing_keys: model keys absent from the file (empty under ``strict=True``).
        unexpected_keys: file keys the model does not have (empty under ``strict=True``).
    """

    path: Path
    missing_keys: tuple[str, ...]
    unexpected_keys: tuple[str, ...]


class UnreadableCheckpoint(ValueError):
    """The checkpoint file is missing, truncated, corrupt or not a state dict of tensors: not
    a question of which architecture it fits."""


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a checkpoint file, treating the file as untrusted input.

    The file is read with ``torch.load(map_location="cpu", weights_only=True)``, so it can hold
    tensors and plain containers but no arbitrary Python objects. A state dict wrapped as
    ``{"model": sd}`` or ``{"state_dict": sd}`` (training checkpoints) is unwrapped, and a
    ``module.`` prefix on every key (saved from ``DataParallel``, or from
    ``torch.optim.swa_utils.AveragedModel``, whose ``n_averaged`` counter is dropped) or an
    ``_orig_mod.`` one (saved from a ``torch.compile``-d model; also inside keys, from a
    compiled submodule) is removed. A safetensors file (recognised by its header, whatever its
    name) is read with ``safetensors``. A file that holds a SHA-256 digest of its content (a
    training checkpoint, ``last.pt``: :data:`~composer.hub.digest.DIGEST_KEY`) is checked
    against it first, as on resume; a file without one is read unchecked.

    Args:
        path: the checkpoint file.

    Returns:
        Parameter / buffer name -> CPU tensor.

    Raises:
        ValueError: the file does not exist, cannot be read (truncated, corrupt, or holding
            non-tensor objects), does not match the digest written with it, or holds no state
            dict of tensors; the message names the path and the cause.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is not a file" if file.exists() else "does not exist"
        raise UnreadableCheckpoint(f"checkpoint file {file} {what}")
    if _is_safetensors(file):
        return _as_state_dict(_load_safetensors(file), file)
    try:
        with warnings.catch_warnings():  # the error below says it in one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:  # torch raises many types for bad files; all mean "unreadable"
        raise UnreadableCheckpoint(
            f"could not read checkpoint {file}: {_describe_load_error(err, file)}"
            f"{_refetch_hint(file)}"
        ) from err
    try:
        # a training checkpoint (last.pt) holds a digest of its content: torch.load does not
        # check its zip's CRCs, so a changed byte in the weights loaded without a word
        verify_digest(obj, str(file), _DAMAGED_ADVICE)
    except ValueError as err:
        raise UnreadableCheckpoint(f"{err}{_refetch_hint(file)}") from None
    return _as_state_dict(obj, file)


def save_state_file(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically and durably.

    The bytes go to ``<name>.part`` in the same folder, are flushed to the disk (``fsync``),
    and the file is renamed over ``path`` (``os.replace``, atomic on one file system); the
    folder's entry is then flushed too. A crash or an error mid-write leaves an existing
    ``path`` as it was (an error also removes the ``.part``; a process killed outright leaves
    it, and the next save overwrites it). Without the ``fsync`` a power cut after the rename
    could leave ``path`` empty or cut off on file systems that write data after metadata.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        OSError: the file cannot be written (e.g. a full disk); ``path`` is unchanged.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb", fsync=True, sync_dir=True) as f:
        torch.save(obj, f)
    return out


def load_checkpoint(
    model: nn.Module,
    path_or_name: str | os.PathLike[str],
    *,
    strict: bool = True,
    download: bool = False,
) -> CheckpointLoad:
    """Load a checkpoint file or registered weights into ``model``.

    Args:
        model: the module to load into.
        path_or_name: a checkpoint path or a registered weights name (see
            :func:`composer.hub.resolve_checkpoint`).
        strict: require the file's keys to equal the model's. With ``strict=False`` missing
            and unexpected keys are logged as a warning and returned. Shape mismatches are
            always an error.
        download: download registered weights that are not cached yet.

    Returns:
        The file read and the keys that did not match (empty when ``strict``).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: the checkpoint cannot be resolved or read, or does not fit the model; the
            message lists the missing and unexpected keys (first 10 each, with counts) and the
            mis-shaped ones.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    path = resolve_checkpoint(path_or_name, download=download)
    return load_state_into(model, load_state_dict_file(path), path, strict=strict)


def load_state_into(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str], *,
    strict: bool = True,
) -> CheckpointLoad:
    """Load an already-read state dict, with the same checks and messages as ``load_checkpoint``.

    Args:
        model: the module to load into.
        state: parameter name -> tensor.
        path: where ``state`` came from (named in errors and logs).
        strict: as in :func:`load_checkpoint`.

    Raises:
        ValueError: mis-shaped keys, or (with ``strict``) missing or unexpected keys.
    """
    path = Path(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if mis_shaped or (strict and (missing or unexpected)):
        raise ValueError(
            _mismatch_message(path, model, missing, unexpected, mis_shaped, expected, state)
        )
    if missing or unexpected:
        logger.warning(
            "loading %s into %s non-strictly: %d missing keys %s, %d unexpected keys %s",
            path,
            type(model).__name__,
            len(missing),
            missing[:_KEYS_SHOWN],
            len(unexpected),
            unexpected[:_KEYS_SHOWN],
        )
    model.load_state_dict(state, strict=strict)
    logger.info("loaded %s into %s", path, type(model).__name__)
    return CheckpointLoad(path, tuple(missing), tuple(unexpected))


# ------------------------------------------------------------------ internals
#: the number a legacy (non-zip) torch.save file pickles first, as the LONG1 opcode writes it
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _describe_load_error(err: BaseException, file: Path) -> str:
    lines = str(err).strip().splitlines()
    cause = f"{type(err).__name__}: {lines[0][:300] if lines else ''}"
    size = file.stat().st_size
    with file.open("rb") as fin:
        start = fin.read(32)
    head = start[:4]
    is_zip_start = head == b"PK\x03\x04"
    if head.startswith(b"\x80") and _LEGACY_MAGIC in start and head[1:2] > b"\x02":
        # torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=N > 2)
        return (
            f"the file is a legacy torch.save checkpoint written with pickle protocol {head[1]}, "
            "which torch's weights-only loader cannot read; if you trust it, load it with "
            "torch.load(path, weights_only=False) and save it again with torch.save's defaults "
            f"({cause})"
        )
    if size and not is_zip_start and not head.startswith(b"\x80"):
        # torch.save writes a zip archive; legacy files are pickles (protocol 2+ starts 0x80)
        return "the file is not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    if not is_zip_start and head.startswith(b"\x80") and head[1:2] > b"\x02":
        # torch.save's legacy format is a protocol-2 pickle; a newer protocol is pickle.dump's
        return (f"the file is a plain Python pickle (protocol {head[1]}), not a checkpoint "
                "written by torch.save")
    if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
        # torch 2.1 says "Unsupported class x.y", later releases "Unsupported global: GLOBAL x.y"
        found = re.search(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)", str(err))
        what = f" (it pickles {found.group(1)})" if found else ""
        return (
            f"it holds Python objects other than tensors and plain containers{what}, which "
            "weights_only=True refuses to unpickle because a checkpoint is untrusted input; "
            "a whole model saved with torch.save(model) is such a file: save "
            "model.state_dict() instead"
        )
    if is_zip_start and not zipfile.is_zipfile(file):
        # torch.save writes a zip archive whose directory sits at the end of the file.
        return f"the file is truncated ({size} bytes; the end of the archive is missing) ({cause})"
    if size == 0:
        return "the file is empty"
    if not is_zip_start:
        return f"the file is not a torch checkpoint, or a truncated legacy one ({cause})"
    return f"the file is corrupt ({cause})"


def _refetch_hint(file: Path) -> str:
    """For the cache's copy of registered weights (damaged after it was verified, or written
    by an older version): the command that fetches a good copy."""
    try:
        resolved = file.resolve()
        for spec in WEIGHTS.values():
            if spec.url is not None and cached_path(spec).resolve() == resolved:
                return (
                    f"; these are the cached weights {spec.name!r}: fetch them again with "
                    f"`sam-composer weights download {spec.name} --force`"
                )
    except (OSError, RuntimeError):  # RuntimeError: Path.resolve on a symlink loop
        pass
    return ""


def _as_state_dict(obj: Any, file: Path) -> dict[str, torch.Tensor]:
    for _ in range(len(_WRAPPER_KEYS)):
        if not isinstance(obj, Mapping) or _all_tensors(obj):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise UnreadableCheckpoint(f"checkpoint {file} holds a {type(obj).__name__}, not a state dict")
    bad = [repr(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise UnreadableCheckpoint(
            f"checkpoint {file} is not a state dict of tensors: {len(bad)} entries are not "
            f"name -> tensor, e.g. {', '.join(bad[:_KEYS_SHOWN])}"
        )
    state = dict(obj)
    # torch.swa_utils.AveragedModel (EMA weights): "module." + a step counter of its own
    if "n_averaged" in state and state["n_averaged"].numel() == 1 and len(state) > 1 and all(
            k.startswith("module.") for k in state if k != "n_averaged"):
        del state["n_averaged"]
    # DataParallel / DistributedDataParallel wrap as "module.", torch.compile as "_orig_mod.";
    # a model compiled and then wrapped (or the reverse) carries both, in either order
    for _ in range(len(_WRAPPER_PREFIXES)):
        prefix = next(
            (p for p in _WRAPPER_PREFIXES if state and all(k.startswith(p) for k in state)), None
        )
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    # a compiled submodule (e.g. only the image encoder, as SAM fine-tuning often does)
    if any("._orig_mod." in k for k in state):
        state = {k.replace("._orig_mod.", "."): v for k, v in state.items()}
    return state


def _is_safetensors(file: Path) -> bool:
    """Whether ``file`` starts as a safetensors file does: the JSON header's length (8 bytes,
    little-endian, within the file) and the header's opening brace, whatever the file's name."""
    try:
        with file.open("rb") as fin:
            head = fin.read(9)
        size = file.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UnreadableCheckpoint(
            f"checkpoint {file} is a safetensors file: pip install safetensors to read it"
        ) from None
    try:
        return dict(load_file(str(file), device="cpu"))
    except Exception as err:  # safetensors' own error types (a truncated or corrupt file)
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise UnreadableCheckpoint(
            f"could not read checkpoint {file}: a damaged safetensors file "
            f"({type(err).__name__}: {first})"
        ) from err


def _all_tensors(obj: Mapping[Any, Any]) -> bool:
    return all(torch.is_tensor(v) for v in obj.values())


def _listing(label: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else ""
    return f"{len(keys)} {label}: {', '.join(keys[:_KEYS_SHOWN])}{more}"


def _mismatch_message(
    path: Path,
    model: nn.Module,
    missing: list[str],
    unexpected: list[str],
    mis_shaped: list[str],
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
) -> str:
    parts = []
    if missing:
        parts.append(_listing("missing keys (in the model, not in the file)", missing))
    if unexpected:
        parts.append(_listing("unexpected keys (in the file, not in the model)", unexpected))
    if mis_shaped:
        parts.append(_listing("keys with mismatched shapes", mis_shaped))
    message = f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(parts)
    hint = _prefix_hint(list(expected), list(state)) or _arch_hint(expected, state)
    return f"{message}. {hint}" if hint else message


#: ViT image encoders by their patch embedding's width
_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def _looks_like(state: Mapping[str, torch.Tensor]) -> str | None:
    """The architecture a SAM-structured state dict appears to be, from its encoder's keys
    (composer_tiny last: its loader adds the pip backbone's keys to any file without them)."""
    if "image_encoder.patch_embed.seq.0.c.weight" in state:
        return "vit_t"
    proj = state.get("image_encoder.patch_embed.proj.weight")
    if proj is not None and proj.ndim == 4:
        return _VIT_WIDTHS.get(int(proj.shape[0]))
    if any(k.startswith(("image_encoder.neck.lateral", "image_encoder.backbone.")) for k in state):
        return "composer_tiny"
    return None


def _arch_hint(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str:
    """Name the file's architecture when it is a known one and not the model's (the keys alone
    say little to a user who picked the wrong --model)."""
    file_arch, model_arch = _looks_like(state), _looks_like(model_state)
    if file_arch is None or file_arch == model_arch:
        return ""
    return f"The file looks like a {file_arch} checkpoint (--model {file_arch})."


def _prefix_hint(model_keys: list[str], file_keys: list[str]) -> str:
    """Say so when the file is a larger model holding this one under a prefix, or the reverse
    (e.g. a whole SAM checkpoint loaded into its image encoder)."""
    model_set, file_set = set(model_keys), set(file_keys)
    for prefix in sorted({k.split(".", 1)[0] + "." for k in file_keys if "." in k}):
        if model_set and all(prefix + k in file_set for k in model_set):
            return f"The model's keys are all in the file under the prefix {prefix!r}."
    for prefix in sorted({k.split(".", 1)[0] + "." for k in model_keys if "." in k}):
        if file_set and all(prefix + k in model_set for k in file_set):
            return f"The file's keys are all in the model under the prefix {prefix!r}."
    return ""
