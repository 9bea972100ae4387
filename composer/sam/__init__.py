"""The SAM network: official module and parameter names, so official checkpoints load strictly.

Public API: :class:`Sam`, :func:`build_sam`, :func:`build_sam_from_config`, :data:`CONFIGS`,
:class:`SamConfig`, :class:`TinyViTConfig`, :data:`sam_model_registry` (the official
packages' registry of builders).
"""

from __future__ import annotations

from .build import build_sam, build_sam_from_config, sam_model_registry
from .configs import CONFIGS, SamConfig, TinyViTConfig
from .sam import Sam

__all__ = ["CONFIGS", "Sam", "SamConfig", "TinyViTConfig", "build_sam", "build_sam_from_config",
           "sam_model_registry"]
