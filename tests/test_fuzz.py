"""Random argument lists and random hostile image configs, as the unprivileged user.

Fails on any traceback in the output and on any exit code outside the documented set
(README, Exit codes): 0, 1, 2 for the image and Slurm-file verbs; for `run` and `task`
the container command's own status passes through, so the commands are chosen for a
known status (`true` 0, `false` 1, `sh -c 'exit 3'` 3, a missing program 127), and
125/126/127 are hpcrun's own (failure, cannot execute, not found).

Bounded in count (CASES_ARGS, CASES_CONFIGS) and in time (BUDGET_S seconds per part:
the loop stops early on a slow machine; nothing is asserted about time). Seeded: set
HPCRUN_FUZZ_SEED to replay; the seed is printed with every failure and in the summary
line (`pytest -s` shows it). Verbs that need the network or a Slurm cluster (pull,
push, login, submit, srun, cluster, ...) are left out: they have their own tests.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import string
import subprocess
import time

import pytest

import util

pytestmark = pytest.mark.userns

CASES_ARGS = 400
CASES_CONFIGS = 150
BUDGET_S = 30

SEED = int(os.environ.get("HPCRUN_FUZZ_SEED") or time.time_ns() % 1_000_000_007)
OTHER_CODES = {0, 1, 2}
HPCRUN_CODES = {125, 126, 127}

VERBS = ["images", "inspect", "tag", "rmi", "import", "render", "history", "export",
         "convert", "prune", "save", "load", "check", "schema"]
# The same word inside a container command must not matter: none of these is a program.
JUNK = ["--", "-", "", "-x", "--nope", "-vv", "--help", "=", ":", "::", "a:b:c", "..", "/",
        "/nonexistent", "/dev/zero", "/dev/null", "/etc/passwd", "/proc/self/fd/0",
        "-1", "0", "99999999999999999999", "1e9", "NaN", "é", "\u202e", "x" * 300,
        "sha256:" + "0" * 64, "sha256:zz", "localhost:5000/a/b:c@sha256:00",
        "UPPER/Case", "a//b", "../../etc", "~", "$HOME", "%s%n", "'\"", "a b", "\t",
        "--format", "dir", "squashfs", "dir,squashfs", "-o", "-i", "-f", "-a", "-q",
        "--change", "STOPSIGNAL SIGFOO", "ENV A", "CMD [", "WORKDIR rel", "--all"]
RUN_FLAGS = [["--rm"], ["--pid", "private"], ["--pid", "x"], ["--network", "none"],
             ["--network", "junk"], ["-e", "A=1"], ["-e", "=x"], ["-e", ""], ["-w", "/tmp"],
             ["-w", "rel"], ["-w", "/proc/self/fd/3"], ["-v", "/tmp:/mnt"], ["-v", "/x:/"],
             ["-v", ":"], ["-v", "/etc:/e:ro"], ["-v", "/etc:/e:junk"], ["--env-file", "/no"],
             ["--env-file", "/etc/passwd"], ["--cpus", "-1"], ["--cpus", "x"],
             ["--entrypoint", "nosuchprog"], ["--entrypoint", ""], ["--unpack"],
             ["--name", "a/b"], ["--ulimit", "nofile=1:2"], ["--ulimit", "junk"], ["-u", "x"],
             ["--writable"], ["--fakeroot"], ["--bogus"], ["-"],
             ["--network", "container:"], ["--network", "container:nofz"],
             ["--net=container:a/b"]]
COMMANDS = [(["true"], 0), (["false"], 1), (["sh", "-c", "exit 3"], 3),
            (["nosuchprog-fz"], 127), ([], 0)]


def _word(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(JUNK)
    n = rng.randint(0, 12)
    return "".join(rng.choice(string.printable.strip() + "é\u00ff") for _ in range(n))


@pytest.fixture(scope="module")
def fuzz_env(user):
    """A store holding fz/img:1 (imported busybox), a tarball and a directory image."""
    d = util.shared_tmpdir("hpcrun-fuzz-", owner=user)
    root = os.path.join(d, "rootfs")
    util.make_busybox_rootfs(root)
    tar = os.path.join(d, "rootfs.tar")
    subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", d], check=True)
    env = {"HPCRUN_STORE": os.path.join(d, "store"),
           "HPCRUN_UNPACK_CACHE": os.path.join(d, "unpack"),
           "HPCRUN_NODE_CACHE": os.path.join(d, "nodecache")}
    cp = util.hpcrun(user, "import", tar, "fz/img:1", env=env)
    assert cp.returncode == 0, cp.stderr
    yield {"dir": d, "root": root, "tar": tar, "env": env}
    shutil.rmtree(d, ignore_errors=True)


class Tally:
    def __init__(self, what: str):
        self.what, self.cases, self.bad = what, 0, []

    def check(self, argv, cp, allowed: set) -> None:
        self.cases += 1
        out = (cp.stdout or "") + (cp.stderr or "")
        if "Traceback" in out:
            self.bad.append(f"traceback: {argv!r}\n{out[-2000:]}")
        elif cp.returncode not in allowed:
            self.bad.append(f"exit {cp.returncode} not in {sorted(allowed)}: {argv!r}\n"
                            f"{out[-1000:]}")

    def report(self) -> None:
        tb = sum(b.startswith("traceback") for b in self.bad)
        print(f"\nfuzz {self.what}: seed={SEED} cases={self.cases} tracebacks={tb} "
              f"out-of-range={len(self.bad) - tb}")
        assert not self.bad, f"HPCRUN_FUZZ_SEED={SEED}\n" + "\n\n".join(self.bad[:5])


def _run(user, argv, env, tally: Tally, allowed: set):
    try:
        cp = util.hpcrun(user, *argv, env=env, stdin=subprocess.DEVNULL, timeout=60)
    except subprocess.TimeoutExpired:
        tally.bad.append(f"hang (60 s): {argv!r}")
        tally.cases += 1
        return
    tally.check(argv, cp, allowed)


def test_fuzz_argument_lists(user, fuzz_env):
    rng = random.Random(SEED)
    tally = Tally("arguments")
    env = fuzz_env["env"]
    names = ["fz/img:1", "fz/img", "fz/other:2", fuzz_env["tar"], fuzz_env["root"], "-"]
    end = time.monotonic() + BUDGET_S
    for _ in range(CASES_ARGS):
        if time.monotonic() > end:
            break
        if rng.random() < 0.35:
            verb = rng.choice(["run", "run", "task"])
            flags = [w for _ in range(rng.randint(0, 3)) for w in rng.choice(RUN_FLAGS)]
            if rng.random() < 0.2:
                flags.append(_word(rng))
            image = rng.choice([fuzz_env["root"], "fz/img:1", fuzz_env["root"], _word(rng)])
            cmd, code = rng.choice(COMMANDS)
            argv = [verb, *flags, image, *(["--"] if verb == "task" or rng.random() < 0.5
                                         else []), *cmd]
            # `--help` among the options (or as IMAGE) prints the help: exit 0
            helps = {0} if {"--help", "-h"} & {*flags, image} else set()
            _run(user, argv, env, tally, {code} | HPCRUN_CODES | helps)
        else:
            verb = rng.choice(VERBS)
            args = [rng.choice(names) if rng.random() < 0.4 else _word(rng)
                    for _ in range(rng.randint(0, 4))]
            if verb in ("export", "save") and "-o" not in args:
                args = ["-o", os.path.join(fuzz_env["dir"], "out.tar"), *args]
            _run(user, [verb, *args], env, tally, OTHER_CODES)
        if verb in ("rmi", "prune"):           # keep an image for the next cases
            util.hpcrun(user, "import", fuzz_env["tar"], "fz/img:1", env=env)
    assert tally.cases >= 20
    tally.report()


def _value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.3:
        return rng.choice([None, True, False, 0, -1, 2 ** 70, 1.5, "", "x", "a\u0000b",
                           "A=1", "/bin/true", "SIGTERM", "SIGFOO", "9999", "é\u202e",
                           "x" * 5000])
    if r < 0.65:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_word(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


FIELDS = ["Env", "Entrypoint", "Cmd", "WorkingDir", "User", "StopSignal", "Labels",
          "ExposedPorts", "Volumes", "Healthcheck", "Shell"]


def _config(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.05:
        return b"[" * rng.randint(60, 200000)
    if r < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    conf = {}
    for f in rng.sample(FIELDS, rng.randint(0, 4)):
        conf[f] = _value(rng)
    if rng.random() < 0.5:                 # mostly valid around the hostile field
        conf.setdefault("Env", ["PATH=/bin:/usr/bin"])
    doc = {"config": conf} if rng.random() < 0.8 else conf
    for k in rng.sample(["rootfs", "history", "os", "architecture", "created"], rng.randint(0, 2)):
        doc[k] = _value(rng)
    return json.dumps(doc).encode()


def test_fuzz_hostile_image_configs(user, fuzz_env):
    """Random configs as .hpcrun/config.json of a directory image, then `run IMG true`:
    0 when the config is valid, 125 when refused, 126/127 when it names an entrypoint
    that is not there; nothing else."""
    rng = random.Random(SEED + 1)
    tally = Tally("configs")
    root = fuzz_env["root"]
    os.makedirs(os.path.join(root, ".hpcrun"), exist_ok=True)
    path = os.path.join(root, ".hpcrun", "config.json")
    end = time.monotonic() + BUDGET_S
    for _ in range(CASES_CONFIGS):
        if time.monotonic() > end:
            break
        data = _config(rng)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
        verb = rng.choice(["run", "run", "task"])
        argv = [verb, root, *(["--"] if verb == "task" else []), "true"]
        _run(user, argv, fuzz_env["env"], tally, {0} | HPCRUN_CODES)
        if tally.bad and not tally.bad[-1].startswith("config:"):
            tally.bad[-1] = f"config: {data[:300]!r}\n" + tally.bad[-1]
    os.unlink(path)
    assert tally.cases >= 20
    tally.report()
