"""Image references, parsed the way Docker parses them.

Grammar (github.com/distribution/reference, reference.go)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component [ "/" path-component ]*
    domain     := host [ ":" port ]            host: DNS labels, "localhost" or "[ipv6]"
    path-comp  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex           (sha256: exactly 64 lowercase hex digits)

Normalisation (normalize.go): the first component is a registry only when it contains
"." or ":", is "localhost", or has an upper-case letter; otherwise the reference is on
Docker Hub, and a one-component Hub path gets "library/". "docker.io",
"index.docker.io" and "registry-1.docker.io" are the same registry; we store the API
host (registry-1.docker.io) and show "docker.io". Without tag or digest the tag is
"latest". An optional "docker://" prefix (skopeo's transport spelling) is accepted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional

from ..errors import ImageError

HUB_API = "registry-1.docker.io"   # where Docker Hub's registry API answers
HUB_DISPLAY = "docker.io"          # how Docker prints it
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
OFFICIAL = "library/"

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]+)?\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z", re.ASCII)
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}\Z")
_HEX64 = re.compile(r"[a-f0-9]{64}\Z")
NAME_MAX = 255

_HINT = ("use [REGISTRY[:PORT]/]REPOSITORY[:TAG|@sha256:DIGEST], "
         "e.g. ubuntu:22.04 or localhost:5000/ns/img:tag")


def _bad(s: str, why: str) -> ImageError:
    return ImageError(f"invalid reference format: {why}: {s!r}", _HINT)


@dataclass(frozen=True)
class Reference:
    """A normalised image reference. Frozen, no I/O."""

    registry: str           # "registry-1.docker.io" for Docker Hub, "localhost:5000", ...
    repository: str         # "library/ubuntu", "org/img"
    tag: Optional[str]      # "latest" when neither tag nor digest was given
    digest: Optional[str]   # "sha256:..."

    @property
    def domain(self) -> str:
        """The registry as Docker prints it ("docker.io" for the Hub)."""
        return HUB_DISPLAY if self.registry == HUB_API else self.registry

    @property
    def is_hub(self) -> bool:
        return self.registry == HUB_API

    @property
    def name(self) -> str:
        """Canonical name without tag or digest: "docker.io/library/ubuntu"."""
        return f"{self.domain}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """Short name as Docker prints it: "ubuntu", "org/img", "localhost:5000/ns/img"."""
        if not self.is_hub:
            return self.name
        repo = self.repository
        if repo.startswith(OFFICIAL) and repo.count("/") == 1:
            repo = repo[len(OFFICIAL):]
        return repo

    def _suffix(self) -> str:
        s = ""
        if self.tag is not None:
            s += ":" + self.tag
        if self.digest is not None:
            s += "@" + self.digest
        return s

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def familiar(self) -> str:
        """Short form as Docker prints it ("ubuntu:22.04", "localhost:5000/ns/img:tag")."""
        return self.familiar_name + self._suffix()

    @property
    def ref(self) -> str:
        """What to ask the registry for in /v2/<repo>/manifests/<ref>: digest wins over tag."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> "Reference":
        if not _TAG.match(tag):
            raise _bad(tag, "invalid tag")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> "Reference":
        return replace(self, digest=digest)


def _split_domain(name: str) -> tuple[str, str]:
    i = name.find("/")
    first = name[:i] if i >= 0 else ""
    if i < 0 or (not any(c in first for c in ".:") and first != "localhost"
                 and first.lower() == first):
        return HUB_API, name
    return first, name[i + 1:]


def parse(s: str) -> Reference:
    """Parse and normalise a reference; raise ImageError("invalid reference format: ...")."""
    if not isinstance(s, str):
        raise _bad(repr(s), "not a string")
    orig = s
    if s.startswith("docker://"):
        s = s[len("docker://"):]
        # skopeo accepts "docker://" followed by "//"-less names only
    if not s:
        raise _bad(orig, "empty reference")
    if s != s.strip() or any(c.isspace() for c in s):
        raise _bad(orig, "whitespace in reference")
    if "://" in s:
        raise _bad(orig, "only the docker:// transport is understood")
    if _HEX64.match(s):
        raise _bad(orig, "a 64-character hexadecimal string is an image id, not a name")

    name, digest = s, None
    if "@" in s:
        name, _, digest = s.partition("@")
        if not _DIGEST.match(digest):
            raise _bad(orig, "invalid digest")
        algo, _, hexpart = digest.partition(":")
        if algo == "sha256" and not _HEX64.match(hexpart):
            raise _bad(orig, "sha256 digest must be 64 lowercase hex digits")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
        if not _TAG.match(tag):
            raise _bad(orig, "invalid tag")
    if not name:
        raise _bad(orig, "missing repository name")
    if len(name) > NAME_MAX:
        raise _bad(orig, f"repository name longer than {NAME_MAX} characters")

    domain, path = _split_domain(name)
    if not _DOMAIN.match(domain):
        raise _bad(orig, "invalid registry host")
    if domain in _HUB_ALIASES:
        domain = HUB_API
    if not path:
        raise _bad(orig, "missing repository name")
    comps = path.split("/")
    for c in comps:
        if _PATH_COMPONENT.match(c):
            continue
        if _PATH_COMPONENT.match(c.lower()):
            raise _bad(orig, "repository name must be lowercase")
        raise _bad(orig, f"invalid repository component {c!r}")
    if domain == HUB_API and len(comps) == 1:
        path = OFFICIAL + path
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain, path, tag, digest)


def try_parse(s: str) -> Reference | None:
    """parse(), or None for a string that is not a reference (store lookups use it)."""
    try:
        return parse(s)
    except ImageError:
        return None


def split_registry(s: str) -> str:
    """Normalise a registry given alone (login/logout): "docker.io", "https://h:5000/" -> host."""
    s = s.strip()
    for p in ("https://", "http://"):
        if s.startswith(p):
            s = s[len(p):]
    s = s.split("/", 1)[0]
    if not s or not _DOMAIN.match(s):
        raise ImageError(f"invalid registry name: {s!r}",
                         "give a host name with an optional port, e.g. localhost:5000")
    return HUB_API if s in _HUB_ALIASES else s


def parse_name(s: str) -> Reference:
    """A name to give an image (tag, import, load): REPOSITORY[:TAG] with a lower-case
    repository, as Docker requires, and no digest (a digest names content, it cannot
    be given)."""
    r = parse(s)
    if r.digest is not None:
        raise ImageError(f"invalid reference format: a new name cannot have a digest: {s!r}",
                         "give REPOSITORY[:TAG], e.g. myimage:1")
    return r


_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{4,64}\Z")


def parse_lookup(s: str) -> Reference | None:
    """A name that looks an image up in the store: None for an image id (full or short
    hex, optionally "sha256:"-prefixed), else the parsed reference. Anything else
    raises parse()'s error, so `hpcrun rmi Upper/Case` says what is wrong with the
    name (as Docker does) instead of "no such image"."""
    if _IMAGE_ID.match(s):
        return None
    return parse(s)
