"""Executing a parsed Dockerfile: stages, instructions, the cache, the image commit.

Each stage keeps a state: the cache key of its last step, the file-system manifest
that step produced, and the image config. A step whose key is in the cache costs a
lookup; a RUN that misses runs on the stage's tree, kept in the cache's work/: layers
of an overlay (the store's base, a layer per catch-up, each earlier RUN's upper
directory), or where overlayfs can't be mounted so, a copy made once and synced. RUN
enters it with the C core as fake root: a user namespace mapping the caller to 0, the
root read-write (F_RW_ROOT; an overlay with overlay_lower), the fake-root seccomp
filter (F_SECCOMP_FAKE). Nothing is recorded in the image store before the last step
succeeded; then the image, the base's layers plus one per step that changed files, is
committed (store.commit_image).
"""
from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time

from hpcrun.build import parser as P
from hpcrun.build import tree as T
from hpcrun.build.cache import Cache, sha256_file, sha256_text
from hpcrun.build.parser import BuildError, Instruction
from hpcrun.image import archive
from hpcrun.image.fstree import rmtree
from hpcrun.image.store import Store
from hpcrun import log
from hpcrun.runtime.spec import (F_FAKEROOT, F_NET, F_RW_ROOT, F_SECCOMP_FAKE, M_CONTENT,
                                 M_FILE, M_OPTIONAL, M_PROC, M_RDONLY, M_SYSFS, Mount, Spec)
from hpcrun.errors import ContainerError
from hpcrun.errors import HpcrunError
from hpcrun.image.progress import Progress

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
              "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
FS_STEPS = {"RUN", "COPY", "ADD", "WORKDIR"}
CACHE_VERSION = "hpcrun-build-3"   # bump when what an entry means changes
APT_CONF = "/etc/apt/apt.conf.d/00hpcrun-build-sandbox"
MAX_LAYERS = 120   # a RUN's overlay: more read-only layers than this are merged into one


class Options:
    def __init__(self, context, dockerfile=None, tags=(), build_args=None, target=None,
                 no_cache=False, network="host", fmt="dir", quiet=False, out=None):
        self.context = context
        self.dockerfile = dockerfile
        self.tags = list(tags)
        self.build_args = dict(build_args or {})
        self.target = target
        self.no_cache = no_cache
        self.network = network
        self.fmt = fmt
        self.quiet = quiet
        self.out = out or sys.stderr


class Stage:
    def __init__(self, index, name, frm, instructions):
        self.index = index
        self.name = name
        self.frm = frm                  # the FROM Instruction
        self.instructions = instructions


class State:
    """Where a stage stands: key, manifest id, config; the tree once materialized."""

    def __init__(self, key, fs, config, meta):
        self.key = key
        self.fs = fs
        self.config = config            # the image's "config" object
        self.meta = meta                # author, etc. (top level of the image config)
        self.tree = None                # path of the materialized root, when there is one
        self.layers = None              # or: the overlay's read-only layers, bottom first
        self.layers_dir = None          # the work directory holding those layers
        self.layers_made = 0            # names of the layers made there: 0, 1, ...
        self.entries = None             # manifest of the tree as it is now
        self.args: dict = {}            # ARGs declared in the stage -> value
        self.cmd_set = False
        self.history: list = []
        self.stale = False              # the tree lags behind fs (a COPY or a cache hit)
        # the store image the stage grew from (None: scratch)
        self.base_fs = None
        self.base_dir = None
        self.base_hex = None
        self.base_layers = None
        self.base_diff_ids = None
        self.base_history = 0


# ------------------------------------------------------------------------------ split


def stages_of(df: P.Dockerfile) -> tuple[list, list]:
    """(global ARG instructions, stages)."""
    glob, stages = [], []
    cur = None
    for ins in df.instructions:
        if ins.cmd == "FROM":
            w = ins.args.split()
            name = w[2].lower() if len(w) == 3 else None
            cur = Stage(len(stages), name, ins, [])
            stages.append(cur)
        elif cur is None:
            if ins.cmd != "ARG":
                raise ins_error(ins, "a Dockerfile must begin with FROM (or ARG lines, then FROM)")
            glob.append(ins)
        else:
            cur.instructions.append(ins)
    if not stages:
        raise BuildError(f"{df.file}: no FROM instruction", "start the build with FROM IMAGE")
    return glob, stages


def ins_error(ins: Instruction, what: str, hint: str | None = None) -> BuildError:
    return BuildError(f"{ins.file}:{ins.line}: {ins.original}: {what}", hint)


# ------------------------------------------------------------------------------ builder


class Builder:
    def __init__(self, store: Store, opts: Options):
        self.store = store
        self.opts = opts
        self.cache = Cache(store.root)
        self.context = os.path.realpath(opts.context)
        if not os.path.isdir(self.context):
            raise BuildError(f"build context {opts.context} is not a directory",
                             "give the directory holding the Dockerfile and the files it copies")
        self.dockerfile = opts.dockerfile or os.path.join(self.context, "Dockerfile")
        self.ignore = self._read_ignore()
        self.step = 0
        self.total = 0
        self.used_args: set = set()
        self.states: dict = {}
        self.hits = 0
        self.misses = 0
        self.overlay = None             # RUN roots are overlays (decided at the first RUN)
        self.leases: list = []          # fds of the base images' leases the layers need

    def close(self):
        for st in self.states.values():
            if st.tree:
                rmtree(os.path.dirname(st.tree))
            if st.layers_dir:
                rmtree(st.layers_dir)
        for fd in self.leases:
            os.close(fd)
        self.leases = []
        self.cache.close()

    # -------------------------------------------------------------- messages
    def say(self, msg: str) -> None:
        if not self.opts.quiet:
            self.opts.out.write(msg + "\n")
            self.opts.out.flush()

    # -------------------------------------------------------------- entry
    def build(self):
        try:
            with open(self.dockerfile, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise BuildError(f"cannot read the Dockerfile {self.dockerfile}: {e.strerror}",
                             "give -f PATH, or put a Dockerfile in the context") from e
        name = os.path.relpath(self.dockerfile, self.context) \
            if self.dockerfile.startswith(self.context + "/") else self.dockerfile
        df = P.parse(text, name)
        self.escape = df.escape
        for note in df.notes:
            self.say("note: " + note)
        glob, stages = stages_of(df)
        names = {}
        for s in stages:
            if s.name:
                if s.name in names:
                    raise ins_error(s.frm, f"stage name {s.name!r} is used twice")
                names[s.name] = s
        target = stages[-1]
        if self.opts.target:
            t = names.get(self.opts.target.lower())
            if t is None:
                raise BuildError(f"--target {self.opts.target}: no stage of {name} has this name",
                                 "stages: " + (", ".join(n for n in names) or "none are named "
                                               "(write FROM IMAGE AS NAME)"))
            target = t
        # global ARGs (before the first FROM): usable in FROM lines
        self.global_args: dict = {}
        needed = self._needed(stages, names, target)
        self.total = len(glob) + sum(1 + len(s.instructions) for s in stages if s.index in needed)
        for ins in glob:
            self.step += 1
            self.say(f"Step {self.step}/{self.total} : {ins.original}")
            for k, v in self._arg_pairs(ins, lambda n: self.global_args.get(n)):
                self.global_args[k] = self.opts.build_args.get(k, v)
                if k in self.opts.build_args:
                    self.used_args.add(k)
        for s in stages:
            if s.index not in needed:
                continue
            self.states[s.index] = self._stage(s, names)
            if s is target:
                break
        extra = sorted(set(self.opts.build_args) - self.used_args - set(PROXY_ARGS))
        if extra:
            raise BuildError(f"--build-arg {', '.join(extra)}: not declared by any ARG in {name}",
                             "declare it with 'ARG NAME' in the stage that uses it, or drop "
                             "the --build-arg (the build fails as the Docker book says)")
        return self._commit(self.states[target.index], target)

    def _needed(self, stages, names, target) -> set:
        need = set()
        todo = [target]
        while todo:
            s = todo.pop()
            if s.index in need:
                continue
            need.add(s.index)
            base = s.frm.args.split()[0].lower()
            if base in names and names[base].index < s.index:
                todo.append(names[base])
            for ins in s.instructions:
                src = ins.flags.get("from")
                if ins.cmd == "COPY" and src is not None:
                    ref = self._stage_ref(src, names, stages, s)
                    if ref is not None:
                        todo.append(ref)
        return need

    @staticmethod
    def _stage_ref(src, names, stages, cur):
        if src.lower() in names and names[src.lower()].index < cur.index:
            return names[src.lower()]
        if src.isdigit() and int(src) < cur.index:
            return stages[int(src)]
        return None

    # -------------------------------------------------------------- stage
    def _stage(self, s: Stage, names) -> State:
        ins = s.frm
        self.step += 1
        self.say(f"Step {self.step}/{self.total} : {ins.original}")
        try:
            ref = P.expand_literal(ins.args.split()[0],
                                   lambda n: self.global_args.get(n), self.escape)
        except ValueError as e:
            raise ins_error(ins, str(e)) from e
        if ins.flags.get("platform"):
            plat = P.expand_literal(ins.flags["platform"], lambda n: self.global_args.get(n))
            os_, arch = archive.host_platform()
            if plat.split("/")[:2] != [os_, arch]:
                raise ins_error(ins, f"--platform={plat}: this machine builds {os_}/{arch} only",
                                "builds run natively; drop --platform or build on such a machine")
        if not ref:
            raise ins_error(ins, f"the base image name ({ins.args.split()[0]}) is empty",
                            "declare the ARG before the first FROM, with a default or a --build-arg")
        if ref.lower() in names and names[ref.lower()].index < s.index:
            src = self.states[names[ref.lower()].index]
            st = State(src.key, src.fs, json.loads(json.dumps(src.config)), dict(src.meta))
            st.history = list(src.history)
            st.base_fs, st.base_dir, st.base_layers = src.base_fs, src.base_dir, src.base_layers
            st.base_hex = src.base_hex
            st.base_diff_ids, st.base_history = src.base_diff_ids, src.base_history
            self.say(" ---> stage " + ref.lower())
        elif ref == "scratch":
            empty = self.cache.put_fs({})
            st = State(sha256_text(CACHE_VERSION, "scratch"), empty, {}, {})
        else:
            st = self._base_state(self._image(ins, ref), ins)
        triggers = list(st.config.pop("OnBuild", None) or [])
        for t in triggers:
            try:
                tins = P.onbuild_trigger(Instruction("ONBUILD", {}, t, None, ins.line,
                                                     ins.original, ins.file))
            except BuildError as e:
                raise ins_error(ins, f"the base image's ONBUILD trigger {t!r} is invalid: {e.what}")
            self.say(f" ---> running ONBUILD trigger: {t}")
            self._step(st, tins, s, names)
        for i in s.instructions:
            self.step += 1
            self.say(f"Step {self.step}/{self.total} : {i.original}")
            self._step(st, i, s, names)
        return st

    def _image(self, ins, ref: str, what: str = "base image "):
        """A store image by name, id or digest; pulled when missing, as Docker does."""
        rec = self.store.get(ref)
        if rec is not None:
            return rec
        # lazy: the registry client is needed only for a base not in the store (30 ms)
        from hpcrun.image.pull import pull
        try:
            return pull(ref, store=self.store, progress=Progress(quiet=self.opts.quiet))
        except HpcrunError as e:
            hint = ("name a stage defined above (FROM ... AS NAME) or an image in "
                    "'hpcrun images'" if what == "--from=" else
                    f"pull, load or import it first (hpcrun pull {ref})")
            raise ins_error(ins, f"{what}{ref} not found: not in the image store, and "
                                 f"pulling it failed: {e.what}", hint) from e

    def _base_state(self, rec, ins) -> State:
        key = sha256_text(CACHE_VERSION, "image", rec.id)
        doc = self.cache.get_entry(key)
        if doc is None:
            root = rec.dir_path
            tmp = None
            if root is None:
                from hpcrun.image import squash  # lazy: only this branch needs it
                tmp = self.cache.work_dir()
                root = os.path.join(tmp, "rootfs")
                squash.unsquash(rec.sqfs_path, root)
            try:
                entries = self.cache.snapshot(root, None, link=tmp is None)
            finally:
                if tmp:
                    shutil.rmtree(tmp, ignore_errors=True)
            doc = {"fs": self.cache.put_fs(entries), "config": rec.config.get("config") or {},
                   "meta": {}}
            self.cache.put_entry(key, doc)
        self.say(f" ---> {rec.short_id}")
        st = State(key, doc["fs"], json.loads(json.dumps(doc["config"])), {})
        st.history = list(rec.config.get("history") or [])
        st.base_fs, st.base_dir, st.base_hex = doc["fs"], rec.dir_path, rec.hex
        st.base_layers = [dict(d) for d in rec.manifest.get("layers", [])]
        st.base_diff_ids = list((rec.config.get("rootfs") or {}).get("diff_ids") or [])
        if len(st.base_diff_ids) != len(st.base_layers):
            st.base_layers = None       # cannot stack on it: one layer with everything
        st.base_history = len(st.history)
        return st

    # -------------------------------------------------------------- one step
    def _arg_pairs(self, ins: Instruction, look) -> list:
        """ARG NAME[=default] [NAME2[=default]...] -> [(name, default or None)]."""
        out = []
        try:
            words = P.expand_words(ins.args, look, self.escape)
        except ValueError as e:
            raise ins_error(ins, str(e)) from e
        for w in words:
            k, eq, v = w.partition("=")
            if not re.match(r"[A-Za-z_][A-Za-z0-9_]*\Z", k):
                raise ins_error(ins, f"invalid ARG name {k!r}")
            out.append((k, v if eq else None))
        return out

    def _lookup(self, st: State):
        env = dict(_env_pairs(st.config.get("Env") or []))

        def look(name):
            if name in env:
                return env[name]
            if name in st.args:
                return st.args[name]
            return None
        return look

    def _step(self, st: State, ins: Instruction, stage: Stage, names) -> None:
        look = self._lookup(st)
        c = ins.cmd
        if c == "ARG":
            for k, v in self._arg_pairs(ins, look):
                if k in self.opts.build_args:
                    v = self.opts.build_args[k]
                    self.used_args.add(k)
                elif v is None and k in self.global_args:
                    v = self.global_args[k]
                st.args[k] = v
            # ARG values change what later steps see: part of the key
            self._config_step(st, ins, "ARG " + json.dumps(sorted(
                (k, v) for k, v in st.args.items()), default=str))
            return
        if c in FS_STEPS:
            self._fs_step(st, ins, stage, names, look)
            return
        try:
            desc = self._apply_config(st, ins, look)
        except ValueError as e:
            raise ins_error(ins, str(e)) from e
        self._config_step(st, ins, desc)

    def _config_step(self, st: State, ins: Instruction, desc: str) -> None:
        key = sha256_text(st.key, desc)
        st.key = key
        st.history.append({"created_by": f"/bin/sh -c #(nop) {desc}", "empty_layer": True})

    def _apply_config(self, st: State, ins: Instruction, look) -> str:
        c, a, cfg = ins.cmd, ins.args, st.config
        esc = self.escape
        if c == "ENV":
            pairs = P.key_values(a, look, esc, legacy_one_space=True)
            env = dict(_env_pairs(cfg.get("Env") or []))
            for k, v in pairs:
                env[k] = v
            cfg["Env"] = [f"{k}={v}" for k, v in env.items()]
            return "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
        if c == "LABEL":
            pairs = P.key_values(a, look, esc, legacy_one_space=True)
            labels = cfg.get("Labels") or {}
            labels.update(pairs)
            cfg["Labels"] = labels
            return "LABEL " + json.dumps(pairs)
        if c == "MAINTAINER":
            st.meta["author"] = a
            return "MAINTAINER " + a
        if c == "EXPOSE":
            ports = cfg.get("ExposedPorts") or {}
            for w in P.expand_words(a, look, esc):
                port, _, proto = w.partition("/")
                proto = (proto or "tcp").lower()
                lo, _, hi = port.partition("-")
                if not lo.isdigit() or (hi and not hi.isdigit()) or proto not in (
                        "tcp", "udp", "sctp") or not 0 < int(lo) < 65536:
                    raise ValueError(f"invalid port {w!r}: give PORT[/tcp|udp|sctp]")
                ports[f"{port}/{proto}"] = {}
            cfg["ExposedPorts"] = ports
            return "EXPOSE " + " ".join(sorted(ports))
        if c == "VOLUME":
            words = ins.json if ins.json is not None else P.expand_words(a, look, esc)
            if ins.json is not None:
                words = [P.expand_literal(w, look, esc) for w in words]
            vols = cfg.get("Volumes") or {}
            for w in words:
                if not w:
                    raise ValueError("VOLUME names an empty path")
                vols[w] = {}
            cfg["Volumes"] = vols
            return "VOLUME " + json.dumps(words)
        if c == "USER":
            u = P.expand(a, look, esc)
            cfg["User"] = u
            return "USER " + u
        if c == "STOPSIGNAL":
            sig = P.expand(a, look, esc)
            if not _valid_signal(sig):
                raise ValueError(f"invalid signal {sig!r}: give a name (SIGTERM) or a number")
            cfg["StopSignal"] = sig
            return "STOPSIGNAL " + sig
        if c == "SHELL":
            cfg["Shell"] = ins.json
            return "SHELL " + json.dumps(ins.json)
        if c in ("CMD", "ENTRYPOINT"):
            argv = ins.json if ins.json is not None else (cfg.get("Shell") or ["/bin/sh", "-c"]) + [a]
            if c == "CMD":
                cfg["Cmd"] = argv
                st.cmd_set = True
            else:
                cfg["Entrypoint"] = argv
                if not st.cmd_set:
                    cfg["Cmd"] = None   # Docker: a new ENTRYPOINT drops the base's CMD
            return f"{c} " + json.dumps(argv)
        if c == "HEALTHCHECK":
            hc = _healthcheck(ins, cfg.get("Shell"))
            cfg["Healthcheck"] = hc
            return "HEALTHCHECK " + json.dumps(hc, sort_keys=True)
        if c == "ONBUILD":
            trig = a.strip()
            cfg["OnBuild"] = (cfg.get("OnBuild") or []) + [trig]
            return "ONBUILD " + trig
        raise ValueError(f"{c} is not handled")      # pragma: no cover

    # -------------------------------------------------------------- steps with files
    def _fs_step(self, st: State, ins: Instruction, stage: Stage, names, look) -> None:
        c = ins.cmd
        extra = ""
        srcs = None
        try:
            if c == "RUN":
                argv = ins.json if ins.json is not None else \
                    (st.config.get("Shell") or ["/bin/sh", "-c"]) + [ins.args]
                net = ins.flags.get("network") or self.opts.network
                if net not in ("host", "none", "default"):
                    raise ins_error(ins, f"--network={net}: expected host or none")
                desc = "RUN " + json.dumps([argv, sorted(
                    (k, v) for k, v in st.args.items() if v is not None), net])
            elif c == "WORKDIR":
                w = P.expand(ins.args, look, self.escape)
                new = os.path.normpath(os.path.join(st.config.get("WorkingDir") or "/", w))
                desc = "WORKDIR " + new
            else:
                srcs, dest, chown = self._copy_args(st, ins, look)
                src_stage = None
                frm = ins.flags.get("from")
                if frm is not None:
                    frm = P.expand_literal(frm, look, self.escape)
                    if frm.isdigit() and int(frm) < stage.index:
                        src_stage = self.states[int(frm)]
                    elif frm.lower() in names and names[frm.lower()].index < stage.index:
                        src_stage = self.states[names[frm.lower()].index]
                    else:
                        src_stage = self._base_state(self._image(ins, frm, "--from="), ins)
                    files = self._stage_sources(ins, src_stage, srcs)
                else:
                    files = self._context_sources(ins, srcs, c == "ADD")
                extra = json.dumps([[f[0], f[2]] for f in files])
                desc = f"{c} " + json.dumps([dest, chown, ins.flags.get("chmod"),
                                             src_stage.key if src_stage else None])
                srcs = (files, dest, chown, src_stage)
        except ValueError as e:
            raise ins_error(ins, str(e)) from e
        key = sha256_text(st.key, desc, extra)
        hit = None if self.opts.no_cache else self.cache.get_entry(key)
        if hit is not None:
            self.hits += 1
            self.say(" ---> Using cache")
            st.key, st.fs = key, hit["fs"]
            if c == "WORKDIR":
                st.config["WorkingDir"] = desc[8:]
            st.history.append({"created_by": ins.original, "_fs": st.fs})
            if st.tree is not None or st.layers is not None:
                st.stale = True     # brought up to date by the next RUN that misses
            return
        self.misses += 1
        if c == "RUN":
            if self._use_overlay():
                self._ensure_layers(st)
                entries = self._run_layered(st, ins, argv, net)
            else:
                self._ensure_tree(st)
                uid_gid = list(self._run(st, ins, argv, net))
                entries = self.cache.snapshot(st.tree, st.entries, None, uid_gid)
            st.entries = entries
        else:
            try:
                entries = dict(self.cache.get_fs(st.fs))
                if c == "WORKDIR":
                    T.mkdirs(entries, desc[8:])
                    st.config["WorkingDir"] = desc[8:]
                else:
                    self._copy(entries, ins, *srcs)
            except T.TreeError as e:
                raise ins_error(ins, str(e)) from e
            if st.tree is not None or st.layers is not None:
                st.stale = True
        fsid = self.cache.put_fs(entries)
        st.key, st.fs = key, fsid
        st.history.append({"created_by": ins.original, "_fs": fsid})
        self.cache.put_entry(key, {"fs": fsid})

    def _ensure_tree(self, st: State) -> None:
        """The stage's tree on disk, matching st.fs: made once (a copy of the store's
        unpacked base when the stage still is its base, else from objects/), then only
        the differences applied."""
        want = self.cache.get_fs(st.fs)
        if st.tree is not None:
            if st.stale:
                st.entries = self.cache.sync(st.tree, st.entries, want)
                st.stale = False
            return
        d = self.cache.work_dir()
        root = os.path.join(d, "rootfs")
        if st.base_dir and st.fs == st.base_fs and os.path.isdir(st.base_dir):
            subprocess.run(["cp", "-a", "--reflink=auto", st.base_dir, root], check=True)
            meta = os.path.join(root, ".hpcrun")
            if os.path.lexists(meta):
                shutil.rmtree(meta)
            st.entries = self.cache.signatures(root, want)
        else:
            os.mkdir(root, 0o755)
            st.entries = self.cache.materialize(want, root)
        st.tree = root
        st.stale = False

    # -------------------------------------------------------------- RUN on an overlay
    def _use_overlay(self) -> bool:
        """RUN roots are overlays where the cache allows them (Cache.overlay_roots,
        asked once per build); else each stage's tree is a copy."""
        if self.overlay is None:
            self.overlay, why = self.cache.overlay_roots()
            if not self.overlay:
                log.info(f"build: RUN roots are copies ({why})")
        return self.overlay

    def _ensure_layers(self, st: State) -> None:
        """The stage's tree as overlay layers matching st.fs: the store's unpacked base
        (leased: rmi refuses it while the build runs) when the stage grew from one, then a layer
        taking it to st.fs (the .hpcrun directory whited out); later, a layer per
        catch-up (COPY, cache hits) and the upper directory of each RUN. Nothing is
        copied that did not change."""
        want = self.cache.get_fs(st.fs)
        if st.layers is None:
            st.layers_dir = self.cache.work_dir()
            st.layers = []
            st.entries = {}
            hide = ()
            if st.base_dir and st.base_hex and self._lease(st.base_hex) and \
                    os.path.isdir(st.base_dir):
                st.layers.append(st.base_dir)
                st.entries = self.cache.get_fs(st.base_fs)
                if os.path.lexists(os.path.join(st.base_dir, ".hpcrun")):
                    hide = (".hpcrun",)
            self._push_layer(st, want, hide, always=True)
        elif st.stale or len(st.layers) >= MAX_LAYERS:
            self._push_layer(st, want)
        st.stale = False

    def _lease(self, hexd: str) -> bool:
        try:
            self.leases.append(self.store._open_lease(hexd, fcntl.LOCK_SH | fcntl.LOCK_NB))
        except OSError:
            return False                # being deleted: the layers are made from objects
        return True

    def _root_mode(self, st: State) -> int:
        """The merged root shows the upper's own mode: the base's root's (0755 without)."""
        if not st.layers:
            return 0o755
        return stat.S_IMODE(os.lstat(st.layers[-1]).st_mode)

    def _push_layer(self, st: State, want: dict, hide=(), always=False) -> None:
        """A layer taking the stage's layers (st.entries) to want, when they differ."""
        if len(st.layers) >= MAX_LAYERS:
            # a stage of very many steps: one layer with every change since the base
            on_base = st.layers[0] == st.base_dir
            st.layers = st.layers[:1] if on_base else []
            st.entries = self.cache.get_fs(st.base_fs) if on_base else {}
            hide = (".hpcrun",) if on_base and os.path.lexists(
                os.path.join(st.base_dir, ".hpcrun")) else ()
            always = True
        if not always and not hide and T.diff(st.entries, want) == ([], []):
            st.entries = want
            return
        path = os.path.join(st.layers_dir, str(st.layers_made))
        st.layers_made += 1
        self.cache.layer_dir(path, st.entries, want, hide, self._root_mode(st))
        st.layers.append(path)
        st.entries = want

    def _run_layered(self, st: State, ins: Instruction, argv, net) -> dict:
        """RUN in a fresh upper directory over the stage's layers; it becomes the next
        layer, and its entries give the step's manifest (cache.snapshot_upper)."""
        upper = os.path.join(st.layers_dir, str(st.layers_made))
        work = upper + ".work"
        st.layers_made += 1
        mode = self._root_mode(st)
        os.mkdir(upper, 0o700)
        os.chmod(upper, mode)           # not the umask's: the merged root shows this mode
        os.mkdir(work, 0o700)
        try:
            uid_gid = list(self._run(st, ins, argv, net, upper=upper, work=work))
        finally:
            rmtree(work)            # its work/ is mode 000: fstree.rmtree handles that
        entries = self.cache.snapshot_upper(upper, st.entries, uid_gid)
        st.layers.append(upper)
        return entries

    # -------------------------------------------------------------- RUN
    def _run(self, st: State, ins: Instruction, argv, net, upper=None, work=None) -> tuple:
        """Run the step as (fake) root in st.tree, or (upper given) on an overlay of the
        stage's layers with upper as its upper directory."""
        cfg = st.config
        env = dict(_env_pairs(cfg.get("Env") or []))
        for k, v in st.args.items():
            if v is not None and k not in env:
                env[k] = v
        for k in PROXY_ARGS:
            if k in self.opts.build_args and k not in env:
                env[k] = self.opts.build_args[k]
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOME", "/root")
        uid, gid, flags = 0, 0, F_FAKEROOT | F_RW_ROOT | F_SECCOMP_FAKE
        user = cfg.get("User")
        if upper is not None:
            want = st.entries

            def read(rel):
                return self._read_file(want, rel)
        else:
            read = _tree_reader(st.tree)
        if user and user.split(":")[0] not in ("0", "root"):
            ids = _resolve_owner(read, user)
            if ids is None:
                raise ins_error(ins, f"USER {user} is not in the image's /etc/passwd",
                                "create the user in an earlier RUN (useradd), or give a uid")
            uid, gid = ids
            flags &= ~F_FAKEROOT
        if net == "none":
            flags |= F_NET
        mounts = [Mount(src="/proc", dst="/proc", flags=M_PROC),
                  Mount(src="/sys", dst="/sys", flags=M_SYSFS),
                  Mount(src="/dev", dst="/dev", flags=0)]
        for f in ("/etc/resolv.conf", "/etc/hosts"):
            mounts.append(Mount(src=os.path.realpath(f), dst=f,
                                flags=M_FILE | M_RDONLY | M_OPTIONAL))
        # apt drops to its _apt user for downloads and then checks that the switch
        # happened, which the filter only pretends: keep apt as (fake) root, through a
        # config file bound for this step only, so the image is not changed.
        apt_made = False
        if upper is not None:
            # the merged tree is st.entries; the mount point would be made in upper
            rel = T.resolve(st.entries, APT_CONF.lstrip("/"), follow_last=False)
            apt_conf = os.path.join(upper, rel)
            have_dir = T.is_dir(st.entries, os.path.dirname(rel))
            have_file = rel in st.entries
        else:
            apt_conf = os.path.join(st.tree, APT_CONF.lstrip("/"))
            have_dir = os.path.isdir(os.path.dirname(apt_conf))
            have_file = os.path.lexists(apt_conf)
        if have_dir and not have_file:
            mounts.append(Mount(src='APT::Sandbox::User "root";\n', dst=APT_CONF,
                                flags=M_CONTENT))
            apt_made = True
        spec = Spec(image=upper or st.tree, flags=flags, uid=uid, gid=gid, mounts=tuple(mounts),
                    workdir=cfg.get("WorkingDir") or "/", workdir_required=True,
                    argv=tuple(argv), env=tuple(f"{k}={v}" for k, v in env.items()),
                    overlay_lower=tuple(reversed(st.layers)) if upper is not None else (),
                    overlay_work=work)
        try:
            status, last = run_in(spec, None if self.opts.quiet else self.opts.out)
        finally:
            if apt_made and os.path.isfile(apt_conf) and os.path.getsize(apt_conf) == 0:
                os.unlink(apt_conf)     # the mount point the C core made
        if status != 0:
            what = f"exit status {status}" if status < 128 or status == 255 else \
                f"killed by signal {status - 128}" if status < 160 else f"exit status {status}"
            tail = "\n".join("  " + ln for ln in last[-5:])
            raise ins_error(ins, f"the command failed ({what})",
                            "last lines of its output:\n" + tail if last else
                            "it printed nothing; run it in 'hpcrun run' to look closer")
        return uid, gid

    # -------------------------------------------------------------- COPY and ADD
    def _copy_args(self, st: State, ins: Instruction, look):
        if ins.json is not None:
            words = [P.expand_literal(w, look, self.escape) for w in ins.json]
        else:
            words = P.expand_words(ins.args, look, self.escape)
        if len(words) < 2:
            raise ValueError("needs a source and a destination")
        srcs, dest = words[:-1], words[-1]
        if not dest.startswith("/"):
            base = st.config.get("WorkingDir") or "/"
            dest = os.path.join(base, dest) + ("/" if dest.endswith("/") or dest == "." else "")
        chown = ins.flags.get("chown")
        if chown is not None:
            chown = P.expand(chown, look, self.escape)
        return srcs, dest, chown

    def _read_ignore(self):
        p = os.path.join(self.context, ".dockerignore")
        try:
            with open(p, encoding="utf-8") as f:
                return P.Ignore(P.dockerignore(f.read()))
        except FileNotFoundError:
            return P.Ignore([])

    def _context_sources(self, ins, srcs, is_add) -> list:
        """[(rel path in the context, kind, content digest or link target, host path)]
        for each source file (directories walked), honouring .dockerignore."""
        out = []
        for src in srcs:
            if is_add and re.match(r"https?://", src):
                out.append((src, "url", src, src))
                continue
            norm = os.path.normpath(src.lstrip("/")) if src not in ("/", "") else "."
            if norm == ".." or norm.startswith("../"):
                raise ins_error(ins, f"source {src} lies outside the build context",
                                "COPY reads only files inside the context directory")
            if any(ch in norm for ch in "*?["):
                matches = self._glob(norm)
                if not matches:
                    raise ins_error(ins, f"no file in the context matches {src}",
                                    "check the pattern and .dockerignore")
            else:
                matches = [norm]
            for rel in matches:
                host = os.path.join(self.context, rel) if rel != "." else self.context
                real = os.path.realpath(host)
                if real != self.context and not real.startswith(self.context + "/"):
                    raise ins_error(ins, f"source {src} lies outside the build context "
                                         f"(it resolves to {real})",
                                    "COPY reads only files inside the context directory; "
                                    "copy the file into it")
                if not os.path.lexists(host) or (rel != "." and self.ignore.excluded(rel)):
                    raise ins_error(ins, f"source {src} not found in the build context "
                                         f"{self.opts.context}"
                                         + (" (excluded by .dockerignore)"
                                            if os.path.lexists(host) else ""),
                                    "check the path: sources are relative to the context")
                if os.path.isdir(real):
                    out.append((rel, "dir", "", real))
                    for dirpath, dirnames, filenames in os.walk(real):
                        dirnames.sort()
                        for n in sorted(dirnames + filenames):
                            full = os.path.join(dirpath, n)
                            crel = os.path.relpath(full, self.context)
                            if self.ignore.excluded(crel):
                                if n in dirnames and not self.ignore.may_contain_included(crel):
                                    dirnames.remove(n)
                                continue
                            sub = os.path.relpath(full, real)
                            out.append((rel + "//" + sub, *_kind(full)))
                else:
                    out.append((rel, *_kind(real, follow=True)))
        return out

    def _glob(self, pattern: str) -> list:
        """Context paths matching a source pattern (Go filepath.Match per segment)."""
        parts = pattern.split("/")
        out = []
        for dirpath, dirnames, filenames in os.walk(self.context):
            rel_dir = os.path.relpath(dirpath, self.context)
            pre = [] if rel_dir == "." else rel_dir.split("/")
            if len(pre) >= len(parts) or not all(
                    fnmatch.fnmatchcase(a, b) for a, b in zip(pre, parts)):
                dirnames[:] = []
                continue
            for n in dirnames + filenames:
                rel = "/".join(pre + [n])
                if len(pre) == len(parts) - 1 and fnmatch.fnmatchcase(n, parts[-1]) and \
                        not self.ignore.excluded(rel):
                    out.append(rel)
        return sorted(out)

    def _stage_sources(self, ins, src_stage: State, srcs) -> list:
        entries = self.cache.get_fs(src_stage.fs)
        out = []
        for src in srcs:
            norm = os.path.normpath(src).lstrip("/")
            norm = "" if norm == "." else norm
            if any(ch in norm for ch in "*?["):
                matches = sorted(r for r in entries if fnmatch.fnmatchcase(r, norm))
            else:
                matches = [norm] if norm in entries or norm == "" else []
            if not matches:
                raise ins_error(ins, f"source {src} not found in the stage or image",
                                "check the path inside the --from stage")
            for rel in matches:
                e = entries.get(rel, ["d"])
                if e[0] == "d":
                    out.append((rel or ".", "dir", "", ("stage", rel)))
                    pre = rel + "/" if rel else ""
                    for r in sorted(entries):
                        if r.startswith(pre) and r != rel:
                            x = entries[r]
                            out.append((rel + "//" + r[len(pre):], _ekind(x), _edata(x),
                                        ("entry", x)))
                else:
                    out.append((rel, _ekind(e), _edata(e), ("entry", e)))
        return out

    def _copy(self, entries: dict, ins, files, dest, chown, src_stage) -> None:
        """Apply a COPY/ADD to a manifest: contents go to objects/, entries change."""
        is_add = ins.cmd == "ADD"
        owner = [0, 0]
        if chown:
            ids = _resolve_owner(lambda rel: self._read_file(entries, rel), chown)
            if ids is None:
                raise ins_error(ins, f"--chown={chown}: no such user or group in the image",
                                "give numeric ids (--chown=1000:1000) or create the user first")
            owner = list(ids)
        chmod = None
        if ins.flags.get("chmod"):
            try:
                chmod = int(ins.flags["chmod"], 8)
            except ValueError:
                raise ins_error(ins, f"--chmod={ins.flags['chmod']}: give an octal mode")
        tops = [f for f in files if "//" not in f[0]]
        dest_rel = T.resolve(entries, dest)
        dest_is_dir = dest.endswith("/") or len(tops) > 1 or T.is_dir(entries, dest_rel)
        tmps = []
        try:
            items = []
            for rel, kind, data, src in files:
                top, _, sub = rel.partition("//") if kind != "url" else (rel, "", "")
                if is_add and kind == "url":
                    d = self.cache.work_dir()
                    tmps.append(d)
                    name = os.path.basename(data.rstrip("/").split("?")[0]) or "index.html"
                    path = os.path.join(d, name)
                    _download(data, path)
                    items.append((name, None, "file", f"{sha256_file(path)}:600", path))
                elif is_add and kind == "file" and not sub and _is_archive(src):
                    d = self.cache.work_dir()
                    tmps.append(d)
                    _extract(src, d, ins)
                    dest_is_dir = True
                    items.append((top, "", "dir", "", d))
                    for dirpath, dirnames, filenames in os.walk(d):
                        for n in sorted(dirnames + filenames):
                            full = os.path.join(dirpath, n)
                            items.append((top, os.path.relpath(full, d), *_kind(full)))
                else:
                    items.append((top, sub if "//" in rel else None, kind, data, src))
            for top, sub, kind, data, src in items:
                if sub is None:
                    if kind == "dir":
                        T.mkdirs(entries, dest_rel, owner)
                        continue
                    target = (f"{dest_rel}/{os.path.basename(top)}" if dest_rel else
                              os.path.basename(top)) if dest_is_dir else dest_rel
                elif sub == "":
                    T.mkdirs(entries, dest_rel, owner)
                    continue
                else:
                    base = T.mkdirs(entries, dest_rel, owner)
                    target = T.resolve(entries, f"{base}/{sub}" if base else sub,
                                       follow_last=False)
                if not target:
                    raise T.TreeError(f"cannot copy {top} onto the root itself")
                if kind == "dir":
                    mode = src[1][1] if isinstance(src, tuple) else \
                        stat.S_IMODE(os.stat(src).st_mode)
                    e = ["d", chmod if chmod is not None else mode, 0, owner, None, 0]
                elif kind == "link":
                    e = ["l", 0o777, 0, owner, data, 0]
                elif kind == "file":
                    digest, _, mode_s = data.partition(":")
                    if isinstance(src, tuple):
                        size = src[1][2]
                    else:
                        size = os.path.getsize(src)
                        self.cache.put_object(src, digest)
                    e = ["f", chmod if chmod is not None else int(mode_s, 8), size, owner,
                         digest, 0]
                else:
                    continue
                T.put(entries, target, e, owner)
        finally:
            for d in tmps:
                shutil.rmtree(d, ignore_errors=True)

    def _read_file(self, entries: dict, rel: str) -> str | None:
        r = T.resolve(entries, rel)
        e = entries.get(r)
        if e is None or e[0] != "f":
            return None
        with open(self.cache.object_path(e[4]), encoding="utf-8", errors="replace") as f:
            return f.read()

    # -------------------------------------------------------------- commit
    def _layer(self, prev_fs, fsid) -> dict:
        """The layer taking manifest prev_fs (None: nothing) to fsid, as a store blob
        (made once: remembered in the cache by the two manifest ids)."""
        key = sha256_text(CACHE_VERSION, "layer", prev_fs or "", fsid)
        doc = self.cache.get_entry(key)
        if doc is not None and self.store.has_blob(doc["digest"]):
            return doc
        new = self.cache.get_fs(fsid)
        write, gone = T.diff(self.cache.get_fs(prev_fs) if prev_fs else {}, new)
        tmp = self.cache.tmp_path("layer")
        try:
            with open(tmp, "wb") as f:
                self.cache.write_tar(new, f, write, gone)
            with open(tmp, "rb") as f:
                digest, size = self.store.put_blob_file(f)
        finally:
            os.unlink(tmp)
        doc = {"mediaType": archive.layer_media("tar", False), "size": size, "digest": digest}
        self.cache.put_entry(key, doc)
        return doc

    def _commit(self, st: State, stage: Stage):
        """Record the image: the base image's layers (blobs already in the store), then
        one layer per step that changed files (whiteouts for what it removed)."""
        final_key = sha256_text(st.key, "image", json.dumps(st.config, sort_keys=True),
                                json.dumps(st.meta, sort_keys=True))
        doc = None if self.opts.no_cache else self.cache.get_entry(final_key)
        if doc is not None and not all(self.store.has_blob(d["digest"])
                                       for d in doc.get("layers") or [{"digest": "-"}]):
            doc = None
        if doc is None:
            base_layers = list(st.base_layers or [])
            base_diff_ids = list(st.base_diff_ids or [])
            if base_layers and not all(self.store.has_blob(d["digest"]) for d in base_layers):
                base_layers, base_diff_ids = [], []     # one layer with everything, then
            prev = st.base_fs if base_layers else None
            layers, diff_ids = list(base_layers), list(base_diff_ids)
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
            ours = []
            # one layer per step that changed files (Docker's shape: siblings share the
            # layers of their common steps, history shows each step's size)
            for h in st.history[st.base_history:]:
                h = dict(h, created=h.get("created", now))
                fsid = h.pop("_fs", None)
                if fsid is None or fsid == prev:
                    h["empty_layer"] = True
                else:
                    desc = self._layer(prev, fsid)
                    layers.append(desc)
                    diff_ids.append(desc["digest"])
                    h.pop("empty_layer", None)
                    prev = fsid
                ours.append(h)
            if not layers:              # FROM scratch and nothing copied: an empty layer
                layers.append(self._layer(None, st.fs))
                diff_ids.append(layers[-1]["digest"])
                if ours:
                    ours[-1].pop("empty_layer", None)
            os_, arch = archive.host_platform()
            cfg = {k: v for k, v in st.config.items() if v is not None}
            base_hist = [{k: v for k, v in h.items() if k != "_fs"}
                         for h in st.history[:st.base_history]]
            image = {"architecture": arch, "os": os_, "created": now, "config": cfg,
                     "rootfs": {"type": "layers", "diff_ids": diff_ids},
                     "history": base_hist + ours, **st.meta}
            doc = {"layers": layers, "config": json.dumps(image, sort_keys=True)}
            self.cache.put_entry(final_key, doc)
        cfg_bytes = doc["config"].encode()
        manifest = archive.make_manifest(cfg_bytes, doc["layers"])
        return self.store.commit_image(manifest, cfg_bytes, tags=self.opts.tags,
                                       fmt=self.opts.fmt, source="build")


# ------------------------------------------------------------------------------ helpers


def run_in(spec: Spec, out) -> tuple[int, list]:
    """Fork; the child enters the container of spec and execs (the C core). Streams
    its output to out (unless None) and returns (status, last lines)."""
    from hpcrun import _core            # in the parent: the child only calls it
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            nul = os.open("/dev/null", os.O_RDONLY)
            os.dup2(nul, 0)
            os.dup2(w, 1)
            os.dup2(w, 2)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                _core.enter(spec)
            except ContainerError as e:
                os.write(2, f"hpcrun: error: {e.what}\n".encode())
                os._exit(e.code)
        except BaseException as e:     # never back into the builder's code from the child
            try:
                os.write(2, f"hpcrun: error: cannot start the RUN step: {e!r}\n".encode())
            except BaseException:
                pass
        os._exit(125)
    os.close(w)
    last: list = []
    buf = b""
    # a terminal gets the output as it comes; a log (batch job) whole lines, each the
    # last state of a line that redraws itself with \r (apt's, dpkg's progress)
    tty = out is not None and hasattr(out, "isatty") and out.isatty()
    pending = b""
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            chunk = f.read(65536)
            if not chunk:
                break
            if out is not None and tty:
                out.write(chunk.decode("utf-8", "replace"))
                out.flush()
            elif out is not None:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if lines:
                    out.write("".join(_last_state(ln) + "\n" for ln in lines))
                    out.flush()
            buf = (buf + chunk)[-16384:]
    if out is not None and pending:
        out.write(_last_state(pending) + "\n")
        out.flush()
    last = buf.decode("utf-8", "replace").splitlines()[-20:]
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st):
        return 128 + os.WTERMSIG(st), last
    return os.WEXITSTATUS(st), last


def _last_state(line: bytes) -> str:
    """What a line that redraws itself with \\r shows last."""
    return line.rstrip(b"\r").rsplit(b"\r", 1)[-1].decode("utf-8", "replace")


def _env_pairs(env):
    for e in env:
        k, _, v = e.partition("=")
        yield k, v


def _valid_signal(sig: str) -> bool:
    s = sig.upper()
    if s.isdigit():
        return 0 < int(s) < 65
    s = s if s.startswith("SIG") else "SIG" + s
    if re.match(r"SIGRTM(IN|AX)([+-]\d+)?\Z", s):
        return True
    return hasattr(signal, s) and isinstance(getattr(signal, s), signal.Signals)


def _duration(v: str, ins) -> int:
    m = re.fullmatch(r"((\d+(\.\d+)?)(h|m|s|ms|us|ns))+", v)
    if not m:
        raise ins_error(ins, f"invalid duration {v!r}", "write e.g. 30s, 1m30s, 500ms")
    total = 0.0
    for num, _, unit in re.findall(r"(\d+(\.\d+)?)(h|ms|us|ns|m|s)", v):
        total += float(num) * {"h": 3600e9, "m": 60e9, "s": 1e9, "ms": 1e6, "us": 1e3,
                               "ns": 1}[unit]
    return int(total)


def _healthcheck(ins, shell) -> dict:
    a = ins.args.strip()
    if a.upper() == "NONE":
        return {"Test": ["NONE"]}
    rest = a.split(None, 1)[1]
    hc: dict = {}
    js = None
    if rest.startswith("["):
        try:
            js = json.loads(rest)
        except ValueError:
            js = None
    hc["Test"] = ["CMD"] + js if isinstance(js, list) else ["CMD-SHELL", rest]
    for k, field in (("interval", "Interval"), ("timeout", "Timeout"),
                     ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        if k in ins.flags:
            hc[field] = _duration(ins.flags[k], ins)
    if "retries" in ins.flags:
        if not ins.flags["retries"].isdigit():
            raise ins_error(ins, f"--retries={ins.flags['retries']}: give a number")
        hc["Retries"] = int(ins.flags["retries"])
    return hc


def _kind(path: str, follow: bool = False) -> tuple:
    st = os.stat(path) if follow else os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path), path)
    if stat.S_ISDIR(st.st_mode):
        return ("dir", "", path)
    if stat.S_ISREG(st.st_mode):
        return ("file", f"{sha256_file(path)}:{stat.S_IMODE(st.st_mode):o}", path)
    return ("other", "", path)


def _ekind(e) -> str:
    return {"d": "dir", "l": "link", "f": "file"}.get(e[0], "other")


def _edata(e) -> str:
    if e[0] == "f":
        return f"{e[4]}:{e[1]:o}"
    if e[0] == "l":
        return e[4]
    return ""


def _resolve_owner(read, spec: str):
    """USER/--chown NAME[:GROUP] -> (uid, gid), names looked up in the image's
    /etc/passwd and /etc/group through read(relpath) -> text or None."""
    user, _, group = spec.partition(":")

    def lookup(fname, name):
        if name.isdigit():
            return int(name), None
        text = read(f"etc/{fname}") or ""
        for line in text.splitlines():
            p = line.split(":")
            if len(p) > 3 and p[0] == name and p[2].isdigit():
                return int(p[2]), (int(p[3]) if fname == "passwd" and p[3].isdigit() else None)
        return None, None
    uid, pgid = lookup("passwd", user)
    if uid is None:
        return None
    if group:
        gid, _ = lookup("group", group)
        if gid is None:
            return None
    else:
        gid = pgid if pgid is not None else uid
    return uid, gid


def _tree_reader(tree: str):
    def read(rel):
        try:
            with open(os.path.join(tree, rel), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return None
    return read


def _is_archive(src) -> bool:
    if isinstance(src, tuple):
        return False
    try:
        return tarfile.is_tarfile(src)
    except OSError:
        return False


def _extract(src: str, out: str, ins) -> None:
    """ADD of a local tar (plain, gzip, bzip2, xz): extracted, never outside `out`;
    device nodes skipped, owners not applied (recorded as root, as Docker does)."""
    base = os.path.realpath(out)
    try:
        with tarfile.open(src, "r:*") as tf:
            for m in tf:
                name = os.path.normpath(m.name.lstrip("/"))
                if name.startswith("..") or name == ".":
                    continue
                target = os.path.join(base, name)
                if m.isdev():
                    continue
                parent = os.path.dirname(target)
                if not os.path.realpath(parent).startswith(base):
                    continue
                os.makedirs(parent, exist_ok=True)
                if os.path.lexists(target) and not (m.isdir() and os.path.isdir(target)):
                    if os.path.isdir(target) and not os.path.islink(target):
                        shutil.rmtree(target)
                    else:
                        os.unlink(target)
                if m.isdir():
                    os.makedirs(target, exist_ok=True)
                    os.chmod(target, (m.mode & 0o7777) | 0o700)
                elif m.issym():
                    os.symlink(m.linkname, target)
                elif m.islnk():
                    link = os.path.join(base, os.path.normpath(m.linkname.lstrip("/")))
                    if os.path.realpath(link).startswith(base + "/"):
                        os.link(link, target)
                elif m.isfifo():
                    os.mkfifo(target, m.mode & 0o777)
                elif m.isfile():
                    with tf.extractfile(m) as fsrc, open(target, "wb") as fdst:
                        shutil.copyfileobj(fsrc, fdst)
                    os.chmod(target, m.mode & 0o7777)
    except (tarfile.TarError, OSError) as e:
        raise ins_error(ins, f"cannot extract {os.path.basename(src)}: {e}") from e


def _download(url: str, target: str) -> None:
    import urllib.request  # lazy: only ADD of a URL needs it (30 ms of every build's start)
    tmp = target + ".part"
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)
