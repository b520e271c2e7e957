"""`hpcrun build` as the unprivileged user: every instruction checked by running the
built image, stages, .dockerignore, the cache, fake root, a build killed mid-RUN.

The base image is the session's busybox image loaded into a fresh store per test
(fixtures_image); the apt test uses a Debian base made with debootstrap
(tests/fixtures_build.py).
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import time

import pytest

import util
from fixtures_image import hp, ok, records, tree_of

pytestmark = [pytest.mark.userns, pytest.mark.root]


@pytest.fixture
def bstore(user, store_env, image_files):
    """A fresh store holding test/busybox:1."""
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    return store_env


@pytest.fixture
def ctx(user, user_tmp):
    """A build context directory the test user owns; write(path, text) adds files."""
    d = os.path.join(user_tmp, "ctx")
    os.mkdir(d)
    os.chown(d, user.uid, user.gid)

    def write(rel, text="", mode=0o644):
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)
        for root, dirs, files in os.walk(d):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), user.uid, user.gid)
        return p
    write.dir = d
    return write


def build(user, env, ctx_dir, *args, **kw):
    return hp(user, env, "build", *args, ctx_dir, timeout=kw.pop("timeout", 300), **kw)


def run(user, env, image, *cmd):
    return ok(hp(user, env, "run", image, *(("--",) + cmd if cmd else ()))).stdout


def inspect(user, env, image):
    return json.loads(ok(hp(user, env, "inspect", image)).stdout)[0]


def export_members(user, env, image) -> dict:
    cp = util.hpcrun(user, "export", image, env=env, text=False)
    assert cp.returncode == 0, cp.stderr
    with tarfile.open(fileobj=io.BytesIO(cp.stdout)) as tf:
        return {m.name.lstrip("./"): m for m in tf.getmembers()}


# ------------------------------------------------------------------ instructions


def test_every_instruction_by_running_the_image(user, bstore, ctx):
    tar_src = io.BytesIO()
    with tarfile.open(fileobj=tar_src, mode="w:gz") as tf:
        data = b"from the tarball\n"
        ti = tarfile.TarInfo("pkg/inside.txt")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    p = os.path.join(ctx.dir, "pkg.tar.gz")
    with open(p, "wb") as f:
        f.write(tar_src.getvalue())
    os.chown(p, user.uid, user.gid)
    ctx("a.txt", "A\n")
    ctx("b.txt", "B\n")
    ctx("c.dat", "C\n")
    ctx("tree/one", "1\n")
    ctx("tree/sub/two", "2\n", 0o755)
    ctx("Dockerfile", r"""# a comment
ARG BASE=test/busybox:1
FROM ${BASE}
ARG WHO=world
ENV GREETING="hello ${WHO}" \
    EMPTY=
ENV LEGACY value with spaces
LABEL org.example.name="the test" org.example.v=1
MAINTAINER someone@example.com
EXPOSE 80 53/udp
VOLUME ["/data"]
VOLUME /cache /logs
COPY *.txt /copied/
COPY tree /tree
COPY --chown=1234:99 c.dat /owned/c.dat
ADD pkg.tar.gz /unpacked/
WORKDIR /w
WORKDIR rel
RUN echo "$GREETING ${UNSET:-dflt} ${WHO:+set}" > /w/rel/out.txt && pwd >> /w/rel/out.txt
RUN ["/bin/sh", "-c", "echo exec form $GREETING > /exec.txt"]
SHELL ["/bin/sh", "-x", "-c"]
RUN echo shell-replaced > /shell.txt
USER 4242:4343
STOPSIGNAL SIGUSR1
HEALTHCHECK --interval=5s --retries=2 CMD test -e /copied/a.txt
ONBUILD RUN echo triggered > /onbuild.txt
ENTRYPOINT ["/bin/echo", "ep"]
CMD ["default", "args"]
""")
    cp = build(user, bstore, ctx.dir, "-t", "every:1", "--build-arg", "WHO=you")
    assert cp.returncode == 0, cp.stderr
    assert "Step 1/" in cp.stderr and cp.stdout.strip().startswith("sha256:")
    # ENTRYPOINT + CMD: run arguments replace CMD and are appended to ENTRYPOINT
    assert run(user, bstore, "every:1").strip() == "ep default args"
    assert run(user, bstore, "every:1", "x").strip() == "ep x"
    sh = ["--entrypoint", "/bin/sh", "every:1", "-c"]

    def inside(script):
        return ok(hp(user, bstore, "run", *sh[:3], "--", "-c", script)).stdout

    assert inside("cat /w/rel/out.txt") == "hello you dflt set\n/w/rel\n"
    assert inside("cat /exec.txt /shell.txt") == "exec form hello you\nshell-replaced\n"
    assert inside("cat /copied/a.txt /copied/b.txt; ls /copied") == "A\nB\na.txt\nb.txt\n"
    assert inside("cat /tree/one /tree/sub/two; test -x /tree/sub/two && echo x") == "1\n2\nx\n"
    assert inside("cat /unpacked/pkg/inside.txt") == "from the tarball\n"
    assert inside("pwd").strip() == "/w/rel"
    conf = inspect(user, bstore, "every:1")
    c = conf["Config"]
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["GREETING"] == "hello you" and env["EMPTY"] == "" and \
        env["LEGACY"] == "value with spaces"
    assert "WHO" not in env                 # ARGs are not kept in the image
    assert c["Labels"] == {"org.example.name": "the test", "org.example.v": "1"}
    assert conf["Author"] == "someone@example.com"
    assert c["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert c["Volumes"] == {"/data": {}, "/cache": {}, "/logs": {}}
    assert c["User"] == "4242:4343"
    assert c["StopSignal"] == "SIGUSR1"
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "test -e /copied/a.txt"],
                                "Interval": 5_000_000_000, "Retries": 2}
    assert c["OnBuild"] == ["RUN echo triggered > /onbuild.txt"]
    assert c["Shell"] == ["/bin/sh", "-x", "-c"]
    assert c["WorkingDir"] == "/w/rel"
    # --chown is recorded in the image's layer; other files belong to root
    members = export_members(user, bstore, "every:1")
    assert (members["owned/c.dat"].uid, members["owned/c.dat"].gid) == (1234, 99)
    assert (members["copied/a.txt"].uid, members["copied/a.txt"].gid) == (0, 0)


def test_onbuild_triggers_run_in_the_child_build(user, bstore, ctx):
    ctx("Dockerfile", "FROM test/busybox:1\nONBUILD RUN echo triggered > /onbuild.txt\n")
    ok(build(user, bstore, ctx.dir, "-t", "parent:1"))
    ctx("Dockerfile", "FROM parent:1\nRUN cat /onbuild.txt > /seen.txt\n")
    cp = ok(build(user, bstore, ctx.dir, "-t", "child:1"))
    assert "ONBUILD" in cp.stderr
    assert run(user, bstore, "child:1", "cat", "/seen.txt") == "triggered\n"
    assert not inspect(user, bstore, "child:1")["Config"].get("OnBuild")


def test_entrypoint_drops_the_base_cmd_and_shell_form(user, bstore, ctx):
    ctx("Dockerfile", "FROM test/busybox:1\nCMD [\"echo\", \"base\"]\n")
    ok(build(user, bstore, ctx.dir, "-t", "cmdbase:1"))
    ctx("Dockerfile", "FROM cmdbase:1\nENTRYPOINT echo from-shell-form\n")
    ok(build(user, bstore, ctx.dir, "-t", "ep:1"))
    c = inspect(user, bstore, "ep:1")["Config"]
    assert c["Entrypoint"] == ["/bin/sh", "-c", "echo from-shell-form"]
    assert not c.get("Cmd")
    assert run(user, bstore, "ep:1") == "from-shell-form\n"


def test_fake_root_lies_and_keeps_regular_nodes(user, bstore, ctx):
    """The seccomp filter: chown, setuid, device mknod succeed without effect; a fifo
    is made for real; the process still is (fake) root."""
    ctx("Dockerfile", r"""FROM test/busybox:1
RUN echo x > /f && chown 1:1 /f && chown -h 2:2 /f && mknod /dev-null-node c 1 3 \
 && mknod /blk b 7 0 && mknod /fifo p && id -u > /uid.txt && echo done > /ok.txt
""")
    ok(build(user, bstore, ctx.dir, "-t", "fake:1"))
    out = run(user, bstore, "fake:1", "sh", "-c",
              "cat /ok.txt /uid.txt; test -p /fifo && echo fifo; "
              "test -e /dev-null-node || echo no-char; test -e /blk || echo no-blk")
    assert out == "done\n0\nfifo\nno-char\nno-blk\n"
    members = export_members(user, bstore, "fake:1")
    assert members["f"].uid == 0            # the chown had no effect
    assert members["fifo"].isfifo()


def test_run_as_user_and_network_none(user, bstore, ctx):
    ctx("Dockerfile", "FROM test/busybox:1\nUSER 1000\nRUN id -u > /u && cat /u "
                      "&& ls /sys/class/net > /net\nUSER root\nRUN cat /net\n")
    cp = ok(build(user, bstore, ctx.dir, "--network", "none", "-t", "u:1"))
    assert "1000" in cp.stderr
    assert run(user, bstore, "u:1", "cat", "/net") == "lo\n"


# ------------------------------------------------------------------ stages


def test_multi_stage_copy_from_target_and_dockerignore(user, bstore, ctx):
    ctx("src/main.txt", "main\n")
    ctx("src/debug.log", "noise\n")
    ctx("src/keep.log", "kept\n")
    ctx("secret/key", "k\n")
    ctx(".dockerignore", "# not this\n**/*.log\n!src/keep.log\nsecret\n")
    ctx("Dockerfile", """FROM test/busybox:1 AS builder
COPY src /src
RUN ls /src > /listing && echo built > /artifact
FROM test/busybox:1 AS other
RUN echo never > /never
FROM test/busybox:1
COPY --from=builder /artifact /listing /out/
COPY --from=0 /src/main.txt /main.txt
""")
    cp = ok(build(user, bstore, ctx.dir, "-t", "ms:1"))
    assert "never" not in cp.stderr          # a stage the target does not need is skipped
    assert run(user, bstore, "ms:1", "cat", "/out/artifact", "/out/listing", "/main.txt") == \
        "built\nkeep.log\nmain.txt\nmain\n"
    cp = ok(build(user, bstore, ctx.dir, "--target", "builder", "-t", "ms:builder"))
    assert run(user, bstore, "ms:builder", "cat", "/artifact") == "built\n"
    # an ignored file cannot be copied at all
    ctx("Dockerfile", "FROM test/busybox:1\nCOPY secret/key /key\n")
    cp = build(user, bstore, ctx.dir)
    assert cp.returncode != 0 and "excluded by .dockerignore" in cp.stderr


# ------------------------------------------------------------------ cache


def _steps(stderr: str) -> list:
    """Per step: 'hit' or 'run', for steps that do file work."""
    out = []
    lines = stderr.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("Step ") and ln.split(" : ", 1)[1].split()[0] in (
                "RUN", "COPY", "ADD", "WORKDIR"):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            out.append("hit" if nxt.strip() == "---> Using cache" else "run")
    return out


def test_cache_hits_and_misses_are_precise(user, bstore, ctx):
    ctx("one.txt", "1\n")
    ctx("two.txt", "2\n")
    ctx("Dockerfile", """FROM test/busybox:1
RUN echo first > /first
COPY one.txt /one.txt
RUN cat /one.txt > /after-one
COPY two.txt /two.txt
RUN cat /two.txt > /after-two
""")
    first = ok(build(user, bstore, ctx.dir, "-t", "c:1"))
    assert _steps(first.stderr) == ["run"] * 5
    again = ok(build(user, bstore, ctx.dir, "-t", "c:1"))
    assert _steps(again.stderr) == ["hit"] * 5
    assert again.stdout == first.stdout     # the same image, no new work
    ctx("two.txt", "2 changed\n")
    changed = ok(build(user, bstore, ctx.dir, "-t", "c:2"))
    assert _steps(changed.stderr) == ["hit", "hit", "hit", "run", "run"]
    assert run(user, bstore, "c:2", "cat", "/after-two") == "2 changed\n"
    ctx("one.txt", "1 changed\n")
    changed = ok(build(user, bstore, ctx.dir, "-t", "c:3"))
    assert _steps(changed.stderr) == ["hit", "run", "run", "run", "run"]
    nocache = ok(build(user, bstore, ctx.dir, "--no-cache", "-t", "c:4"))
    assert _steps(nocache.stderr) == ["run"] * 5
    # -q: only the id
    q = ok(build(user, bstore, ctx.dir, "-q", "-t", "c:5"))
    assert q.stderr == "" and q.stdout.strip().startswith("sha256:") and \
        len(q.stdout.splitlines()) == 1
    # prune empties the cache; the images stay runnable
    pr = ok(hp(user, bstore, "build", "prune"))
    assert "Deleted" in pr.stdout
    objects = os.path.join(bstore["HPCRUN_STORE"], "build-cache", "objects")
    assert os.listdir(objects) == []
    assert run(user, bstore, "c:2", "cat", "/after-two") == "2 changed\n"
    after = ok(build(user, bstore, ctx.dir, "-t", "c:6"))
    assert _steps(after.stderr) == ["run"] * 5


def build_until_started(user, bstore, tag, ctxdir):
    """`hpcrun build -t TAG CTXDIR` as the user in a session of its own, returned once a
    RUN step has printed "started" (its output streamed to stderr)."""
    e = util.user_env(user)
    e.update(bstore)
    p = subprocess.Popen([util.HPCRUN, "build", "-t", tag, ctxdir], user=user.uid,
                         group=user.gid, extra_groups=[], env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = ""
    deadline = time.time() + 120
    while "started" not in seen and time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        seen += line
    assert "started" in seen, seen
    return p


def test_sigkill_mid_run_then_rebuild_gives_the_same_result(user, bstore, ctx):
    hold = f"/dev/shm/hpcrun-test-build-hold-{os.getpid()}"
    with open(hold, "w"):
        pass
    try:
        ctx("Dockerfile", f"""FROM test/busybox:1
RUN echo before > /before
RUN echo started; while [ -e {hold} ]; do sleep 0.1; done; echo finished > /finished
RUN echo after > /after
""")
        before = records(bstore["HPCRUN_STORE"])
        p = build_until_started(user, bstore, "k:1", ctx.dir)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        p.stdout.close()
        p.stderr.close()
        assert records(bstore["HPCRUN_STORE"]) == before   # no half-built image
    finally:
        os.unlink(hold)
    cp = ok(build(user, bstore, ctx.dir, "-t", "k:1"))
    assert _steps(cp.stderr) == ["hit", "run", "run"]
    assert run(user, bstore, "k:1", "cat", "/before", "/finished", "/after") == \
        "before\nfinished\nafter\n"
    work = os.path.join(bstore["HPCRUN_STORE"], "build-cache", "work")
    assert os.listdir(work) == []           # the killed build's tree was cleaned


# ------------------------------------------------------------------ bad input


def _fails(cp, *parts):
    assert cp.returncode != 0, cp.stdout
    err = cp.stderr.strip().splitlines()
    first = [ln for ln in err if ln.startswith("hpcrun: error: ")]
    assert first, cp.stderr
    for part in parts:
        assert part in first[0], (part, cp.stderr)
    assert any(ln.startswith("hint: ") for ln in err), cp.stderr
    return first[0]


@pytest.mark.parametrize("dockerfile,parts", [
    ("FROM test/busybox:1\nCOPY\n", ["Dockerfile:2", "COPY", "needs a source"]),
    ("FROM test/busybox:1\nFROBNICATE x\n", ["Dockerfile:2", "unknown instruction FROBNICATE"]),
    ("FROM test/busybox:1\nCOPY missing.txt /\n", ["Dockerfile:2", "COPY missing.txt /",
                                                   "not found"]),
    ("FROM test/busybox:1\nCOPY ../outside /\n", ["Dockerfile:2", "outside the build context"]),
    ("FROM test/busybox:1\nCOPY link-out /\n", ["Dockerfile:2", "COPY link-out /",
                                                "outside the build context"]),
    ("FROM test/busybox:1\n\nRUN echo one; echo last-words; exit 3\n",
     ["Dockerfile:3", "RUN echo one", "exit status 3"]),
    ("ARG NOPE\nFROM ${NOPE}\n", ["Dockerfile:2", "FROM ${NOPE}", "empty"]),
    ("FROM no/such:image\n", ["Dockerfile:1", "FROM no/such:image", "not found"]),
    ("FROM test/busybox:1\nCOPY --from=nostage /x /\n", ["Dockerfile:2", "--from=nostage"]),
])
def test_bad_input_names_file_line_and_instruction(user, bstore, ctx, dockerfile, parts):
    os.symlink("/etc/passwd", os.path.join(ctx.dir, "link-out"))
    ctx("Dockerfile", dockerfile)
    before = records(bstore["HPCRUN_STORE"])
    cp = build(user, bstore, ctx.dir, "-t", "bad:1")
    _fails(cp, *parts)
    assert records(bstore["HPCRUN_STORE"]) == before
    if "exit 3" in dockerfile:
        assert "last-words" in cp.stderr.split("hint:", 1)[1]


def test_bad_target_and_undeclared_build_arg(user, bstore, ctx):
    ctx("Dockerfile", "FROM test/busybox:1 AS one\nRUN true\n")
    before = records(bstore["HPCRUN_STORE"])
    _fails(build(user, bstore, ctx.dir, "--target", "two"), "--target two", "no stage")
    _fails(build(user, bstore, ctx.dir, "--build-arg", "UNDECLARED=1"),
           "--build-arg UNDECLARED", "not declared")
    assert records(bstore["HPCRUN_STORE"]) == before
    # the predefined proxy ARGs need no declaration
    ok(build(user, bstore, ctx.dir, "--build-arg", "http_proxy=http://proxy.invalid:3128"))


# ------------------------------------------------------------------ more forms


def test_add_url_squashfs_format_and_copy_from_an_image(user, bstore, ctx, tmp_path, rt_fuse_open):
    # The squashfs-format image runs mounted with squashfuse (rt_fuse_open: a node that
    # lets users use FUSE; here /dev/fuse is root-only).
    import http.server
    import threading
    served = tmp_path / "www"
    served.mkdir()
    (served / "remote.txt").write_text("over http\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        ctx("Dockerfile", f"FROM test/busybox:1\nADD http://127.0.0.1:{srv.server_port}/remote.txt /dl/\n"
                          "COPY --from=test/busybox:1 /bin/busybox /copied-busybox\n")
        ok(build(user, bstore, ctx.dir, "--format", "squashfs", "-t", "url:1"))
    finally:
        srv.shutdown()
    doc = inspect(user, bstore, "url:1")
    assert doc["Hpcrun"]["Formats"] == ["squashfs"]
    # ADD gives a downloaded file mode 600, root's: read it as (fake) root
    out = ok(hp(user, bstore, "run", "--fakeroot", "url:1", "--", "sh", "-c",
                "cat /dl/remote.txt; cmp /bin/busybox /copied-busybox && echo same")).stdout
    assert out == "over http\nsame\n"


def test_siblings_share_the_cached_contents(user, bstore, ctx):
    ctx("big.bin", "x" * 100000)
    ctx("Dockerfile", "FROM test/busybox:1\nCOPY big.bin /big.bin\nRUN echo a > /which\n")
    ok(build(user, bstore, ctx.dir, "-t", "sib:a"))
    objects = os.path.join(bstore["HPCRUN_STORE"], "build-cache", "objects")
    n = len(os.listdir(objects))
    ctx("Dockerfile", "FROM test/busybox:1\nCOPY big.bin /big.bin\nRUN echo b > /which\n")
    cp = ok(build(user, bstore, ctx.dir, "-t", "sib:b"))
    assert _steps(cp.stderr) == ["hit", "run"]
    assert len(os.listdir(objects)) == n + 1          # only /which's new content
    assert run(user, bstore, "sib:b", "cat", "/which") == "b\n"


def test_rebuild_clones_the_base_tree_and_equals_a_fresh_unpack(user, bstore, ctx, user_tmp):
    """The store makes the image from the base image's unpacked tree (hard links) plus
    the build's layers: a RUN's whiteout applies on the clone, the base is untouched,
    and a fresh store loading the same image unpacks the same tree."""
    ctx("app.txt", "v1\n")
    ctx("Dockerfile", "FROM test/busybox:1\nRUN rm /bin/vi && echo made > /made\n"
                      "COPY app.txt /app.txt\n")
    ok(build(user, bstore, ctx.dir, "-t", "cl:1"))
    ctx("app.txt", "v2\n")
    env = dict(bstore, HPCRUN_VERBOSE="1")
    cp = ok(build(user, env, ctx.dir, "-t", "cl:2"))
    base, img = inspect(user, bstore, "test/busybox:1"), inspect(user, bstore, "cl:2")
    assert f"onto a clone of {base['Id'].split(':')[1][:12]}: 2 of 3 layers" in cp.stderr
    store = bstore["HPCRUN_STORE"]
    b_root = os.path.join(store, "images", base["Id"].split(":")[1], "rootfs")
    i_root = os.path.join(store, "images", img["Id"].split(":")[1], "rootfs")
    assert os.stat(os.path.join(b_root, "bin", "busybox")).st_ino == \
        os.stat(os.path.join(i_root, "bin", "busybox")).st_ino
    assert os.path.lexists(os.path.join(b_root, "bin", "vi"))
    assert not os.path.lexists(os.path.join(i_root, "bin", "vi"))
    assert run(user, bstore, "cl:2", "cat", "/app.txt", "/made") == "v2\nmade\n"
    archive = os.path.join(user_tmp, "cl.tar")
    ok(hp(user, bstore, "save", "-o", archive, "cl:2"))
    fresh = {"HPCRUN_STORE": os.path.join(user_tmp, "fresh")}
    ok(hp(user, fresh, "load", "-i", archive))
    assert tree_of(i_root) == tree_of(os.path.join(fresh["HPCRUN_STORE"], "images",
                                                    img["Id"].split(":")[1], "rootfs"))


def test_files_a_run_removes_are_gone_from_the_image(user, bstore, ctx):
    """A step's layer whites out what it removed from the layers below."""
    ctx("Dockerfile", "FROM test/busybox:1\nRUN rm /bin/vi && mkdir -p /d/sub && echo x > /d/sub/f\n"
                      "RUN rm -r /d/sub && echo y > /d/sub\n")
    ok(build(user, bstore, ctx.dir, "-t", "rm:1"))
    out = run(user, bstore, "rm:1", "sh", "-c", "test -e /bin/vi || echo no-vi; cat /d/sub; "
              "test -e /bin/ls && echo ls")
    assert out == "no-vi\ny\nls\n"
    # one layer per RUN on top of the base's
    assert len(inspect(user, bstore, "rm:1")["RootFS"]["Layers"]) == \
        len(inspect(user, bstore, "test/busybox:1")["RootFS"]["Layers"]) + 2
    hist = ok(hp(user, bstore, "history", "rm:1")).stdout.splitlines()
    assert "RUN rm -r /d/sub" in hist[1] and "RUN rm /bin/vi" in hist[2]


@pytest.mark.parametrize("abi", ["native", "i386"])
def test_seccomp_filter_calls_one_by_one(user, bstore, ctx, abi):
    """A static C probe (tests/data/build/fakeroot_probe.c) in a RUN: what each call
    returns under the fake-root filter, and what really happened. The i386 build checks
    the filter's table of 32-bit numbers (x86_64 only, where gcc-multilib is there)."""
    import platform
    import shutil as sh
    util.require(sh.which("gcc") is not None, "gcc is not installed")
    probe = os.path.join(ctx.dir, "probe")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "build",
                       "fakeroot_probe.c")
    flags = []
    if abi == "i386":
        if platform.machine() != "x86_64":
            pytest.skip("i386 binaries run only on x86_64")
        flags = ["-m32"]
    cc = subprocess.run(["gcc", *flags, "-static", "-O2", "-o", probe, src],
                        capture_output=True, text=True)
    if abi == "i386" and cc.returncode != 0:
        pytest.skip("no 32-bit C library here (gcc-multilib): " + cc.stderr[-200:])
    util.require(cc.returncode == 0, "no static C library to build the probe: " + cc.stderr)
    os.chown(probe, user.uid, user.gid)
    ctx("Dockerfile", "FROM test/busybox:1\nCOPY probe /probe\nRUN /probe\n")
    cp = ok(build(user, bstore, ctx.dir))
    got = dict(ln.split(" ", 1) for ln in cp.stderr.splitlines()
               if ln.split(" ", 1)[0] in ("chown", "fchownat", "owner", "setgroups",
                                          "setresgid", "setresuid", "setfsuid", "uid",
                                          "capset", "mknod-chr", "mknod-blk", "mknod-reg",
                                          "mknod-fifo", "exists", "setxattr-acl",
                                          "setxattr-user"))
    for call in ("chown", "fchownat", "setgroups", "setresgid", "setresuid", "setfsuid",
                 "capset", "mknod-chr", "mknod-blk", "mknod-reg", "mknod-fifo"):
        assert got[call] == "0 0", (call, got)
    assert got["owner"] == "0 0"            # the chowns had no effect
    assert got["uid"] == "0"                # nor did setresuid
    assert got["exists"] == "chr 0 blk 0 reg 1 fifo 1"
    assert got["setxattr-acl"] == "-1 ENOTSUP"
    assert got["setxattr-user"] == "-1 ENOTSUP"


@pytest.mark.parametrize("args,code,msg", [
    ((), 2, "missing argument CONTEXT"),
    (("--network", "bogus", "."), 2, "--network"),
    (("-t", "x@sha256:" + "0" * 64, "."), 2, "a digest cannot name a built image"),
    (("/nonexistent-context",), 1, "build context /nonexistent-context is not a directory"),
    (("-f", "/nonexistent/Dockerfile", "/"), 1, "cannot read the Dockerfile"),
])
def test_build_badargs(user, store_env, args, code, msg):
    cp = hp(user, store_env, "build", *args)
    assert cp.returncode == code, cp.stderr
    assert cp.stderr.startswith("hpcrun: error: ") and msg in cp.stderr
    assert "\nhint: " in cp.stderr
