"""Fixtures for the registry tests: Debian's docker-registry on loopback, TLS, auth, images.

* ``RegistryServer`` runs /usr/bin/docker-registry (the reference registry) on
  127.0.0.1:<free port> with storage in a temp dir: plain HTTP, htpasswd basic auth,
  TLS (a CA made with openssl here), or token auth against ``TokenServer``.
* ``TokenServer`` is a small token endpoint: it checks Basic credentials and issues
  RS256 JWTs signed with ``openssl dgst`` and carrying the signing certificate in
  ``x5c``; the registry trusts it through ``rootcertbundle``.
* ``FaultProxy`` sits between hpcrun and a real registry and counts requests, drops
  connections mid-blob, or answers 500. It exists because the reference registry can
  neither misbehave on purpose nor serve wrong bytes (it refuses to store a blob whose
  digest does not match), so those failures need a fake in the path.
* ``OciLayout`` builds OCI image layouts (busybox root filesystems, several layers,
  indexes for two platforms) that skopeo, the independent client, pushes.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse

import pytest

import util

REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"
CANNED_USER, CANNED_PASSWORD = "alice", "s3cret-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc=None, timeout: float = 20) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- PKI

class Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, and a token-signing key."""

    def __init__(self, d: str):
        self.dir = d
        self.ca_key, self.ca = f"{d}/ca.key", f"{d}/ca.crt"
        self.key, self.cert = f"{d}/server.key", f"{d}/server.crt"
        self.tok_key, self.tok_cert = f"{d}/token.key", f"{d}/token.crt"
        ssl = ["openssl"]
        run = lambda *a: subprocess.run(ssl + list(a), check=True, capture_output=True)  # noqa: E731
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.ca_key, "-out", self.ca,
            "-days", "2", "-subj", "/CN=hpcrun test CA")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", f"{d}/server.csr",
            "-subj", "/CN=localhost")
        with open(f"{d}/ext.cnf", "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        run("x509", "-req", "-in", f"{d}/server.csr", "-CA", self.ca, "-CAkey", self.ca_key,
            "-CAcreateserial", "-out", self.cert, "-days", "2", "-extfile", f"{d}/ext.cnf")
        # A client certificate for registries that require one (mutual TLS).
        self.client_key, self.client_cert = f"{d}/client.key", f"{d}/client.cert"
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", self.client_key, "-out", f"{d}/client.csr",
            "-subj", "/CN=hpcrun test client")
        with open(f"{d}/client.cnf", "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        run("x509", "-req", "-in", f"{d}/client.csr", "-CA", self.ca, "-CAkey", self.ca_key,
            "-CAcreateserial", "-out", self.client_cert, "-days", "2", "-extfile", f"{d}/client.cnf")
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.tok_key, "-out",
            self.tok_cert, "-days", "2", "-subj", "/CN=hpcrun test token issuer")
        for n in os.listdir(d):
            os.chmod(os.path.join(d, n), 0o644 if not n.endswith(".key") else 0o600)

    def cert_der_b64(self, path: str) -> str:
        pem = open(path).read()
        body = "".join(pem.split("-----")[2].split())
        return body


@pytest.fixture(scope="session")
def pki():
    d = util.shared_tmpdir("hpcrun-pki-")
    yield Pki(d)
    shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------- token server

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry bearer tokens (RS256 JWT) to CANNED_USER; anonymous gets pull on public/*."""

    def __init__(self, pki: Pki, service: str = "hpcrun-test-registry", issuer: str = "hpcrun-test-issuer"):
        self.pki, self.service, self.issuer = pki, service, issuer
        self.requests: list[dict] = []
        self.port = free_port()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                user = None
                authz = self.headers.get("Authorization", "")
                if authz.startswith("Basic "):
                    u_, _, p_ = base64.b64decode(authz[6:]).decode().partition(":")
                    if (u_, p_) != (CANNED_USER, CANNED_PASSWORD):
                        outer.requests.append({"user": u_, "ok": False})
                        self.send_response(401)
                        self.send_header("Content-Type", "application/json")
                        body = b'{"details":"incorrect username or password"}'
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    user = u_
                access = []
                for sc in q.get("scope", []):
                    typ, _, rest = sc.partition(":")
                    name, _, actions = rest.rpartition(":")
                    acts = actions.split(",")
                    if user is None:
                        acts = [a for a in acts if a == "pull" and name.startswith("public/")]
                    access.append({"type": typ, "name": name, "actions": acts})
                outer.requests.append({"user": user, "ok": True, "scope": q.get("scope", [])})
                tok = outer.sign(user or "", access)
                body = json.dumps({"token": tok, "access_token": tok, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.realm = f"http://127.0.0.1:{self.port}/token"

    def sign(self, sub: str, access: list) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.pki.cert_der_b64(self.pki.tok_cert)]}
        claims = {"iss": self.issuer, "sub": sub, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.pki.tok_key],
                             input=signing.encode(), capture_output=True, check=True).stdout
        return signing + "." + _b64url(sig)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ----------------------------------------------------------------------------- registry

class RegistryServer:
    """docker-registry on 127.0.0.1:<port>; `mode` is plain, basic, tls, mtls or token."""

    def __init__(self, mode: str = "plain", pki: Pki | None = None, token: TokenServer | None = None):
        self.mode = mode
        self.dir = util.shared_tmpdir("hpcrun-registry-")
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.pki = pki
        self.token = token
        cfg = [
            "version: 0.1",
            "log:", "  level: info", "  accesslog:", "    disabled: false",
            "storage:", "  filesystem:", f"    rootdirectory: {self.dir}/data",
            "  delete:", "    enabled: true",
            "http:", f"  addr: {self.host}", "  secret: hpcrun-test",
        ]
        if mode in ("tls", "mtls"):
            cfg += ["  tls:", f"    certificate: {pki.cert}", f"    key: {pki.key}"]
        if mode == "mtls":
            cfg += ["    clientcas:", f"      - {pki.ca}"]
        if mode == "basic":
            hp = subprocess.run(["htpasswd", "-Bbn", CANNED_USER, CANNED_PASSWORD],
                                capture_output=True, text=True, check=True).stdout
            with open(f"{self.dir}/htpasswd", "w") as f:
                f.write(hp)
            cfg += ["auth:", "  htpasswd:", "    realm: hpcrun-test", f"    path: {self.dir}/htpasswd"]
        if mode == "token":
            cfg += ["auth:", "  token:", f"    realm: {token.realm}", f"    service: {token.service}",
                    f"    issuer: {token.issuer}", f"    rootcertbundle: {pki.tok_cert}"]
        cfg += ["health:", "  storagedriver:", "    enabled: false"]
        with open(f"{self.dir}/config.yml", "w") as f:
            f.write("\n".join(cfg) + "\n")
        self.log_path = f"{self.dir}/registry.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", f"{self.dir}/config.yml"],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            _wait_port(self.port, self.proc)
        except RuntimeError:
            self.stop()
            raise RuntimeError("docker-registry did not start: " + open(self.log_path).read()[-2000:])

    @property
    def scheme(self) -> str:
        return "https" if self.mode in ("tls", "mtls") else "http"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def count(self, method: str, path_part: str) -> int:
        """Requests in the access log whose request line matches (e.g. GET .../blobs/<digest>)."""
        return sum(1 for line in self.log().splitlines()
                   if f'"{method} ' in line and path_part in line and "HTTP/1.1\"" in line)

    def skopeo_tls_args(self, direction: str = "") -> list[str]:
        """TLS flags for skopeo: direction "src"/"dest" for copy, "" for inspect."""
        pre = f"--{direction}-" if direction else "--"
        if self.mode in ("tls", "mtls"):
            cd = f"{self.dir}/skopeo-certs"
            if not os.path.isdir(cd):
                os.makedirs(cd)
                shutil.copy(self.pki.ca, f"{cd}/ca.crt")
                if self.mode == "mtls":
                    shutil.copy(self.pki.client_cert, f"{cd}/client.cert")
                    shutil.copy(self.pki.client_key, f"{cd}/client.key")
            return [pre + "cert-dir", cd]
        return [pre + "tls-verify=false"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _serve(kind: str, pki=None, token=None):
    """A running docker-registry of this kind for one test, stopped afterwards."""
    util.require(os.path.exists(REGISTRY_BIN), "docker-registry is not installed")
    r = RegistryServer(kind, pki=pki, token=token)
    yield r
    r.stop()


@pytest.fixture
def registry():
    yield from _serve("plain")


@pytest.fixture
def registry_basic():
    yield from _serve("basic")


@pytest.fixture
def registry_tls(pki):
    yield from _serve("tls", pki=pki)


@pytest.fixture
def registry_mtls(pki):
    """TLS that also requires a client certificate signed by the test CA."""
    yield from _serve("mtls", pki=pki)


@pytest.fixture
def registry_token(pki):
    t = TokenServer(pki)
    try:
        yield from _serve("token", pki=pki, token=t)
    finally:
        t.stop()


# ----------------------------------------------------------------------------- fault proxy

class FaultProxy:
    """A plain-HTTP proxy to a registry that counts requests and injects failures.

    ``behave(method, path, n)`` -> None (forward), "500", "truncate" (send half the
    body, then drop the connection), "wrong" (same length, other bytes), or a number
    (wait that many seconds, then forward); n counts requests to that path so far
    (1-based).
    """

    def __init__(self, upstream: RegistryServer, behave=None):
        self.upstream = upstream
        self.behave = behave or (lambda m, p, n: None)
        self.seen: dict[str, int] = {}
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _handle(self):
                path = self.path
                with outer.lock:
                    outer.seen[(self.command, path.split("?")[0])] = n = \
                        outer.seen.get((self.command, path.split("?")[0]), 0) + 1
                    outer.lines.append(f"{self.command} {path} {self.headers.get('Range', '')}")
                what = outer.behave(self.command, path, n)
                if isinstance(what, (int, float)):
                    time.sleep(what)      # "slow": answer after this many seconds
                    what = None
                if what == "500":
                    body = b'{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}'
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(outer.upstream.host, timeout=60)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, path, body=body, headers=hdrs)
                r = conn.getresponse()
                data = r.read()
                conn.close()
                if what == "wrong" and data:
                    data = bytes(b ^ 0x5A for b in data)
                self.send_response(r.status, r.reason)
                for k, v in r.getheaders():
                    if k.lower() in ("connection", "transfer-encoding", "content-length"):
                        continue
                    if k.lower() == "location":
                        v = v.replace(outer.upstream.host, outer.host)
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                if what == "truncate":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def lines_for(self, part: str) -> list[str]:
        """The request lines ("METHOD PATH RANGE") that contain `part`."""
        with self.lock:
            return [ln.strip() for ln in self.lines if part in ln]

    def count(self, method: str, part: str) -> int:
        with self.lock:
            return sum(n for (m, p), n in self.seen.items() if m == method and part in p)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fault_proxy(registry):
    proxies = []

    def make(behave=None) -> FaultProxy:
        p = FaultProxy(registry, behave)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.stop()


# ----------------------------------------------------------------------------- images

def _tarinfo(name: str, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mtime = 1_700_000_000
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def layer_from_dir(root: str) -> bytes:
    """An uncompressed, reproducible tar of a directory tree (owners root)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            for name in sorted(dirnames) + sorted(filenames):
                p = os.path.join(dirpath, name)
                arc = os.path.normpath(os.path.join(rel, name))
                st = os.lstat(p)
                if os.path.islink(p):
                    tf.addfile(_tarinfo(arc, type=tarfile.SYMTYPE, linkname=os.readlink(p), mode=0o777))
                elif os.path.isdir(p):
                    tf.addfile(_tarinfo(arc, type=tarfile.DIRTYPE, mode=st.st_mode & 0o7777))
                else:
                    with open(p, "rb") as f:
                        tf.addfile(_tarinfo(arc, size=st.st_size, mode=st.st_mode & 0o7777), f)
    return buf.getvalue()


def layer_from_files(files: dict) -> bytes:
    """An uncompressed tar from {path: bytes} (a path ending in / is a directory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            if name.endswith("/"):
                tf.addfile(_tarinfo(name.rstrip("/"), type=tarfile.DIRTYPE, mode=0o755))
            else:
                tf.addfile(_tarinfo(name, size=len(data), mode=0o644), io.BytesIO(data))
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


class OciLayout:
    """An OCI image layout directory that the test fills and skopeo reads."""

    def __init__(self, d: str):
        self.dir = d
        os.makedirs(f"{d}/blobs/sha256", exist_ok=True)
        with open(f"{d}/oci-layout", "w") as f:
            f.write('{"imageLayoutVersion": "1.0.0"}')
        self.refs: list[dict] = []

    def blob(self, data: bytes, media_type: str) -> dict:
        dg = sha256(data)
        with open(f"{self.dir}/blobs/sha256/{dg[7:]}", "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": dg, "size": len(data)}

    def image(self, tars: list[bytes], *, arch: str = "amd64", variant: str | None = None,
              cmd=("/bin/sh",), env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
              compress: bool = True) -> dict:
        layers = []
        for t in tars:
            if compress:
                layers.append(self.blob(gz(t), "application/vnd.oci.image.layer.v1.tar+gzip"))
            else:
                layers.append(self.blob(t, "application/vnd.oci.image.layer.v1.tar"))
        cfg = {"architecture": arch, "os": "linux",
               "created": "2024-01-01T00:00:00Z",
               "config": {"Env": list(env), "Cmd": list(cmd)},
               "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
               "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"test layer {i}"}
                           for i in range(len(tars))]}
        if variant:
            cfg["variant"] = variant
        cdesc = self.blob(json.dumps(cfg, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": cdesc, "layers": layers}
        mdesc = self.blob(json.dumps(man, indent=2).encode(), man["mediaType"])
        plat = {"os": "linux", "architecture": arch}
        if variant:
            plat["variant"] = variant
        mdesc["platform"] = plat
        return mdesc

    def index(self, manifests: list[dict]) -> dict:
        idx = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": manifests}
        return self.blob(json.dumps(idx, indent=2).encode(), idx["mediaType"])

    def tag(self, desc: dict, name: str) -> None:
        d = {k: v for k, v in desc.items() if k != "platform"}
        d["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.refs.append(d)
        with open(f"{self.dir}/index.json", "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.refs}, f)


def skopeo(*args, check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run([SKOPEO, "--insecure-policy", *args], capture_output=True, text=True, timeout=300)
    if check and cp.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {cp.stderr}")
    return cp


def skopeo_push(layout: OciLayout, tag: str, reg: RegistryServer, dest: str, *, all_: bool = False,
                creds: str | None = None, docker_v2s2: bool = False) -> None:
    """skopeo copy the layout's TAG to the registry: as is, or converted to Docker schema 2."""
    args = ["copy"] + (["--format", "v2s2"] if docker_v2s2 else ["--preserve-digests"])
    args += ["--all"] if all_ else []
    args += reg.skopeo_tls_args("dest")
    if creds:
        args += ["--dest-creds", creds]
    skopeo(*args, f"oci:{layout.dir}:{tag}", f"docker://{reg.host}/{dest}")


def skopeo_inspect_raw(reg, ref: str, creds: str | None = None) -> bytes:
    """The manifest bytes as skopeo reads them."""
    args = ["inspect", "--raw", *reg.skopeo_tls_args(), *(["--creds", creds] if creds else [])]
    return skopeo(*args, f"docker://{reg.host}/{ref}").stdout.encode()


def skopeo_copy_out(reg, ref: str, dest_dir: str, creds: str | None = None) -> None:
    """skopeo copy REGISTRY/REF -> an OCI layout (reads and verifies every blob)."""
    args = ["copy", "--preserve-digests", *reg.skopeo_tls_args("src"),
            *(["--src-creds", creds] if creds else [])]
    skopeo(*args, f"docker://{reg.host}/{ref}", f"oci:{dest_dir}:out")


@pytest.fixture
def oci_layout():
    d = util.shared_tmpdir("hpcrun-oci-")
    yield OciLayout(os.path.join(d, "layout"))
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_layer(busybox_rootfs) -> bytes:
    """The busybox root filesystem as one uncompressed layer tar."""
    return layer_from_dir(busybox_rootfs)


@pytest.fixture
def user_env_for(user, user_tmp):
    """env for hpcrun as the user: its own store, config dir and no Docker config."""
    def make(**extra) -> dict:
        env = {"HPCRUN_STORE": os.path.join(user_tmp, "store"),
               "XDG_CONFIG_HOME": os.path.join(user_tmp, "config"),
               "DOCKER_CONFIG": os.path.join(user_tmp, "docker"),
               "HPCRUN_SYSCONFDIR": os.path.join(user_tmp, "etc"),
               "XDG_RUNTIME_DIR": os.path.join(user_tmp, "run"),
               "HPCRUN_NODE_CACHE": os.path.join(user_tmp, "nodecache"),
               "HPCRUN_UNPACK_CACHE": os.path.join(user_tmp, "unpack")}
        env.update(extra)
        return env
    return make


def hp(user, env, *args, **kw):
    """hpcrun as the test user with a registry test environment."""
    return util.hpcrun(user, *args, env=env, **kw)


def err(cp) -> str:
    """The one error line (progress lines may come before it)."""
    lines = [ln for ln in cp.stderr.splitlines() if ln.startswith("hpcrun: error: ")]
    assert len(lines) == 1, cp.stderr
    return lines[0]
