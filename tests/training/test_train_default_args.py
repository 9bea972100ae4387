"""``recipes/train_default.py``: stage presets and the checks on flags that depend on each other."""

from __future__ import annotations

import sys

import pytest

from tests._modules import load_recipe


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stage", "objects"], "needs --init"),
        (["--paste", "5"], "--paste needs --coco-train"),
        (["--coco-train", "--paste", "0", "--paste-salient", "3"], "--paste-salient needs --paste"),
        (["--feedback-oracle-prob", "1.5"], "must be in [0, 1]"),
    ],
)
def test_inconsistent_flags_exit_with_a_message(argv, message, monkeypatch, capsys) -> None:
    recipe = load_recipe("train_default")
    monkeypatch.setattr(sys, "argv", ["train_default.py", *argv])
    with pytest.raises(SystemExit) as exc:
        recipe.main()
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_salient_stage_extends_the_shipped_stage() -> None:
    presets = load_recipe("train_default").STAGE_DEFAULTS
    salient, clicks = presets["salient"], presets["clicks"]
    assert salient["paste_salient"] > 0 and 0 < salient["feedback_oracle_prob"] <= 1
    # Everything else is stage 4's session and data, at a lower learning rate.
    changed = {"lr", "time_budget_min", "paste_salient", "feedback_oracle_prob"}
    assert {k: v for k, v in salient.items() if k not in changed} == {
        k: v for k, v in clicks.items() if k not in changed
    }
    assert salient["lr"] < clicks["lr"]
