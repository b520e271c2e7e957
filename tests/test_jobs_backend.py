"""The Slurm CLI backend's parsing and pyslurm detection (no cluster needed).

The JSON records are the two layouts Slurm's own commands print: openapi v0.0.38
(22.05, what the local cluster runs) and v0.0.39+ (23.02 and newer); the second is
written out here because no newer Slurm is installed on this machine.
"""
from __future__ import annotations

import os
import re
import shutil

import util
from hpcrun.slurm import backend


def test_wait_status_exit_code_22_05():
    assert backend._exit(3 << 8) == (3, None)


def test_wait_status_signal_22_05():
    assert backend._exit(9) == (None, 9)


def test_exit_code_object_23_02():
    v = {"status": ["EXITED"], "return_code": {"set": True, "infinite": False, "number": 4},
         "signal": {"id": {"set": False, "infinite": False, "number": 0}, "name": ""}}
    assert backend._exit(v) == (4, None)


def test_job_from_23_02_layout():
    j = backend.job_from_json({
        "job_id": 42, "array_job_id": {"set": True, "infinite": False, "number": 40},
        "array_task_id": {"set": True, "infinite": False, "number": 2},
        "name": "sweep", "user_name": "u", "job_state": ["COMPLETED"],
        "exit_code": {"status": ["SUCCESS"], "return_code": {"set": True, "number": 0}},
        "nodes": "n[1-2]", "node_count": {"set": True, "number": 2},
        "standard_output": "%x-%A_%a.out", "current_working_directory": "/w",
        "batch_flag": True})
    assert (j.id, j.state, j.exit_code, j.stdout) == ("40_2", "COMPLETED", 0,
                                                      "/w/sweep-40_2.out")


def test_output_pattern_expansion():
    j = backend.job_from_json({"job_id": 7, "name": "n", "user_name": "u",
                               "job_state": "RUNNING", "batch_flag": True,
                               "standard_output": "/o/%u-%x-%j-%4j.log"})
    assert j.stdout == "/o/u-n-7-0007.log"


def test_default_output_is_slurm_default():
    j = backend.job_from_json({"job_id": 7, "job_state": "PENDING", "batch_flag": True,
                               "standard_output": "", "current_working_directory": "/w"})
    assert j.stdout == "/w/slurm-7.out"


def test_time_spec_to_minutes():
    assert [backend.parse_time(t) for t in ("30", "1:30", "2:00:00", "1-0", "UNLIMITED")] \
        == [30, 2, 120, 1440, None]


def test_partition_line_parsing():
    kv = backend._kv_line("PartitionName=debug Default=YES MaxTime=1-00:00:00 "
                          "Nodes=n[1-4] TotalNodes=4 Command=a b c")
    assert (kv["MaxTime"], kv["TotalNodes"], kv["Command"]) == ("1-00:00:00", "4", "a b c")


def test_pyslurm_absent_is_reported():
    ok, why = backend.pyslurm_status("22.05.8")
    assert (ok, why) == (False, "pyslurm is not installed")


def test_describe_without_a_configured_cluster(monkeypatch):
    util.require(bool(shutil.which("sbatch")), "Slurm's client commands are not installed")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    util.require(not os.path.exists("/etc/slurm/slurm.conf"), "a Slurm cluster is configured")
    assert backend.describe().startswith("slurm backend: cli, but no cluster is configured")


def test_describe_names_the_cli_backend_and_slurm_version(slurm_cluster):
    line = backend.describe(dict(os.environ, **slurm_cluster.env))
    assert re.match(r"slurm backend: cli \(.*Slurm \d+\.\d+\.\d+\); pyslurm", line)
