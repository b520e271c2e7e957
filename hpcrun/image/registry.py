"""OCI distribution client on the standard library (http.client + ssl).

What it speaks (https://github.com/opencontainers/distribution-spec/blob/main/spec.md):

* ``GET /v2/`` ping; a 401 carries ``WWW-Authenticate``: ``Basic realm=...`` (send the
  stored credentials) or ``Bearer realm=...,service=...,scope=...`` (ask the realm for a
  token, with the credentials as Basic auth when we have them, anonymously otherwise,
  then send ``Authorization: Bearer <token>``). Tokens are cached per scope.
* manifests (Docker schema 2, OCI manifest, Docker manifest list, OCI index), fetched
  by tag or digest; the body's sha256 is checked against the digest we asked for or
  the ``Docker-Content-Digest`` header.
* blobs streamed to a writer, with retries and exponential backoff on connection drops
  and timeouts, resuming with ``Range: bytes=N-`` (a server that ignores Range gets
  its first N bytes skipped, so any writer works). The writer verifies the digest.
* uploads: ``HEAD`` (exists?), ``POST ?mount=&from=`` cross-repository mount, else
  ``POST`` then ``PATCH`` (one or several chunks, ``Content-Range``) then
  ``PUT ?digest=``; a manifest ``PUT`` with the manifest's own media type.

Trust: the system CAs, plus ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_DIR``,
plus Docker-style per-registry directories ``<certs_dir>/<host:port>/*.crt`` (CA
certificates) and ``*.cert``/``*.key`` pairs (client certificates); ``certs_dir`` is the
config key (system) and ``~/.config/hpcrun/certs.d`` (per user). Plain HTTP or
unverified TLS only for registries in config ``insecure_registries`` or given with
``--insecure``: those are tried over HTTPS without verification first and then over
HTTP, as Docker does.

One ``Registry`` object per host; it is thread-safe (one connection per thread and host).
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Callable, Optional

from .. import log
from ..errors import NotFound, RegistryError
from . import auth
from .platform import (available_platforms, host_platform, match_platform,  # noqa: F401
                       parse_platform, platform_str)
from .reference import HUB_API, split_registry

# Media types
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

USER_AGENT = "hpcrun"
TIMEOUT = float(os.environ.get("HPCRUN_REGISTRY_TIMEOUT", "60"))  # seconds of socket silence
RETRIES = 5            # attempts per request without progress (connection drops, 429, 502-504)
BACKOFF = 0.5          # first pause, doubled each time, at most BACKOFF_MAX
BACKOFF_MAX = 8.0
CHUNK = 1 << 20        # read size while streaming a blob
MAX_REDIRECTS = 5
_TRANSIENT = (429, 502, 503, 504)

_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}\Z")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str, what: str = "digest") -> str:
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise RegistryError(f"unsupported or malformed {what}: {digest!r}",
                            "only sha256 digests (sha256:<64 hex>) are supported")
    return digest


# --------------------------------------------------------------------------- TLS

def _user_certs_dir() -> str:
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(xdg, "hpcrun", "certs.d")


def certs_dirs(host: str) -> list[str]:
    """Per-registry certificate directories that exist, system first then the user's."""
    from .. import config
    names = [host]
    if host == HUB_API:
        names += ["docker.io", "index.docker.io"]
    out = []
    for base in (str(config.get("certs_dir")), _user_certs_dir()):
        for n in names:
            d = os.path.join(base, n)
            if os.path.isdir(d):
                out.append(d)
    return out


def ssl_context(host: str, verify: bool = True) -> ssl.SSLContext:
    """The TLS context for one registry: system CAs + env bundles + its certs.d directory."""
    ctx = ssl.create_default_context()
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        f = os.environ.get(var)
        if f and os.path.isfile(f):
            ctx.load_verify_locations(cafile=f)
    d = os.environ.get("SSL_CERT_DIR")
    if d and os.path.isdir(d):
        ctx.load_verify_locations(capath=d)
    for d in certs_dirs(host):
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            try:
                if name.endswith(".crt"):
                    ctx.load_verify_locations(cafile=p)
                elif name.endswith(".cert"):
                    key = p[:-len(".cert")] + ".key"
                    if not os.path.exists(key):
                        raise RegistryError(f"client certificate {p} has no key {key}",
                                            "put NAME.cert and NAME.key side by side")
                    ctx.load_cert_chain(p, key)
            except ssl.SSLError as e:
                raise RegistryError(f"cannot load certificate {p}: {e}",
                                    "certs.d holds PEM files: CA.crt, client.cert + client.key") from e
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def is_insecure(host: str) -> bool:
    from .. import config
    for h in config.get("insecure_registries") or []:
        h = h.strip()
        for p in ("https://", "http://"):
            if h.startswith(p):
                h = h[len(p):]
        h = h.rstrip("/")
        if h == host or (host == HUB_API and h in ("docker.io", "index.docker.io")):
            return True
    return False


# --------------------------------------------------------------------------- auth

_CHALLENGE_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {"realm": "x", "service": "y"})."""
    header = (header or "").strip()
    scheme, _, rest = header.partition(" ")
    params = {}
    for m in _CHALLENGE_RE.finditer(rest):
        v = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", v)
    return scheme.lower(), params


def _registry_errors(body: bytes) -> str:
    """The first error of an OCI error body, "CODE: message", or ""."""
    try:
        errs = json.loads(body.decode("utf-8", "replace")).get("errors") or []
        e = errs[0]
        code = str(e.get("code", "")).lower().replace("_", " ")
        msg = str(e.get("message", ""))
        return f"{code}: {msg}" if code and msg and code != msg.lower() else (msg or code)
    except Exception:
        return ""


class Response:
    """A finished or streaming HTTP response."""

    def __init__(self, status: int, reason: str, headers, body: Optional[bytes],
                 raw: Optional[http.client.HTTPResponse] = None, conn=None, url: str = ""):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.raw = raw
        self._conn = conn
        self.url = url

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default) if self.headers is not None else default

    def close(self) -> None:
        if self.raw is not None:
            # An unread stream cannot be reused for keep-alive: drop the connection.
            if not self.raw.isclosed() and self._conn is not None:
                self._conn.close()
            self.raw.close()


class Registry:
    """A client for one registry host ("localhost:5000", "registry-1.docker.io")."""

    def __init__(self, host: str, *, insecure: Optional[bool] = None,
                 credentials: Optional[tuple[str, str]] = None, use_stored_credentials: bool = True):
        self.host = host
        self.insecure = is_insecure(host) if insecure is None else insecure
        if credentials is None and use_stored_credentials:
            credentials = auth.lookup(host)
        self.credentials = credentials
        self._scheme: Optional[str] = None   # "https" or "http", decided by ping()
        self._challenge: Optional[tuple[str, dict]] = None
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._ctx: dict[bool, ssl.SSLContext] = {}
        self._verify = True

    # -------------------------------------------------------------- connections

    @property
    def display(self) -> str:
        return "docker.io" if self.host == HUB_API else self.host

    def _context(self, verify: bool) -> ssl.SSLContext:
        with self._lock:
            if verify not in self._ctx:
                self._ctx[verify] = ssl_context(self.host, verify)
            return self._ctx[verify]

    def _connection(self, scheme: str, netloc: str, fresh: bool = False):
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        key = (scheme, netloc)
        conn = pool.get(key)
        if conn is not None and not fresh:
            return conn, True
        if conn is not None:
            conn.close()
        if scheme == "https":
            own = netloc == self.host
            ctx = self._context(self._verify if own else True)
            conn = http.client.HTTPSConnection(netloc, timeout=TIMEOUT, context=ctx)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=TIMEOUT)
        pool[key] = conn
        return conn, False

    def close(self) -> None:
        for conn in (getattr(self._local, "pool", None) or {}).values():
            conn.close()
        self._local.pool = {}

    def _send_once(self, method: str, url: str, headers: dict, body, stream: bool) -> Response:
        u = urllib.parse.urlsplit(url)
        path = u.path + ("?" + u.query if u.query else "")
        conn, reused = self._connection(u.scheme, u.netloc)
        for attempt in (0, 1):
            try:
                if hasattr(body, "seek") and attempt:
                    body.seek(0)
                conn.request(method, path, body=body, headers=headers)
                raw = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                # A reused keep-alive connection the server closed meanwhile: once more, fresh.
                if not reused or attempt or (body is not None and not hasattr(body, "seek")
                                             and not isinstance(body, (bytes, str))):
                    conn.close()
                    raise
                conn, reused = self._connection(u.scheme, u.netloc, fresh=True)
            except BaseException:
                conn.close()
                raise
        if stream and 200 <= raw.status < 300 and method != "HEAD":
            return Response(raw.status, raw.reason, raw.headers, None, raw, conn, url)
        try:
            data = raw.read()
        except BaseException:
            conn.close()
            raise
        if raw.will_close:
            conn.close()
        return Response(raw.status, raw.reason, raw.headers, data, url=url)

    def _base(self) -> str:
        if self._scheme is None:
            self.ping()
        return f"{self._scheme}://{self.host}"

    # -------------------------------------------------------------- ping & auth

    def ping(self) -> None:
        """Decide the scheme and learn the auth challenge from GET /v2/."""
        if self._scheme is not None:
            return
        schemes = [("https", True)]
        if self.insecure:
            schemes = [("https", False), ("http", True)]
        last: Optional[BaseException] = None
        for scheme, verify in schemes:
            self._verify = verify
            try:
                r = self._send_once("GET", f"{scheme}://{self.host}/v2/",
                                    {"User-Agent": USER_AGENT}, None, False)
            except ssl.SSLCertVerificationError as e:
                raise RegistryError(
                    f"cannot verify the TLS certificate of {self.display}: {e.verify_message}",
                    f"put its CA certificate in {os.path.join(_user_certs_dir(), self.host)}/ca.crt "
                    f"(or {os.path.join('<certs_dir>', self.host)}), set SSL_CERT_FILE, or mark the "
                    "registry insecure (--insecure / insecure_registries)") from e
            except ssl.SSLError as e:
                last = e
                if not self.insecure:
                    reason = str(e.reason or e)
                    why = reason.lower().replace("_", " ")
                    if "CERTIFICATE" in reason.upper() or "HANDSHAKE" in reason.upper():
                        hint = ("the registry may require a client certificate: put client.cert and "
                                f"client.key in {os.path.join(_user_certs_dir(), self.host)}/")
                    else:
                        hint = ("if this registry serves plain HTTP, add it to insecure_registries "
                                "in the config or pass --insecure")
                    raise RegistryError(f"cannot talk HTTPS to {self.display}: {why}", hint) from e
                continue
            except (OSError, http.client.HTTPException) as e:
                last = e
                if self.insecure and scheme == "https":
                    continue
                raise _unreachable(self.display, e) from e
            if r.status == 401:
                self._challenge = parse_challenge(r.header("WWW-Authenticate"))
            elif r.status >= 400 and r.status != 404:
                raise _http_error(r, f"GET /v2/ on {self.display}", self.display)
            self._scheme = scheme
            log.debug(f"registry {self.host}: {scheme}, auth {self._challenge and self._challenge[0]}")
            return
        raise _unreachable(self.display, last)

    def _token(self, scope: str, params: dict) -> str:
        key = scope or "*"
        with self._lock:
            tok = self._tokens.get(key)
        if tok:
            return tok
        realm = params.get("realm")
        if not realm:
            raise RegistryError(f"{self.display} asked for a bearer token without a realm",
                                "the registry's auth configuration is broken")
        q = []
        if params.get("service"):
            q.append(("service", params["service"]))
        for s in scope.split(" ") if scope else []:
            q.append(("scope", s))
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(q)
        headers = {"User-Agent": USER_AGENT}
        if self.credentials:
            headers["Authorization"] = _basic(*self.credentials)
        try:
            r = self._request_url("GET", url, headers, None, False)
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"cannot reach the token service {realm} of {self.display}: {e}",
                                "check the network and the registry's auth realm") from e
        if r.status in (401, 403):
            raise RegistryError(
                f"{self.display}: unauthorized: "
                + ("incorrect username or password" if self.credentials else "authentication required"),
                f"log in with 'hpcrun login {self.display}'")
        if r.status != 200:
            raise _http_error(r, f"token request to {realm}", self.display)
        try:
            doc = json.loads(r.body)
            tok = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            tok = None
        if not tok:
            raise RegistryError(f"the token service of {self.display} answered without a token",
                                "the registry's auth configuration is broken")
        with self._lock:
            self._tokens[key] = tok
        return tok

    def _auth_header(self, scope: str) -> Optional[str]:
        ch = self._challenge
        if ch is None:
            return None
        scheme, params = ch
        if scheme == "basic":
            return _basic(*self.credentials) if self.credentials else None
        if scheme == "bearer":
            return "Bearer " + self._token(scope, params)
        return None

    def check_login(self) -> None:
        """Raise unless the credentials are accepted (what `hpcrun login` verifies)."""
        self.ping()
        if self._challenge is None:
            return   # an open registry accepts anyone
        scheme, params = self._challenge
        if scheme == "bearer":
            self._token("", params)    # the token service checks the password
            return
        r = self.request("GET", "/v2/", scope="")
        if r.status != 200:
            raise _http_error(r, f"login to {self.display}", self.display)

    # -------------------------------------------------------------- requests

    def _request_url(self, method, url, headers, body, stream) -> Response:
        """One request with redirects and transient-failure retries (no auth handling)."""
        delay = BACKOFF
        for attempt in range(1, RETRIES + 1):
            target, hdrs = url, dict(headers)
            if hasattr(body, "seek"):
                body.seek(0)
            try:
                for _ in range(MAX_REDIRECTS + 1):
                    r = self._send_once(method, target, hdrs, body, stream)
                    if r.status in (301, 302, 303, 307, 308) and r.header("Location"):
                        nxt = urllib.parse.urljoin(target, r.header("Location"))
                        if urllib.parse.urlsplit(nxt).netloc != urllib.parse.urlsplit(target).netloc:
                            hdrs.pop("Authorization", None)   # never leak credentials elsewhere
                        if r.status == 303:
                            method, body = "GET", None
                        target = nxt
                        continue
                    break
                else:
                    raise RegistryError(f"too many redirects from {url}")
            except (ConnectionError, socket.timeout, http.client.HTTPException) as e:
                if attempt == RETRIES or (body is not None and not isinstance(body, bytes)
                                          and not hasattr(body, "seek")):
                    raise
                log.debug(f"{method} {url}: {e!r}; retrying in {delay:.1f}s")
            else:
                if r.status not in _TRANSIENT or attempt == RETRIES:
                    return r
                r.close()
                log.debug(f"{method} {url}: {r.status}; retrying in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, *, scope: str, headers: Optional[dict] = None,
                body=None, stream: bool = False) -> Response:
        """A request to this registry with authentication (path or absolute URL)."""
        base = self._base()
        url = path if "://" in path else base + path
        hdrs = {"User-Agent": USER_AGENT}
        hdrs.update(headers or {})
        auth = self._auth_header(scope)
        if auth:
            hdrs["Authorization"] = auth
        try:
            r = self._request_url(method, url, hdrs, body, stream)
        except (OSError, http.client.HTTPException) as e:
            raise _unreachable(self.display, e) from e
        if r.status != 401:
            return r
        # First contact for this scope, an expired token, or a wider scope needed.
        scheme, params = parse_challenge(r.header("WWW-Authenticate"))
        if not scheme:
            return r
        self._challenge = (scheme, params)
        if scheme == "bearer":
            want = params.get("scope") or scope
            with self._lock:
                self._tokens.pop(want or "*", None)
            auth = self._auth_header(want)
        else:
            auth = self._auth_header(scope)
        if not auth or auth == hdrs.get("Authorization"):
            return r
        hdrs["Authorization"] = auth
        if hasattr(body, "seek"):
            body.seek(0)
        try:
            return self._request_url(method, url, hdrs, body, stream)
        except (OSError, http.client.HTTPException) as e:
            raise _unreachable(self.display, e) from e

    # -------------------------------------------------------------- manifests

    def get_manifest(self, repo: str, ref: str, *, what: str = "") -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index, digest verified."""
        scope = f"repository:{repo}:pull"
        r = self.request("GET", f"/v2/{repo}/manifests/{ref}", scope=scope,
                         headers={"Accept": ACCEPT})
        what = what or f"{self.display}/{repo}{'@' if ref.startswith('sha256:') else ':'}{ref}"
        if r.status != 200:
            raise _http_error(r, what, self.display, kind="manifest")
        body = r.body or b""
        digest = sha256_digest(body)
        if ref.startswith("sha256:"):
            if digest != ref:
                raise RegistryError(f"manifest {what} digest mismatch: got {digest}",
                                    "the registry served different content; do not use this image")
        else:
            hd = r.header("Docker-Content-Digest")
            if hd and hd.startswith("sha256:") and hd != digest:
                raise RegistryError(f"manifest {what} digest mismatch: header says {hd}, body is {digest}",
                                    "the registry or a proxy altered the manifest")
        mtype = (r.header("Content-Type").split(";")[0].strip())
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise RegistryError(f"manifest {what} is not JSON", "the registry served garbage") from e
        mtype = doc.get("mediaType") or mtype
        if mtype not in MANIFEST_TYPES + INDEX_TYPES:
            if doc.get("schemaVersion") == 1 or mtype in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
                raise RegistryError(f"{what} is a Docker schema 1 manifest, which is not supported",
                                    "push the image again with a current client (schema 2)")
            if "manifests" in doc:
                mtype = OCI_INDEX
            elif "layers" in doc and "config" in doc:
                mtype = OCI_MANIFEST
            else:
                raise RegistryError(f"{what}: unsupported manifest type {mtype!r}")
        return body, mtype, digest

    def has_manifest(self, repo: str, ref: str) -> Optional[bool]:
        """True / False when the registry says (HEAD 200 / 404) whether the manifest or
        index `ref` (tag or digest) exists; None when it does not say (401, 5xx...)."""
        r = self.request("HEAD", f"/v2/{repo}/manifests/{ref}", scope=f"repository:{repo}:pull",
                         headers={"Accept": ACCEPT})
        r.close()
        return True if r.status == 200 else False if r.status == 404 else None

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        r = self.request("PUT", f"/v2/{repo}/manifests/{ref}", scope=f"repository:{repo}:pull,push",
                         headers={"Content-Type": media_type, "Content-Length": str(len(body))},
                         body=body)
        if r.status not in (200, 201, 202):
            raise _http_error(r, f"manifest upload to {self.display}/{repo}:{ref}", self.display,
                              push=True)
        digest = sha256_digest(body)
        hd = r.header("Docker-Content-Digest")
        if hd and hd != digest:
            raise RegistryError(f"{self.display} stored the manifest as {hd}, expected {digest}")
        return digest

    # -------------------------------------------------------------- blobs

    def get_blob_bytes(self, repo: str, digest: str, limit: int = 64 << 20) -> bytes:
        """A small blob (config) in memory, digest verified."""
        r = self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull",
                         stream=True)
        if r.status != 200:
            raise _http_error(r, f"blob {digest} of {self.display}/{repo}", self.display, kind="blob")
        try:
            data = r.raw.read(limit + 1)
        except (OSError, http.client.HTTPException) as e:
            raise _unreachable(self.display, e) from e
        finally:
            r.close()
        if len(data) > limit:
            raise RegistryError(f"blob {digest} is larger than {limit} bytes",
                                "a configuration blob this big is not plausible")
        got = sha256_digest(data)
        if got != digest:
            raise RegistryError(f"blob {digest} digest mismatch: got {got}",
                                "the registry served different content; do not use this image")
        return data

    def fetch_blob(self, repo: str, digest: str, out, *, size: Optional[int] = None,
                   progress: Optional[Callable[[int], None]] = None) -> None:
        """Stream a blob into the binary file `out`, resuming after drops.

        `out.tell()` is the resume offset (a partial file kept from a killed pull counts).
        The caller (the store's blob writer) verifies the digest once it is complete.
        """
        path = f"/v2/{repo}/blobs/{digest}"
        scope = f"repository:{repo}:pull"
        failures = 0
        delay = BACKOFF
        while True:
            offset = out.tell()
            if size is not None and offset >= size:
                return
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            r = None
            try:
                r = self.request("GET", path, scope=scope, headers=headers, stream=True)
                if r.status == 416 and offset:
                    raise RegistryError(f"{self.display} refused to resume layer {digest} at byte "
                                        f"{offset}", "remove the partial download under the store's "
                                        "tmp/ directory and pull again")
                if r.status not in (200, 206):
                    raise _http_error(r, f"layer {digest} of {self.display}/{repo}", self.display,
                                      kind="blob")
                skip = 0
                if offset and r.status == 200:
                    skip = offset        # Range ignored: throw away what we already have
                elif r.status == 206:
                    m = re.match(r"bytes (\d+)-", r.header("Content-Range"))
                    if not m or int(m.group(1)) != offset:
                        raise RegistryError(f"{self.display} answered range {r.header('Content-Range')!r}"
                                            f" when asked for bytes={offset}-")
                remaining = None
                cl = r.header("Content-Length")
                if cl.isdigit():
                    remaining = int(cl)
                got = 0
                while True:
                    buf = r.raw.read(CHUNK)
                    if not buf:
                        break
                    got += len(buf)
                    if skip:
                        n = min(skip, len(buf))
                        skip -= n
                        buf = buf[n:]
                        if not buf:
                            continue
                    out.write(buf)
                    failures = 0
                    delay = BACKOFF
                    if progress:
                        progress(len(buf))
                    if size is not None and out.tell() > size:
                        raise RegistryError(f"layer {digest} is larger than the {size} bytes "
                                            "its manifest says", "the registry served wrong content")
                if remaining is not None and got < remaining:
                    raise http.client.IncompleteRead(b"", remaining - got)
                if size is not None and out.tell() < size:
                    raise http.client.IncompleteRead(b"", size - out.tell())
                return
            except (OSError, http.client.HTTPException) as e:
                if isinstance(e, ssl.SSLCertVerificationError):
                    raise
                failures += 1
                if failures >= RETRIES:
                    raise RegistryError(
                        f"download of layer {digest} from {self.display} failed after {failures} "
                        f"attempts: {_describe(e)}", "check the network and try again; "
                        "the next pull resumes where this one stopped") from e
                log.info(f"{digest[7:19]}: connection lost at byte {out.tell()} ({_describe(e)});"
                         f" resuming in {delay:.1f}s")
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            finally:
                if r is not None:
                    r.close()

    def has_blob(self, repo: str, digest: str, scope: Optional[str] = None) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}",
                         scope=scope or f"repository:{repo}:pull,push")
        if r.status == 200:
            return True
        if r.status == 404:
            return False
        raise _http_error(r, f"blob {digest} of {self.display}/{repo}", self.display, push=True)

    def mount_blob(self, repo: str, digest: str, source_repo: str) -> Optional[str]:
        """Try a cross-repository mount: None when mounted, else the upload URL the
        registry opened instead (use it for an ordinary upload)."""
        q = urllib.parse.urlencode({"mount": digest, "from": source_repo})
        scope = f"repository:{repo}:pull,push repository:{source_repo}:pull"
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/?{q}", scope=scope,
                         headers={"Content-Length": "0"}, body=b"")
        if r.status == 201:
            return None
        if r.status == 202:
            return self._location(r)
        raise _http_error(r, f"blob upload to {self.display}/{repo}", self.display, push=True)

    def _location(self, r: Response) -> str:
        loc = r.header("Location")
        if not loc:
            raise RegistryError(f"{self.display} started an upload without a Location",
                                "the registry is not OCI-compliant")
        return urllib.parse.urljoin(r.url or self._base() + "/", loc)

    def start_upload(self, repo: str) -> str:
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=f"repository:{repo}:pull,push",
                         headers={"Content-Length": "0"}, body=b"")
        if r.status != 202:
            raise _http_error(r, f"blob upload to {self.display}/{repo}", self.display, push=True)
        return self._location(r)

    def upload_blob(self, repo: str, digest: str, path: str, *, location: Optional[str] = None,
                    chunk_size: int = 0, progress: Optional[Callable[[int], None]] = None) -> None:
        """Upload the file `path` as blob `digest`: PATCH (chunked if chunk_size) then PUT."""
        scope = f"repository:{repo}:pull,push"
        size = os.path.getsize(path)
        loc = location or self.start_upload(repo)
        what = f"blob {digest} upload to {self.display}/{repo}"
        with open(path, "rb") as f:
            if not chunk_size and size <= (1 << 20):
                # Monolithic: one PUT with the body.
                data = f.read()
                r = self.request("PUT", _add_query(loc, digest=digest), scope=scope,
                                 headers={"Content-Type": "application/octet-stream",
                                          "Content-Length": str(size)}, body=data)
                if r.status != 201:
                    raise _http_error(r, what, self.display, push=True)
                if progress:
                    progress(size)
                return
            step = chunk_size or size
            offset = 0
            while offset < size or size == 0:
                n = min(step, size - offset)
                body = _Slice(f, offset, n, progress)
                r = self.request("PATCH", loc, scope=scope, body=body, headers={
                    "Content-Type": "application/octet-stream", "Content-Length": str(n),
                    "Content-Range": f"{offset}-{offset + n - 1}" if n else "0-0"})
                if r.status != 202:
                    raise _http_error(r, what, self.display, push=True)
                loc = self._location(r)
                offset += n
                if size == 0:
                    break
        r = self.request("PUT", _add_query(loc, digest=digest), scope=scope,
                         headers={"Content-Length": "0"}, body=b"")
        if r.status != 201:
            raise _http_error(r, what, self.display, push=True)


class _Slice:
    """A file-like view of bytes [offset, offset+n) of f, for http.client to stream."""

    def __init__(self, f, offset: int, n: int, progress=None):
        self.f, self.offset, self.n, self.progress = f, offset, n, progress
        self.pos = 0
        f.seek(offset)

    def seek(self, pos: int, whence: int = 0) -> None:
        self.pos = pos
        self.f.seek(self.offset + pos)

    def read(self, amt: int = -1) -> bytes:
        left = self.n - self.pos
        if left <= 0:
            return b""
        amt = left if amt is None or amt < 0 else min(amt, left)
        data = self.f.read(amt)
        self.pos += len(data)
        if self.progress and data:
            self.progress(len(data))
        return data


def login(registry: str, user: str, password: str, *, insecure: Optional[bool] = None) -> str:
    """`hpcrun login`: check the credentials against the registry, then store them
    (auth.save). Returns the host."""
    host = split_registry(registry or "docker.io")
    if not user:
        raise RegistryError("login needs a user name", "pass -u USER")
    if not password:
        raise RegistryError("login needs a password", "pass it on stdin with --password-stdin")
    if ":" in user:
        raise RegistryError("a user name cannot contain ':'", "check the -u value")
    reg = Registry(host, insecure=insecure, credentials=(user, password))
    try:
        reg.check_login()
    except RegistryError as e:
        if "unauthorized" in e.what:
            raise RegistryError(f"login to {reg.display} failed: unauthorized: "
                                "incorrect username or password",
                                "check the user name and password; nothing was stored") from e
        raise
    finally:
        reg.close()
    auth.save(host, user, password)
    return host


def _add_query(url: str, **params) -> str:
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _describe(e: BaseException) -> str:
    if isinstance(e, http.client.IncompleteRead):
        return "connection closed mid-stream"
    if isinstance(e, socket.timeout):
        return f"no data for {TIMEOUT:.0f}s"
    s = str(e) or type(e).__name__
    return s


def _unreachable(host: str, e: Optional[BaseException]) -> RegistryError:
    return RegistryError(f"cannot reach registry {host}: {_describe(e) if e else 'no answer'}",
                         "check the registry name and port, the network, and HTTPS/--insecure")


def _http_error(r: Response, what: str, host: str, *, kind: str = "", push: bool = False):
    detail = _registry_errors(r.body or b"")
    if r.status == 401:
        return RegistryError(f"{what}: unauthorized: {detail or 'authentication required'}",
                             f"log in with 'hpcrun login {host}' (wrong or missing credentials)")
    if r.status == 403:
        return RegistryError(f"{what}: denied: {detail or 'access forbidden'}",
                             f"your account may lack {'push' if push else 'pull'} rights; "
                             f"log in with 'hpcrun login {host}'")
    if r.status == 404:
        if kind == "manifest":
            return NotFound(f"{what}: not found: {detail or 'manifest unknown'}",
                            "check the repository name and tag (or digest); "
                            "private images need 'hpcrun login " + host + "'")
        return NotFound(f"{what}: not found: {detail or '404'}",
                        "the image refers to content the registry does not have")
    if r.status >= 500:
        return RegistryError(f"{what}: registry {host} failed: {r.status} {r.reason}"
                             + (f" ({detail})" if detail else ""),
                             "the registry has an internal problem; try again later or tell its operator")
    return RegistryError(f"{what}: {r.status} {r.reason}" + (f": {detail}" if detail else ""),
                         None)


# --------------------------------------------------------------------------- platforms

def select_platform(index: dict, want: dict) -> dict:
    """The descriptor of `index` matching `want` (os, architecture, variant), or an error."""
    best = match_platform(index, want)
    if best is None:
        raise RegistryError(f"no matching manifest for {platform_str(want)} in the manifest list entries",
                            "this image is built for " + (", ".join(available_platforms(index))
                                                          or "no platform")
                            + "; pick one with --platform")
    return best
