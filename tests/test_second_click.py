"""recipes/second_click.py: negative second clicks and the IoU they cost."""

from __future__ import annotations

import json

import pytest
from _modules import load_recipe


def test_second_clicks_counts_negative_clicks_and_their_drops(tmp_path, capsys) -> None:
    mod = load_recipe("second_click")
    records = [
        {"ious": [0.9, 0.6, 0.9], "labels": [1, 0, 1]},   # negative, falls by .3
        {"ious": [0.8, 0.78], "labels": [1, 0]},          # negative, falls by .02
        {"ious": [0.5, 0.7], "labels": [1, 1]},           # positive
        {"ious": [0.95], "labels": [1]},                  # one click only
    ]
    s = mod.second_clicks(records)
    assert s["objects"] == 4 and s["negative_second"] == 2 and s["negative_dropped"] == 1
    assert s["miou1_negative"] == pytest.approx(0.85) and s["miou2_negative"] == pytest.approx(0.69)
    run = tmp_path / "run"
    run.mkdir()
    (run / "points_per_mask.json").write_text(json.dumps(records))
    assert mod.main([str(run)]) == 0
    assert "| run | 4 | 2 | 1 | 0.850 -> 0.690 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mod.main([str(tmp_path / "missing")])
