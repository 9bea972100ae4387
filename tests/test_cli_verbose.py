"""``-v`` works after the sub-command too (messages say "shown with -v"), nested ones included."""

from __future__ import annotations

import pytest

from composer.cli import build_parser


@pytest.mark.parametrize(("argv", "verbose"), [
    (["-v", "convert", "a.json", "--to", "yolo", "--out", "o"], True),
    (["convert", "a.json", "--to", "yolo", "--out", "o", "-v"], True),
    (["convert", "a.json", "--to", "yolo", "--out", "o"], False),
    (["eval", "points", "--dataset", "grabcut", "--verbose", "--out", "x"], True),
    (["weights", "list", "-v"], True),
    (["-v", "weights", "list"], True),
])
def test_verbose_anywhere(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose
