"""docs/errors.md names, for every bad input, a test that proves it: those tests exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_test_named_in_errors_md_exists() -> None:
    text = (ROOT / "docs" / "errors.md").read_text()
    named = set(re.findall(r"`(test_\w+)\.py::(test_\w+)`", text))
    assert len(named) > 40
    missing = [
        f"{module}.py::{test}"
        for module, test in sorted(named)
        if not (ROOT / "tests" / f"{module}.py").exists()
        or test not in _defined_tests(ROOT / "tests" / f"{module}.py")
    ]
    assert not missing, f"docs/errors.md names tests that do not exist: {missing}"
