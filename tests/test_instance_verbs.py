"""The observing verbs against what they claim, read independently from /proc and the
file system: top, stats, logs, kill, pause/unpause, wait, diff, cp."""
from __future__ import annotations

import json
import os
import re
import time

import pytest

import util
from fixtures_instance import ns_members

pytestmark = [pytest.mark.userns, pytest.mark.root]


def _nspid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_top_lists_host_and_container_pids_as_proc_does(inst, rt_image):
    inst.ok("instance", "start", "--name", "top", rt_image, "sh", "-c", "sleep 300 & wait")
    time.sleep(0.3)
    lines = inst.ok("top", "top").stdout.splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "CPID", "STIME", "TIME", "CMD"]
    rows = {int(l.split()[1]): int(l.split()[3]) for l in lines[1:]}
    members = ns_members(inst.pid("top"))
    assert sorted(rows) == sorted(members)
    assert rows == {p: _nspid(p) for p in members}
    assert rows[inst.pid("top")] == 1


def test_stats_memory_matches_proc(inst, rt_image):
    # A process holding ~32 MiB resident.
    inst.ok("instance", "start", "--name", "mem", rt_image,
            "sh", "-c", "x=$(head -c 33554432 /dev/zero | tr '\\0' a); sleep 300")
    time.sleep(2)
    s = json.loads(inst.ok("stats", "--no-stream", "--format", "json", "mem").stdout)
    rss = 0
    for p in ns_members(inst.pid("mem")):
        with open(f"/proc/{p}/status") as f:
            rss += sum(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    assert abs(s["MemBytes"] - rss) <= 0.1 * rss
    assert s["PIDs"] == str(len(ns_members(inst.pid("mem"))))
    table = inst.ok("stats", "--no-stream", "mem").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "CPU", "%"] and table[1].startswith("mem ")


def test_stats_cpu_of_a_busy_instance(inst, rt_image):
    inst.ok("instance", "start", "--name", "busy", rt_image, "sh", "-c", "while :; do :; done")
    s = json.loads(inst.ok("stats", "--no-stream", "--format", "json", "busy").stdout)
    assert s["CPU"] > 10      # a spinning shell: a visible share of a core


def test_logs_streams_tail_and_timestamps(inst, rt_image):
    inst.ok("instance", "start", "--name", "lg", rt_image,
            "sh", "-c", "echo one; echo two >&2; sleep 0.3; echo three; sleep 300")
    for _ in range(100):
        cp = inst.ok("logs", "lg")
        if "three" in cp.stdout:
            break
        time.sleep(0.1)
    assert cp.stdout == "one\nthree\n" and cp.stderr == "two\n"
    assert inst.ok("logs", "--tail", "1", "lg").stdout == "three\n"
    ts = inst.ok("logs", "-t", "lg").stdout.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (one|three)$", l) for l in ts)


def test_logs_follow_ends_with_the_instance(inst, rt_image):
    inst.ok("instance", "start", "--name", "fl", rt_image,
            "sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.3; done")
    cp = inst.ok("logs", "-f", "fl", timeout=30)
    assert cp.stdout == "1\n2\n3\n"


def test_wait_prints_the_exit_code(inst, rt_image):
    inst.ok("instance", "start", "--name", "wt", rt_image, "sh", "-c", "sleep 0.5; exit 5")
    assert inst.ok("wait", "wt", timeout=30).stdout == "5\n"


def test_kill_default_is_sigkill_of_the_command(inst, rt_image):
    inst.ok("instance", "start", "--name", "kl", rt_image, "sh", "-c", "trap '' TERM; sleep 300")
    members = ns_members(inst.pid("kl"))
    inst.ok("kill", "kl")
    assert inst.ok("wait", "kl", timeout=30).stdout == "137\n"
    assert not [p for p, _ in util.live_processes() if p in members]


def test_kill_with_a_signal_reaches_the_command(inst, rt_image):
    inst.ok("instance", "start", "--name", "ks", rt_image,
            "sh", "-c", "trap 'echo got-usr1; exit 3' USR1; while :; do sleep 0.1; done")
    time.sleep(0.3)
    inst.ok("kill", "-s", "USR1", "ks")
    assert inst.ok("wait", "ks", timeout=30).stdout == "3\n"
    assert "got-usr1" in inst.ok("logs", "ks").stdout


def test_pause_stops_every_process_and_unpause_continues(inst, rt_image):
    inst.ok("instance", "start", "--name", "pz", rt_image, "sh", "-c", "sleep 300 & wait")
    time.sleep(0.3)
    sup = inst.pid("pz")
    inst.ok("pause", "pz")
    others = [p for p in ns_members(sup) if p != sup]
    assert others and all(_state(p) == "T" for p in others)
    inst.ok("unpause", "pz")
    assert all(_state(p) != "T" for p in others)


def test_stop_of_a_paused_instance_is_prompt(inst, rt_image):
    inst.ok("instance", "start", "--name", "pzs", rt_image, "sh", "-c", "sleep 300 & wait")
    members = ns_members(inst.pid("pzs"))
    inst.ok("pause", "pzs")
    t = time.monotonic()
    inst.ok("instance", "stop", "-t", "30", "pzs")
    assert time.monotonic() - t < 20
    assert not [p for p, _ in util.live_processes() if p in members]


def test_diff_markers(inst, rt_user_image):
    inst.ok("instance", "start", "--name", "df", "--writable-tmpfs", rt_user_image)
    inst.ok("exec", "df", "sh", "-c",
            "echo new > /added; echo more >> /etc/os-release; rm /bin/vi; mkdir /newdir")
    got = set(inst.ok("diff", "df").stdout.splitlines())
    assert {"A /added", "C /etc", "C /etc/os-release", "C /bin", "D /bin/vi", "A /newdir"} <= got
    assert not any("/etc/hosts" in l or "/etc/passwd" in l for l in got)   # hpcrun's mounts


def test_diff_needs_a_writable_instance(inst, rt_image):
    inst.ok("instance", "start", "--name", "ro", rt_image)
    cp = inst("diff", "ro")
    assert cp.returncode != 0 and "--writable-tmpfs" in cp.stderr


def test_cp_round_trip(inst, rt_image, user_tmp):
    inst.ok("instance", "start", "--name", "cpy", "--writable-tmpfs", rt_image)
    src = os.path.join(user_tmp, "in.txt")
    with open(src, "w") as f:
        f.write("payload\n")
    os.chown(src, inst.user.uid, inst.user.gid)
    inst.ok("cp", src, "cpy:/data.txt")
    assert inst.ok("exec", "cpy", "cat", "/data.txt").stdout == "payload\n"
    inst.ok("exec", "cpy", "sh", "-c", "mkdir -p /out/sub; echo deep > /out/sub/f")
    inst.ok("cp", "cpy:/out", os.path.join(user_tmp, "back"))
    with open(os.path.join(user_tmp, "back", "sub", "f")) as f:
        assert f.read() == "deep\n"
    inst.ok("cp", "cpy:/data.txt", os.path.join(user_tmp, "round.txt"))
    with open(os.path.join(user_tmp, "round.txt")) as f:
        assert f.read() == "payload\n"


def test_cp_resolves_symlinks_inside_the_container(inst, rt_image, user_tmp):
    inst.ok("instance", "start", "--name", "lnk", "--writable-tmpfs", rt_image)
    # An absolute link names the container's /etc/hostname-like file, not the host's.
    inst.ok("exec", "lnk", "sh", "-c", "echo inside > /target; ln -s /target /link")
    inst.ok("cp", "lnk:/link", os.path.join(user_tmp, "got"))
    with open(os.path.join(user_tmp, "got")) as f:
        assert f.read() == "inside\n"


def test_cp_of_a_missing_path(inst, rt_image, user_tmp):
    inst.ok("instance", "start", "--name", "cpm", rt_image)
    cp = inst("cp", "cpm:/no/such", user_tmp)
    assert cp.returncode != 0 and "no such file or directory: cpm:/no/such" in cp.stderr


def test_logs_and_wait_of_a_job_id_still_reach_slurm(inst):
    # Not an instance name: the job verb answers (here: no Slurm job 999999999).
    cp = inst("logs", "999999999")
    assert "instance" not in cp.stderr


def test_commit_then_run(inst, rt_user_image, user_tmp):
    store = {"HPCRUN_STORE": os.path.join(user_tmp, "store")}
    inst.ok("instance", "start", "--name", "cmt", "--writable-tmpfs", rt_user_image)
    inst.ok("exec", "cmt", "sh", "-c", "echo committed > /hello; rm /bin/vi")
    image_id = inst.ok("commit", "cmt", "mine:v1", env=store).stdout.strip()
    assert image_id.startswith("sha256:")
    assert "mine" in inst.ok("images", env=store).stdout
    assert inst.ok("run", "mine:v1", "cat", "/hello", env=store).stdout == "committed\n"
    assert inst("run", "mine:v1", "test", "-e", "/bin/vi", env=store).returncode == 1
    # A committed image committed again keeps its layers and adds one.
    inst.ok("instance", "start", "--name", "cmt2", "--writable-tmpfs", "mine:v1", env=store)
    inst.ok("exec", "cmt2", "sh", "-c", "echo second > /second")
    inst.ok("commit", "cmt2", "mine:v2", env=store)
    out = inst.ok("run", "mine:v2", "cat", "/hello", "/second", env=store).stdout
    assert out == "committed\nsecond\n"
