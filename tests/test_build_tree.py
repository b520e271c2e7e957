"""Manifest operations (hpcrun/build/tree.py): pure, no files."""
from __future__ import annotations

import pytest

from hpcrun.build import tree as T


def D(mode=0o755):
    return ["d", mode, 0, [0, 0], None, 0]


def F(dg="aa", mode=0o644, size=1):
    return ["f", mode, size, [0, 0], dg, 0]


def L(target):
    return ["l", 0o777, 0, [0, 0], target, 0]


def test_resolve_follows_links_inside_the_root():
    e = {"usr": D(), "usr/lib": D(), "lib": L("usr/lib"), "abs": L("/usr"),
         "up": L("../../../usr"), "f": F(), "lf": L("f")}
    assert T.resolve(e, "/lib/x") == "usr/lib/x"
    assert T.resolve(e, "abs/lib") == "usr/lib"
    assert T.resolve(e, "up/lib") == "usr/lib"        # .. stops at the root
    assert T.resolve(e, "lf") == "f"
    assert T.resolve(e, "lf", follow_last=False) == "lf"
    loop = {"a": L("b"), "b": L("a")}
    with pytest.raises(T.TreeError):
        T.resolve(loop, "a/x")


def test_mkdirs_and_put_replace_what_was_there():
    e = {"etc": D(), "etc/f": F()}
    assert T.mkdirs(e, "opt/a/b") == "opt/a/b"
    assert e["opt"][0] == e["opt/a"][0] == e["opt/a/b"][0] == "d"
    with pytest.raises(T.TreeError):
        T.mkdirs(e, "etc/f/x")
    T.put(e, "etc", F("bb"))                   # a file over a directory drops its children
    assert e["etc"][4] == "bb" and "etc/f" not in e
    T.put(e, "opt", D(0o700))                  # a directory over one: metadata only
    assert e["opt"][1] == 0o700 and "opt/a/b" in e


def test_diff_writes_changes_and_whites_out_tops():
    base = {"a": D(), "a/x": F(), "a/y": F(), "b": D(), "b/z": F(), "c": F("11"),
            "d": D(), "d/k": F()}
    new = {"a": D(), "a/x": F("changed"), "c": F("11"), "d": F("now a file")}
    write, gone = T.diff(base, new)
    assert write == ["a/x", "d"]
    assert gone == ["a/y", "b"]            # b/z goes with b; d/k is hidden by the file d
