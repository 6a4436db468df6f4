"""The library's size limits: no function over 80 lines, no module over 450.

Long functions and files were where the architecture review found mixed concerns
(a 126-line VOC evaluation, a 98-line training loop); this keeps them from growing back.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "singleshot"
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 450


def _python_files() -> list[Path]:
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 50, f"expected the library's modules under {SOURCE}"
    return files


def _long_functions(path: Path, root: Path = SOURCE) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_80_lines():
    long = [entry for path in _python_files() for entry in _long_functions(path)]
    assert not long, "functions over 80 lines: " + "; ".join(long)


def test_no_module_is_over_450_lines():
    counts = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in _python_files()}
    long = [f"{path.relative_to(SOURCE)} ({n} lines)" for path, n in counts.items() if n > MAX_FILE_LINES]
    assert not long, "modules over 450 lines: " + "; ".join(long)


def test_the_limits_see_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def f():\n{body}\n", encoding="utf-8")
    assert _long_functions(path, tmp_path) == [f"long.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
