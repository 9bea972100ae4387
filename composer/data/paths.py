"""Where datasets live: ``$SAM_COMPOSER_DATA``, else ``../shared/data`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """The dataset root folder (may not exist; readers raise a clear error then)."""
    env = os.environ.get("SAM_COMPOSER_DATA")
    if env:
        return Path(env).expanduser()
    return _REPO.parent / "shared" / "data"


#: The evaluation datasets' folder names under :func:`data_root` (each folder has a SOURCE.md).
DATASETS = ("bsds500", "grabcut", "berkeley", "coco_val2017_tiny80")


def dataset_dir(name: str) -> Path:
    """Folder of one dataset (one of :data:`DATASETS`).

    Raises:
        ValueError: the folder does not exist; the message names the expected path.
    """
    path = data_root() / name
    if not path.is_dir():
        raise ValueError(
            f"dataset {name!r} not found at {path}; set SAM_COMPOSER_DATA to the folder that holds it"
        )
    return path
