"""Training checkpoints: the atomic write of a trainer's state and reading it back.

:class:`~composer.training.trainer.Trainer` gathers its state (model, optimizer, gradient
scaler, step, elapsed time, RNG states, history) and applies a loaded one; this module owns the
file: where it lies (``checkpoint_dir/last.pt``), how it is written (``*.part``, then renamed,
so a cut-off write never replaces a good checkpoint) and how a file on disk is read back.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: the file name of a trainer's checkpoint in its ``checkpoint_dir``
CHECKPOINT_NAME = "last.pt"


def checkpoint_file(checkpoint_dir: str | os.PathLike[str] | None) -> Path:
    """``checkpoint_dir/last.pt``.

    Raises:
        ValueError: ``checkpoint_dir`` is not set.
    """
    if not checkpoint_dir:
        raise ValueError("TrainConfig.checkpoint_dir is not set")
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def save_training_state(state: dict[str, Any], out: Path) -> Path:
    """Write ``state`` to ``out`` atomically (``*.part`` then rename); returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".part")
    torch.save(state, tmp)
    os.replace(tmp, out)
    return out


def load_training_state(file: Path, apply: Callable[[dict[str, Any]], None]) -> bool:
    """Read the training state in ``file`` and hand it to ``apply``; False if there is none.

    Raises:
        ValueError: the path exists but is not a file, or the file is not a training state
            that ``apply`` accepts (another architecture, a damaged or cut-off file).
        OSError: the file cannot be read (no permission, a failing disk).
    """
    if file.exists() and not file.is_file():
        raise ValueError(f"{file} is not a file; remove it or use a fresh checkpoint folder")
    if not file.is_file():
        return False
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        apply(state)
    except (RuntimeError, KeyError, ValueError, TypeError, EOFError, OSError,
            pickle.UnpicklingError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.EINVAL:
            # torch.load reads some cut-off files with EINVAL; another OSError (no
            # permission, a failing disk) says nothing of the file's content: not "delete it"
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{file} is not a training state of this model ({first}); use a fresh "
            "checkpoint folder or delete it"
        ) from None
    return True
