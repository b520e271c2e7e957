"""Image verbs, spelled as Docker spells them: pull, push, login, logout, load, save,
import, export, convert, images, inspect, history, tag, rmi, prune.

Thin click commands: parse flags, call hpcrun.image.*, print results (ids, tables,
JSON) on stdout; progress and logs go to stderr. Errors are raised; main.py prints
them. Library modules are imported inside the commands (see hpcrun.cli.app).
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager

import click

from hpcrun.cli.app import complete_image, complete_image_or_path, format_option
from hpcrun.errors import HpcrunError, UsageError

STORE_FORMAT_HELP = "store the image as a directory, a squashfs file, or both (dir,squashfs)"


def _command(name: str, help: str, **kw):
    """A click command whose OSError (a full disk, a vanished file) is one line with a
    hint, not a traceback."""
    def deco(f):
        @functools.wraps(f)
        def wrapped(*a, **k):
            try:
                return f(*a, **k)
            except OSError as e:
                if isinstance(e, BrokenPipeError):
                    raise
                where = f"{e.filename}: " if e.filename else ""
                raise HpcrunError(f"{name}: {where}{e.strerror or e}",
                                  "check free space and permissions (the store is "
                                  "HPCRUN_STORE)") from e
        return click.command(name, help=help, **kw)(wrapped)
    return deco


def _image_arg(name: str = "name", metavar: str = "IMAGE", **kw):
    return click.argument(name, metavar=metavar, shell_complete=complete_image, **kw)


def _store_format():
    return click.option("--format", "fmt", default="dir", show_default=True,
                        metavar="dir|squashfs", help=STORE_FORMAT_HELP)


_insecure = click.option("--insecure", is_flag=True,
                         help="plain HTTP or unverified TLS for this registry")
_quiet = click.option("-q", "--quiet", is_flag=True, help="no progress output")


def _store():
    from hpcrun.image.store import Store
    return Store()


def _out():
    return sys.stdout


def _insecure_kw(insecure: bool) -> dict:
    return {"insecure": True} if insecure else {}


# ---------------------------------------------------------------- registry verbs


@_command("pull", "Download an image from a registry into the store.")
@click.argument("name", metavar="NAME[:TAG|@DIGEST]")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="default: this machine's")
@_quiet
@_store_format()
@_insecure
def pull(name: str, platform: str | None, quiet: bool, fmt: str, insecure: bool) -> int:
    from hpcrun.image.pull import pull as do_pull
    from hpcrun.image.reference import parse
    from hpcrun.image.store import parse_formats
    parse_formats(fmt)
    ref = parse(name)
    rec = do_pull(ref, store=_store(), platform=platform, fmt=fmt, quiet=quiet,
                  **_insecure_kw(insecure))
    _out().write(f"{ref}\n" if not quiet else f"{rec.id}\n")
    return 0


@_command("push", "Upload an image from the store to a registry.")
@_image_arg()
@click.argument("dest", metavar="[DESTINATION]", required=False)
@_quiet
@_insecure
def push(name: str, dest: str | None, quiet: bool, insecure: bool) -> int:
    """DESTINATION: the registry reference to push to (default: the image's name)."""
    from hpcrun.image.push import push as do_push
    _looked_up(name)
    do_push(_store(), name, dest=dest, quiet=quiet, **_insecure_kw(insecure))
    return 0


@_command("login", "Log in to a registry. The credentials are checked before they are "
          "stored. REGISTRY defaults to docker.io.")
@click.argument("registry", metavar="[REGISTRY]", default="docker.io")
@click.option("-u", "--username", metavar="USER")
@click.option("-p", "--password", metavar="PASSWORD",
              help="insecure (visible in ps and shell history); prefer --password-stdin")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin")
@_insecure
def login(registry: str,
          username: str | None,
          password: str | None,
          password_stdin: bool,
          insecure: bool) -> int:
    from hpcrun.image import registry as reg
    user = username
    if password_stdin:
        if password:
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
    reg.login(registry, user, password, **_insecure_kw(insecure))
    _out().write("Login Succeeded\n")
    return 0


@_command("logout", "Forget the credentials for a registry (default docker.io).")
@click.argument("registry", metavar="[REGISTRY]", default="docker.io")
def logout(registry: str) -> int:
    from hpcrun.image import auth
    from hpcrun.image.reference import split_registry
    host = split_registry(registry)
    shown = "docker.io" if host == "registry-1.docker.io" else host
    if auth.logout(registry):
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



@_command("load", "Load images from a docker-archive or oci-archive. Reads stdin without -i.")
@click.option("-i", "--input", "input_", metavar="FILE", type=click.Path(),
              help="read from FILE instead of stdin")
@click.option("-q", "--quiet", is_flag=True,
              help="no progress output (for Docker compatibility; load shows none)")
@_store_format()
def load(input_: str | None, quiet: bool, fmt: str) -> int:
    from hpcrun.image import archive
    from hpcrun.image.reference import parse
    from hpcrun.image.store import parse_formats
    parse_formats(fmt)
    if input_ is None and sys.stdin.isatty():
        raise UsageError("requested load from stdin, but stdin is a terminal",
                         "use -i FILE or pipe the archive in")
    src = input_ if input_ is not None else sys.stdin.buffer
    st = _store()
    for rec, tags in archive.load(st, src, fmt=fmt):
        if tags:
            for t in tags:
                _out().write(f"Loaded image: {parse(t).familiar}\n")
        else:
            _out().write(f"Loaded image ID: {rec.id}\n")
    return 0


@_command("save", "Write images as a docker-archive. Writes to stdout without -o.")
@_image_arg("names", nargs=-1, required=True)
@click.option("-o", "--output", metavar="FILE", type=click.Path(),
              help="write to FILE instead of stdout")
def save(names: tuple[str, ...], output: str | None) -> int:
    from hpcrun.image import archive
    _looked_up(*names)
    st = _store()
    for n in names:
        st.require(n)  # fail before writing anything
    with _output(output, "archive") as f:
        archive.save(st, list(names), f)
    return 0


@_command("import", "Make an image from a root filesystem tarball. FILE - reads stdin.")
@click.argument("file", metavar="FILE|-", type=click.Path(allow_dash=True))
@click.argument("name", metavar="[REPOSITORY[:TAG]]", required=False)
@click.option("-c", "--change", multiple=True, metavar="INSTRUCTION",
              help="Dockerfile instruction: ENV, CMD, ENTRYPOINT, WORKDIR, USER, LABEL, "
                   "EXPOSE, VOLUME, STOPSIGNAL (repeatable)")
@click.option("-m", "--message", default="", help="commit message (in the history)")
@_store_format()
def import_(file: str, name: str, change: tuple[str, ...], message: str, fmt: str) -> int:
    from hpcrun.image import archive
    from hpcrun.image.store import parse_formats
    parse_formats(fmt)
    if name is not None:
        _new_name(name)
    change = list(change)
    archive.apply_changes({}, change)
    if file == "-":
        if sys.stdin.isatty():
            raise UsageError("import from stdin, but stdin is a terminal",
                             "pipe a tarball in or give a FILE")
        src = sys.stdin.buffer
    else:
        src = file
    rec = archive.import_tar(_store(), src, name, change, fmt=fmt, message=message)
    _out().write(rec.id + "\n")
    return 0


@_command("export", "Write an image's root filesystem as a tar. The layers are "
          "flattened; the tar goes to stdout without -o.")
@_image_arg()
@click.option("-o", "--output", metavar="FILE", type=click.Path(),
              help="write to FILE instead of stdout")
def export(name: str, output: str | None) -> int:
    from hpcrun.image import archive
    _looked_up(name)
    st = _store()
    st.require(name)
    with _output(output, "root filesystem tar") as f:
        archive.export(st, name, f)
    return 0


@_command("convert", """Convert between a directory, a squashfs file, a tar and an image.

'convert SRC DST': SRC and DST are each a root-filesystem directory, a squashfs file
(*.sqfs), a tarball (*.tar) or an image name in the store; the format of DST is taken
from DST, or from --format. Prints what was made.

'convert --format dir|squashfs IMAGE': keep a store image in that format (or both,
dir,squashfs); prints the image's paths.""")
@click.argument("src", metavar="SRC", shell_complete=complete_image_or_path)
@click.argument("dst", metavar="[DST]", required=False, type=click.Path())
@click.option("--format", "fmt", metavar="FORMAT",
              help="with DST: its format, where DST's name does not say; without DST: "
                   "how the store keeps IMAGE (dir, squashfs or dir,squashfs)")
@click.option("--keep", is_flag=True, help="store form: keep the other format too")
def convert(src: str, dst: str | None, fmt: str | None, keep: bool) -> int:
    if dst is not None:
        if keep:
            raise UsageError("--keep is for the store form (convert --format F IMAGE)",
                             "drop --keep")
        try:
            # (not at the top: hpcrun.image.convert is the store helper's module)
            from hpcrun.image.convert import convert as do_convert
        except ImportError as e:
            raise HpcrunError("convert SRC DST is not available in this build "
                              f"(hpcrun.image.convert: {e})",
                              "use 'hpcrun convert --format dir|squashfs IMAGE' for a "
                              "store image") from e
        _out().write(f"{do_convert(src, dst, fmt)}\n")
        return 0
    if not fmt:
        raise UsageError("hpcrun convert IMAGE needs --format dir|squashfs",
                         "or give a destination: hpcrun convert SRC DST")
    from hpcrun.image.store import parse_formats
    parse_formats(fmt)
    _looked_up(src)
    rec = _store().convert(src, fmt, keep=keep)
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


@_command("images", "List the images in the store.")
@click.argument("filter_", metavar="[REPOSITORY[:TAG]]", required=False,
                shell_complete=complete_image)
@click.option("-a", "--all", "all_", is_flag=True,
              help="(every image is listed; for Docker compatibility)")
@click.option("-q", "--quiet", is_flag=True, help="only image ids")
@click.option("--no-trunc", is_flag=True, help="full image ids")
@click.option("--digests", is_flag=True, help="show repository digests")
@format_option("table", "json", help="json: one JSON object per line")
def images(filter_: str | None,
           all_: bool,
           quiet: bool,
           no_trunc: bool,
           digests: bool,
           out: str) -> int:
    from hpcrun.image.layers import human_size
    from hpcrun.image.reference import try_parse
    recs = _store().images()
    want = None
    if filter_:
        r = try_parse(filter_)
        if r is None:
            raise UsageError(f"invalid reference format: {filter_!r}",
                             "filter with REPOSITORY or REPOSITORY:TAG")
        want = (r.name, r.tag if ":" in filter_.rsplit("/", 1)[-1] else None)
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
    if quiet:
        seen = []
        for rec, *_ in rows:
            i = rec.id if no_trunc else rec.short_id
            if i not in seen:
                seen.append(i)
        _out().write("".join(i + "\n" for i in seen))
        return 0
    if out == "json":
        for rec, repo, tag, digest in rows:
            _out().write(json.dumps({
                "ID": rec.id if no_trunc else rec.short_id, "Repository": repo, "Tag": tag,
                "Digest": digest, "CreatedAt": rec.created, "CreatedSince": since(rec.created),
                "Size": human_size(rec.size), "SizeBytes": rec.size,
                "Formats": list(rec.formats), "Path": rec.path,
            }) + "\n")
        return 0
    headers = ["REPOSITORY", "TAG"] + (["DIGEST"] if digests else []) + \
        ["IMAGE ID", "CREATED", "SIZE", "FORMAT"]
    table = []
    for rec, repo, tag, digest in rows:
        table.append([repo, tag] + ([digest] if digests else []) +
                     [rec.id if no_trunc else rec.short_id, since(rec.created),
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


@_command("inspect", "Print images' details as a JSON array.")
@_image_arg("names", nargs=-1, required=True)
@click.option("-f", "--format", "out", default="json", show_default=True,
              help="json, or a template with {{.Field.Sub}} / {{json .Field}}")
def inspect(names: tuple[str, ...], out: str) -> int:
    from hpcrun.errors import NotFound
    _looked_up(*names)
    st = _store()
    docs, missing = [], []
    for n in names:
        rec = st.get(n)
        if rec is None:
            missing.append(n)
        else:
            docs.append(inspect_doc(rec))
    if out == "json":
        _out().write(json.dumps(docs, indent=4) + "\n")
    else:
        for d in docs:
            _out().write(_template(out, d) + "\n")
    if missing:
        raise NotFound(f"no such image: {missing[0]}", "see 'hpcrun images'")
    return 0


@_command("history", "Show the history of an image's layers.")
@_image_arg()
@click.option("-q", "--quiet", is_flag=True, help="only image ids")
@click.option("--no-trunc", is_flag=True, help="do not truncate output")
@click.option("-H", "--human", is_flag=True, default=True, hidden=True)
@format_option("table", "json", help="json: one JSON object per line")
def history(name: str, quiet: bool, no_trunc: bool, human: bool, out: str) -> int:
    from hpcrun.image.layers import human_size
    _looked_up(name)
    rec = _store().require(name)
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
    lines = []
    for i, (h, size) in enumerate(rows):
        img = (rec.id if no_trunc else rec.short_id) if i == 0 else "<missing>"
        lines.append((img, h, size))
    if quiet:
        _out().write("".join(o[0] + "\n" for o in lines))
        return 0
    if out == "json":
        for img, h, size in lines:
            _out().write(json.dumps({"ID": img, "CreatedAt": h.get("created", ""),
                                     "CreatedSince": since(h.get("created", "")),
                                     "CreatedBy": h.get("created_by", ""), "Size": size,
                                     "Comment": h.get("comment", "")}) + "\n")
        return 0
    table = []
    for img, h, size in lines:
        by = h.get("created_by", "")
        if not no_trunc and len(by) > 45:
            by = by[:44] + "…"
        table.append([img, since(h.get("created", "")), by, human_size(size),
                      h.get("comment", "")])
    _out().write(_table(table, ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]))
    return 0


def _looked_up(*names: str) -> None:
    """Refuse a name that is neither an image id nor a canonical reference, with the
    reference parser's reason (one parser for every verb)."""
    from hpcrun.image.reference import parse_lookup
    for n in names:
        parse_lookup(n)


def _new_name(name: str):
    """A name to give an image: a canonical REPOSITORY[:TAG] (lower-case repository, as
    Docker requires), by the one reference parser; no digest."""
    from hpcrun.image.reference import parse_name
    return parse_name(name)


@_command("tag", "Give an image another name (a lower-case REPOSITORY[:TAG]).")
@_image_arg("src", metavar="SOURCE_IMAGE[:TAG]")
@click.argument("dst", metavar="TARGET_IMAGE[:TAG]")
def tag(src: str, dst: str | None) -> int:
    _looked_up(src)
    _new_name(dst)
    _store().tag(src, dst)
    return 0


@_command("rmi", "Remove names and images from the store.")
@_image_arg("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True,
              help="remove an image that has several names (all of them)")
def rmi(names: tuple[str, ...], force: bool) -> int:
    st = _store()
    first_error = None
    for n in names:
        try:
            _looked_up(n)
            for line in st.remove(n, force=force):
                _out().write(line + "\n")
        except HpcrunError as e:
            if first_error is None:
                first_error = e
            else:
                sys.stderr.write(f"hpcrun: error: {e.what}\n")
    if first_error is not None:
        raise first_error
    return 0


@_command("prune", "Remove untagged images and unused blobs. Also the leftovers of "
          "interrupted operations; --repair checks and mends the store instead.")
@click.option("-a", "--all", "all_", is_flag=True,
              help="remove every image, not only untagged")
@click.option("-f", "--force", is_flag=True, help="do not prompt (never prompts)")
@click.option("--repair", is_flag=True,
              help="only move damaged store files (image records, tags.json) aside; "
                   "deletes no healthy image")
def prune(all_: bool, force: bool, repair: bool) -> int:
    from hpcrun.image.layers import human_size
    st = _store()
    if repair:
        if all_:
            raise UsageError("--repair and --all do not go together",
                             "run 'hpcrun prune --repair', then 'hpcrun prune -a'")
        if not hasattr(st, "repair"):
            raise HpcrunError("prune --repair is not available in this build (no "
                              "Store.repair)", "update hpcrun")
        # repair only: images that lost their names must not go with it
        lines = st.repair()
        _out().write("".join(f"Repaired: {line}\n" for line in lines)
                     or "Nothing to repair\n")
        return 0
    deleted, freed = st.prune(all=all_)
    if deleted:
        _out().write("Deleted Images:\n" + "".join(f"deleted: {d}\n" for d in deleted) + "\n")
    _out().write(f"Total reclaimed space: {human_size(freed)}\n")
    return 0


COMMANDS = {c.name: c for c in (pull, push, login, logout, load, save, import_, export,
                                convert, images, inspect, history, tag, rmi, prune)}
