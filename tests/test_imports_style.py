"""Imports sit at the top of a module; a lazy one (inside a function) says why in a
comment on its line or the line above (issue 13: the hot path keeps some lazy, and
then a comment says so)."""
from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hpcrun")


def test_every_lazy_import_says_why():
    missing = []
    for d, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(d, f)
            with open(path) as fh:
                lines = fh.read().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        text = "\n".join(lines[sub.lineno - 1:sub.end_lineno])
                        above = lines[sub.lineno - 2].strip() if sub.lineno > 1 else ""
                        if "#" not in text and not above.startswith("#"):
                            missing.append(f"{os.path.relpath(path, ROOT)}:{sub.lineno}: "
                                           f"{lines[sub.lineno - 1].strip()}")
    assert not missing, "lazy imports without a reason:\n" + "\n".join(sorted(set(missing)))
