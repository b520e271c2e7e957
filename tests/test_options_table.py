"""The option table (hpcrun/runtime/options.py) walked through every entry point.

Every run option must be accepted, with the same meaning, by `hpcrun run`, `hpcrun
task`, `hpcrun task --plan`, `hpcrun srun` (pyxis's spelling where one maps, else the
generic --container-NAME) and job files (`container:` keys and the shorthand keys).
Adding an option to one entry point and not another fails here: each entry point's
parser is derived from the table, and this test checks the derivation for every entry.
"""
from __future__ import annotations

import os

import pytest

from hpcrun.errors import UsageError
from hpcrun.runtime import options
from hpcrun.runtime.pipeline import run_options
from hpcrun.slurm import jobfile, render
from hpcrun.slurm import srun as pyxis

# A valid value for every option that takes one (a new option needs one here).
SAMPLES = {
    "env": "A=1", "env_files": "/etc/hostname", "volumes": "/tmp:/mnt:ro",
    "workdir": "/tmp", "entrypoint": "/bin/sh", "hostname": "node1", "preserve_fds": "1",
    "gpus": "all", "devices": "example.com/dev=a",
    "cpus": "1", "cpuset_cpus": "0", "memory": "512m", "memory_swap": "1g",
    "pids_limit": "100", "ulimits": "nofile=1024",
}


def sample(o):
    if o.kind in (options.CHOICE, options.OPTIONAL):
        return o.choices[-1]      # an optional value: what the bare spelling gives
    return SAMPLES[o.attr]


def expected(o):
    if o.kind == options.LIST:
        return (sample(o),)
    if o.kind == options.FLAG:
        return True
    if o.kind == options.OFF:
        return False
    return sample(o)


def words(o, spelling=None):
    s = spelling or o.name
    return [s, sample(o)] if o.takes_value else [s]


IDS = [o.name for o in options.TABLE]


def test_every_option_has_a_sample_and_help():
    for o in options.TABLE:
        assert o.help and o.where, o
        if o.takes_value:
            assert sample(o), o


@pytest.mark.parametrize("o", options.TABLE, ids=IDS)
@pytest.mark.parametrize("entry", [options.RUN, options.TASK, options.PLAN])
def test_cli_entry_points(o, entry):
    argv = words(o) + ["/img", "--", "cmd"] if entry != options.PLAN else words(o) + ["/img"]
    if entry not in o.where:
        with pytest.raises(UsageError, match="unknown option"):
            run_options(argv, entry)
        return
    for spelling in o.spellings:
        opts = run_options(words(o, spelling) + argv[len(words(o)):], entry)
        assert getattr(opts, o.attr) == expected(o), spelling
        assert opts.image == "/img"
    # the inverse, as srun's mapping and job files emit it
    assert run_options(options.to_argv({o.attr: expected(o)}) + argv[len(words(o)):],
                       entry).__getattribute__(o.attr) == expected(o)


@pytest.mark.parametrize("o", options.TABLE, ids=IDS)
def test_task_finds_image_after_every_option(o):
    if options.TASK not in o.where:
        return
    argv = words(o) + ["/img", "--", "cmd"]
    assert options.image_index(argv, options.TASK) == len(words(o))


@pytest.mark.parametrize("o", [o for o in options.TABLE if options.SRUN in o.where], ids=lambda o: o.name)
def test_srun_spelling(o):
    """hpcrun srun: pyxis's name where it maps, else --container-NAME."""
    name = o.pyxis or "container-" + o.key
    assert name in pyxis.OPTIONS, f"{o.name} has no hpcrun srun spelling"
    takes = pyxis.OPTIONS[name].value
    value = {"volumes": "/tmp:/mnt:ro", "env": "A"}.get(o.attr, sample(o)) if takes else None
    arg = f"--{name}" + (f"={value}" if value is not None else "")
    plan = pyxis.plan(["--container-image=/tmp", arg, "-N1", "--", "true"],
                      environ={}, cwd="/")
    opts = run_options(list(plan.run_opts) + ["/img"], options.PLAN)
    got = getattr(opts, o.attr)
    if o.attr == "volumes":
        assert got == ("/tmp:/mnt:ro",)
    elif o.attr == "env":
        assert got == ("A",)
    elif o.attr == "entrypoint":
        assert got == ""                  # pyxis: --no-container-entrypoint
    elif o.attr == "node_container":
        assert got is False               # pyxis: --container-per-task
    else:
        assert got == expected(o)


@pytest.mark.parametrize("o", [o for o in options.TABLE if options.JOB in o.where], ids=lambda o: o.name)
def test_job_file_container_key(o, tmp_path):
    v = expected(o)
    value = list(v) if isinstance(v, tuple) else (not v if o.kind == options.OFF else v)
    if o.kind == options.OFF:
        value = True                      # no-home: true
    import json
    text = json.dumps({"image": "/tmp", "command": ["x"], "container": {o.key: value}})
    step = jobfile.parse(text, str(tmp_path / "j.yaml")).steps[0]
    argv = render.task_options(step)
    opts = run_options(argv, options.PLAN)
    assert getattr(opts, o.attr) == expected(o)
    assert o.key in jobfile.schema()["definitions"]["container"]["properties"]


def test_job_file_shorthand_keys_map_onto_the_table(tmp_path):
    text = ('image: /tmp\ncommand: ["x"]\nenv: {A: "1"}\nmounts: ["/tmp:/mnt:ro"]\n'
            'workdir: /tmp\nscratch: true\n')
    step = jobfile.parse(text, str(tmp_path / "j.yaml")).steps[0]
    opts = run_options(render.task_options(step), options.PLAN)
    for o in options.TABLE:
        if o.job:
            assert getattr(opts, o.attr) == (expected(o) if o.attr != "volumes" else
                                             ("/tmp:/mnt:ro",)), o.job


def test_job_file_unknown_container_key(tmp_path):
    from hpcrun.errors import JobFileError
    with pytest.raises(JobFileError, match="pidd"):
        jobfile.parse('image: /tmp\ncommand: ["x"]\ncontainer: {pidd: private}\n',
                      str(tmp_path / "j.yaml"))


def test_help_texts_list_every_option():
    from hpcrun.cli import run, task
    for o in options.TABLE:
        if options.RUN in o.where:
            assert o.name in run.usage()
        if options.TASK in o.where:
            assert o.name in task.usage()
        if options.SRUN in o.where:
            name = (o.pyxis or "container-" + o.key)
            name = name[3:] if name.startswith("no-") else name
            assert name in pyxis.USAGE, o.name


def test_the_two_task_regressions():
    """From issue 13: task took an option's value for the image."""
    assert run_options(["--entrypoint", "X", "IMG", "cmd"], options.TASK).image == "IMG"
    assert run_options(["--ipc", "private", "IMG", "cmd"], options.TASK).image == "IMG"
    assert run_options(["--ipc", "private", "IMG"], options.PLAN).ipc == "private"


@pytest.mark.parametrize("arg", ["/tmp:", "/tmp::ro"])
def test_empty_bind_destination_is_refused(arg):
    """Docker and pyxis refuse SRC: (issue 13); so do run and srun."""
    from hpcrun.runtime import mounts
    with pytest.raises(UsageError, match="empty destination"):
        mounts.parse_volume(arg)
    with pytest.raises(UsageError, match="empty destination"):
        pyxis.plan([f"--container-image=/tmp", f"--container-mounts={arg}", "--", "true"],
                   environ={}, cwd="/")


# Choices with open-ended values (--network container:NAME): the same walk.
OPEN = [(o, p + "web") for o in options.TABLE for p in o.prefixes]


@pytest.mark.parametrize("o,value", OPEN, ids=lambda x: getattr(x, "name", x))
def test_open_choice_on_every_entry_point(o, value, tmp_path):
    for entry in (options.RUN, options.TASK, options.PLAN):
        tail = ["/img", "--", "cmd"] if entry != options.PLAN else ["/img"]
        for spelling in o.spellings:
            assert getattr(run_options([spelling, value] + tail, entry), o.attr) == value
            assert getattr(run_options([f"{spelling}={value}"] + tail, entry),
                           o.attr) == value
        assert getattr(run_options(options.to_argv({o.attr: value}) + tail, entry),
                       o.attr) == value
    name = o.pyxis or "container-" + o.key
    plan = pyxis.plan(["--container-image=/tmp", f"--{name}={value}", "-N1", "--", "true"],
                      environ={}, cwd="/")
    assert getattr(run_options(list(plan.run_opts) + ["/img"], options.PLAN), o.attr) == value
    import json
    text = json.dumps({"image": "/tmp", "command": ["x"], "container": {o.key: value}})
    step = jobfile.parse(text, str(tmp_path / "j.yaml")).steps[0]
    assert getattr(run_options(render.task_options(step), options.PLAN), o.attr) == value
    assert value.split(":")[0] + ":NAME" in o.metavar


@pytest.mark.parametrize("value,what", [("container:", "needs the name of an instance"),
                                         ("container:-x", "invalid instance name"),
                                         ("containers:web", "unknown --network value")])
def test_bad_network_container_values(value, what, tmp_path):
    with pytest.raises(UsageError, match=what):
        run_options(["--network", value, "/img", "cmd"], options.RUN)
    from hpcrun.errors import JobFileError
    import json
    if value == "containers:web":
        with pytest.raises(JobFileError, match="network"):
            jobfile.parse(json.dumps({"image": "/tmp", "command": ["x"],
                                      "container": {"network": value}}),
                          str(tmp_path / "j.yaml"))
