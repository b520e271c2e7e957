"""Layered configuration, in the manner of enroot.

Lowest to highest precedence:
  built-in defaults < /etc/hpcrun/hpcrun.conf < /etc/hpcrun/conf.d/*.conf
  < $XDG_CONFIG_HOME/hpcrun/hpcrun.conf (~/.config/...) < HPCRUN_<KEY> environment < flags.

File format: one ``key = value`` per line, ``#`` comments. Only known keys are accepted:
an unknown key is an error naming the file and line and suggesting the closest key.
List values are comma-separated. The system directory can be moved with HPCRUN_SYSCONFDIR
(tests use it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from . import configfiles
from .errors import HpcrunError


def _default_store() -> str:
    # Node-local by default, never $HOME (home directories are usually on a shared
    # filesystem, where image caches race and corrupt).
    return os.path.join("/var/tmp", f"hpcrun-{os.getuid()}", "store")


def _list(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


def _size(v: str) -> int:
    v = v.strip().upper()
    mult = 1
    for suf, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if v.endswith(suf + "B") or v.endswith(suf):
            v = v.rstrip("B")[:-1]
            mult = m
            break
    return int(float(v) * mult)


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "yes", "true", "on"):
        return True
    if s in ("0", "no", "false", "off", ""):
        return False
    raise ValueError(f"not a boolean: {v!r}")


@dataclass(frozen=True)
class Key:
    name: str
    default: Callable[[], object]
    parse: Callable[[str], object]
    doc: str


# The table of known keys. Add a row here to add a setting; nothing else is accepted.
KEYS: dict[str, Key] = {k.name: k for k in [
    Key("store", _default_store, str, "image store directory (node-local)"),
    Key("insecure_registries", list, _list, "registries reached over plain HTTP / unverified TLS"),
    Key("certs_dir", lambda: "/etc/hpcrun/certs.d", str, "per-registry CA directory, like Docker's certs.d"),
    Key("max_image_size", lambda: 64 << 30, _size, "refuse images that unpack to more than this (bomb guard)"),
    Key("squashfs_compressor", lambda: "zstd:level=3", str,
        "squashfs compressor NAME[:OPTIONS] in tar2sqfs spelling (zstd:level=3, lz4, xz)"),
    Key("pull_parallel", lambda: 4, int, "layers downloaded at once"),
    Key("slurm_backend", lambda: "auto", str, "auto | cli | pyslurm"),
    Key("node_cache", lambda: os.path.join("/var/tmp", f"hpcrun-{os.getuid()}", "nodecache"), str,
        "node-local cache where the first task of a Slurm step on a node unpacks the image"),
]}


def _suggest(name: str) -> str | None:
    import difflib
    m = difflib.get_close_matches(name, KEYS.keys(), n=1)
    return m[0] if m else None


def _files() -> list[str]:
    return configfiles.files()


def _parse(key: Key, raw: str, where: str):
    try:
        return key.parse(raw)
    except (ValueError, TypeError) as e:
        raise HpcrunError(f"{where}: bad value for {key.name}: {raw!r} ({e})",
                          f"{key.name}: {key.doc}") from e


def load() -> dict[str, object]:
    """Read every layer and return the effective settings."""
    vals: dict[str, object] = {k: key.default() for k, key in KEYS.items()}
    for path in _files():
        try:
            with open(path) as f:
                lines = f.readlines()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, raw = line.partition("=")
            name = name.strip().lower()
            where = f"{path}:{n}"
            if not sep:
                raise HpcrunError(f"{where}: expected 'key = value', got {line!r}")
            if name not in KEYS:
                s = _suggest(name)
                raise HpcrunError(f"{where}: unknown setting {name!r}",
                                  f"did you mean {s!r}?" if s else "known: " + ", ".join(KEYS))
            vals[name] = _parse(KEYS[name], raw.strip(), where)
    for name, key in KEYS.items():
        env = os.environ.get("HPCRUN_" + name.upper())
        if env is not None:
            vals[name] = _parse(key, env, "HPCRUN_" + name.upper())
    return vals


_cache: dict[str, object] | None = None


def get(name: str):
    """One setting (files read once per process)."""
    global _cache
    if _cache is None:
        _cache = load()
    return _cache[name]


def reset() -> None:
    global _cache
    _cache = None
