"""Weights hub: the registry of named checkpoints, the verified download cache, and loading.

Resolution order for a checkpoint argument: an existing file path, then a registered name's
file in ``$SAM_COMPOSER_HOME`` (default ``~/.cache/sam-composer``), then a download only when
asked for (``download=True`` or ``sam-composer weights download NAME``).

Public API: :class:`WeightsSpec`, :data:`WEIGHTS`, :func:`register`, :func:`get_spec`,
:func:`cache_dir`, :func:`cached_path`, :func:`resolve_checkpoint`, :func:`download`,
:func:`import_checkpoint`, :func:`verify`, :func:`list_weights`,
:func:`load_state_dict_file`, :func:`load_checkpoint`, :class:`CheckpointLoad`.

Note that ``composer.hub.download`` is the function; the module of the same name is
``importlib.import_module("composer.hub.download")``.
"""

from __future__ import annotations

from .checkpoint import CheckpointLoad, load_checkpoint, load_state_dict_file
from .download import (
    cache_dir,
    cached_path,
    download,
    import_checkpoint,
    list_weights,
    resolve_checkpoint,
    verify,
)
from .registry import WEIGHTS, WeightsSpec, get_spec, register

__all__ = [
    "WEIGHTS",
    "CheckpointLoad",
    "WeightsSpec",
    "cache_dir",
    "cached_path",
    "download",
    "get_spec",
    "import_checkpoint",
    "list_weights",
    "load_checkpoint",
    "load_state_dict_file",
    "register",
    "resolve_checkpoint",
    "verify",
]
