"""Dataset readers for the data under :func:`data_root` (``$SAM_COMPOSER_DATA``; see paths.py)."""

from .paths import data_root, dataset_dir

__all__ = ["data_root", "dataset_dir"]
