"""Job file validation: every mistake is reported with FILE:LINE: FIELD.PATH and a hint.

Pure parsing (no Slurm): `jobfile.parse` on text, plus the CLI (`hpcrun render`, run as
the unprivileged user) to check the message and exit status reach the user.
"""
from __future__ import annotations

import json
import os
import textwrap

import pytest

import util
from hpcrun.errors import HpcrunError, JobFileError, NotFound
from hpcrun.slurm import jobfile, jobs

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _err(text: str) -> HpcrunError:
    with pytest.raises(HpcrunError) as ei:
        jobfile.parse(textwrap.dedent(text), "job.yaml")
    return ei.value


def _parse(text: str) -> jobfile.JobFile:
    return jobfile.parse(textwrap.dedent(text), "job.yaml")


# --- unknown keys -------------------------------------------------------------

def test_unknown_key_names_line_and_suggests_close_key():
    e = _err("""\
        image: /img
        command: "true"
        comand: echo
        """)
    assert e.what == "job.yaml:3: comand: unknown key 'comand'"
    assert e.hint == "did you mean 'command'?"


def test_unknown_key_from_compose_suggests_our_spelling():
    e = _err("""\
        image: /img
        command: "true"
        volumes: ["/a:/b"]
        """)
    assert e.what.startswith("job.yaml:3: volumes: unknown key")
    assert e.hint == "did you mean 'mounts'?"


def test_hyphenated_key_is_refused_with_underscore_spelling():
    e = _err("""\
        image: /img
        command: "true"
        resources:
          nodes: 2
          cpus-per-task: 4
        """)
    assert e.what == "job.yaml:5: resources.cpus-per-task: unknown key 'cpus-per-task'"
    assert "did you mean 'cpus_per_task'?" in e.hint


def test_resource_key_at_top_level_points_under_resources():
    e = _err("""\
        image: /img
        command: "true"
        nodes: 2
        """)
    assert e.what.startswith("job.yaml:3: nodes: unknown key")
    assert "resources" in e.hint


def test_unknown_key_inside_step_has_full_path():
    e = _err("""\
        image: /img
        steps:
          a:
            command: "true"
          b:
            command: "true"
            depend_on: [a]
        """)
    assert e.what == "job.yaml:7: steps.b.depend_on: unknown key 'depend_on'"
    assert e.hint == "did you mean 'depends_on'?"


def test_duplicate_key_is_an_error():
    e = _err("""\
        image: /a
        command: "true"
        image: /b
        """)
    assert e.what == "job.yaml:3: image: duplicate key (first at line 1)"


# --- wrong types and values ----------------------------------------------------

def test_wrong_type_names_field_and_expected_type():
    e = _err("""\
        image: /img
        command: "true"
        resources:
          nodes: two
        """)
    assert e.what == "job.yaml:4: resources.nodes: expected an integer, got a string 'two'"


def test_wrong_type_in_step_resources():
    e = _err("""\
        image: /img
        steps:
          train:
            command: "true"
            resources:
              ntasks: [4]
        """)
    assert e.what.startswith("job.yaml:6: steps.train.resources.ntasks: expected an integer")


def test_boolean_field_rejects_string():
    e = _err("""\
        image: /img
        command: "true"
        scratch: maybe
        """)
    assert e.what == "job.yaml:3: scratch: expected true or false, got a string 'maybe'"


def test_mpi_value_outside_enum_suggests():
    e = _err("""\
        image: /img
        command: "true"
        mpi: pmi
        """)
    assert e.what == "job.yaml:3: mpi: 'pmi' is not one of pmix, pmi2, none"
    assert e.hint in ("did you mean 'pmix'?", "did you mean 'pmi2'?")


def test_bad_time_format():
    e = _err("""\
        image: /img
        command: "true"
        resources: {time: 2h}
        """)
    assert e.what.startswith("job.yaml:3: resources.time: '2h'")
    assert "HH:MM:SS" in e.hint


def test_bad_mount_names_list_index():
    e = _err("""\
        image: /img
        command: "true"
        mounts:
          - /data:/data:ro
          - /scratch
        """)
    assert e.what.startswith("job.yaml:5: mounts[1]: '/scratch'")
    assert "SRC:DST" in e.hint


def test_bad_array_spec():
    e = _err("""\
        image: /img
        command: "true"
        array: "3-"
        """)
    assert e.what.startswith("job.yaml:3: array: '3-'")


def test_missing_value_is_reported():
    e = _err("""\
        image:
        command: "true"
        """)
    assert e.what == "job.yaml:1: image: needs a value (a string)"


def test_missing_image_in_single_step_file():
    e = _err("""\
        command: "true"
        """)
    assert "missing required key 'image'" in e.what


def test_step_without_image_anywhere():
    e = _err("""\
        steps:
          only:
            command: "true"
        """)
    assert e.what == "job.yaml:2: steps.only: no image for this step"


def test_invalid_yaml_names_line():
    e = _err("""\
        image: /img
         command: x
        """)
    assert e.what.startswith("job.yaml:2: not valid YAML")


def test_not_a_mapping():
    e = _err("- image: /img\n")
    assert "expected a mapping" in e.what


# --- dependencies ------------------------------------------------------------

def test_dependency_cycle_is_reported_with_the_cycle():
    e = _err("""\
        image: /img
        steps:
          a:
            command: "true"
            depends_on: [c]
          b:
            command: "true"
            depends_on: [a]
          c:
            command: "true"
            depends_on: [b]
        """)
    assert e.what == "job.yaml:5: steps.a.depends_on: dependency cycle: a -> c -> b -> a"


def test_dependency_on_missing_step_suggests():
    e = _err("""\
        image: /img
        steps:
          prepare:
            command: "true"
          train:
            command: "true"
            depends_on: [prep]
        """)
    assert e.what == "job.yaml:7: steps.train.depends_on[0]: no step named 'prep'"
    assert e.hint == "did you mean 'prepare'?"


def test_step_depending_on_itself():
    e = _err("""\
        image: /img
        steps:
          a:
            command: "true"
            depends_on: [a]
        """)
    assert "depends on itself" in e.what


def test_steps_are_ordered_dependencies_first():
    job = _parse("""\
        image: /img
        steps:
          report:
            command: "true"
            depends_on: [train]
          train:
            command: "true"
            depends_on: [prepare]
          prepare:
            command: "true"
        """)
    assert [s.name for s in job.steps] == ["prepare", "train", "report"]


# --- resolution --------------------------------------------------------------

def test_top_level_values_are_step_defaults_and_merge():
    job = _parse("""\
        name: p
        image: /img
        env: {A: "1", B: "2"}
        mounts: ["/d:/data:ro"]
        resources: {time: "10", nodes: 1}
        steps:
          s:
            command: ["echo", 1]
            env: {B: "3"}
            mounts: ["/o:/out"]
            resources: {nodes: 2}
        """)
    s = job.steps[0]
    assert (s.job_name, s.env, s.mounts) == ("p.s", (("A", "1"), ("B", "3")),
                                             ("/d:/data:ro", "/o:/out"))
    assert (s.resources.nodes, s.resources.time, s.command) == (2, "10", ("echo", "1"))


def test_colon_time_is_not_read_as_base_60():
    job = _parse("""\
        image: /img
        command: "true"
        resources: {time: 10:00}
        """)
    assert job.steps[0].resources.time == "10:00"


def test_string_command_is_split_like_a_shell():
    job = _parse("""\
        image: /img
        command: sh -c 'echo "a b"'
        """)
    assert job.steps[0].command == ("sh", "-c", 'echo "a b"')


def test_relative_mount_and_image_are_relative_to_the_job_file():
    job = jobfile.parse("image: ./root\ncommand: x\nmounts: [data:/data]\n", "/srv/jobs/j.yaml")
    assert job.steps[0].image == "/srv/jobs/root"
    assert job.steps[0].mounts == ("/srv/jobs/data:/data",)


def test_default_name_is_the_file_stem():
    job = jobfile.parse("image: /i\ncommand: x\n", "/x/my-job.yaml")
    assert job.name == "my-job"


def test_golden_job_files_are_valid():
    for f in sorted(os.listdir(GOLDEN)):
        if f.endswith(".yaml"):
            jobfile.load(os.path.join(GOLDEN, f))


# --- images (checked before submit) ---------------------------------------------

def test_image_path_that_does_not_exist_is_refused(tmp_path):
    p = tmp_path / "j.yaml"
    p.write_text("image: /nonexistent/rootfs\ncommand: x\n")
    with pytest.raises(NotFound) as ei:
        jobs.check_images(jobfile.load(str(p)))
    assert ei.value.what == f"{p}:1: image: image /nonexistent/rootfs does not exist"


def test_malformed_image_reference_is_refused(tmp_path):
    p = tmp_path / "j.yaml"
    p.write_text("steps:\n  a:\n    image: Bad//Ref\n    command: x\n")
    with pytest.raises(JobFileError) as ei:
        jobs.check_images(jobfile.load(str(p)))
    assert ei.value.what.startswith(f"{p}:3: steps.a.image: invalid reference format")


# --- the schema --------------------------------------------------------------

def test_schema_command_prints_a_valid_json_schema(user):
    cp = util.hpcrun(user, "schema")
    assert cp.returncode == 0
    s = json.loads(cp.stdout)
    try:
        import jsonschema
    except ImportError:
        util.require(False, "jsonschema is not installed (pip install '.[test]')")
    jsonschema.Draft7Validator.check_schema(s)


def test_golden_job_files_validate_against_the_schema():
    try:
        import jsonschema
        import yaml
    except ImportError:
        util.require(False, "jsonschema is not installed (pip install '.[test]')")
    v = jsonschema.Draft7Validator(jobfile.schema())
    for f in sorted(os.listdir(GOLDEN)):
        if f.endswith(".yaml"):
            with open(os.path.join(GOLDEN, f)) as fh:
                data = yaml.safe_load(fh)
            assert list(v.iter_errors(data)) == [], f


def test_schema_rejects_what_the_validator_rejects():
    try:
        import jsonschema
    except ImportError:
        util.require(False, "jsonschema is not installed (pip install '.[test]')")
    v = jsonschema.Draft7Validator(jobfile.schema())
    bad = {"image": "/i", "command": "x", "resources": {"cpus-per-task": 2}}
    assert not v.is_valid(bad)


# --- through the CLI, as the unprivileged user --------------------------------------

def test_cli_reports_file_line_and_hint(user, user_tmp):
    p = os.path.join(user_tmp, "bad.yaml")
    with open(p, "w") as f:
        f.write("image: /img\ncommand: x\nresources:\n  memory: 4G\n")
    cp = util.hpcrun(user, "render", p)
    assert cp.returncode == 1
    assert cp.stderr.splitlines() == [
        f"hpcrun: error: {p}:4: resources.memory: unknown key 'memory'",
        "hint: did you mean 'mem'?"]
    assert cp.stdout == ""


def test_cli_missing_job_file(user):
    cp = util.hpcrun(user, "submit", "/nonexistent/job.yaml")
    assert cp.returncode == 1
    assert cp.stderr.startswith("hpcrun: error: job file /nonexistent/job.yaml does not exist")


def test_cli_job_file_name_too_long(user):
    # found by test_fuzz (HPCRUN_FUZZ_SEED=570197718): ENAMETOOLONG was a traceback
    cp = util.hpcrun(user, "render", "x" * 300)
    assert cp.returncode == 1
    assert cp.stderr.splitlines()[0] == (
        f"hpcrun: error: cannot read job file {'x' * 80}...: File name too long")
    assert "Traceback" not in cp.stderr and cp.stdout == ""


def test_unquoted_true_as_command_suggests_quotes():
    e = _err("""\
        image: /img
        command: true
        """)
    assert e.what == "job.yaml:2: command: expected a string or a list, got a boolean True"
    assert e.hint.endswith('(write it in quotes: "true")')
