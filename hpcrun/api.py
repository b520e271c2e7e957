"""Python API for workflow systems: start an instance, run commands in it, stop it.

    from hpcrun.api import Instance
    with Instance.start("alpine:3.19", name="work", writable_tmpfs=True,
                        volumes=["/data:/data"]) as inst:
        status, out, err = inst.exec(["sh", "-c", "echo hi"])
        results = inst.batch([["gzip", "-k", f"/data/{i}"] for i in range(100)], parallel=2)


start() runs `hpcrun instance start` (so every run option and check is the CLI's);
exec() and batch() talk to `hpcrun exec --batch` servers, each a process joined to the
instance once (setns) that forks one child per command: a command costs a fork and an
exec inside the container, not a Python start-up. Safe to use from threads.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence
import json

from hpcrun.errors import HpcrunError
from hpcrun.instance import state
from hpcrun.runtime.options import TABLE

__all__ = ["Instance", "ExecResult", "InstanceError", "instances"]


class InstanceError(HpcrunError):
    """hpcrun refused or failed (its one-line message and hint)."""


class ExecResult(NamedTuple):
    """What a command in the instance did: exit status (128+N for signal N; 125/126/127
    as `hpcrun run`), and its output."""

    status: int
    stdout: bytes
    stderr: bytes


def _hpcrun() -> list:
    return [sys.executable, "-m", "hpcrun"]


def _cli(*args: str) -> str:
    cp = subprocess.run(_hpcrun() + list(args), stdin=subprocess.DEVNULL,
                        capture_output=True, text=True)
    if cp.returncode != 0:
        lines = cp.stderr.strip().splitlines()
        what = next((l[len("hpcrun: error: "):] for l in lines
                     if l.startswith("hpcrun: error: ")), lines[-1] if lines else "failed")
        hint = next((l[len("hint: "):] for l in lines if l.startswith("hint: ")), None)
        raise InstanceError(what, hint, cp.returncode)
    return cp.stdout


def _option_table() -> dict:
    """flag -> (attribute, kind) of `hpcrun run`, from the option table."""
    return {o.name: (o.attr, o.kind) for o in TABLE}


def _option_args(opts: Mapping[str, Any]) -> list:
    """Keyword arguments named as RunOptions attributes -> `hpcrun run` options."""
    by_attr: dict = {}
    for flag, (attr, kind) in _option_table().items():
        if flag.startswith("--") and (attr not in by_attr or kind == "off"):
            by_attr[attr] = (flag, kind)
    out = []
    for k, v in opts.items():
        if k not in by_attr:
            raise TypeError(f"unknown run option {k!r} (known: {', '.join(sorted(by_attr))})")
        flag, kind = by_attr[k]
        if kind == "flag":
            if v:
                out.append(flag)
        elif kind == "off":
            if not v:
                out.append(flag)
        elif kind == "list":
            items = [f"{a}={b}" for a, b in v.items()] if isinstance(v, Mapping) else list(v)
            for item in items:
                out += [flag, str(item)]
        elif v is not None:
            out += [flag, str(v)]
    return out


class _Server:
    """One `hpcrun exec --batch NAME` process and its pipes."""

    def __init__(self, name: str):
        self.proc = subprocess.Popen(_hpcrun() + ["exec", "--batch", name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lock = threading.Lock()

    def run(self, argv: Sequence[str], env: Sequence[str], workdir: str) -> ExecResult:
        strings = [workdir, *argv, *env]
        data = b"".join(os.fsencode(s) + b"\0" for s in strings)
        with self.lock:
            try:
                self.proc.stdin.write(struct.pack("=III", len(data), len(argv), len(env)) + data)
                self.proc.stdin.flush()
                hdr = self._read(12)
            except (BrokenPipeError, EOFError):
                err = self.proc.stderr.read().decode("utf-8", "replace").strip()
                raise InstanceError(err.splitlines()[0].replace("hpcrun: error: ", "")
                                    if err else "the instance's exec server ended",
                                    "is the instance still running? see 'hpcrun ps'") from None
            status, nout, nerr = struct.unpack("=iii", hdr)
            return ExecResult(status, self._read(nout), self._read(nerr))

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.proc.stdout.read(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


class Instance:
    """A running instance (hpcrun instance start), entered without a new process of
    hpcrun per command."""

    def __init__(self, name: str):
        self.name = name
        self._servers: list = []
        self._free: list = []
        self._lock = threading.Lock()
        self._env: Optional[list] = None
        self._workdir = "/"

    # -- lifecycle
    @classmethod
    def start(cls, image: str, name: Optional[str] = None, command: Sequence[str] = (),
              **run_options: Any) -> "Instance":
        """Start IMAGE as an instance. run_options are `hpcrun run`'s, named as Python
        keywords: writable_tmpfs=True, env={"A": "1"} or ["A=1"], volumes=["/d:/d"],
        workdir="/w", network="none", home=False, fakeroot=True, ..."""
        args = ["instance", "start"] + (["--name", name] if name else [])
        args += _option_args(run_options) + [image] + list(command)
        return cls(_cli(*args).strip())

    @classmethod
    def attach(cls, name: str) -> "Instance":
        """An instance already running (started by the CLI or another process)."""
        inst = cls(name)
        inst._record()
        return inst

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it (the stop signal, SIGKILL after timeout seconds) and close servers."""
        self.close()
        _cli("instance", "stop", "-t", str(timeout), self.name)

    def close(self) -> None:
        """Close this object's exec servers; the instance keeps running."""
        with self._lock:
            servers, self._servers, self._free = self._servers, [], []
        for s in servers:
            s.close()

    def __enter__(self) -> "Instance":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- commands
    def _record(self):
        try:
            r = state.get_running(self.name)
        except HpcrunError as e:
            raise InstanceError(e.what, e.hint, e.code) from None
        self._env = r.env()
        self._workdir = r.exec_info()[1]
        return r

    def _server(self) -> _Server:
        with self._lock:
            if self._free:
                return self._free.pop()
        if self._env is None:
            self._record()
        s = _Server(self.name)
        with self._lock:
            self._servers.append(s)
        return s

    def exec(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
             workdir: Optional[str] = None) -> ExecResult:
        """Run argv in the instance (its environment, plus env); (status, stdout, stderr)."""
        if not argv:
            raise ValueError("exec: empty argv")
        s = self._server()
        try:
            e = self._env or []
            if env:
                d = dict(x.partition("=")[::2] for x in e)
                d.update(env)
                e = [f"{k}={v}" for k, v in d.items()]
            return s.run([str(a) for a in argv], e, workdir or self._workdir)
        finally:
            with self._lock:
                if s in self._servers:
                    self._free.append(s)

    def batch(self, commands: Iterable[Sequence[str]], parallel: int = 1,
              env: Optional[Mapping[str, str]] = None) -> list:
        """Run many commands (each argv in its own process in the instance) through
        `parallel` servers; results in the order given."""
        cmds = [list(c) for c in commands]
        if parallel <= 1:
            return [self.exec(c, env) for c in cmds]
        with ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(lambda c: self.exec(c, env), cmds))

    def __repr__(self) -> str:
        return f"Instance({self.name!r})"


def instances() -> list:
    """Names of your running instances."""
    return [r["name"] for r in json.loads(_cli("ps", "--format", "json"))]
