"""Image verbs as Docker spells them: images, inspect, history, tag, rmi, prune, and
`hpcrun run NAME` with a loaded image. All as the unprivileged user."""
from __future__ import annotations

import json
import os

import pytest

import util
from fixtures_image import hp, ok, records, write_docker_archive


@pytest.fixture
def loaded(user, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    return image_files["layered"]


def test_images_table(user, store_env, loaded):
    out = ok(hp(user, store_env, "images")).stdout.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE", "FORMAT"]
    row = out[1].split()
    assert row[:3] == ["test/layered", "1", loaded.id[7:19]]
    assert row[-1] == "dir"


def test_images_no_trunc(user, store_env, loaded):
    out = ok(hp(user, store_env, "images", "--no-trunc")).stdout
    assert loaded.id in out


def test_images_quiet(user, store_env, loaded):
    assert ok(hp(user, store_env, "images", "-q")).stdout == loaded.id[7:19] + "\n"


def test_images_json(user, store_env, loaded):
    lines = ok(hp(user, store_env, "images", "--format", "json")).stdout.splitlines()
    doc = json.loads(lines[0])
    assert (doc["Repository"], doc["Tag"], doc["ID"]) == ("test/layered", "1", loaded.id[7:19])
    assert doc["Formats"] == ["dir"] and os.path.isdir(doc["Path"])


def test_images_filter(user, store_env, loaded):
    ok(hp(user, store_env, "tag", "test/layered:1", "other:2"))
    out = ok(hp(user, store_env, "images", "other")).stdout.splitlines()
    assert len(out) == 2 and out[1].split()[:2] == ["other", "2"]


def test_images_bad_format_flag(user, store_env):
    cp = hp(user, store_env, "images", "--format", "xml")
    # (one line naming the option and the bad value, as for check and run)
    assert cp.returncode == 2
    assert cp.stderr == ("hpcrun: error: unknown --format value 'xml'\n"
                         "hint: use --format table or --format json\n")


def test_untagged_image_shows_none(user, store_env, loaded):
    ok(hp(user, store_env, "tag", "test/layered:1", "keep:1"))
    ok(hp(user, store_env, "rmi", "test/layered:1"))
    ok(hp(user, store_env, "rmi", "keep:1"))
    ok(hp(user, store_env, "load", "-i", write_docker_archive(
        os.path.join(store_env["HPCRUN_STORE"], "..", "n.tar"), loaded, None)))
    row = ok(hp(user, store_env, "images")).stdout.splitlines()[1].split()
    assert row[:2] == ["<none>", "<none>"]


def test_inspect_json_array(user, store_env, loaded):
    docs = json.loads(ok(hp(user, store_env, "inspect", "test/layered:1")).stdout)
    assert isinstance(docs, list) and len(docs) == 1
    d = docs[0]
    assert d["Id"] == loaded.id
    assert d["RepoTags"] == ["test/layered:1"]
    assert d["RootFS"]["Layers"] == loaded.diff_ids
    assert d["Config"]["Cmd"] == ["/bin/sh"]


def test_inspect_by_short_id(user, store_env, loaded):
    cp = ok(hp(user, store_env, "inspect", "-f", "{{.Id}}", loaded.id[7:19]))
    assert cp.stdout.strip() == loaded.id


def test_inspect_by_full_name(user, store_env, loaded):
    cp = ok(hp(user, store_env, "inspect", "-f", "{{.Id}}", "docker.io/test/layered:1"))
    assert cp.stdout.strip() == loaded.id


def test_inspect_missing_image(user, store_env, loaded):
    cp = hp(user, store_env, "inspect", "test/layered:1", "nope:1")
    assert cp.returncode == 1
    assert "hpcrun: error: no such image: nope:1" in cp.stderr
    assert len(json.loads(cp.stdout)) == 1


def test_inspect_bad_template(user, store_env, loaded):
    cp = hp(user, store_env, "inspect", "-f", "{{.Nope}}", "test/layered:1")
    assert cp.returncode == 2 and "no field 'Nope'" in cp.stderr


def test_history(user, store_env, loaded):
    out = ok(hp(user, store_env, "history", "test/layered:1")).stdout.splitlines()
    assert out[0].split()[:2] == ["IMAGE", "CREATED"]
    assert out[1].split()[0] == loaded.id[7:19]
    assert "test layer 3" in out[1] and "test layer 1" in out[3]
    assert out[2].startswith("<missing>")


def test_history_json(user, store_env, loaded):
    lines = ok(hp(user, store_env, "history", "--format", "json", "test/layered:1")).stdout
    docs = [json.loads(x) for x in lines.splitlines()]
    assert [d["CreatedBy"] for d in docs] == ["test layer 3", "test layer 2", "test layer 1"]


def test_tag_then_both_names_resolve(user, store_env, loaded):
    ok(hp(user, store_env, "tag", "test/layered:1", "localhost:5000/ns/img:v2"))
    cp = ok(hp(user, store_env, "inspect", "-f", "{{json .RepoTags}}", loaded.id[7:19]))
    assert sorted(json.loads(cp.stdout)) == ["localhost:5000/ns/img:v2", "test/layered:1"]


def test_tag_unknown_source(user, store_env):
    cp = hp(user, store_env, "tag", "nope:1", "x:1")
    assert cp.returncode == 1 and "no such image: nope:1" in cp.stderr


def test_tag_invalid_target(user, store_env, loaded):
    cp = hp(user, store_env, "tag", "test/layered:1", "Bad Name")
    assert cp.returncode == 1 and "invalid reference format" in cp.stderr


def test_rmi_untags_when_other_names_remain(user, store_env, loaded):
    ok(hp(user, store_env, "tag", "test/layered:1", "other:1"))
    cp = ok(hp(user, store_env, "rmi", "other:1"))
    assert cp.stdout == "Untagged: other:1\n"
    assert len(records(store_env["HPCRUN_STORE"])) == 1


def test_rmi_last_name_deletes(user, store_env, loaded):
    cp = ok(hp(user, store_env, "rmi", "test/layered:1"))
    assert cp.stdout == f"Untagged: test/layered:1\nDeleted: {loaded.id}\n"
    assert records(store_env["HPCRUN_STORE"]) == []
    assert os.listdir(os.path.join(store_env["HPCRUN_STORE"], "images")) == []


def test_rmi_by_id_with_several_names_needs_force(user, store_env, loaded):
    ok(hp(user, store_env, "tag", "test/layered:1", "other:1"))
    cp = hp(user, store_env, "rmi", loaded.id[7:19])
    assert cp.returncode == 1 and "must be forced" in cp.stderr and "hint:" in cp.stderr
    cp = ok(hp(user, store_env, "rmi", "-f", loaded.id[7:19]))
    assert cp.stdout.splitlines()[-1] == f"Deleted: {loaded.id}"


def test_rmi_unknown(user, store_env):
    cp = hp(user, store_env, "rmi", "nope:1")
    assert cp.returncode == 1 and "hpcrun: error: no such image: nope:1" in cp.stderr


def test_prune_removes_untagged_and_blobs(user, store_env, image_files, loaded):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    store = store_env["HPCRUN_STORE"]
    # make the busybox image dangling
    with open(os.path.join(store, "tags.json")) as f:
        tags = json.load(f)
    del tags["tags"]["docker.io/test/busybox:1"]
    with open(os.path.join(store, "tags.json"), "w") as f:
        json.dump(tags, f)
    cp = ok(hp(user, store_env, "prune"))
    assert f"deleted: {image_files['bb'].id}" in cp.stdout
    assert "Total reclaimed space:" in cp.stdout
    assert records(store) == [loaded.id[7:] + ".json"]
    bb_layer = image_files["bb"].blobs
    for dg in bb_layer:
        if dg not in loaded.blobs:
            assert not os.path.exists(os.path.join(store, "blobs", "sha256", dg[7:]))


def test_prune_keeps_tagged(user, store_env, loaded):
    ok(hp(user, store_env, "prune"))
    assert ok(hp(user, store_env, "images", "-q")).stdout == loaded.id[7:19] + "\n"


def test_prune_all(user, store_env, loaded):
    ok(hp(user, store_env, "prune", "-a", "-f"))
    assert ok(hp(user, store_env, "images", "-q")).stdout == ""
    assert os.listdir(os.path.join(store_env["HPCRUN_STORE"], "blobs", "sha256")) == []


def test_unknown_flag(user, store_env):
    cp = hp(user, store_env, "rmi", "--bogus", "x")
    assert cp.returncode == 2 and cp.stderr.startswith("hpcrun: error: hpcrun rmi:")


def test_pull_rejects_bad_reference(user, store_env):
    cp = hp(user, store_env, "pull", "UPPER/Case::x")
    assert cp.returncode == 1 and "invalid reference format" in cp.stderr


def test_save_to_terminal_refused_hint(user, store_env, loaded):
    # stdout is a pipe here, so this is the -o path with an unwritable directory
    cp = hp(user, store_env, "save", "-o", "/proc/x.tar", "test/layered:1")
    assert cp.returncode == 1 and "cannot write /proc/x.tar" in cp.stderr


# ----------------------------------------------------------------- hpcrun run NAME

def _run_works(user) -> bool:
    d = util.shared_tmpdir("hpcrun-runprobe-")
    try:
        util.make_busybox_rootfs(d)
        return util.hpcrun(user, "run", d, "--", "true").returncode == 0
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.userns
def test_run_loaded_image(user, store_env, busybox_rootfs, user_tmp):
    util.require(_run_works(user), "hpcrun run of a directory does not work here")
    from fixtures_image import busybox_entries, make_image
    img = make_image([busybox_entries(busybox_rootfs)])
    p = write_docker_archive(os.path.join(user_tmp, "run.tar"), img, ["runme:1"])
    ok(hp(user, store_env, "load", "-i", p))
    cp = ok(hp(user, store_env, "run", "runme:1", "--", "cat", "/etc/os-release"))
    assert "NAME=busybox-test" in cp.stdout


@pytest.mark.userns
def test_run_image_by_id(user, store_env, busybox_rootfs, user_tmp):
    util.require(_run_works(user), "hpcrun run of a directory does not work here")
    from fixtures_image import busybox_entries, make_image
    img = make_image([busybox_entries(busybox_rootfs)], env=["PATH=/bin", "FROM_IMAGE=yes"])
    p = write_docker_archive(os.path.join(user_tmp, "run.tar"), img, ["runme:2"])
    ok(hp(user, store_env, "load", "-i", p))
    cp = ok(hp(user, store_env, "run", img.id[7:19], "--", "sh", "-c", "echo $FROM_IMAGE"))
    assert cp.stdout == "yes\n"


@pytest.mark.userns
def test_run_image_with_repository_path(user, store_env, busybox_rootfs, user_tmp):
    util.require(_run_works(user), "hpcrun run of a directory does not work here")
    from fixtures_image import busybox_entries, make_image
    img = make_image([busybox_entries(busybox_rootfs)])
    p = write_docker_archive(os.path.join(user_tmp, "run.tar"), img,
                             ["localhost:5000/ns/runme:3"])
    ok(hp(user, store_env, "load", "-i", p))
    cp = ok(hp(user, store_env, "run", "localhost:5000/ns/runme:3", "--", "cat",
               "/etc/os-release"))
    assert "NAME=busybox-test" in cp.stdout


def test_history_sizes_are_unpacked_content(user, store_env, loaded):
    lines = ok(hp(user, store_env, "history", "--format", "json", "test/layered:1")).stdout
    top = json.loads(lines.splitlines()[0])
    assert top["Size"] == len("layer three\n")   # layer 3 adds only etc/motd


# ---------------------------------------------- images a running container uses

@pytest.fixture
def running(user, store_env, busybox_rootfs, user_tmp):
    """Loads busybox as inuse:1 and starts containers of it; yields a function that
    starts one (extra run options) and returns its Popen."""
    import subprocess
    util.require(_run_works(user), "hpcrun run of a directory does not work here")
    from fixtures_image import busybox_entries, make_image
    img = make_image([busybox_entries(busybox_rootfs)])
    p = write_docker_archive(os.path.join(user_tmp, "inuse.tar"), img, ["inuse:1"])
    ok(hp(user, store_env, "load", "-i", p))
    procs = []

    def start(*opts):
        e = util.user_env(user)
        e.update(store_env)
        proc = subprocess.Popen([util.HPCRUN, "run", *opts, "inuse:1", "--", "sh", "-c",
                                 "echo ready; exec sleep 60"], user=user.uid, group=user.gid,
                                extra_groups=[], env=e, cwd="/", stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        proc.kill()
        proc.communicate()


@pytest.mark.userns
@pytest.mark.parametrize("opts", [(), ("--writable-tmpfs",)])
def test_rmi_refuses_an_image_a_container_runs(user, store_env, running, opts):
    # As Docker: not even -f deletes it, and no name is removed; once the container is
    # gone, rmi works. (--writable-tmpfs: the image is an overlay's lower layer.)
    proc = running(*opts)
    for args in (("rmi", "inuse:1"), ("rmi", "-f", "inuse:1")):
        cp = hp(user, store_env, *args)
        assert cp.returncode != 0
        first = cp.stderr.splitlines()[0]
        assert "is being used by a running container" in first and str(proc.pid) in first
        assert cp.stderr.splitlines()[1].startswith("hint: stop the container")
    assert "inuse" in ok(hp(user, store_env, "images")).stdout
    cp = ok(hp(user, store_env, "prune", "-a"))
    assert "kept" in cp.stderr and "inuse" in ok(hp(user, store_env, "images")).stdout
    cp = hp(user, store_env, "convert", "--format", "squashfs", "inuse:1")
    assert cp.returncode != 0 and "being used by a running container" in cp.stderr
    proc.kill()
    proc.communicate()
    ok(hp(user, store_env, "rmi", "inuse:1"))
    assert "inuse" not in ok(hp(user, store_env, "images")).stdout
