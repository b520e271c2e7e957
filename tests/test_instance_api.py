"""hpcrun.api: start, exec (status and output), batch from one process, stop; run as the
unprivileged user in a Python process of its own."""
from __future__ import annotations

import json
import os
import sys

import pytest

import util

pytestmark = [pytest.mark.userns, pytest.mark.root]

SCRIPT = r"""
import json, os, sys
from hpcrun.api import Instance, InstanceError
image = sys.argv[1]
out = {}
inst = Instance.start(image, name="api", writable_tmpfs=True, env={"FROM_API": "yes"},
                      hostname="apihost")
out["name"] = inst.name
st, o, e = inst.exec(["sh", "-c", "echo $FROM_API; hostname; echo err >&2; exit 3"])
out["exec"] = [st, o.decode(), e.decode()]
out["env"] = inst.exec(["sh", "-c", "echo $X"], env={"X": "over"}).stdout.decode()
out["wd"] = inst.exec(["pwd"], workdir="/etc").stdout.decode()
out["missing"] = inst.exec(["no-such-command"]).status
res = inst.batch([["sh", "-c", f"echo {i} > /f{i}; cat /f{i}"] for i in range(40)], parallel=3)
out["batch"] = [r.stdout.decode().strip() for r in res]
# One server process per parallel slot, not one process per command.
out["servers"] = len(inst._servers)
out["server_pids"] = [s.proc.pid for s in inst._servers]
inst.stop()
try:
    Instance.attach("api")
except InstanceError as e:
    out["after_stop"] = e.what
try:
    Instance.start("/no/such/image", name="x")
except InstanceError as e:
    out["bad_image"] = e.what
print(json.dumps(out))
"""


def test_api_start_exec_batch_stop(inst, rt_image):
    cp = util.as_user(inst.user, [sys.executable, "-c", SCRIPT, rt_image], env=inst.env())
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["name"] == "api"
    assert out["exec"] == [3, "yes\napihost\n", "err\n"]
    assert out["env"] == "over\n"
    assert out["wd"] == "/etc\n"
    assert out["missing"] == 127
    assert out["batch"] == [str(i) for i in range(40)]
    assert 1 <= out["servers"] <= 3
    assert "no such instance: api" in out["after_stop"]
    assert "bad_image" in out
    assert not os.path.exists(inst.state("api"))
    live = {p for p, _ in util.live_processes()}
    assert not set(out["server_pids"]) & live


def test_batch_server_refuses_a_missing_instance(inst):
    cp = inst("exec", "--batch", "nope", input="")
    assert cp.returncode == 125 and "no such instance: nope" in cp.stderr
