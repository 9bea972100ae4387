"""``sam-composer env`` and ``--version``: what an installation runs on, for bug reports."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import composer
from composer.cli import main
from composer.commands import env
from composer.segmenters import default_segmenter_name


def test_version_flag(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sam-composer {composer.__version__}"


def test_json_report_names_what_runs_here(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SAM_COMPOSER_DATA", str(tmp_path))
    (tmp_path / "grabcut").mkdir()
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sam_composer"]["version"] == composer.__version__
    assert report["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert report["core"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert report["devices"]["cuda_available"] == torch.cuda.is_available()
    assert report["devices"]["cpu_threads"] == torch.get_num_threads()
    assert set(report["extras"]) == {"edges", "text", "onnx", "ray"}
    assert report["weights"]["default_segmenter"] == default_segmenter_name()
    assert report["weights"]["packaged_weights_present"] is True
    assert report["data"] == {
        "root": str(tmp_path), "source": "env",
        "datasets": {"bsds500": False, "grabcut": True, "berkeley": False,
                     "coco_val2017_tiny80": False},
    }


def test_missing_and_failing_extras_are_told_apart(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # not installed
    broken = tmp_path / "onnx"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise NameError(\"name 'nn' is not defined\")\n")
    for name in [n for n in sys.modules if n.split(".")[0] == "onnx"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))  # installed, but fails inside its import
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    line = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ") and ln.split()}
    assert "ray missing" in line["ray"]
    assert "onnx fails: NameError: name 'nn' is not defined" in line["onnx"]
    assert f"sam-composer {composer.__version__}" in out.splitlines()[0]


def test_import_status_of_a_module_whose_dependency_is_missing(monkeypatch, tmp_path) -> None:
    pkg = tmp_path / "needs_other"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import no_such_dependency_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # installed, but one of its own dependencies is not: a failure, not "missing"
    assert env._import_status("needs_other").startswith("fails: ModuleNotFoundError")
    assert env._import_status("no_such_module_at_all") == "missing"


def test_listed_distributions_are_pyprojects() -> None:
    """CORE and EXTRAS restate pyproject.toml's lists (the import names are not in it): they must
    not drift from it."""
    from test_packaging_audit import _pyproject

    def name(req: str) -> str:
        from packaging.requirements import Requirement

        return Requirement(req).name.lower().replace("_", "-")

    project = _pyproject()["project"]
    assert {name(d) for d in env.CORE} == {name(r) for r in project["dependencies"]}
    optional = project["optional-dependencies"]
    for extra, parts in env.EXTRAS.items():
        assert {name(r) for r in optional[extra]} <= {name(d) for d, _ in parts}, extra
