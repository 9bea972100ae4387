"""sam-composer's home folder: ``$SAM_COMPOSER_HOME`` or ``~/.cache/sam-composer`` (the weights
cache, and the dataset root of an installed copy). Imports nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """``$SAM_COMPOSER_HOME`` or ``~/.cache/sam-composer``, read on every call and made absolute
    (a relative ``$SAM_COMPOSER_HOME`` is taken from the current folder). Not created here."""
    home = os.environ.get("SAM_COMPOSER_HOME") or "~/.cache/sam-composer"
    return Path(home).expanduser().absolute()
