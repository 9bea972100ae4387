"""The SHA-256 content digest that a training checkpoint (``last.pt``) carries, and its check.

Torch's zip format does not check its own CRCs on load, so a byte changed inside a file's
tensor data loads silently as damaged weights. A file written by
:func:`~composer.training.checkpoint.save_training_state` therefore holds the hex SHA-256 of
the rest of its content under :data:`DIGEST_KEY`; :func:`verify_digest` checks it wherever such
a file is read: on resume (:mod:`composer.training.checkpoint`) and when its weights are loaded
(:func:`~composer.hub.checkpoint.load_state_dict_file`, e.g. ``--checkpoint run/last.pt``).
It lives here, below :mod:`composer.training`, so the hub's loader can use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["DIGEST_KEY", "state_digest", "verify_digest"]

#: the key under which a checkpoint file holds the hex SHA-256 of the rest
#: (:func:`state_digest`)
DIGEST_KEY = "content_sha256"

# bytes of a tensor hashed at a time: a CUDA tensor is copied to the CPU in pieces this large
_HASH_CHUNK = 1 << 24


def state_digest(state: Mapping[str, Any]) -> str:
    """The hex SHA-256 of a training state's content (every key but :data:`DIGEST_KEY`).

    Tensors count by dtype, shape and bytes (in row-major order, hashed in place or, on a GPU,
    copied to the CPU in 16 MiB pieces: no copy of the whole state); mappings by their keys in
    sorted order (so the same content built in another order has the same digest); lists and
    tuples by their items, or, when they hold no tensors (the per-step history), as one
    canonical JSON encoding (:func:`_plain_json`); numbers, strings and ``None`` by type and
    ``repr`` (exact for floats). The digest is the same for a state in memory, after
    ``torch.save`` and ``torch.load``, and on any device.

    Raises:
        TypeError: a value of another type (a training state holds none).
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return h.hexdigest()


def verify_digest(state: Any, source: str, advice: str) -> bool:
    """Check ``state`` against its recorded digest and remove that from it; False (nothing
    checked or changed) when ``state`` is no dict holding one (a file written before digests,
    a state built in memory, plain weights).

    Args:
        state: what ``torch.load`` read; a dict holding :data:`DIGEST_KEY` loses that key.
        source: how the message names the state (a file's path).
        advice: what the message tells the user to do about a damaged file.

    Raises:
        ValueError: the content does not match the digest; names ``source``.
    """
    if not isinstance(state, dict) or DIGEST_KEY not in state:
        return False
    recorded = state[DIGEST_KEY]
    try:
        actual: str | None = state_digest(state)
    except (TypeError, RecursionError):  # a value no trainer writes, lists nested too deep
        actual = None
    if not isinstance(recorded, str) or actual != recorded:
        raise ValueError(
            f"{source} is damaged: its content does not match the SHA-256 digest written "
            f"with it (a byte changed on the disk or in a copy); {advice}"
        )
    del state[DIGEST_KEY]
    return True


def _feed(h: Any, value: Any) -> None:
    """Add ``value`` to ``h`` in a form that no other value shares (tags and lengths first;
    inside a list encoded as JSON, a dict's number, bool or None keys are written as strings
    and a tuple as a list: a trainer's state holds no such keys there, and pickle keeps a
    tuple a tuple, so a changed byte cannot turn one into the other)."""
    if isinstance(value, torch.Tensor):
        _feed_tensor(h, value)
    elif isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: (type(k).__name__, repr(k)))
        h.update(b"{%d:" % len(keys))
        for key in keys:
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        plain = _plain_json(value)
        if plain is not None:  # numbers, strings and such all the way down: one encoding
            h.update(b"J%d:" % len(plain) + plain)
            return
        h.update(b"[%d:" % len(value))
        for item in value:
            _feed(h, item)
    elif value is None or isinstance(
        value, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)
    ):
        text = f"{type(value).__name__}:{value!r}".encode("utf-8", "surrogatepass")
        h.update(b"<%d:" % len(text) + text)
    else:
        raise TypeError(f"a training state's digest covers no {type(value).__name__} values")


def _plain_json(value: list[Any] | tuple[Any, ...]) -> bytes | None:
    """``value`` as canonical JSON (sorted keys, exact float reprs) when it holds only lists,
    tuples, dicts (keys all strings, or all numbers: JSON writes those as strings), ``None``,
    bools, ints, floats and strings; else None.

    A trainer's per-step history (a dict of numbers per step) is most of a long run's state
    by count: encoding it in one C pass instead of value by value keeps the digest's cost at
    the hash's speed (30000 steps: ~0.6 s value by value). JSON keeps 1, 1.0 and True apart;
    it does not tell a tuple from a list, which a state read back keeps as it was written.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):  # a tensor, a non-string key, another type, a cycle
        return None


def _feed_tensor(h: Any, tensor: torch.Tensor) -> None:
    if tensor.layout != torch.strided:
        raise TypeError(f"a training state's digest covers no {tensor.layout} tensors")
    flat = tensor.detach().reshape(-1)  # a view of a contiguous tensor, as state dicts hold
    h.update(f"T{flat.dtype}{tuple(tensor.shape)}:".encode())
    step = max(1, _HASH_CHUNK // max(1, flat.element_size()))
    for start in range(0, flat.numel(), step):
        part = flat[start : start + step].cpu().contiguous()  # in place on the CPU
        h.update(part.view(torch.uint8).numpy())
