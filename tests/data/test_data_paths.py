"""Where datasets are looked for: the environment, a source checkout, or an installed copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from composer.data import paths


def test_env_wins_and_is_made_absolute(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM_COMPOSER_DATA", "rel/data")
    assert paths.data_root_source() == "env"
    assert paths.data_root() == tmp_path / "rel" / "data"
    monkeypatch.setenv("SAM_COMPOSER_DATA", "~/somewhere")
    assert paths.data_root() == Path("~/somewhere").expanduser()


def test_checkout_default_is_shared_data_beside_it(monkeypatch) -> None:
    monkeypatch.delenv("SAM_COMPOSER_DATA", raising=False)
    repo = Path(paths.__file__).resolve().parents[2]
    assert (repo / "pyproject.toml").is_file()  # this suite runs from a checkout
    assert paths.data_root_source() == "checkout"
    assert paths.data_root() == repo.parent / "shared" / "data"


def test_installed_copy_looks_under_the_weights_home(monkeypatch, tmp_path) -> None:
    """A wheel puts ``composer/`` in site-packages; ``../shared/data`` beside that folder is
    meaningless, so the default moves to ``$SAM_COMPOSER_HOME/data``."""
    site = tmp_path / "lib" / "python3.12" / "site-packages"
    (site / "composer" / "data").mkdir(parents=True)
    monkeypatch.setattr(paths, "_REPO", site)
    monkeypatch.delenv("SAM_COMPOSER_DATA", raising=False)
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path / "home"))
    assert paths.data_root_source() == "home"
    assert paths.data_root() == tmp_path / "home" / "data"
    monkeypatch.delenv("SAM_COMPOSER_HOME")
    assert paths.data_root() == Path("~/.cache/sam-composer/data").expanduser().absolute()
    with pytest.raises(ValueError, match="SAM_COMPOSER_DATA"):
        paths.dataset_dir("grabcut")


def test_installed_copy_finds_datasets_placed_there(monkeypatch, tmp_path) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setattr(paths, "_REPO", site)
    monkeypatch.delenv("SAM_COMPOSER_DATA", raising=False)
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "data" / "grabcut").mkdir(parents=True)
    assert paths.dataset_dir("grabcut") == tmp_path / "home" / "data" / "grabcut"
