"""What a container is, as immutable values; no I/O here.

Frozen value classes written by hand: `import dataclasses` costs ~10 ms, and this module
is on the per-task hot path (`hpcrun run` targets 12 ms in all).
Flag values mirror cext/core.h (see also there).
"""
from __future__ import annotations

from hpcrun.runtime import options as _options

# hpcrun_spec.flags (cext/core.h HPCRUN_F_*)
F_FAKEROOT = 0x01
F_WRITABLE = 0x02
F_PID = 0x04
F_IPC = 0x08
F_NET = 0x10
F_UTS = 0x20
F_SQUASH = 0x40
F_MONITOR = 0x80
F_NO_OVERLAY = 0x100
F_RW_ROOT = 0x4000        # hpcrun build: the root directory read-write, no overlay
F_SECCOMP_FAKE = 0x8000   # hpcrun build: fake-root seccomp filter (cext/seccomp.c)

# hpcrun_mount.flags (cext/core.h HPCRUN_M_*)
M_RDONLY = 0x01
M_TMPFS = 0x02
M_OPTIONAL = 0x04
M_FILE = 0x08
M_PROC = 0x10
M_CONTENT = 0x20
M_USERFILE = 0x40
M_SYSFS = 0x80
M_NOSKEL = 0x100
M_SYMLINK = 0x400      # not a mount: a symlink dst -> src in the skeleton layer
M_CLOSED = 0x800       # with M_TMPFS: mode 0755 (the container's own /dev), not 1777


class _Frozen:
    __slots__ = ()
    _defaults: dict = {}

    def __init__(self, **kw):
        for name in self.__slots__:
            if name in kw:
                v = kw.pop(name)
            elif name in self._defaults:
                v = self._defaults[name]
            else:
                raise TypeError(f"{type(self).__name__}: missing {name}")
            object.__setattr__(self, name, v)
        if kw:
            raise TypeError(f"{type(self).__name__}: unknown {', '.join(kw)}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _astuple(self):
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other):
        return type(other) is type(self) and other._astuple() == self._astuple()

    def __hash__(self):
        return hash(self._astuple())

    def __repr__(self):
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({args})"

    def replace(self, **kw):
        d = {n: getattr(self, n) for n in self.__slots__}
        d.update(kw)
        return type(self)(**d)


class Mount(_Frozen):
    """One mount: src is a host path (or file content with M_CONTENT), dst a path inside."""

    __slots__ = ("src", "dst", "flags")
    _defaults = {"src": None, "flags": 0}


class Spec(_Frozen):
    """Everything the C core needs to enter a container and exec its command."""

    __slots__ = ("image", "squashfuse", "flags", "hostname", "uid", "gid", "mounts",
                 "workdir", "workdir_required", "argv", "env", "stop_signal", "preserve_fds",
                 "limits", "extra_env", "reads", "net_pid", "net_start", "overlay_lower",
                 "overlay_work")
    # extra_env: NAME=VALUE after the image's ENV (devices: runtime/gpu.py); reads: the
    # files planning read beyond the usual ones (CDI specs: the plan cache checks them).
    # net_pid, net_start: --network container:N, the instance's supervisor and its start
    # time (cext/core.h hpcrun_spec; 0: none).
    # overlay_lower, overlay_work: with F_RW_ROOT, a build's RUN root as an overlay of
    # these read-only layers (topmost first) with image as its upper (cext/core.h).
    _defaults = {"squashfuse": None, "flags": 0, "hostname": None, "mounts": (),
                 "workdir": "/", "workdir_required": False, "stop_signal": 0,
                 "preserve_fds": 0, "limits": None, "extra_env": (), "reads": (),
                 "net_pid": 0, "net_start": 0, "overlay_lower": (), "overlay_work": None}


class RunOptions(_Frozen):
    """The container options as parsed: IMAGE, the command, and one attribute per
    entry of the option table (hpcrun/runtime/options.py), with its defaults."""

    __slots__ = ("image", "command") + tuple(o.attr for o in _options.TABLE)
    _defaults = {"command": (), **_options.defaults()}
