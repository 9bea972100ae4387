"""Batch runs over many images: engines that spread per-image work over local processes
(:class:`LocalEngine`, the default) or a Ray cluster (:class:`RayEngine`).

``tasks.everything.annotate_folder(..., engine=...)`` and ``sam-composer everything FOLDER
--workers N [--engine ray]`` run on them; any per-item function can (see ``engines``).
"""

from .engines import Engine, LocalEngine, RayEngine, error_text, make_engine

__all__ = ["Engine", "LocalEngine", "RayEngine", "error_text", "make_engine"]
