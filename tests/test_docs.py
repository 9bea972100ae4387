"""Every runnable block of docs/*.md and README.md is executed, so the tutorials cannot rot.

```python blocks run in one namespace per page; ```bash lines starting with ``sam-composer``
run through the CLI entry point. Blocks tagged ``skip`` / ``no-run`` (downloads, official
checkpoints) are not run. Each page runs in its own temporary folder and weights cache.

A ``print(...)`` whose line ends in a comment with ``-> TEXT`` states what it prints: the test
checks that the printed line is TEXT (or starts with TEXT when TEXT ends in ``...``). Text
before the arrow is free prose: ``print(n)  # however many boxes -> 1``.
"""

from __future__ import annotations

import ast
import io
import re
import shlex
import tokenize
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.M | re.S)


def blocks(page: Path) -> list[tuple[str, str]]:
    out = []
    for lang, tags, body in BLOCK.findall(page.read_text()):
        if "skip" in tags or "no-run" in tags:
            continue
        if lang in ("python", "bash"):
            out.append((lang, body))
    return out


ARROW = "-> "


def _stated_outputs(body: str) -> dict[int, str]:
    """Line number (1-based, in the block) -> the output its comment states (``-> TEXT``)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(body).readline):
        if tok.type == tokenize.COMMENT and ARROW in tok.string:
            out[tok.start[0]] = tok.string.rsplit(ARROW, 1)[1].strip()
    return out


class _CheckPrints(ast.NodeTransformer):
    """Turns ``print(...)`` statements with a stated output into ``__doc_print__(...)``."""

    def __init__(self, stated: dict[int, str]) -> None:
        self.stated, self.used = stated, set()

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        call = node.value
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == "print"):
            line = next((n for n in range(node.end_lineno or node.lineno, node.lineno - 1, -1)
                         if n in self.stated), None)
            if line is not None:
                self.used.add(line)
                call.func = ast.Name("__doc_print__", ast.Load())
                call.args[:0] = [ast.Constant(self.stated[line]), ast.Constant(line)]
        return node


def _doc_printer(where: str):
    def __doc_print__(expected: str, line: int, *args, **kwargs) -> None:
        buf = io.StringIO()
        print(*args, **{**kwargs, "file": buf})
        printed = buf.getvalue().rstrip("\n")
        print(printed)
        ok = (printed.startswith(expected[:-3]) if expected.endswith("...")
              else printed == expected)
        assert ok, f"{where}, line {line}: printed {printed!r}, the page says {expected!r}"

    return __doc_print__


def compile_block(body: str, where: str):
    """Compile a python block, with its stated outputs checked when it runs."""
    stated = _stated_outputs(body)
    tree = ast.parse(body, where)
    checker = _CheckPrints(stated)
    tree = ast.fix_missing_locations(checker.visit(tree))
    unused = sorted(set(stated) - checker.used)
    assert not unused, f"{where}: '{ARROW.strip()}' comments on lines {unused} follow no print(...)"
    return compile(tree, where, "exec")


PAGES = sorted(p for p in [*DOCS.glob("*.md"), DOCS.parent / "README.md"] if blocks(p))


def test_docs_have_runnable_pages():
    assert len(PAGES) >= 3


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_runs(page, tmp_path, monkeypatch, bsds_dir, coco_dir):
    from composer.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM_COMPOSER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, (lang, body) in enumerate(blocks(page)):
        if lang == "python":
            where = f"{page.name}[block {i}]"
            namespace["__doc_print__"] = _doc_printer(where)
            exec(compile_block(body, where), namespace)
            continue
        for line in body.splitlines():
            line = line.split(" #")[0].strip()
            if not line.startswith("sam-composer "):
                continue
            args = shlex.split(line)[1:]
            assert main(args) == 0, f"{page.name}: `{line}` failed"


def test_stated_outputs_are_checked():
    """The checker itself: a wrong stated output fails, a right one and a prefix pass."""
    ns = {"__doc_print__": _doc_printer("t")}
    exec(compile_block("x = 2\nprint(x, 'a')   # two -> 2 a\nprint('long text')  # -> long...\n", "t"), ns)
    with pytest.raises(AssertionError, match="printed '3', the page says '4'"):
        exec(compile_block("print(1 + 2)  # -> 4\n", "t"), ns)
    with pytest.raises(AssertionError, match="follow no print"):
        compile_block("y = 1  # -> 1\n", "t")
    exec(compile_block("for k in (1,):\n    print(k)  # -> 1\n", "t"), ns)
