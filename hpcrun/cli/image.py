"""Image verbs, spelled as Docker spells them: pull, push, login, logout, load, save,
import, export, convert, images, inspect, history, tag, rmi, prune.

Thin: parse flags, call hpcrun.image.*, print results (ids, tables, JSON) on stdout;
progress and logs go to stderr. Errors are raised; the dispatcher prints them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from typing import List

from hpcrun.errors import UsageError

HELP = {
    "pull": "Download an image from a registry into the store.",
    "push": "Upload an image from the store to a registry.",
    "login": "Log in to a registry (the credentials are checked before they are stored).",
    "logout": "Forget the credentials for a registry.",
    "load": "Load images from a docker-archive or oci-archive (stdin without -i).",
    "save": "Write images as a docker-archive (stdout without -o).",
    "import": "Make an image from a root filesystem tarball (FILE, or - for stdin).",
    "export": "Write an image's flattened root filesystem as a tar (stdout without -o).",
    "convert": "Convert an image between a directory, a squashfs file, a tarball and the "
               "store, or store an image as a directory or a squashfs file.",
    "images": "List the images in the store.",
    "inspect": "Print images' details as a JSON array.",
    "history": "Show the history of an image's layers.",
    "tag": "Give an image another name.",
    "rmi": "Remove names and images from the store.",
    "prune": "Remove untagged images, unreferenced blobs and leftovers of interrupted "
             "operations.",
}

FORMAT_HELP = "store the image as a directory (default), a squashfs file, or both (dir,squashfs)"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line + hint, through the dispatcher
        raise UsageError(f"{self.prog}: {message}", f"see '{self.prog} --help'")


def _parser(verb: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"hpcrun {verb}", description=HELP[verb])
    add = p.add_argument
    if verb == "pull":
        add("name", metavar="NAME[:TAG|@DIGEST]")
        add("--platform", metavar="OS/ARCH[/VARIANT]", help="default: this machine's")
        add("-q", "--quiet", action="store_true", help="no progress output")
        add("--format", dest="fmt", default="dir", metavar="dir|squashfs", help=FORMAT_HELP)
        add("--insecure", action="store_true",
            help="plain HTTP or unverified TLS for this registry")
    elif verb == "push":
        add("name", metavar="IMAGE")
        add("dest", metavar="DESTINATION", nargs="?",
            help="registry reference to push to (default: the image's name)")
        add("-q", "--quiet", action="store_true", help="no progress output")
        add("--insecure", action="store_true",
            help="plain HTTP or unverified TLS for this registry")
    elif verb == "login":
        add("registry", metavar="REGISTRY", nargs="?", default="docker.io")
        add("-u", "--username", metavar="USER")
        add("-p", "--password", metavar="PASSWORD",
            help="insecure (visible in ps and shell history); prefer --password-stdin")
        add("--password-stdin", action="store_true", help="read the password from stdin")
        add("--insecure", action="store_true",
            help="plain HTTP or unverified TLS for this registry")
    elif verb == "logout":
        add("registry", metavar="REGISTRY", nargs="?", default="docker.io")
    elif verb == "load":
        add("-i", "--input", metavar="FILE", help="read from FILE instead of stdin")
        add("-q", "--quiet", action="store_true",
            help="no progress output (for Docker compatibility; load shows none)")
        add("--format", dest="fmt", default="dir", metavar="dir|squashfs", help=FORMAT_HELP)
    elif verb == "save":
        add("names", metavar="IMAGE", nargs="+")
        add("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    elif verb == "import":
        add("file", metavar="FILE|-")
        add("name", metavar="REPOSITORY[:TAG]", nargs="?")
        add("-c", "--change", action="append", default=[], metavar="INSTRUCTION",
            help="Dockerfile instruction: ENV, CMD, ENTRYPOINT, WORKDIR, USER, LABEL, "
                 "EXPOSE, VOLUME, STOPSIGNAL (repeatable)")
        add("-m", "--message", default="", help="commit message (in the history)")
        add("--format", dest="fmt", default="dir", metavar="dir|squashfs", help=FORMAT_HELP)
    elif verb == "export":
        add("name", metavar="IMAGE")
        add("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    elif verb == "convert":
        add("name", metavar="IMAGE|SRC")
        add("dst", metavar="DST", nargs="?",
            help="convert SRC into DST: a directory, a .sqfs file, a .tar/.tar.gz file "
                 "or a store name (the format from its spelling or --format)")
        add("--format", dest="fmt", metavar="dir|squashfs|tar|store",
            help="the format to store IMAGE in (IMAGE alone), or DST's format")
        add("--keep", action="store_true", help="keep the other format too")
    elif verb == "images":
        add("filter", metavar="REPOSITORY[:TAG]", nargs="?")
        add("-a", "--all", action="store_true", help="(every image is listed; for Docker "
            "compatibility)")
        add("-q", "--quiet", action="store_true", help="only image ids")
        add("--no-trunc", action="store_true", help="full image ids")
        add("--digests", action="store_true", help="show repository digests")
        add("--format", dest="out", default="table", choices=("table", "json"),
            help="json: one JSON object per line")
    elif verb == "inspect":
        add("names", metavar="IMAGE", nargs="+")
        add("-f", "--format", dest="out", default="json",
            help="json (default), or a template with {{.Field.Sub}} / {{json .Field}}")
    elif verb == "history":
        add("name", metavar="IMAGE")
        add("-q", "--quiet", action="store_true", help="only image ids")
        add("--no-trunc", action="store_true", help="do not truncate output")
        add("-H", "--human", default=True, action="store_true", help=argparse.SUPPRESS)
        add("--format", dest="out", default="table", choices=("table", "json"))
    elif verb == "tag":
        add("src", metavar="SOURCE_IMAGE[:TAG]")
        add("dst", metavar="TARGET_IMAGE[:TAG]")
    elif verb == "rmi":
        add("names", metavar="IMAGE", nargs="+")
        add("-f", "--force", action="store_true",
            help="remove an image that has several names (all of them)")
    elif verb == "prune":
        add("-a", "--all", action="store_true", help="remove every image, not only untagged")
        add("-f", "--force", action="store_true", help="do not prompt (never prompts)")
        add("--repair", action="store_true",
            help="only move damaged store files (image records, tags.json) aside; "
                 "deletes no healthy image")
    return p


def main(verb: str, argv: List[str]) -> int:
    a = _parser(verb).parse_args(argv)
    try:
        return globals()["_" + verb](a)
    except OSError as e:  # a full disk, a vanished file: one line, not a traceback
        from hpcrun.errors import HpcrunError
        where = f"{e.filename}: " if e.filename else ""
        raise HpcrunError(f"{verb}: {where}{e.strerror or e}",
                          "check free space and permissions (the store is HPCRUN_STORE)"
                          ) from e


def _store():
    from hpcrun.image.store import Store
    return Store()


def _out():
    return sys.stdout


# ---------------------------------------------------------------- registry verbs


def _insecure_kw(a) -> dict:
    return {"insecure": True} if getattr(a, "insecure", False) else {}


def _pull(a) -> int:
    from hpcrun.image.pull import pull
    from hpcrun.image.reference import parse
    from hpcrun.image.store import parse_formats
    parse_formats(a.fmt)
    ref = parse(a.name)
    rec = pull(ref, store=_store(), platform=a.platform, fmt=a.fmt, quiet=a.quiet,
               **_insecure_kw(a))
    _out().write(f"{ref}\n" if not a.quiet else f"{rec.id}\n")
    return 0


def _push(a) -> int:
    from hpcrun.image.push import push
    push(_store(), a.name, dest=a.dest, quiet=a.quiet, **_insecure_kw(a))
    return 0


def _login(a) -> int:
    user, password = a.username, a.password
    if a.password_stdin:
        if a.password:
            raise UsageError("--password and --password-stdin are mutually exclusive",
                             "use --password-stdin")
        if not user:
            raise UsageError("--password-stdin needs --username", "hpcrun login -u USER "
                             "--password-stdin REGISTRY")
        password = sys.stdin.read().rstrip("\r\n")
    elif password:
        sys.stderr.write("WARNING! Using --password via the CLI is insecure. "
                         "Use --password-stdin.\n")
    if not user or not password:
        if not sys.stdin.isatty():
            raise UsageError("login needs a user name and a password",
                             "hpcrun login -u USER --password-stdin REGISTRY < password-file")
        if not user:
            sys.stderr.write("Username: ")
            sys.stderr.flush()
            user = sys.stdin.readline().strip()
        if not password:
            import getpass
            password = getpass.getpass("Password: ")
    from hpcrun.image import registry   # login checks, then auth.save stores
    registry.login(a.registry, user, password, **_insecure_kw(a))
    _out().write("Login Succeeded\n")
    return 0


def _logout(a) -> int:
    from hpcrun.image import auth
    from hpcrun.image.reference import split_registry
    host = split_registry(a.registry)
    shown = "docker.io" if host == "registry-1.docker.io" else host
    if auth.logout(a.registry):
        _out().write(f"Removing login credentials for {shown}\n")
    else:
        _out().write(f"Not logged in to {shown}\n")
    return 0


# ---------------------------------------------------------------- files


@contextmanager
def _output(path: str | None, what: str):
    """The file to write for -o FILE (a temp name, renamed into place only when the
    block succeeds, removed otherwise) or stdout."""
    if path is None:
        if sys.stdout.isatty():
            raise UsageError(f"cowardly refusing to write the {what} to a terminal",
                             "use -o FILE or redirect the output")
        yield sys.stdout.buffer
        return
    from hpcrun.fsutil import atomic_file
    with ExitStack() as stack:
        try:
            f = stack.enter_context(atomic_file(os.path.abspath(path)))
        except OSError as e:
            from hpcrun.errors import HpcrunError
            raise HpcrunError(f"cannot write {path}: {e.strerror}",
                              "choose a directory you can write") from e
        yield f


def _load(a) -> int:
    from hpcrun.image import archive
    from hpcrun.image.store import parse_formats
    parse_formats(a.fmt)
    if a.input is None and sys.stdin.isatty():
        raise UsageError("requested load from stdin, but stdin is a terminal",
                         "use -i FILE or pipe the archive in")
    src = a.input if a.input is not None else sys.stdin.buffer
    st = _store()
    for rec, tags in archive.load(st, src, fmt=a.fmt):
        if tags:
            for t in tags:
                from hpcrun.image.reference import parse
                _out().write(f"Loaded image: {parse(t).familiar}\n")
        else:
            _out().write(f"Loaded image ID: {rec.id}\n")
    return 0


def _save(a) -> int:
    from hpcrun.image import archive
    st = _store()
    for n in a.names:
        st.require(n)  # fail before writing anything
    with _output(a.output, "archive") as f:
        archive.save(st, a.names, f)
    return 0


def _import(a) -> int:
    from hpcrun.image import archive
    from hpcrun.image.store import parse_formats
    parse_formats(a.fmt)
    archive.apply_changes({}, a.change)
    if a.file == "-":
        if sys.stdin.isatty():
            raise UsageError("import from stdin, but stdin is a terminal",
                             "pipe a tarball in or give a FILE")
        src = sys.stdin.buffer
    else:
        src = a.file
    rec = archive.import_tar(_store(), src, a.name, a.change, fmt=a.fmt, message=a.message)
    _out().write(rec.id + "\n")
    return 0


def _export(a) -> int:
    from hpcrun.image import archive
    st = _store()
    st.require(a.name)
    with _output(a.output, "root filesystem tar") as f:
        archive.export(st, a.name, f)
    return 0


def _convert(a) -> int:
    if a.dst is not None:
        from hpcrun.image.convert import convert
        if a.keep:
            raise UsageError("--keep is for the store form (convert --format F IMAGE)",
                             "drop --keep")
        _out().write(convert(a.name, a.dst, a.fmt) + "\n")
        return 0
    if not a.fmt:
        raise UsageError("hpcrun convert IMAGE needs --format dir|squashfs",
                         "or give a destination: hpcrun convert SRC DST")
    from hpcrun.image.store import parse_formats
    parse_formats(a.fmt)
    rec = _store().convert(a.name, a.fmt, keep=a.keep)
    for p in (rec.dir_path, rec.sqfs_path):
        if p:
            _out().write(p + "\n")
    return 0


# ---------------------------------------------------------------- listing


def since(created: str) -> str:
    """Docker's "2 weeks ago"."""
    t = _parse_time(created)
    if t is None:
        return "N/A"
    d = max(0, time.time() - t)
    if d < 1:
        return "Less than a second ago"
    for unit, secs in (("year", 365 * 86400), ("month", 30 * 86400), ("week", 7 * 86400),
                       ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n = int(d // secs)
        if n >= 1:
            if n == 1:
                return ("About an hour ago" if unit == "hour" else
                        "About a minute ago" if unit == "minute" else f"1 {unit} ago")
            return f"{n} {unit}s ago"
    return "Less than a second ago"


def _parse_time(s: str):
    if not s:
        return None
    import calendar
    base = s[:19]
    try:
        t = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    rest = s[19:]
    if "." in rest:
        rest = rest.lstrip(".0123456789")
    if rest and rest not in ("Z", "z") and rest[0] in "+-" and len(rest) >= 6:
        sign = 1 if rest[0] == "+" else -1
        t -= sign * (int(rest[1:3]) * 3600 + int(rest[4:6]) * 60)
    return t


def _split_tag(canonical: str) -> tuple[str, str]:
    from hpcrun.image.reference import try_parse
    r = try_parse(canonical)
    if r is None:
        return canonical, "<none>"
    return r.familiar_name, r.tag or "<none>"


def _table(rows: list, headers: list) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = []
    for row in [headers] + rows:
        cells = [str(c).ljust(w) for c, w in zip(row, widths)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _images(a) -> int:
    from hpcrun.image.layers import human_size
    from hpcrun.image.reference import try_parse
    recs = _store().images()
    want = None
    if a.filter:
        r = try_parse(a.filter)
        if r is None:
            raise UsageError(f"invalid reference format: {a.filter!r}",
                             "filter with REPOSITORY or REPOSITORY:TAG")
        want = (r.name, r.tag if ":" in a.filter.rsplit("/", 1)[-1] else None)
    rows = []
    for rec in recs:
        names = list(rec.tags) or [None]
        for t in names:
            repo, tag = _split_tag(t) if t else ("<none>", "<none>")
            if want is not None:
                if t is None:
                    continue
                r = try_parse(t)
                if r is None or r.name != want[0] or (want[1] and r.tag != want[1]):
                    continue
            digest = "<none>"
            for rd in rec.repo_digests:
                if t and rd.split("@")[0] == try_parse(t).name:  # type: ignore[union-attr]
                    digest = rd.split("@")[1]
            rows.append((rec, repo, tag, digest))
    if a.quiet:
        seen = []
        for rec, *_ in rows:
            i = rec.id if a.no_trunc else rec.short_id
            if i not in seen:
                seen.append(i)
        _out().write("".join(i + "\n" for i in seen))
        return 0
    if a.out == "json":
        for rec, repo, tag, digest in rows:
            _out().write(json.dumps({
                "ID": rec.id if a.no_trunc else rec.short_id, "Repository": repo, "Tag": tag,
                "Digest": digest, "CreatedAt": rec.created, "CreatedSince": since(rec.created),
                "Size": human_size(rec.size), "SizeBytes": rec.size,
                "Formats": list(rec.formats), "Path": rec.path,
            }) + "\n")
        return 0
    headers = ["REPOSITORY", "TAG"] + (["DIGEST"] if a.digests else []) + \
        ["IMAGE ID", "CREATED", "SIZE", "FORMAT"]
    table = []
    for rec, repo, tag, digest in rows:
        table.append([repo, tag] + ([digest] if a.digests else []) +
                     [rec.id if a.no_trunc else rec.short_id, since(rec.created),
                      human_size(rec.size), ",".join(rec.formats)])
    _out().write(_table(table, headers))
    return 0


def inspect_doc(rec) -> dict:
    """Docker's `image inspect` object, plus hpcrun's formats and paths."""
    from hpcrun.image.reference import try_parse
    cfg = rec.config
    tags = []
    for t in rec.tags:
        r = try_parse(t)
        tags.append(r.familiar if r else t)
    digests = []
    for rd in rec.repo_digests:
        name, _, dg = rd.partition("@")
        r = try_parse(name)
        digests.append(f"{r.familiar_name}@{dg}" if r else rd)
    return {
        "Id": rec.id,
        "RepoTags": tags,
        "RepoDigests": digests,
        "Parent": "",
        "Comment": (cfg.get("history") or [{}])[-1].get("comment", "") if cfg.get("history") else "",
        "Created": rec.created,
        "Author": cfg.get("author", ""),
        "Config": cfg.get("config") or {},
        "Architecture": cfg.get("architecture", ""),
        "Variant": cfg.get("variant", ""),
        "Os": cfg.get("os", ""),
        "Size": rec.size,
        "RootFS": {"Type": "layers", "Layers": (cfg.get("rootfs") or {}).get("diff_ids", [])},
        "Metadata": {"LastTagTime": rec.committed},
        "Hpcrun": {"Formats": list(rec.formats), "Directory": rec.dir_path,
                   "Squashfs": rec.sqfs_path, "ManifestDigest": rec.manifest_digest,
                   "Layers": rec.layers, "Source": rec.source},
    }


def _template(tmpl: str, doc: dict) -> str:
    import re

    def look(path: str):
        v = doc
        for part in [p for p in path.split(".") if p]:
            if not isinstance(v, dict) or part not in v:
                raise UsageError(f"template: {{{{.{path}}}}}: no field {part!r}",
                                 "see 'hpcrun inspect IMAGE' for the field names")
            v = v[part]
        return v

    def sub(m):
        fn, path = (m.group(1) or "").strip(), m.group(2)
        v = look(path)
        if fn == "json" or isinstance(v, (dict, list)):
            return json.dumps(v)
        return "<no value>" if v is None else str(v)
    out = re.sub(r"\{\{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*\}\}", sub, tmpl)
    if "{{" in out:
        raise UsageError(f"template {tmpl!r}: only {{{{.Field}}}} and {{{{json .Field}}}} "
                         "are supported", "or use the default JSON output")
    return out


def _inspect(a) -> int:
    st = _store()
    from hpcrun.errors import NotFound
    docs, missing = [], []
    for n in a.names:
        rec = st.get(n)
        if rec is None:
            missing.append(n)
        else:
            docs.append(inspect_doc(rec))
    if a.out == "json":
        _out().write(json.dumps(docs, indent=4) + "\n")
    else:
        for d in docs:
            _out().write(_template(a.out, d) + "\n")
    if missing:
        raise NotFound(f"no such image: {missing[0]}", "see 'hpcrun images'")
    return 0


def _history(a) -> int:
    from hpcrun.image.layers import human_size
    rec = _store().require(a.name)
    hist = list(rec.config.get("history") or [])
    # Docker shows what each layer adds once unpacked; older records only know the blobs
    sizes = list(rec.layer_sizes) or [d.get("size", 0) for d in rec.manifest.get("layers", [])]
    rows = []
    li = 0
    for h in hist:
        empty = bool(h.get("empty_layer"))
        size = 0 if empty or li >= len(sizes) else sizes[li]
        if not empty:
            li += 1
        rows.append((h, size))
    if not hist:
        rows = [({"created": rec.created, "created_by": ""}, s) for s in sizes]
    rows.reverse()
    out = []
    for i, (h, size) in enumerate(rows):
        img = (rec.id if a.no_trunc else rec.short_id) if i == 0 else "<missing>"
        out.append((img, h, size))
    if a.quiet:
        _out().write("".join(o[0] + "\n" for o in out))
        return 0
    if a.out == "json":
        for img, h, size in out:
            _out().write(json.dumps({"ID": img, "CreatedAt": h.get("created", ""),
                                     "CreatedSince": since(h.get("created", "")),
                                     "CreatedBy": h.get("created_by", ""), "Size": size,
                                     "Comment": h.get("comment", "")}) + "\n")
        return 0
    table = []
    for img, h, size in out:
        by = h.get("created_by", "")
        if not a.no_trunc and len(by) > 45:
            by = by[:44] + "…"
        table.append([img, since(h.get("created", "")), by, human_size(size),
                      h.get("comment", "")])
    _out().write(_table(table, ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]))
    return 0


def _tag(a) -> int:
    _store().tag(a.src, a.dst)
    return 0


def _rmi(a) -> int:
    st = _store()
    from hpcrun.errors import HpcrunError
    first_error = None
    for n in a.names:
        try:
            for line in st.remove(n, force=a.force):
                _out().write(line + "\n")
        except HpcrunError as e:
            if first_error is None:
                first_error = e
            else:
                sys.stderr.write(f"hpcrun: error: {e.what}\n")
    if first_error is not None:
        raise first_error
    return 0


def _prune(a) -> int:
    from hpcrun.image.layers import human_size
    st = _store()
    if a.repair:        # repair only: images that lost their names must not go with it
        lines = st.repair()
        _out().write("".join(f"Repaired: {line}\n" for line in lines)
                     or "Nothing to repair\n")
        return 0
    deleted, freed = st.prune(all=a.all)
    if deleted:
        _out().write("Deleted Images:\n" + "".join(f"deleted: {d}\n" for d in deleted) + "\n")
    _out().write(f"Total reclaimed space: {human_size(freed)}\n")
    return 0
