"""Every command line the documentation shows still parses with the current code.

The published numbers are reproduced by the commands in the READMEs, the docs pages, the weights'
license notes and the usage lines of the recipes' and benchmarks' docstrings. A flag renamed or
removed, a choice that no longer exists or a new required argument would leave such a command
broken without any other test noticing. Each documented command is given to the argument parser
it names (``sam-composer`` / ``python -m composer``: ``composer.cli.main``; ``python
recipes/NAME.py`` / ``python benchmarks/NAME.py``: the script's ``main(argv)``), and
``ArgumentParser.parse_args`` is patched to stop right after a successful parse, so nothing runs.

Only code is read: fenced shell blocks (bash, sh, shell, console, zsh or untagged) of the markdown
files and the module docstrings' lines that start with a command; prose and inline commands (often
fragments such as ``sam-composer eval points``) are not checked.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
from _modules import REPO, load_file

#: markdown files whose fenced shell blocks are checked (relative to the repository root)
MARKDOWN = (
    "README.md",
    "recipes/README.md",
    *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")),
    "composer/weights/LICENSE-NOTES.md",
)
#: folders whose scripts' module docstrings are checked
SCRIPT_DIRS = ("recipes", "benchmarks")
#: fence languages read as shell ("" is an untagged fence; "```bash no-run" is "bash")
SHELL_FENCES = frozenset({"", "bash", "sh", "shell", "console", "zsh"})

#: documented commands that deliberately no longer parse: ``(file, text in the command)`` ->
#: why. Keep it short; an entry that matches no command fails ``test_skip_list_is_current``.
SKIP: dict[tuple[str, str], str] = {}

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^\s`]*)")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PYTHON = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")
_SCRIPT = re.compile(r"^(?:\./)?((?:recipes|benchmarks)/[A-Za-z0-9_]+\.py)$")
#: a line that may hold a command (cheap test before shell tokenising)
_MENTION = re.compile(
    r"\bsam-composer\b|python\S*\s+(?:-m\s+composer\b|\S*(?:recipes|benchmarks)/)"
)
#: redirections: "> file", ">> file", "2>&1", "2> err", "< in" (whole words only)
_REDIRECT = re.compile(r"(?:(?<=\s)|^)(?:\d|&)?(?:>>?|<)&?\s*[^\s;&|]+")
#: tokens that chain commands
_CHAIN = frozenset({";", "&&", "||", "|", "&"})
#: words that may stand before a command: a console prompt, prefixes that run the rest
_PREFIXES = frozenset({"$", "env", "time", "nohup", "exec", "do", "then", "else"})
#: interpreter options that take no value, before "-m" or the script
_PY_FLAGS = frozenset({"-u", "-O", "-OO", "-B", "-E", "-s", "-S", "-I", "-q"})


@dataclass(frozen=True)
class Command:
    """One documented command.

    Attributes:
        path: the documenting file, relative to the repository root.
        line: 1-based line of the command's first physical line in ``path``.
        text: the logical line as documented (continuations joined).
        target: ``"cli"`` for ``sam-composer`` / ``python -m composer``, else the script's path
            relative to the repository root (``recipes/NAME.py``).
        argv: the arguments after the program, as the shell passes them.
    """

    path: str
    line: int
    text: str
    target: str
    argv: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Unreadable:
    """A line that mentions a command but cannot be split as the shell would (bad quotes)."""

    path: str
    line: int
    text: str
    error: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


# --- extraction ---------------------------------------------------------------------------------


def _logical_lines(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; yield ``(first line number, joined text)``."""
    start, parts = 0, []
    for number, text in lines:
        if not parts:
            start = number
        stripped = text.rstrip()
        if stripped.endswith("\\"):
            parts.append(stripped.rstrip("\\").strip())
            continue
        parts.append(stripped.strip())
        yield start, " ".join(p for p in parts if p)
        parts = []
    if parts:
        yield start, " ".join(p for p in parts if p)


def _split_shell(text: str) -> list[list[str]]:
    """The simple commands of a shell line: comments, redirections dropped, chains split.

    Raises:
        ValueError: unbalanced quotes.
    """
    lexer = shlex.shlex(_REDIRECT.sub(" ", text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in _CHAIN:
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _target(words: list[str]) -> tuple[str, tuple[str, ...]] | None:
    """``(target, argv)`` of a simple command that runs this project's code, else None."""
    while words and (_ENV.match(words[0]) or words[0] in _PREFIXES):
        words = words[1:]
    if not words:
        return None
    if words[0] == "sam-composer":
        return "cli", tuple(words[1:])
    if not _PYTHON.match(words[0]):
        return None  # make, pip, git, cd, shell built-ins, other programs
    rest = words[1:]
    while rest and rest[0] in _PY_FLAGS:
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "-m" and rest[1] in ("composer", "composer.cli"):
        return "cli", tuple(rest[2:])
    if rest and (m := _SCRIPT.match(rest[0])):
        return m.group(1), tuple(rest[1:])
    return None  # python -m pytest, python -c, other scripts


def _commands_in(path: str, lines: Iterable[tuple[int, str]]) -> Iterator[Command | Unreadable]:
    for number, text in _logical_lines(lines):
        if not _MENTION.search(text):
            continue
        try:
            segments = _split_shell(text)
        except ValueError as e:
            yield Unreadable(path, number, text, str(e))
            continue
        for words in segments:
            found = _target(words)
            if found is not None:
                yield Command(path, number, text, *found)


def markdown_commands(path: str, text: str) -> list[Command | Unreadable]:
    """Commands in the fenced shell blocks of a markdown document (``path`` names it)."""
    block: list[tuple[int, str]] = []
    fence: str | None = None  # the open fence's marker, None outside a block
    shell = False
    found: list[Command | Unreadable] = []
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence, shell, block = m.group(1), m.group(2).lower() in SHELL_FENCES, []
            continue
        if m and m.group(1).startswith(fence) and not m.group(2):
            if shell:
                found.extend(_commands_in(path, block))
            fence = None
            continue
        block.append((number, line))
    return found


def docstring_commands(path: str, source: str) -> list[Command | Unreadable]:
    """Commands on the module docstring's lines that start with one (usage lines)."""
    tree = ast.parse(source)
    if not tree.body or not isinstance(tree.body[0], ast.Expr):
        return []
    node = tree.body[0].value
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return []
    lines = source.splitlines()
    numbered = []
    # the source text, not the string's value: a "\" at a line's end joins lines there
    for number in range(node.lineno, (node.end_lineno or node.lineno) + 1):
        text = lines[number - 1]
        if number == node.lineno:
            text = re.sub(r'^[rRuU]?("""|\'\'\')', "", text.strip())
        if number == node.end_lineno:
            text = re.sub(r'("""|\'\'\')\s*$', "", text)
        numbered.append((number, text))
    usage: list[tuple[int, str]] = []
    for number, text in _logical_lines(numbered):
        words = text.split()
        while words and _ENV.match(words[0]):
            words = words[1:]
        if words and (words[0] == "sam-composer" or _PYTHON.match(words[0])):
            usage.append((number, text))
    return list(_commands_in(path, usage))


def documented_commands(root: Path = REPO) -> list[Command | Unreadable]:
    """All documented commands of the repository at ``root``, in file order."""
    found: list[Command | Unreadable] = []
    for name in MARKDOWN:
        found.extend(markdown_commands(name, (root / name).read_text(encoding="utf-8")))
    for folder in SCRIPT_DIRS:
        for script in sorted((root / folder).glob("*.py")):
            name = script.relative_to(root).as_posix()
            found.extend(docstring_commands(name, script.read_text(encoding="utf-8")))
    return found


# --- checking -----------------------------------------------------------------------------------


class _Parsed(BaseException):
    """Raised right after a successful ``parse_args``: nothing after argument parsing runs.

    A BaseException, so that a script's ``except Exception`` cannot swallow it."""


_MODULES: dict[str, ModuleType] = {}


def _script(target: str) -> ModuleType:
    """The script ``target`` as a module, loaded once per test session."""
    if target not in _MODULES:
        stem = target.replace("/", "_").removesuffix(".py")
        _MODULES[target] = load_file(REPO / target, f"_documented_{stem}")
    return _MODULES[target]


def _entry(target: str) -> Any:
    if target == "cli":
        from composer.cli import main

        return main
    return _script(target).main


def check(command: Command) -> str | None:
    """None when ``command`` parses with the current code, else a message naming the file, the
    line and argparse's complaint."""
    where = f"{command.id}: `{command.text}`"
    if command.target != "cli" and not (REPO / command.target).is_file():
        return f"{where}: {command.target} does not exist"
    main = _entry(command.target)
    original = argparse.ArgumentParser.parse_args
    original_init = argparse.ArgumentParser.__init__

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(original(self, *args, **kwargs))

    def no_abbreviations(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.allow_abbrev = False  # "--limi" works today and is ambiguous after a new "--limits"

    err, out = io.StringIO(), io.StringIO()
    try:
        with (
            mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop),
            mock.patch.object(argparse.ArgumentParser, "__init__", no_abbreviations),
            mock.patch.object(sys, "argv", [command.target.split("/")[-1]]),  # argparse's prog
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(out),
        ):
            main(list(command.argv))
    except _Parsed:
        return None
    except SystemExit as e:
        if e.code in (0, None):
            return None  # --help, --version
        lines = err.getvalue().strip().splitlines()
        return f"{where}: {lines[-1] if lines else f'exit status {e.code}'}"
    return f"{where}: main() returned without parsing its arguments"


_FOUND = documented_commands()


def _skip_reason(command: Command) -> str | None:
    for (path, needle), reason in SKIP.items():
        if command.path == path and needle in command.text:
            return reason
    return None


def _params() -> list[Any]:
    params = []
    for c in _FOUND:
        marks = []
        if isinstance(c, Command) and (reason := _skip_reason(c)):
            marks.append(pytest.mark.skip(reason=reason))
        ident = c.id if isinstance(c, Unreadable) else f"{c.id}:{c.target.split('/')[-1]}"
        params.append(pytest.param(c, id=ident, marks=marks))
    return params


@pytest.mark.parametrize("command", _params())
def test_documented_command_parses(command: Command | Unreadable) -> None:
    if isinstance(command, Unreadable):
        pytest.fail(
            f"{command.id}: `{command.text}`: cannot split it as a shell would ({command.error})"
        )
    problem = check(command)
    assert problem is None, problem


def test_skip_list_is_current() -> None:
    commands = [c for c in _FOUND if isinstance(c, Command)]
    for (path, needle), reason in SKIP.items():
        assert any(c.path == path and needle in c.text for c in commands), (
            f"SKIP entry ({path!r}, {needle!r}) ({reason}) matches no documented command"
        )


def test_every_source_is_read() -> None:
    """The files that hold commands today are found and yield them (a broken extractor that
    finds nothing would otherwise pass every check)."""
    by_file = {c.path for c in _FOUND}
    for name in (
        "README.md",
        "recipes/README.md",
        "composer/weights/LICENSE-NOTES.md",
        "docs/everything.md",
        "recipes/train_default.py",
        "benchmarks/bench_amg.py",
    ):
        assert name in by_file, f"no command found in {name}"
    targets = {c.target for c in _FOUND if isinstance(c, Command)}
    assert "cli" in targets and "recipes/train_default.py" in targets


# --- the checker itself -------------------------------------------------------------------------

_FAKE_MARKDOWN = """\
# Title

| flag | meaning: `sam-composer segment --nosuch` in a table is prose |
|---|---|
Prose: run `sam-composer weights list --bogus` to see them.

```bash
make demo   # not ours
CI=true OMP_NUM_THREADS=1 sam-composer weights list 2>&1 | tee log.txt  # fine
cd /tmp && python -m composer weights \\
    list --nosuch-flag > out.txt
python recipes/calibrate_amg.py --model composer_tiny --limitt 20
```

```python
main(["weights", "list", "--also-not-checked"])
```

~~~
$ python benchmarks/bench_polygons.py --tolerances 0.5
~~~
"""

_FAKE_SCRIPT = '''\
"""A recipe.

Command::

    OMP_NUM_THREADS=1 python recipes/proposals_coco.py --limit 3 \\\\
        --points-per-sde 16     # misspelt
    python recipes/proposals_coco.py --limit 3 --points-per-side 16
Prose that mentions python recipes/proposals_coco.py --wrong is not a usage line.
"""
'''


def test_extractor_on_a_fake_document() -> None:
    found = markdown_commands("fake.md", _FAKE_MARKDOWN)
    assert all(isinstance(c, Command) for c in found)
    assert [(c.line, c.target, c.argv) for c in found if isinstance(c, Command)] == [
        (9, "cli", ("weights", "list")),
        (10, "cli", ("weights", "list", "--nosuch-flag")),
        (12, "recipes/calibrate_amg.py", ("--model", "composer_tiny", "--limitt", "20")),
        (20, "benchmarks/bench_polygons.py", ("--tolerances", "0.5")),
    ]
    usage = docstring_commands("recipes/fake.py", _FAKE_SCRIPT)
    assert [(c.line, c.argv) for c in usage if isinstance(c, Command)] == [
        (5, ("--limit", "3", "--points-per-sde", "16")),
        (7, ("--limit", "3", "--points-per-side", "16")),
    ]


def test_checker_catches_broken_commands() -> None:
    """A misspelt flag, a bad choice and a missing required argument fail with argparse's
    message, the file and the line; a good command passes."""
    good = Command("fake.md", 1, "sam-composer weights list", "cli", ("weights", "list"))
    assert check(good) is None
    cases = {
        ("weights", "list", "--nosuch-flag"): "unrecognized arguments: --nosuch-flag",
        ("convert", "a.json", "--to", "nosuch", "--out", "o"): "invalid choice: 'nosuch'",
        ("segment",): "the following arguments are required",
        ("nosuchcommand",): "invalid choice: 'nosuchcommand'",
        ("weights", "import"): "the following arguments are required",
        ("export", "--mod", "composer_tiny", "--out", "o"): "unrecognized arguments: --mod",
    }
    for argv, message in cases.items():
        problem = check(Command("fake.md", 7, "sam-composer " + " ".join(argv), "cli", argv))
        assert problem is not None and message in problem, (argv, problem)
        assert problem.startswith("fake.md:7: `sam-composer "), problem
    usage = docstring_commands("recipes/fake.py", _FAKE_SCRIPT)
    bad, fine = (c for c in usage if isinstance(c, Command))
    problem = check(bad)
    assert problem is not None and "--points-per-sde" in problem, problem
    assert problem.startswith("recipes/fake.py:5: "), problem
    assert check(fine) is None
    missing = Command("fake.md", 3, "python recipes/nosuch.py", "recipes/nosuch.py", ())
    assert "does not exist" in (check(missing) or "")


def test_checker_stops_before_any_work(tmp_path: Path) -> None:
    """Parsing only: a command that would write its output folder leaves nothing behind."""
    out = tmp_path / "demo_out"
    command = Command("fake.md", 1, "sam-composer demo", "cli", ("demo", "--out", str(out)))
    assert check(command) is None
    assert not out.exists()
