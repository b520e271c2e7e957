"""Damaged store files (issue 12, finding 6): valid JSON of the wrong type, unreadable
files and vanished image directories give one `hpcrun: error:` line naming the file and
a hint, never a traceback; `hpcrun prune --repair` moves the damage aside.

Everything runs as the unprivileged user against a store of its own.
"""
from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

import util
from fixtures_image import hp, ok, records

IMG = "test/busybox:1"
COMMANDS = [
    ("images",), ("inspect", IMG), ("run", IMG, "true"), ("tag", IMG, "test/b:2"),
    ("rmi", IMG), ("prune",), ("history", IMG), ("export", "-o", "/dev/null", IMG),
]


def _tags_list(store):
    _write(os.path.join(store, "tags.json"), [1, 2])
    return os.path.join(store, "tags.json")


def _tag_number(store):
    _write(os.path.join(store, "tags.json"), {"tags": {"docker.io/test/busybox:1": 5}})
    return os.path.join(store, "tags.json")


def _record_list(store):
    path = os.path.join(store, "records", records(store)[0])
    _write(path, [])
    return path


def _record_bad_formats(store):
    path = os.path.join(store, "records", records(store)[0])
    with open(path) as f:
        doc = json.load(f)
    doc["formats"] = "dir"
    _write(path, doc)
    return path


def _tags_unreadable(store):
    os.chmod(os.path.join(store, "tags.json"), 0)
    return os.path.join(store, "tags.json")


def _dir_missing(store):
    d = glob.glob(os.path.join(store, "images", "*", "rootfs"))[0]
    shutil.rmtree(d)
    return d


DAMAGE = {"tags-list": _tags_list, "tag-number": _tag_number, "record-list": _record_list,
          "record-formats": _record_bad_formats, "tags-000": _tags_unreadable,
          "dir-missing": _dir_missing}
# the commands that list every image keep working past one damaged image (a warning)
LISTING_SURVIVES = {"record-list", "record-formats", "dir-missing"}


def _write(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f)


@pytest.fixture
def damaged(request, user, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    store = store_env["HPCRUN_STORE"]
    return request.param, _as_owner(store, request.param)


def _as_owner(store, kind):
    """Apply the damage (the test runs as root), then give the files back to the
    store's owner, as if a crash or a careless edit of theirs had made it."""
    st = os.stat(store)
    path = DAMAGE[kind](store)
    for dp, dn, fn in os.walk(store):
        for n in dn + fn:
            os.lchown(os.path.join(dp, n), st.st_uid, st.st_gid)
    return path


@pytest.mark.parametrize("damaged", sorted(DAMAGE), indirect=True)
def test_damaged_store_file_is_one_line_naming_it(user, store_env, damaged):
    kind, path = damaged
    for cmd in COMMANDS:
        cp = hp(user, store_env, *cmd)
        err = cp.stderr
        assert "Traceback" not in err, (kind, cmd, err)
        if cmd[0] in ("images", "prune") and kind in LISTING_SURVIVES:
            assert cp.returncode == 0, (kind, cmd, err)
            assert err.startswith("hpcrun: warning: ") and path in err, (kind, cmd, err)
            assert "prune --repair" in err
            continue
        lines = err.splitlines()
        assert cp.returncode == (125 if cmd[0] == "run" else 1), (kind, cmd, cp)
        assert len(lines) == 2 and lines[0].startswith("hpcrun: error: "), (kind, cmd, err)
        assert path in lines[0], (kind, cmd, lines[0])
        assert lines[1].startswith("hint: ") and "prune --repair" in lines[1], (kind, cmd)
        assert cp.stdout == "", (kind, cmd, cp.stdout)   # inspect prints no "[]"


@pytest.mark.parametrize("damaged", sorted(DAMAGE), indirect=True)
def test_prune_repair_recovers(user, store_env, damaged):
    kind, path = damaged
    store = store_env["HPCRUN_STORE"]
    cp0 = cp = ok(hp(user, store_env, "prune", "--repair"))
    moved = [ln for ln in cp.stdout.splitlines() if ln.startswith("Repaired: moved ")]
    assert moved and "damaged" in moved[0], cp.stdout
    aside = os.listdir(os.path.join(store, "damaged"))
    assert len(aside) == 1
    cp = ok(hp(user, store_env, "images"))
    assert cp.stderr == "", (kind, cp.stderr)
    if kind.startswith("tag"):
        # the image stays (its name is lost) and can be named and run again
        ids = ok(hp(user, store_env, "images", "-q")).stdout.split()
        assert len(ids) == 1
        assert f"has no name now: name it with 'hpcrun tag {ids[0]} NAME'" in cp0.stdout
        ok(hp(user, store_env, "tag", ids[0], IMG))
        assert ok(hp(user, store_env, "run", IMG, "echo", "back")).stdout == "back\n"
        assert ok(hp(user, store_env, "prune")).stderr == ""
    else:
        # the damaged image is gone, its name too, and loading it again works
        assert ok(hp(user, store_env, "images", "-q")).stdout == ""
        cp = hp(user, store_env, "inspect", IMG)
        assert cp.returncode == 1 and "no such image" in cp.stderr
        assert ok(hp(user, store_env, "prune")).stderr == ""
    assert ok(hp(user, store_env, "prune", "--repair")).stdout == "Nothing to repair\n"



def test_repair_keeps_the_well_formed_names(user, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    ok(hp(user, store_env, "tag", IMG, "test/keep:1"))
    store = store_env["HPCRUN_STORE"]
    path = os.path.join(store, "tags.json")
    with open(path) as f:
        doc = json.load(f)
    doc["tags"]["docker.io/test/bad:1"] = ["not", "an", "id"]
    util.as_user(user, ["sh", "-c", f"cat > {path}"], input=json.dumps(doc), check=True)
    assert hp(user, store_env, "images").returncode == 1
    cp = ok(hp(user, store_env, "prune", "--repair"))
    assert "kept 2 well-formed name(s)" in cp.stdout
    names = ok(hp(user, store_env, "images", "--format", "json")).stdout
    assert names.count('"Repository"') == 2 and "test/bad" not in names


def test_prune_keeps_blobs_while_a_record_is_damaged(user, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    store = store_env["HPCRUN_STORE"]
    blobs = sorted(os.listdir(os.path.join(store, "blobs", "sha256")))
    rec = os.path.join(store, "records", records(store)[0])
    util.as_user(user, ["sh", "-c", f"echo '{{}}' > {rec}"], check=True)
    cp = ok(hp(user, store_env, "prune"))
    assert "unreferenced blobs kept" in cp.stderr
    assert sorted(os.listdir(os.path.join(store, "blobs", "sha256"))) == blobs
