"""File-system manifests as values: what COPY, ADD and WORKDIR change, without a tree.

A manifest maps a relative path ("usr/bin/env") to an entry list:
    [kind, mode, size, [uid, gid], digest-or-link-target, stat signature]
kind: "d" directory, "f" regular file (digest: sha256 hex of the content, in the
cache's objects/), "l" symlink (the target), "p" fifo. The stat signature is only a
hint for the next snapshot of a materialized tree; it is never part of a comparison.

These functions never touch the disk; the executor puts contents into objects/ first.
"""
from __future__ import annotations

import posixpath


class TreeError(Exception):
    """A path that cannot be resolved or made (the executor adds file:line)."""


def same(a, b) -> bool:
    return a is not None and b is not None and a[:5] == b[:5]


def resolve(entries: dict, path: str, follow_last: bool = True) -> str:
    """The relative path `path` names inside the image, every symlink on it resolved
    inside the root (as Docker resolves COPY destinations); '' is the root."""
    parts = [p for p in path.split("/") if p and p != "."]
    out: list = []
    hops = 0
    i = 0
    while i < len(parts):
        p = parts[i]
        if p == "..":
            if out:
                out.pop()
            i += 1
            continue
        cand = "/".join(out + [p])
        e = entries.get(cand)
        last = i == len(parts) - 1
        if e is not None and e[0] == "l" and (follow_last or not last):
            hops += 1
            if hops > 40:
                raise TreeError(f"too many levels of symbolic links in {path}")
            target = e[4]
            if target.startswith("/"):
                out = []
            parts = [x for x in target.split("/") if x and x != "."] + parts[i + 1:]
            i = 0
            continue
        out.append(p)
        i += 1
    return "/".join(out)


def is_dir(entries: dict, rel: str) -> bool:
    return rel == "" or (rel in entries and entries[rel][0] == "d")


def remove(entries: dict, rel: str) -> None:
    """Drop rel and, for a directory, everything below it."""
    if rel in entries and entries.pop(rel)[0] == "d":
        pre = rel + "/"
        for k in [k for k in entries if k.startswith(pre)]:
            del entries[k]


def mkdirs(entries: dict, rel: str, owner=(0, 0), mode: int = 0o755) -> str:
    """mkdir -p, following symlinks on the way; returns the resolved path."""
    parts = [p for p in rel.split("/") if p]
    cur = ""
    for p in parts:
        nxt = resolve(entries, f"{cur}/{p}" if cur else p)
        e = entries.get(nxt)
        if e is None:
            parent = posixpath.dirname(nxt)
            if parent and not is_dir(entries, parent):
                mkdirs(entries, parent, owner, mode)
            entries[nxt] = ["d", mode, 0, list(owner), None, 0]
        elif e[0] != "d":
            raise TreeError(f"{nxt} exists and is not a directory")
        cur = nxt
    return cur


def put(entries: dict, rel: str, entry: list, owner=(0, 0)) -> None:
    """Place one entry at rel (its parent made if missing); what was there goes, except
    that a directory onto a directory only takes the new metadata."""
    parent = posixpath.dirname(rel)
    if parent and not is_dir(entries, parent):
        mkdirs(entries, parent, owner)
    old = entries.get(rel)
    if old is not None and not (old[0] == "d" and entry[0] == "d"):
        remove(entries, rel)
    entries[rel] = entry


def diff(base: dict, new: dict) -> tuple[list, list]:
    """(paths to write, paths to white out) taking base to new: a changed directory is
    written with its new metadata; a removed path is whited out once, at its top."""
    write = sorted(p for p, e in new.items() if not same(base.get(p), e))
    gone = sorted(p for p in base if p not in new)
    gone_set = set(gone)
    tops = []
    for p in gone:
        parent = posixpath.dirname(p)
        if parent and parent in gone_set:
            continue
        if parent and new.get(parent, ["d"])[0] != "d":
            continue        # its directory became a file or a link: that hides it
        tops.append(p)
    # a path that changed kind (file -> dir and so on) needs no whiteout: writing it
    # replaces the lower entry, and a directory that became a file hides its children
    return write, tops
