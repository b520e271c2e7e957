"""Rendering is pure and stable: golden sbatch scripts under tests/golden/.

Regenerate after an intended change with HPCRUN_UPDATE_GOLDEN=1 and review the diff.
"""
from __future__ import annotations

import os
import re

import pytest

import util
from hpcrun.slurm import jobfile, render

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
EXE = "/opt/hpcrun/bin/hpcrun"
CASES = sorted(f[:-5] for f in os.listdir(GOLDEN) if f.endswith(".yaml"))


def _golden(name: str, text: str) -> None:
    path = os.path.join(GOLDEN, name)
    if os.environ.get("HPCRUN_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read(), f"{name} differs (HPCRUN_UPDATE_GOLDEN=1 to regenerate)"


@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden(case):
    job = jobfile.load(os.path.join(GOLDEN, case + ".yaml"))
    for step in job.steps:
        name = f"{case}.{step.name}.sbatch" if step.name else f"{case}.sbatch"
        _golden(name, render.render(step, EXE, job.path))


def test_sbatch_lines_are_sorted_and_double_quoted():
    job = jobfile.load(os.path.join(GOLDEN, "array.yaml"))
    text = render.render(job.steps[0], EXE, job.path)
    lines = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert lines == sorted(lines)
    assert all(re.fullmatch(r'#SBATCH --[a-z-]+="[^"]*"', ln) for ln in lines)


def test_value_with_quote_is_escaped_for_sbatch():
    job = jobfile.parse('image: /i\ncommand: x\nresources: {partition: \'a"b\\c\'}\n', "j.yaml")
    assert '#SBATCH --partition="a\\"b\\\\c"\n' in render.render(job.steps[0], EXE)


def test_each_task_runs_the_steps_plan_through_srun():
    job = jobfile.load(os.path.join(GOLDEN, "steps.yaml"))
    step = job.step("train")
    assert render.task_argv(step, EXE) == ["srun", "--mpi=pmix", "$TASK", "--", "/opt/train",
                                           "--epochs", "10"]
    opts = render.task_options(step)
    assert opts[0] == "--node-container" and opts[-1] == "/images/trainer.sqfs"
    text = render.render(step, EXE)
    assert 'TASK=$("$HPCRUN" task --plan --node-container ' in text
    assert "exec srun --mpi=pmix $TASK -- /opt/train --epochs 10\n" in text


def test_dependencies_go_on_the_sbatch_command_line():
    assert render.sbatch_argv(["12", "13"]) == [
        "sbatch", "--parsable", "--dependency=afterok:12:13", "--kill-on-invalid-dep=yes"]


def test_render_cli_uses_hpcrun_exe_and_matches_golden(user):
    cp = util.hpcrun(user, "render", os.path.join(GOLDEN, "single.yaml"),
                     env={"HPCRUN_EXE": EXE})
    assert cp.returncode == 0, cp.stderr
    with open(os.path.join(GOLDEN, "single.sbatch")) as f:
        assert cp.stdout == f.read()


def test_render_cli_default_exe_is_the_running_hpcrun(user):
    cp = util.hpcrun(user, "render", os.path.join(GOLDEN, "single.yaml"))
    assert f"HPCRUN={util.HPCRUN}\n" in cp.stdout


def test_render_one_step(user):
    cp = util.hpcrun(user, "render", "--step", "report", os.path.join(GOLDEN, "steps.yaml"),
                     env={"HPCRUN_EXE": EXE})
    with open(os.path.join(GOLDEN, "steps.report.sbatch")) as f:
        assert cp.stdout == f.read()


def test_render_unknown_step(user):
    cp = util.hpcrun(user, "render", "--step", "nope", os.path.join(GOLDEN, "steps.yaml"))
    assert cp.returncode == 1
    assert "no step 'nope'" in cp.stderr
