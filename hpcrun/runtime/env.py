"""The environment policy (documented in README, section "Environment").

Lowest to highest precedence:
  1. the host environment; with --cleanenv only the MPI/Slurm families in ALWAYS
  2. the image's ENV (its PATH beats the host's, whose directories rarely exist inside)
  3. --env-file files, in order
  4. -e NAME=VALUE, in order; -e NAME alone copies the host's value (skipped if unset)
PATH falls back to DEFAULT_PATH when nothing sets it.
"""
from __future__ import annotations

from hpcrun.errors import NotFound, UsageError

# Variables starting with these always pass from the host (MPI and Slurm need them).
ALWAYS = ("SLURM_", "PMI", "PMIX_", "OMPI_", "UCX_", "FI_")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _check_name(name: str, where: str) -> None:
    if not name or "=" in name or "\0" in name or name[0].isdigit():
        raise UsageError(f"{where}: bad variable name {name!r}",
                         "write NAME=VALUE, NAME being letters, digits and _")


def parse_assign(arg: str, host: dict, where: str):
    """NAME=VALUE -> (NAME, VALUE); NAME -> (NAME, host value) or None if unset."""
    name, sep, value = arg.partition("=")
    _check_name(name, where)
    if sep:
        return name, value
    if name in host:
        return name, host[name]
    return None


def read_env_file(path: str, host: dict) -> list:
    """Docker's env-file format: NAME=VALUE or NAME per line, # comments, blank lines."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise NotFound(f"env file does not exist: {path}", "fix the --env-file path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"can't read env file {path}: {e}", "an env file is UTF-8 text") from None
    out = []
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        kv = parse_assign(line.lstrip(), host, f"{path}:{n}")
        if kv:
            out.append(kv)
    return out


def _image_env(image_env) -> dict:
    """The image's ENV list (NAME=VALUE strings) as a dict, in order."""
    out = {}
    for item in image_env or ():
        name, sep, value = item.partition("=")
        if name and sep:
            out[name] = value
    return out


def compose(host: dict, image_env=(), env_files=(), assigns=(), cleanenv: bool = False) -> list:
    """The command's environment as a list of NAME=VALUE strings."""
    if cleanenv:
        env = {k: v for k, v in host.items() if k.startswith(ALWAYS)}
    else:
        env = dict(host)
    env.update(_image_env(image_env))
    for path in env_files:
        env.update(read_env_file(path, host))
    for arg in assigns:
        kv = parse_assign(arg, host, "-e")
        if kv:
            env[kv[0]] = kv[1]
    env.setdefault("PATH", DEFAULT_PATH)
    return [f"{k}={v}" for k, v in env.items()]


# -- the same policy split for the C executor (runtime/plan.py) ----------------------
# What is the same for every invocation of a plan (image ENV, --env-file, -e NAME=VALUE:
# "fixed", in order) and what is each invocation's own (`-e NAME` alone: the caller's
# value where it has one). The executor applies them over the caller's environment
# exactly as compose() does over the host's.

_MARK = object()


class _Marking(dict):
    """A host environment that has every name, each with the value _MARK, so that the
    parsers above tell which settings copy the caller's value (NAME alone)."""

    def __contains__(self, name):
        return True

    def __getitem__(self, name):
        return _MARK


def split(image_env=(), env_files=(), assigns=()) -> tuple:
    """(fixed {NAME: VALUE} in order, set of names that are the caller's own)."""
    fixed: dict = _image_env(image_env)
    own: set = set()
    marking = _Marking()
    pairs = []
    for path in env_files:
        pairs += read_env_file(path, marking)
    for arg in assigns:
        kv = parse_assign(arg, marking, "-e")
        if kv:
            pairs.append(kv)
    for name, value in pairs:
        if value is _MARK:
            own.add(name)
        else:
            fixed.pop(name, None)     # keep the order of the last setting
            fixed[name] = value
            own.discard(name)
    return fixed, own
