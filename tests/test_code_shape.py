"""The library's size limits: no function over 60 lines of code, no module over 400 lines.

Long functions and files were where the architecture review found mixed concerns
(a 126-line VOC evaluation, a 98-line training loop); this keeps them from growing back.
A function's docstring does not count: the public ones state their tensor shapes and
box forms at length, and that is no sign of mixed concerns.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "singleshot"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400


def _python_files() -> list[Path]:
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 50, f"expected the library's modules under {SOURCE}"
    return files


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The function's lines, from ``def`` to its last, less its docstring's."""
    lines = node.end_lineno - node.lineno + 1
    if ast.get_docstring(node, clean=False) is not None:
        docstring = node.body[0]
        lines -= docstring.end_lineno - docstring.lineno + 1
    return lines


def _long_functions(path: Path, root: Path = SOURCE) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = _code_lines(node)
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_60_lines():
    long = [entry for path in _python_files() for entry in _long_functions(path)]
    assert not long, "functions over 60 lines of code: " + "; ".join(long)


def test_no_module_is_over_400_lines():
    counts = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in _python_files()}
    long = [f"{path.relative_to(SOURCE)} ({n} lines)" for path, n in counts.items() if n > MAX_FILE_LINES]
    assert not long, "modules over 400 lines: " + "; ".join(long)


def test_the_limits_see_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def f():\n{body}\n", encoding="utf-8")
    assert _long_functions(path, tmp_path) == [f"long.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]


def test_a_docstring_is_not_counted_but_a_string_statement_later_is(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    docstring = '    """One line.\n\n    More lines\n    that do not count.\n    """\n'
    path = tmp_path / "documented.py"
    path.write_text(f"def f():\n{docstring}{body}\n", encoding="utf-8")
    assert _long_functions(path, tmp_path) == []
    path.write_text(f"def f():\n{docstring}{body}\n    'a string later'\n    y = 1\n", encoding="utf-8")
    assert _long_functions(path, tmp_path) == [f"documented.py:1 f ({MAX_FUNCTION_LINES + 2} lines)"]
