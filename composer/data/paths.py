"""Where datasets live: ``$SAM_COMPOSER_DATA``; else ``../shared/data`` beside a source
checkout; else, for an installed copy, ``data/`` under the weights home
(``$SAM_COMPOSER_HOME``, default ``~/.cache/sam-composer``)."""

from __future__ import annotations

import os
from pathlib import Path

from .._home import home_dir

_REPO = Path(__file__).resolve().parents[2]


def _is_checkout(root: Path) -> bool:
    """``root`` holds the project's sources (pyproject.toml beside ``composer/``), not a
    site-packages folder that an installed copy lives in."""
    return (root / "pyproject.toml").is_file() and (root / "composer").is_dir()


def data_root_source() -> str:
    """Which rule :func:`data_root` follows here: ``"env"``, ``"checkout"`` or ``"home"``."""
    if os.environ.get("SAM_COMPOSER_DATA"):
        return "env"
    return "checkout" if _is_checkout(_REPO) else "home"


def data_root() -> Path:
    """The dataset root folder, absolute (may not exist; readers raise a clear error then).

    ``$SAM_COMPOSER_DATA`` when set (a relative path is taken from the current folder); else
    ``../shared/data`` beside a source checkout; else (an installed copy, whose package sits
    in site-packages) ``$SAM_COMPOSER_HOME/data``, default ``~/.cache/sam-composer/data``.
    """
    source = data_root_source()
    if source == "env":
        return Path(os.environ["SAM_COMPOSER_DATA"]).expanduser().absolute()
    if source == "checkout":
        return _REPO.parent / "shared" / "data"
    return home_dir() / "data"


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
