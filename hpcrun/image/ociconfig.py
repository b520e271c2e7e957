"""Validation of OCI image configs: the one check every config passes on its way in.

Called where a config enters hpcrun: `pull`, `load` (docker and OCI archives), `import`
(after --change), and at `run`/`task` for a directory image's `.hpcrun/config.json`, a
squashfs file's, and a store image's record. A config that breaks a rule is refused
with an ImageError naming the file and the field (`run` exits 125), never half-used.

The rules (the OCI image-spec's types, config.md, plus what keeps hpcrun safe):
  - the document is a JSON object of at most MAX_BYTES, nested at most MAX_DEPTH deep
    (deeper JSON is refused cleanly, not with a RecursionError), with no NUL character
    in any string or key (the C core passes strings as C strings: a NUL would truncate);
  - created, author, architecture, os, variant, os.version: strings; rootfs an object
    with a string type and a list of string diff_ids; history a list of objects;
  - config (or null): Env a list of strings; Entrypoint and Cmd a list of strings or, as
    Docker's image config allows (its strslice type), one string, which means the
    one-element list [string] (exec form, not shell form: that is what Docker runs);
    User, WorkingDir, StopSignal strings; StopSignal a signal name or number that
    exists (SIGTERM, TERM, 15, SIGRTMIN+3); Labels an object of strings; ExposedPorts
    and Volumes objects. null is "unset" for each of them, as in Docker's configs.
  - Fields not listed are kept and not interpreted (the spec says to ignore them).
"""
from __future__ import annotations

from hpcrun.errors import ImageError

# No typing import: this module is on `hpcrun run`'s path, where it costs milliseconds.

MAX_DEPTH = 64
MAX_BYTES = 8 << 20
_HINT = "the image config is malformed or hostile; re-pull, re-convert or rebuild the image"

# Linux signal numbers (asm-generic, as x86 and arm64 have them); glibc's SIGRTMIN..SIGRTMAX.
SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7,
           "FPE": 8, "KILL": 9, "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14,
           "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20,
           "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27,
           "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31}
RTMIN, RTMAX = 34, 64


def parse_signal(value: str) -> int:
    """A STOPSIGNAL value (SIGTERM, term, 15, SIGRTMIN+3, RTMAX-1) as a number; ValueError
    with the reason if no such signal exists."""
    v = value.strip().upper()
    if v.isdigit():
        n = int(v)
        if 1 <= n <= RTMAX:
            return n
        raise ValueError(f"no signal number {v} (1 to {RTMAX})")
    name = v[3:] if v.startswith("SIG") else v
    for base, num in (("RTMIN", RTMIN), ("RTMAX", RTMAX)):
        if name.startswith(base):
            off = name[len(base):]
            sign = -1 if off.startswith("-") else 1
            digits = off[1:] if off[:1] in "+-" and off else off
            if (off == "" or digits.isdigit()) and RTMIN <= num + sign * int(digits or 0) <= RTMAX:
                return num + sign * int(digits or 0)
            raise ValueError(f"no signal {value!r} (SIGRTMIN+0 to SIGRTMIN+{RTMAX - RTMIN})")
    if name in SIGNALS:
        return SIGNALS[name]
    raise ValueError(f"no signal {value!r} (e.g. SIGTERM, SIGINT, 9, SIGRTMIN+3)")


def loads(data: bytes, what: str) -> dict:
    """The config document in DATA (bytes of a file called WHAT), validated and with
    Entrypoint/Cmd strings made lists; ImageError if it breaks a rule (module doc)."""
    if len(data) > MAX_BYTES:
        raise ImageError(f"invalid image config {what}: larger than {MAX_BYTES >> 20} MiB",
                         _HINT)
    import json     # here, not at the top: `hpcrun run` of a config-less image skips it
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ImageError(f"invalid image config {what}: nested deeper than {MAX_DEPTH} "
                         "levels", _HINT) from None
    except ValueError as e:
        raise ImageError(f"invalid image config {what}: not JSON ({e})", _HINT) from None
    return validate(doc, what)


def read(path: str) -> dict:
    """loads() of the file PATH, read with a bound (a config is small; /dev/zero is not)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise ImageError(f"can't read the image config {path}: {e.strerror}",
                         "the image must be readable by you") from None
    return loads(data, path)


def inner(doc: object) -> dict:
    """The object holding Env/Cmd/... of a validated document: its "config", or the
    document itself when it is a bare config (what older hpcrun versions wrote)."""
    if not isinstance(doc, dict):
        return {}
    c = doc.get("config")
    if isinstance(c, dict):
        return c
    return doc if ("Env" in doc or "Cmd" in doc or "Entrypoint" in doc) else {}


def validate(doc: object, what: str) -> dict:
    """DOC (parsed JSON) checked against the rules; Entrypoint/Cmd strings become lists."""
    if not isinstance(doc, dict):
        _bad(what, "", f"must be a JSON object, not {_kind(doc)}")
    _walk(doc, what)
    for k in ("created", "author", "architecture", "os", "variant", "os.version"):
        _opt(doc, k, str, what, "")
    rootfs = _opt(doc, "rootfs", dict, what, "")
    if rootfs is not None:
        _opt(rootfs, "type", str, what, "rootfs.")
        _strings(rootfs, "diff_ids", what, "rootfs.")
    history = _opt(doc, "history", list, what, "")
    for i, h in enumerate(history or ()):
        if not isinstance(h, dict):
            _bad(what, f"history[{i}]", f"must be an object, not {_kind(h)}")
    bare = "config" not in doc and ("Env" in doc or "Cmd" in doc or "Entrypoint" in doc)
    conf = doc if bare else _opt(doc, "config", dict, what, "")
    if conf is not None:
        _config(conf, what, "" if bare else "config.")
    return doc


def _config(c: dict, what: str, pre: str) -> None:
    _strings(c, "Env", what, pre)
    for k in ("Entrypoint", "Cmd"):
        v = c.get(k)
        if isinstance(v, str):
            c[k] = [v]          # Docker's strslice: one string is a one-element list
        else:
            _strings(c, k, what, pre)
    for k in ("User", "WorkingDir", "StopSignal"):
        _opt(c, k, str, what, pre)
    if c.get("StopSignal"):
        try:
            parse_signal(c["StopSignal"])
        except ValueError as e:
            _bad(what, pre + "StopSignal", str(e))
    labels = _opt(c, "Labels", dict, what, pre)
    for k, v in (labels or {}).items():
        if not isinstance(v, str):
            _bad(what, f"{pre}Labels[{k!r}]", f"must be a string, not {_kind(v)}")
    for k in ("ExposedPorts", "Volumes"):
        _opt(c, k, dict, what, pre)


def _walk(doc: object, what: str) -> None:
    """Depth and NUL checks over the whole document, without recursion."""
    stack = [(doc, 1, "")]
    while stack:
        v, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            _bad(what, path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(v, dict):
            for k, x in v.items():
                if "\0" in k:
                    _bad(what, path or "(top)", "a key holds a NUL character")
                stack.append((x, depth + 1, f"{path}.{k}" if path else k))
        elif isinstance(v, list):
            stack.extend((x, depth + 1, f"{path}[{i}]") for i, x in enumerate(v))
        elif isinstance(v, str) and "\0" in v:
            _bad(what, path, "holds a NUL character")


def _opt(d: dict, key: str, typ: type, what: str, pre: str) -> object:
    v = d.get(key)
    if v is not None and not isinstance(v, typ):
        _bad(what, pre + key, f"must be {_kind(typ())}, not {_kind(v)}")
    return v


def _strings(d: dict, key: str, what: str, pre: str) -> None:
    v = _opt(d, key, list, what, pre)
    for i, x in enumerate(v or ()):
        if not isinstance(x, str):
            _bad(what, f"{pre}{key}[{i}]", f"must be a string, not {_kind(x)}")


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "a number",
            float: "a number"}.get(type(v), type(v).__name__)


def _bad(what: str, field: str, problem: str):
    where = f" field {field}" if field else ""
    raise ImageError(f"invalid image config {what}:{where} {problem}", _HINT)
