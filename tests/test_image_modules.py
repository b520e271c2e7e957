"""The image package's shape (issue 13): every module imports on its own in a fresh
interpreter, and the imports between the modules of hpcrun/image form no cycle.

The graph counts every import of a sibling module, at the top of a module or inside a
function (a lazy import is still a dependency), read from the source with ast.
"""
from __future__ import annotations

import ast
import os

import pytest

import util

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "hpcrun", "image")
MODULES = sorted(n[:-3] for n in os.listdir(PKG) if n.endswith(".py") and n != "__init__.py")


def _siblings(name: str) -> set:
    """Modules of hpcrun/image that module `name` imports (anywhere in its source)."""
    with open(os.path.join(PKG, name + ".py")) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:                      # from .x import y / from . import x
                if node.module:
                    out.add(node.module.split(".")[0])
                else:
                    out.update(a.name for a in node.names)
            elif node.level == 0 and (node.module or "").startswith("hpcrun.image."):
                out.add(node.module.split(".")[2])
            elif node.level == 0 and node.module == "hpcrun.image":
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("hpcrun.image."):
                    out.add(a.name.split(".")[2])
    return {m for m in out if m in MODULES and m != name}


def _cycle(graph: dict) -> list:
    """One import cycle as a list of modules, or [] if the graph has none."""
    state: dict = {}
    stack: list = []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                c = visit(n)
                if c:
                    return c
        stack.pop()
        state[m] = "done"
        return []
    for m in sorted(graph):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return []


def test_image_modules_have_no_import_cycle():
    graph = {m: _siblings(m) for m in MODULES}
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))
    # the split of issue 13: storage does not build formats at import, builders and the
    # /proc scan do not reach back into the store, credentials do not need the client
    assert "store" not in graph["formats"] | graph["squash"] | graph["inuse"]
    assert "registry" not in graph["auth"]
    assert graph["inuse"] == set() and graph["fstree"] == set()


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", MODULES)
def test_image_module_imports_alone(user, module):
    cp = util.as_user(user, [util.VENV_BIN + "/python", "-c",
                             f"import hpcrun.image.{module}"])
    assert cp.returncode == 0, cp.stderr


def test_store_import_does_not_load_builders(user):
    """`hpcrun run NAME` imports the store: the format builders (tarfile, subprocess)
    stay off that path."""
    cp = util.as_user(user, [util.VENV_BIN + "/python", "-c",
                             "import sys, hpcrun.image.store, hpcrun.image.resolve; "
                             "print(' '.join(sorted(m for m in sys.modules "
                             "if m.startswith('hpcrun.image.') or m == 'tarfile')))"])
    assert cp.returncode == 0, cp.stderr
    loaded = set(cp.stdout.split())
    assert loaded.isdisjoint({"hpcrun.image.formats", "hpcrun.image.squash",
                              "hpcrun.image.layers", "tarfile"}), loaded
