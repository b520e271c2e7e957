"""Dockerfile parsing and word expansion: pure functions, no I/O.

parse() turns the text of a Dockerfile into Instructions (keyword, flags, arguments,
line number), following the Dockerfile reference:
  - parser directives (`# escape=`, `# syntax=`) only before the first other line;
  - `#` starts a comment only at the start of a line (leading blanks allowed, as in
    Docker), and comment lines inside a continuation are dropped;
  - the escape character at the end of a line continues the instruction;
  - keywords are case-insensitive; `--name=value` flags after the keyword;
  - RUN/CMD/ENTRYPOINT/SHELL/VOLUME/COPY/ADD take a JSON array (exec form) or text.
Expansion ($VAR, ${VAR}, ${VAR:-word}, ${VAR:+word}, quotes, escapes) is a separate
step, done by the executor with the build's environment at each instruction.
"""
from __future__ import annotations

import json
import re
from typing import Callable, Optional

from hpcrun.errors import HpcrunError


class BuildError(HpcrunError):
    """A build failed; `what` names file:line and the instruction when there is one."""


# keyword -> the flags it accepts
INSTRUCTIONS = {
    "FROM": ("platform",),
    "RUN": ("network",),
    "CMD": (), "ENTRYPOINT": (), "SHELL": (),
    "LABEL": (), "MAINTAINER": (), "EXPOSE": (), "ENV": (), "ARG": (),
    "ADD": ("chown", "chmod"), "COPY": ("chown", "chmod", "from"),
    "VOLUME": (), "USER": (), "WORKDIR": (), "ONBUILD": (),
    "STOPSIGNAL": (), "HEALTHCHECK": ("interval", "timeout", "start-period", "retries",
                                      "start-interval"),
}
# where the reference says variables are substituted (FROM with the ARGs before it)
EXPANDED = {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER",
            "VOLUME", "WORKDIR", "ARG"}
# instructions with a JSON (exec) form
JSON_FORM = {"RUN", "CMD", "ENTRYPOINT", "SHELL", "VOLUME", "COPY", "ADD"}


class Instruction:
    """One instruction: `cmd` upper-case, `flags` {name: value}, `args` the text after
    the flags, `json` the list when written in JSON form, `line` 1-based."""

    __slots__ = ("cmd", "flags", "args", "json", "line", "original", "file")

    def __init__(self, cmd, flags, args, json_args, line, original, file):
        self.cmd = cmd
        self.flags = flags
        self.args = args
        self.json = json_args
        self.line = line
        self.original = original
        self.file = file

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.original}"

    def error(self, what: str, hint: Optional[str] = None) -> BuildError:
        return BuildError(f"{self.file}:{self.line}: {self.cmd}: {what}", hint)

    def __repr__(self):
        return f"Instruction({self.cmd} {self.flags} {self.args!r} line {self.line})"


class Dockerfile:
    __slots__ = ("file", "escape", "directives", "instructions", "notes")

    def __init__(self, file, escape, directives, instructions, notes):
        self.file = file
        self.escape = escape
        self.directives = directives
        self.instructions = instructions
        self.notes = notes


_DIRECTIVE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*\Z")
_FLAG = re.compile(r"--([a-z][a-z-]*)(?:=(\S*))?\Z")


def parse(text: str, file: str = "Dockerfile") -> Dockerfile:
    lines = text.splitlines()
    escape = "\\"
    directives: dict = {}
    notes: list = []
    i = 0
    # -- parser directives: only at the very top, each once; anything else ends them
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i].strip())
        if not m:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key not in ("escape", "syntax", "check"):
            break       # an unknown directive is a comment, and ends the directives
        if key in directives:
            raise BuildError(f"{file}:{i + 1}: directive {key!r} given twice",
                             "give each parser directive once, at the top of the file")
        directives[key] = value
        if key == "escape":
            if value not in ("\\", "`"):
                raise BuildError(f"{file}:{i + 1}: invalid escape character {value!r}",
                                 "the escape directive takes \\ or `")
            escape = value
        elif key == "syntax":
            notes.append(f"{file}:{i + 1}: '# syntax={value}' ignored: hpcrun has one "
                         "built-in frontend")
        i += 1

    out = []
    while i < len(lines):
        start = i
        line = lines[i]
        i += 1
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = []
        cur = line
        # continuation: the escape char last on the line (trailing blanks allowed)
        while True:
            st = cur.rstrip()
            if st.endswith(escape):     # Docker: escape, then only blanks
                parts.append(st[:-1])
                # skip comment lines and empty lines inside the continuation
                while i < len(lines) and (not lines[i].strip() or
                                          lines[i].lstrip().startswith("#")):
                    i += 1
                if i >= len(lines):
                    cur = ""
                    break
                cur = lines[i]
                i += 1
                continue
            parts.append(cur)
            break
        full = "".join(parts).strip()
        out.append(_instruction(full, start + 1, file))
    if not out:
        raise BuildError(f"{file}: the Dockerfile has no instructions",
                         "a Dockerfile starts with FROM IMAGE (or ARG lines, then FROM)")
    return Dockerfile(file, escape, directives, out, notes)


def _instruction(full: str, line: int, file: str) -> Instruction:
    m = re.match(r"(\S+)\s*(.*)\Z", full, re.S)
    assert m
    word, rest = m.group(1), m.group(2)
    cmd = word.upper()
    shown = full if len(full) <= 80 else full[:77] + "..."
    if cmd not in INSTRUCTIONS:
        raise BuildError(f"{file}:{line}: unknown instruction {word}",
                         "instructions are " + ", ".join(sorted(INSTRUCTIONS)))
    flags = {}
    allowed = INSTRUCTIONS[cmd]
    while rest.startswith("--"):
        tok, _, after = rest.partition(" ")
        fm = _FLAG.match(tok)
        if not fm:
            break
        name, value = fm.group(1), fm.group(2)
        if name not in allowed:
            raise BuildError(f"{file}:{line}: {cmd}: unknown flag --{name}",
                             f"{cmd} takes " + (", ".join("--" + a for a in allowed)
                                                or "no flags"))
        if value is None:
            raise BuildError(f"{file}:{line}: {cmd}: flag --{name} needs a value",
                             f"write --{name}=VALUE")
        flags[name] = value
        rest = after.lstrip()
    js = None
    if cmd in JSON_FORM and rest.startswith("["):
        try:
            v = json.loads(rest)
        except ValueError:
            v = None            # Docker: not valid JSON -> the shell form
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            js = v
    ins = Instruction(cmd, flags, rest, js, line, shown, file)
    _check(ins)
    return ins


def _check(ins: Instruction) -> None:
    """Syntax that needs no variables: argument counts and forms."""
    c, a = ins.cmd, ins.args
    if c in ("CMD", "ENTRYPOINT", "RUN", "SHELL") and not a and ins.json is None:
        raise ins.error("needs a command", f"write {c} [\"executable\", \"arg\"] or {c} command")
    if c == "SHELL" and ins.json is None:
        raise ins.error("takes a JSON array", 'write SHELL ["/bin/bash", "-c"]')
    if c == "SHELL" and not ins.json:
        raise ins.error("needs at least one word", 'write SHELL ["/bin/sh", "-c"]')
    if c in ("FROM", "USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER", "ARG", "ENV", "LABEL",
             "EXPOSE", "VOLUME", "ONBUILD", "HEALTHCHECK") and not a:
        raise ins.error("needs an argument")
    if c in ("COPY", "ADD") and ins.json is None and len(a.split()) < 2:
        raise ins.error("needs a source and a destination",
                        f"write {c} SRC... DEST")
    if c in ("COPY", "ADD") and ins.json is not None and len(ins.json) < 2:
        raise ins.error("needs a source and a destination",
                        f'write {c} ["SRC", "DEST"]')
    if c == "FROM":
        w = a.split()
        if len(w) not in (1, 3) or (len(w) == 3 and w[1].upper() != "AS"):
            raise ins.error(f"expected FROM IMAGE [AS NAME], got {a!r}")
        if len(w) == 3 and not re.match(r"[A-Za-z][A-Za-z0-9_.-]*\Z", w[2]):
            raise ins.error(f"invalid stage name {w[2]!r}",
                            "a stage name starts with a letter: letters, digits, _ . -")
    if c == "ONBUILD":
        sub = a.split(None, 1)[0].upper()
        if sub in ("ONBUILD", "FROM", "MAINTAINER"):
            raise ins.error(f"{sub} is not allowed as an ONBUILD trigger")
        if sub not in INSTRUCTIONS:
            raise ins.error(f"unknown instruction {sub} in the trigger")
    if c == "HEALTHCHECK":
        kind = a.split(None, 1)[0].upper()
        if kind not in ("NONE", "CMD"):
            raise ins.error(f"expected HEALTHCHECK NONE or HEALTHCHECK [OPTIONS] CMD ..., "
                            f"got {a!r}")
        if kind == "NONE" and (ins.flags or a.strip().upper() != "NONE"):
            raise ins.error("HEALTHCHECK NONE takes no other arguments")
        if kind == "CMD" and not a.split(None, 1)[1:]:
            raise ins.error("HEALTHCHECK CMD needs a command")


def onbuild_trigger(ins: Instruction) -> Instruction:
    """The instruction an ONBUILD line holds (re-parsed with the same line number)."""
    return _instruction(ins.args, ins.line, ins.file)


# --------------------------------------------------------------------------- expansion

Lookup = Callable[[str], Optional[str]]


def expand_words(s: str, lookup: Lookup, escape: str = "\\") -> list:
    """Split on blanks and expand, as Docker's shell lexer does for COPY, EXPOSE, VOLUME,
    ...: quotes group and are removed, $ expands except in single quotes."""
    return _lex(s, lookup, escape, split=True)


def expand(s: str, lookup: Lookup, escape: str = "\\") -> str:
    """Expand one word (quotes removed), e.g. a WORKDIR or USER argument."""
    w = _lex(s, lookup, escape, split=False)
    return w[0] if w else ""


def expand_literal(s: str, lookup: Lookup, escape: str = "\\") -> str:
    """Expand variables in text whose quotes are kept (FROM, JSON-form words)."""
    out = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == escape and i + 1 < len(s) and s[i + 1] == "$":
            out.append("$")
            i += 2
        elif ch == "$":
            v, i = _var(s, i, lookup, escape)
            out.append(v)
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _lex(s: str, lookup: Lookup, escape: str, split: bool) -> list:
    words: list = []
    cur: list = []
    have = False        # a word is under way (literal text or quotes seen)
    i = 0
    n = len(s)

    def end():
        nonlocal cur, have
        if have:
            words.append("".join(cur))
        cur, have = [], False

    while i < n:
        ch = s[i]
        if split and ch in " \t\n":
            end()
            i += 1
            continue
        if ch == escape:
            have = True
            if i + 1 < n:
                cur.append(s[i + 1])
                i += 2
            else:
                cur.append(ch)
                i += 1
        elif ch == "'":
            have = True
            j = s.find("'", i + 1)
            if j < 0:
                raise ValueError("unmatched single quote")
            cur.append(s[i + 1:j])
            i = j + 1
        elif ch == '"':
            have = True
            i += 1
            while True:
                if i >= n:
                    raise ValueError("unmatched double quote")
                c2 = s[i]
                if c2 == '"':
                    i += 1
                    break
                if c2 == escape and i + 1 < n and s[i + 1] in ('"', "$", escape):
                    cur.append(s[i + 1])
                    i += 2
                elif c2 == "$":
                    v, i = _var(s, i, lookup, escape)
                    cur.append(v)
                else:
                    cur.append(c2)
                    i += 1
        elif ch == "$":
            v, i = _var(s, i, lookup, escape)
            if not split:
                cur.append(v)
                have = True
                continue
            # unquoted: the value is split on blanks, as Docker's lexer does
            pieces = re.split(r"[ \t\n]+", v)
            for k, piece in enumerate(pieces):
                if k:
                    end()
                if piece:
                    cur.append(piece)
                    have = True
        else:
            have = True
            cur.append(ch)
            i += 1
    if have or not split:
        words.append("".join(cur))
    return words


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _var(s: str, i: int, lookup: Lookup, escape: str) -> tuple:
    """s[i] == '$': (expansion, index after it)."""
    if i + 1 < len(s) and s[i + 1] == "{":
        j = i + 2
        m = _NAME.match(s, j)
        if not m:
            raise ValueError(f"bad substitution in {s[i:]!r}")
        name = m.group(0)
        j = m.end()
        if j < len(s) and s[j] == "}":
            return lookup(name) or "", j + 1
        if s.startswith(":-", j) or s.startswith(":+", j):
            op = s[j:j + 2]
            # the word runs to the matching brace; it may hold $ expansions itself
            depth, k = 1, j + 2
            while k < len(s):
                if s[k] == escape:
                    k += 2
                    continue
                if s[k] == "{":
                    depth += 1
                elif s[k] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            if k >= len(s):
                raise ValueError(f"missing '}}' in {s[i:]!r}")
            word = s[j + 2:k]
            val = lookup(name)
            if op == ":-":
                res = val if val else expand(word, lookup, escape)
            else:
                res = expand(word, lookup, escape) if val else ""
            return res, k + 1
        raise ValueError(f"unsupported substitution in {s[i:]!r}: "
                         "Docker supports ${VAR}, ${VAR:-word} and ${VAR:+word}")
    m = _NAME.match(s, i + 1)
    if not m:
        return "$", i + 1
    return lookup(m.group(0)) or "", m.end()


def key_values(s: str, lookup: Lookup, escape: str, legacy_one_space: bool) -> list:
    """ENV/LABEL arguments: `k=v k2="v 2"`, or the legacy `k value with spaces`."""
    words = _lex(s, lookup, escape, split=True)
    if legacy_one_space and words and "=" not in words[0]:
        key, _, rest = s.strip().partition(" ")
        key = key.strip()
        return [(key, expand(rest.strip(), lookup, escape) if rest.strip() else "")]
    out = []
    for w in words:
        if "=" not in w:
            raise ValueError(f"{w!r} is not KEY=VALUE")
        k, _, v = w.partition("=")
        if not k:
            raise ValueError(f"{w!r} has no key")
        out.append((k, v))
    return out


# --------------------------------------------------------------------------- .dockerignore


def dockerignore(text: str) -> list:
    """Patterns of a .dockerignore: (pattern, negated), cleaned as Docker does."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        neg = s.startswith("!")
        if neg:
            s = s[1:].strip()
        s = re.sub(r"/+", "/", s).strip("/")
        parts = []
        for p in s.split("/"):
            if p == "..":
                if parts:
                    parts.pop()
            elif p not in (".", ""):
                parts.append(p)
        s = "/".join(parts)
        if s:
            out.append((s, neg))
    return out


def _glob_re(pattern: str) -> re.Pattern:
    """Go filepath.Match plus `**` (any number of directories), anchored."""
    rx = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < len(pattern) and pattern[i] == "/":
                    i += 1
                    rx.append("(?:.*/)?")
                else:
                    rx.append(".*")
                continue
            rx.append("[^/]*")
        elif c == "?":
            rx.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                rx.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                if body.startswith("^") or body.startswith("!"):
                    body = "^" + body[1:]
                rx.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            rx.append(re.escape(pattern[i]))
        else:
            rx.append(re.escape(c))
        i += 1
    return re.compile("".join(rx) + r"\Z")


class Ignore:
    """The .dockerignore rules: a path is excluded when the last pattern matching it
    (or one of its parent directories) is not negated."""

    def __init__(self, patterns: list):
        self.rules = [(_glob_re(p), neg, p) for p, neg in patterns]
        self.has_negation = any(neg for _, neg, _ in self.rules)

    def excluded(self, rel: str) -> bool:
        if not self.rules or rel in ("", "."):
            return False
        parents = []
        parts = rel.split("/")
        for k in range(1, len(parts) + 1):
            parents.append("/".join(parts[:k]))
        hit = False
        for rx, neg, _ in self.rules:
            if any(rx.match(p) for p in parents):
                hit = not neg
        return hit

    def may_contain_included(self, rel_dir: str) -> bool:
        """An excluded directory must still be walked when an exception could
        re-include something below it."""
        if not self.has_negation:
            return False
        for _, neg, p in self.rules:
            if neg and (p.startswith(rel_dir + "/") or "*" in p.split("/")[0]):
                return True
        return False
