"""Registry credentials: stored by `hpcrun login` (registry.login checks them first),
forgotten by `logout`, and looked up for pull and push.

hpcrun keeps its own logins in ``$XDG_CONFIG_HOME/hpcrun/auth.json`` (default
``~/.config/hpcrun/auth.json``), mode 0600, written atomically, in Docker's format::

    {"auths": {"localhost:5000": {"auth": "<base64 user:password>"}}}

Lookup order: hpcrun's file, then Docker's ``$DOCKER_CONFIG/config.json`` (default
``~/.docker/config.json``), then the containers-auth file used by skopeo and podman
(``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``~/.config/containers/auth.json``), so existing logins work. Only the plain
``auth`` field is read; credential helpers (``credsStore``) are not run.
``HPCRUN_AUTH_FILE`` moves hpcrun's own file (tests use it).
"""
from __future__ import annotations

import base64
import json
import os
from typing import Optional

from .. import log
from ..errors import HpcrunError
from .reference import HUB_API, split_registry

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
             "registry-1.docker.io", "https://registry-1.docker.io")


def auth_file() -> str:
    f = os.environ.get("HPCRUN_AUTH_FILE")
    if f:
        return f
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(xdg, "hpcrun", "auth.json")


def docker_config_file() -> str:
    d = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(d, "config.json")


def containers_auth_files() -> list[str]:
    out = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        out.append(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    out.append(os.path.join(xdg, "containers", "auth.json"))
    return out


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise HpcrunError(f"cannot read credentials file {path}: {e}",
                          "fix or remove the file, then 'hpcrun login' again") from e
    if not isinstance(doc, dict):
        raise HpcrunError(f"credentials file {path} is not a JSON object",
                          "fix or remove the file, then 'hpcrun login' again")
    return doc


def _key_host(key: str) -> Optional[str]:
    try:
        return split_registry(key)
    except HpcrunError:
        return None


def _find(auths: dict, host: str) -> Optional[str]:
    """The key of `auths` that names `host` (Docker writes URLs and aliases)."""
    for key in auths:
        if _key_host(key) == host:
            return key
    return None


def _decode(entry: dict, where: str) -> Optional[tuple[str, str]]:
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, sep, pw = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError) as e:
            raise HpcrunError(f"{where}: the 'auth' field is not base64 of user:password",
                              "log in again") from e
        if sep:
            return user, pw
    if entry.get("username") and entry.get("password"):
        return entry["username"], entry["password"]
    return None


def lookup(registry: str) -> Optional[tuple[str, str]]:
    """(user, password) stored for a registry host, or None (anonymous)."""
    host = split_registry(registry)
    for path in [auth_file(), docker_config_file(), *containers_auth_files()]:
        auths = _read(path).get("auths") or {}
        key = _find(auths, host)
        if key is not None:
            cred = _decode(auths[key], path)
            if cred:
                log.debug(f"credentials for {host} from {path}")
                return cred
    return None


def _write_atomic(path: str, doc: dict) -> None:
    from ..fsutil import atomic_write
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True) + "\n", mode=0o600, fsync=True)


def _display(host: str) -> str:
    return "docker.io" if host == HUB_API else host


def save(host: str, user: str, password: str) -> None:
    """Store credentials for a registry host in hpcrun's file (registry.login checks
    them against the registry first)."""
    path = auth_file()
    doc = _read(path)
    auths = doc.setdefault("auths", {})
    old = _find(auths, host)
    if old is not None:
        del auths[old]
    auths[host] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write_atomic(path, doc)


def logout(registry: str) -> bool:
    """Forget hpcrun's credentials for a registry. False if there were none."""
    host = split_registry(registry or "docker.io")
    path = auth_file()
    doc = _read(path)
    auths = doc.get("auths") or {}
    key = _find(auths, host)
    removed = key is not None
    if removed:
        del auths[key]
        _write_atomic(path, doc)
    dkey = _find(_read(docker_config_file()).get("auths") or {}, host)
    if dkey is not None:
        log.warning(f"Docker's {docker_config_file()} still holds credentials for {_display(host)}, "
                    "which hpcrun also uses; remove them with 'docker logout' or by editing that file")
    return removed
