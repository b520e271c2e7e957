"""OCI platforms: the host's, parsing `--platform`, choosing from an index.

Shared by the registry client (manifest lists) and archives (oci-archive indexes).
"""
from __future__ import annotations

from typing import Optional
import platform as _p

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64", "i686": "386", "i386": "386"}


def host_platform() -> dict:
    m = _p.machine()
    arch = _ARCH.get(m, m)
    p = {"os": "linux", "architecture": arch}
    if arch == "arm64":
        p["variant"] = "v8"
    elif m.startswith("armv"):
        p["variant"] = "v" + m[4]
    return p


def parse_platform(s: Optional[str]) -> dict:
    """"linux/arm64/v8" -> {"os": "linux", "architecture": "arm64", "variant": "v8"}."""
    if not s:
        return host_platform()
    parts = s.strip().lower().split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        from ..errors import UsageError  # lazy: only this branch needs it
        raise UsageError(f"invalid platform {s!r}", "use OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")
    if len(parts) == 1:
        parts = ["linux"] + parts
    p = {"os": parts[0], "architecture": _ARCH.get(parts[1], parts[1])}
    if len(parts) == 3:
        p["variant"] = parts[2]
    elif p["architecture"] == "arm64":
        p["variant"] = "v8"
    return p


def platform_str(p: dict) -> str:
    s = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return s + (f"/{p['variant']}" if p.get("variant") else "")


def match_platform(index: dict, want: dict) -> Optional[dict]:
    """The descriptor of an index / manifest list matching `want` (os, architecture,
    variant), or None."""
    def variant_ok(have: dict) -> bool:
        w, h = want.get("variant"), have.get("variant")
        if not w or w == h:
            return True
        # arm64 images rarely say v8: accept a missing variant for the default one.
        return not h and want.get("architecture") == "arm64" and w == "v8"

    best = None
    for d in index.get("manifests") or []:
        have = d.get("platform") or {}
        if have.get("os") == want["os"] and have.get("architecture") == want["architecture"] \
                and variant_ok(have):
            if best is None or have.get("variant") == want.get("variant"):
                best = d
    return best


def available_platforms(index: dict) -> list:
    """The platforms an index offers, as strings (attestation entries left out)."""
    return sorted({platform_str(d.get("platform") or {}) for d in index.get("manifests") or []
                   if (d.get("platform") or {}).get("os") != "unknown"})
