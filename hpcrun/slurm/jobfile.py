"""The YAML job file: load with line numbers, validate against the published schema,
resolve steps into frozen specs.

The JSON Schema in ``hpcrun/data/jobfile.schema.json`` is the one definition of the
format: editors use it, ``hpcrun schema`` prints it, and `validate` below walks it (the
subset of draft-07 it uses) so the two cannot drift apart. What a schema cannot say
(a step's dependencies exist and form no cycle, every step ends up with an image and a
command) is checked after it, with the same ``FILE:LINE: FIELD.PATH: what`` messages.

Loading only parses; nothing here touches Slurm, the store or the network.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple
from yaml.constructor import SafeConstructor
import difflib
import shlex
import yaml

from ..errors import JobFileError, NotFound, UsageError
from ..runtime import options

Path = Tuple[Any, ...]   # ("steps", "train", "mounts", 1)

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data",
                           "jobfile.schema.json")

# Spellings people bring from docker-compose or sbatch, and where the key lives here.
_ALIASES = {
    "volumes": "mounts", "environment": "env", "working_dir": "workdir",
    "workingdir": "workdir", "chdir": "workdir", "job_name": "name", "job-name": "name",
    "depends": "depends_on", "dependency": "depends_on", "dependencies": "depends_on",
    "memory": "mem", "time_limit": "time", "walltime": "time", "gres": "gpus",
    "stdout": "output", "stderr": "error", "cmd": "command", "args": "command",
    "entrypoint": "command", "tasks": "ntasks", "cpus": "cpus_per_task",
    "container_image": "image", "container-image": "image",
}
_RESOURCE_KEYS = ("nodes", "ntasks", "ntasks_per_node", "cpus_per_task", "mem", "time",
                  "partition", "account", "qos", "gpus")


def schema() -> dict:
    """The job file schema: the data file plus the `container:` mapping, which is
    generated from the option table (hpcrun/runtime/options.py), at the top level and
    in every step."""
    with open(SCHEMA_FILE) as f:
        s = json.load(f)
    s.setdefault("definitions", {})["container"] = options.job_schema()
    ref = {"$ref": "#/definitions/container"}
    s["properties"]["container"] = ref
    s["definitions"]["step"]["properties"]["container"] = ref
    return s


def schema_text() -> str:
    return json.dumps(schema(), indent=2) + "\n"


# ---------------------------------------------------------------------------
# Specs (no I/O)

@dataclass(frozen=True)
class Resources:
    nodes: Optional[int] = None
    ntasks: Optional[int] = None
    ntasks_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None          # sbatch spelling: "4096" (MB) or "4G"
    time: Optional[str] = None         # sbatch spelling: "10", "1:00:00", ...
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    gpus: Optional[str] = None


@dataclass(frozen=True)
class Step:
    """One Slurm job to submit: a fully resolved step (top-level defaults applied)."""
    name: str                          # step name ("" for a file without steps)
    job_name: str                      # Slurm --job-name
    image: str
    command: Tuple[str, ...]
    resources: Resources
    env: Tuple[Tuple[str, str], ...] = ()
    mounts: Tuple[str, ...] = ()
    workdir: Optional[str] = None
    scratch: bool = False
    options: Tuple[str, ...] = ()      # `container:` as hpcrun run option words
    mpi: Optional[str] = None
    array: Optional[str] = None
    output: Optional[str] = None
    error: Optional[str] = None
    depends_on: Tuple[str, ...] = ()
    line: int = 1                      # where the step is defined, for messages
    image_line: int = 1                # where its image is named
    resource_lines: Tuple[Tuple[str, int], ...] = ()   # resource key -> line


@dataclass(frozen=True)
class JobFile:
    path: str
    name: str
    steps: Tuple[Step, ...]            # in submission order (dependencies first)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise NotFound(f"{self.path}: no step {name!r}",
                       "steps: " + ", ".join(s.name for s in self.steps))


# ---------------------------------------------------------------------------
# YAML with line numbers

class _Doc:
    """Plain data from a YAML document plus the line of every path in it."""

    def __init__(self, path: str):
        self.path = path
        self.lines: Dict[Path, int] = {}
        self.key_lines: Dict[Path, int] = {}
        self.raw: Dict[Path, str] = {}     # the scalar text as written

    def where(self, path: Path, key: bool = False) -> str:
        p = tuple(path)
        line = None
        if key:
            line = self.key_lines.get(p)
        while line is None and p:
            line = self.lines.get(p) or self.key_lines.get(p)
            if line is None:
                p = p[:-1]
        if line is None:
            line = self.lines.get((), 1)
        return f"{self.path}:{line}"

    def line(self, path: Path) -> int:
        return int(self.where(path).rsplit(":", 1)[1])


def fmt_path(path: Path) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def _err(doc: _Doc, path: Path, what: str, hint: Optional[str] = None,
         key: bool = False) -> JobFileError:
    return JobFileError(f"{doc.where(path, key)}: {fmt_path(path)}: {what}", hint)


def _load_yaml(text: str, path: str) -> Tuple[Any, _Doc]:

    doc = _Doc(path)
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when present
        nodes = list(yaml.compose_all(text, Loader=loader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise JobFileError(f"{path}:{line}: not valid YAML: {problem}",
                           "check the indentation and quoting around that line") from e
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise JobFileError(f"{path}:1: the job file is empty",
                           "start with 'image:' and 'command:' (see 'hpcrun schema')")
    if len(nodes) > 1:
        raise JobFileError(f"{path}:{nodes[1].start_mark.line + 1}: more than one YAML "
                           "document", "put one job per file, or use 'steps:'")
    ctor = SafeConstructor()

    def conv(node, p: Path):
        doc.lines[p] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: Dict[Any, Any] = {}
            merged: Dict[Any, Any] = {}
            for knode, vnode in node.value:
                if knode.tag == "tag:yaml.org,2002:merge":
                    srcs = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                    for src in srcs:
                        v = conv(src, p)
                        if isinstance(v, dict):
                            for k2, v2 in v.items():
                                merged.setdefault(k2, v2)
                    doc.lines[p] = node.start_mark.line + 1
                    continue
                if not isinstance(knode, yaml.ScalarNode):
                    raise JobFileError(f"{path}:{knode.start_mark.line + 1}: "
                                       f"{fmt_path(p)}: a key must be a plain name")
                k = knode.value
                if k in out:
                    raise JobFileError(
                        f"{path}:{knode.start_mark.line + 1}: {fmt_path(p + (k,))}: "
                        f"duplicate key (first at line {doc.key_lines[p + (k,)]})",
                        "remove one of them")
                doc.key_lines[p + (k,)] = knode.start_mark.line + 1
                out[k] = conv(vnode, p + (k,))
            for k2, v2 in merged.items():
                out.setdefault(k2, v2)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [conv(n, p + (i,)) for i, n in enumerate(node.value)]
        doc.raw[p] = node.value
        val = ctor.construct_object(node, deep=True)
        # YAML 1.1 reads 10:00 as the base-60 number 600; here it is always a time
        # or a string, so keep what was written.
        if (isinstance(val, (int, float)) and not isinstance(val, bool)
                and ":" in node.value and node.style is None):
            return node.value
        return val

    return conv(nodes[0], ()), doc


# ---------------------------------------------------------------------------
# Schema walker (the subset of draft-07 that jobfile.schema.json uses)

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "true or false", "object": "a mapping (key: value lines)",
               "array": "a list", "null": "nothing"}


def _type_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    return type(v).__name__


def _is(v: Any, t: str) -> bool:
    vt = _type_of(v)
    return vt == t or (t == "number" and vt == "integer")


def _show(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return _type_of(v) == "object" and "a mapping" or "a list"
    if v is None:
        return "nothing"
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


class _Walker:
    def __init__(self, root: dict, doc: _Doc):
        self.root = root
        self.doc = doc
        self.parent_hint: Optional[str] = None

    def ref(self, s: dict) -> dict:
        while "$ref" in s:
            ref = s["$ref"]
            assert ref.startswith("#/"), ref
            s2: Any = self.root
            for part in ref[2:].split("/"):
                s2 = s2[part]
            s = s2
        return s

    def types(self, s: dict) -> List[str]:
        s = self.ref(s)
        if "anyOf" in s:
            out: List[str] = []
            for b in s["anyOf"]:
                out += [t for t in self.types(b) if t not in out]
            return out
        t = s.get("type")
        return [t] if isinstance(t, str) else list(t or [])

    def hint(self, s: dict) -> Optional[str]:
        return self.ref(s).get("description")

    def check(self, v: Any, s: dict, path: Path) -> None:
        s = self.ref(s)
        if "anyOf" in s:
            branches = [self.ref(b) for b in s["anyOf"]]
            fit = [b for b in branches if any(_is(v, t) for t in self.types(b))]
            if not fit:
                self._type_error(v, s, path)
            errors = []
            for b in fit:
                try:
                    self.check(v, b, path)
                    return
                except JobFileError as e:
                    errors.append(e)
            e = errors[0]
            raise JobFileError(e.what, e.hint or self.hint(s))
        types = self.types(s)
        if types and not any(_is(v, t) for t in types):
            self._type_error(v, s, path)
        if "enum" in s and v not in s["enum"]:
            import difflib  # lazy: only this branch needs it
            m = difflib.get_close_matches(str(v), [str(x) for x in s["enum"]], n=1)
            raise _err(self.doc, path, f"{_show(v)} is not one of "
                       + ", ".join(str(x) for x in s["enum"]),
                       f"did you mean {m[0]!r}?" if m else self.hint(s))
        if isinstance(v, str):
            if len(v) < s.get("minLength", 0):
                raise _err(self.doc, path, "must not be empty", self.hint(s))
            if "pattern" in s and not re.search(s["pattern"], v):
                raise _err(self.doc, path, f"{_show(v)} is not in the expected form",
                           self.hint(s) or self.parent_hint)
        if _type_of(v) in ("integer", "number"):
            if "minimum" in s and v < s["minimum"]:
                raise _err(self.doc, path, f"{v} is too small (at least {s['minimum']})",
                           self.hint(s))
        if isinstance(v, list):
            if len(v) < s.get("minItems", 0):
                raise _err(self.doc, path, "must not be an empty list", self.hint(s))
            if s.get("uniqueItems"):
                seen = set()
                for i, x in enumerate(v):
                    if repr(x) in seen:
                        raise _err(self.doc, path + (i,), f"{_show(x)} is listed twice")
                    seen.add(repr(x))
            if "items" in s:
                for i, x in enumerate(v):
                    self.parent_hint = self.hint(s)
                    self.check(x, s["items"], path + (i,))
        if isinstance(v, dict):
            self.check_object(v, s, path)

    def check_object(self, v: dict, s: dict, path: Path) -> None:
        props = s.get("properties", {})
        extra = s.get("additionalProperties", True)
        if len(v) < s.get("minProperties", 0):
            raise _err(self.doc, path, "must not be empty", self.hint(s))
        for k in v:
            kp = path + (k,)
            if not isinstance(k, str):
                raise _err(self.doc, kp, f"key {k!r} must be a name, not {_type_of(k)}",
                           key=True)
            pn = s.get("propertyNames")
            if pn and "pattern" in pn and not re.search(pn["pattern"], k):
                raise _err(self.doc, kp, f"{k!r} is not a valid name here", key=True,
                           hint=pn.get("description")
                           or "use letters, digits and _ (and . + - after the first)")
            if k in props:
                continue
            if extra is False and k == "name" and "depends_on" in props:
                raise _err(self.doc, kp, "a step has no 'name' key", key=True,
                           hint="a step is named by its key under 'steps:'")
            if extra is False:
                raise _err(self.doc, kp, f"unknown key {k!r}",
                           self._suggest(k, list(props), path), key=True)
        for k in s.get("required", []):
            if k not in v:
                raise _err(self.doc, path, f"missing required key {k!r}")
        for k, x in v.items():
            if k in props:
                self.check(x, props[k], path + (k,))
            elif isinstance(extra, dict):
                self.check(x, extra, path + (k,))

    def _suggest(self, k: str, known: List[str], path: Path) -> str:
        norm = k.replace("-", "_").lower()
        if norm in known:
            return f"did you mean {norm!r}? (keys are spelled with underscores)"
        alias = _ALIASES.get(norm) or _ALIASES.get(k)
        if alias in known:
            return f"did you mean {alias!r}?"
        m = difflib.get_close_matches(norm, known, n=1, cutoff=0.6)
        if m:
            return f"did you mean {m[0]!r}?"
        if "resources" in known and (norm in _RESOURCE_KEYS or alias in _RESOURCE_KEYS):
            r = norm if norm in _RESOURCE_KEYS else alias
            return f"did you mean 'resources: {{{r}: ...}}'? ({r} goes under resources)"
        if path and path[-1] == "resources" or "nodes" in known:
            m = difflib.get_close_matches(norm, _RESOURCE_KEYS, n=1, cutoff=0.5)
            if m:
                return f"did you mean {m[0]!r}?"
        return "known keys: " + ", ".join(known)

    def _type_error(self, v: Any, s: dict, path: Path) -> None:
        want = " or ".join(_TYPE_NAMES.get(t, t) for t in self.types(s))
        hint = self.hint(s)
        if _type_of(v) == "null":
            what = f"needs a value ({want})"
        else:
            got = "a boolean" if isinstance(v, bool) else _TYPE_NAMES.get(_type_of(v), _type_of(v))
            what = f"expected {want}, got {got}"
            if not isinstance(v, (dict, list)):
                what += " " + _show(v)
        if "string" in self.types(s) and not isinstance(v, (dict, list)) and v is not None:
            raw = self.doc.raw.get(path)
            if raw:
                hint = (hint + " " if hint else "") + f"(write it in quotes: \"{raw}\")"
        raise _err(self.doc, path, what, hint)


# ---------------------------------------------------------------------------
# Semantic checks and resolution into Steps

def _scalar_text(doc: _Doc, path: Path, v: Any) -> str:
    """A scalar as the user wrote it (env values and command words)."""
    if isinstance(v, str):
        return v
    raw = doc.raw.get(path)
    if raw is not None:
        return raw
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _order(doc: _Doc, steps: Dict[str, dict]) -> List[str]:
    """Step names, dependencies first; missing steps and cycles are errors."""
    for name, st in steps.items():
        for i, dep in enumerate(st.get("depends_on") or []):
            p = ("steps", name, "depends_on", i)
            if dep == name:
                raise _err(doc, p, f"step {name!r} depends on itself",
                           "remove it from its own depends_on")
            if dep not in steps:
                m = difflib.get_close_matches(dep, list(steps), n=1)
                raise _err(doc, p, f"no step named {dep!r}",
                           f"did you mean {m[0]!r}?" if m else
                           "steps in this file: " + ", ".join(steps))
    order: List[str] = []
    state: Dict[str, int] = {}     # 1 = visiting, 2 = done

    def visit(n: str, chain: List[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cyc = chain[chain.index(n):] + [n]
            raise _err(doc, ("steps", n, "depends_on"),
                       "dependency cycle: " + " -> ".join(cyc),
                       "a step cannot wait for a step that waits for it; "
                       "remove one depends_on entry")
        state[n] = 1
        for d in steps[n].get("depends_on") or []:
            visit(d, chain + [n])
        state[n] = 2
        order.append(n)

    for n in steps:          # file order among independent steps
        visit(n, [])
    return order


def _command(doc: _Doc, path: Path, v: Any) -> Tuple[str, ...]:
    if isinstance(v, str):
        try:
            words = shlex.split(v)
        except ValueError as e:
            raise _err(doc, path, f"cannot split the command: {e}",
                       "close the quote, or give the command as a list") from e
        if not words:
            raise _err(doc, path, "must not be empty")
        return tuple(words)
    return tuple(_scalar_text(doc, path + (i,), x) for i, x in enumerate(v))


def _image(image: str, base: str) -> str:
    """A relative image path is relative to the job file, like a relative mount."""
    if image.startswith(("./", "../")):
        return os.path.normpath(os.path.join(base, image))
    return image


def _mount(doc: _Doc, path: Path, m: str, base: str) -> str:
    src, dst, *rest = m.split(":")
    if not os.path.isabs(src):
        src = os.path.normpath(os.path.join(base, src))
    return ":".join([src, dst] + rest)


def _resources(doc: _Doc, top: dict, step: dict, tpath: Path,
               spath: Path) -> Tuple[Resources, Tuple[Tuple[str, int], ...]]:
    vals: Dict[str, Optional[str]] = {}
    lines: Dict[str, int] = {}
    for src, p in ((top, tpath), (step, spath)):
        for k, v in (src or {}).items():
            vals[k] = _scalar_text(doc, p + (k,), v) if k in ("mem", "time", "gpus") else v
            lines[k] = doc.line(p + (k,))
    return Resources(**vals), tuple(sorted(lines.items()))


def _container(doc: _Doc, top: dict, step: dict) -> Tuple[str, ...]:
    """`container:` (top level, then the step's, key by key) -> option words."""
    merged = dict(top)
    merged.update(step)
    try:
        return tuple(options.job_argv(merged))
    except UsageError as e:
        raise JobFileError(f"{doc.path}: container: {e.what}", e.hint) from None


def validate(data: Any, doc: _Doc) -> None:
    """Check the loaded data against the schema (raises JobFileError)."""
    s = schema()
    if not isinstance(data, dict):
        raise _err(doc, (), f"expected a mapping of keys (image:, command:, ...), "
                   f"got {_TYPE_NAMES.get(_type_of(data), _type_of(data))}",
                   "see 'hpcrun schema' for the keys")
    _Walker(s, doc).check(data, s, ())


def parse(text: str, path: str = "<job>") -> JobFile:
    """Load, validate and resolve a job file's text into a JobFile (pure)."""
    data, doc = _load_yaml(text, path)
    validate(data, doc)
    base = os.path.dirname(os.path.abspath(path)) if not path.startswith("<") else os.getcwd()
    stem = os.path.splitext(os.path.basename(path))[0] if not path.startswith("<") else "job"
    name = data.get("name") or re.sub(r"[^A-Za-z0-9_.+-]", "_", stem) or "job"
    steps_in = data.get("steps")
    step_keys = ("image", "command", "env", "mounts", "workdir", "scratch", "mpi",
                 "array", "output", "error", "container")

    def resolve(sname: str, st: dict, spath: Path) -> Step:
        merged: Dict[str, Any] = {k: data[k] for k in step_keys if k in data}
        origin: Dict[str, Path] = {k: () for k in merged}
        for k in step_keys:
            if k in st:
                merged[k] = st[k]
                origin[k] = spath
        for k in ("image", "command"):
            if k not in merged:
                if steps_in is None:
                    raise _err(doc, (), f"missing required key {k!r}",
                               f"add '{k}:' at the top level")
                raise _err(doc, spath, f"no {k} for this step", key=True, hint=
                           f"add '{k}:' to the step, or at the top level as a default")
        env: Dict[str, str] = {}
        for src, p in ((data.get("env"), ("env",)),
                       (st.get("env") if spath else None, spath + ("env",))):
            for k, v in (src or {}).items():
                env[k] = _scalar_text(doc, p + (k,), v)
        mounts: List[str] = []
        for src, p in ((data.get("mounts"), ("mounts",)),
                       (st.get("mounts") if spath else None, spath + ("mounts",))):
            for i, m in enumerate(src or []):
                mounts.append(_mount(doc, p + (i,), m, base))
        # a later mount to the same destination replaces the earlier one
        by_dst: Dict[str, str] = {}
        for m in mounts:
            by_dst[m.split(":")[1].rstrip("/") or "/"] = m
        res, rlines = _resources(doc, data.get("resources") or {},
                                 (st.get("resources") or {}) if spath else {},
                                 ("resources",), spath + ("resources",))
        return Step(
            name=sname,
            job_name=f"{name}.{sname}" if sname else name,
            image=_image(merged["image"], base),
            command=_command(doc, origin["command"] + ("command",), merged["command"]),
            resources=res,
            env=tuple(sorted(env.items())),
            mounts=tuple(by_dst.values()),
            workdir=merged.get("workdir"),
            scratch=bool(merged.get("scratch", False)),
            options=_container(doc, data.get("container") or {},
                               (st.get("container") or {}) if spath else {}),
            mpi=merged.get("mpi"),
            array=merged.get("array"),
            output=merged.get("output"),
            error=merged.get("error"),
            depends_on=tuple(st.get("depends_on") or ()),
            line=doc.key_lines.get(spath, 1) if spath else 1,
            image_line=doc.line(origin["image"] + ("image",)),
            resource_lines=rlines,
        )

    if steps_in is None:
        return JobFile(path, name, (resolve("", {}, ()),))
    order = _order(doc, steps_in)
    return JobFile(path, name, tuple(resolve(n, steps_in[n], ("steps", n)) for n in order))


def load(path: str) -> JobFile:
    """Read and parse a job file (the one I/O entry point)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as e:
        raise NotFound(f"job file {path} does not exist",
                       "give the path of a YAML job file (see 'hpcrun schema')") from e
    except IsADirectoryError as e:
        raise JobFileError(f"{path} is a directory, not a job file") from e
    except PermissionError as e:
        raise JobFileError(f"cannot read job file {path}: permission denied") from e
    except UnicodeDecodeError as e:
        raise JobFileError(f"{path}: not a text file ({e.reason})") from e
    except OSError as e:        # a name too long, a loop of links, an I/O error
        raise JobFileError(f"cannot read job file {path[:80]}{'...' if len(path) > 80 else ''}: "
                           f"{e.strerror or e}") from e
    return parse(text, path)
