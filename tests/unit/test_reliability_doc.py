"""docs/RELIABILITY.md names a test for every guarantee: each named test must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_named_in_the_reliability_doc_exists():
    doc = (ROOT / "docs/RELIABILITY.md").read_text()
    named = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", doc))
    assert len(named) >= 25
    missing = []
    for path, name in sorted(named):
        tree = ast.parse((ROOT / path).read_text())
        functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name not in functions:
            missing.append(f"{path}::{name}")
    assert missing == []
