"""load / save / import / export, as the unprivileged user, cross-checked with skopeo."""
from __future__ import annotations

import json
import os
import shutil
import tarfile

import pytest

import util
from fixtures_image import (F, hp, ok, records, tar_bytes, write_docker_archive,
                            write_oci_archive)


def _rootfs(env, name_or_id, user):
    cp = ok(hp(user, env, "inspect", "-f", "{{.Hpcrun.Directory}}", name_or_id))
    return cp.stdout.strip()


def test_load_docker_archive(user, store_env, image_files):
    cp = ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    assert cp.stdout == "Loaded image: test/busybox:1\n"


def test_loaded_image_is_owned_by_the_user(user, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    root = _rootfs(store_env, "test/busybox:1", user)
    assert os.stat(os.path.join(root, "bin", "busybox")).st_uid == user.uid


def test_load_from_stdin(user, store_env, image_files):
    with open(image_files["bb_docker"], "rb") as f:
        cp = hp(user, store_env, "load", stdin=f, text=True)
    ok(cp)
    assert "Loaded image: test/busybox:1" in cp.stdout


def test_load_oci_archive(user, store_env, image_files):
    cp = ok(hp(user, store_env, "load", "-i", image_files["bb_oci"]))
    assert cp.stdout == "Loaded image: test/busybox:oci\n"
    cp = ok(hp(user, store_env, "inspect", "-f", "{{.Id}}", "test/busybox:oci"))
    assert cp.stdout.strip() == image_files["bb"].id


def test_load_untagged_prints_id(user, store_env, image_files, user_tmp):
    p = write_oci_archive(os.path.join(user_tmp, "noname.tar"), image_files["bb"], None)
    cp = ok(hp(user, store_env, "load", "-i", p))
    assert cp.stdout == f"Loaded image ID: {image_files['bb'].id}\n"


def test_load_gzipped_archive(user, store_env, image_files, user_tmp):
    import gzip
    p = os.path.join(user_tmp, "bb.tar.gz")
    with open(image_files["bb_docker"], "rb") as f, gzip.open(p, "wb", 1) as g:
        shutil.copyfileobj(f, g)
    cp = ok(hp(user, store_env, "load", "-i", p))
    assert "Loaded image: test/busybox:1" in cp.stdout


def test_load_skopeo_docker_archive(user, store_env, image_files, user_tmp):
    """skopeo (independent) converts our OCI layout into a docker-archive; we load it."""
    util.require(shutil.which("skopeo") is not None, "skopeo is not installed")
    from fixtures_image import write_oci_layout
    lay = write_oci_layout(os.path.join(user_tmp, "layout"), image_files["layered"], "x")
    out = os.path.join(user_tmp, "sk.tar")
    util.as_user(user, ["skopeo", "copy", "--quiet", f"oci:{lay}:x",
                        f"docker-archive:{out}:skopeo/layered:2"], check=True)
    cp = ok(hp(user, store_env, "load", "-i", out))
    assert cp.stdout == "Loaded image: skopeo/layered:2\n"
    root = _rootfs(store_env, "skopeo/layered:2", user)
    assert open(os.path.join(root, "etc", "motd")).read() == "layer three\n"


def test_load_archive_with_altered_layer_is_refused(user, store_env, image_files, user_tmp):
    img = image_files["bb"]
    bad = [tar_bytes([F("etc/evil", "x")])]
    p = write_docker_archive(os.path.join(user_tmp, "bad.tar"), img, ["bad/img:1"], bad)
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1
    assert "digest mismatch" in cp.stderr and "hint:" in cp.stderr
    assert records(store_env["HPCRUN_STORE"]) == []


def test_load_not_an_archive(user, store_env, user_tmp):
    p = os.path.join(user_tmp, "junk.tar")
    with open(p, "wb") as f:
        f.write(b"this is not a tar" * 100)
    os.chmod(p, 0o644)
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1
    assert cp.stderr.startswith("hpcrun: error: ") and "not a tar archive" in cp.stderr


def test_load_missing_file(user, store_env):
    cp = hp(user, store_env, "load", "-i", "/nonexistent/x.tar")
    assert cp.returncode == 1 and "cannot open /nonexistent/x.tar" in cp.stderr


def test_load_oci_archive_with_bad_blob(user, store_env, image_files, user_tmp):
    img = image_files["bb"]
    p = os.path.join(user_tmp, "badoci.tar")
    write_oci_archive(p, img, "bad/oci:1")
    # swap the config blob's content
    d = os.path.join(user_tmp, "unp")
    os.mkdir(d)
    with tarfile.open(p) as t:
        t.extractall(d)
    with open(os.path.join(d, "blobs", "sha256", img.id.split(":")[1]), "ab") as f:
        f.write(b" ")
    with tarfile.open(p, "w") as t:
        for n in os.listdir(d):
            t.add(os.path.join(d, n), arcname=n)
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1 and "digest mismatch" in cp.stderr
    assert records(store_env["HPCRUN_STORE"]) == []


def test_save_is_read_by_skopeo(user, store_env, image_files, user_tmp):
    util.require(shutil.which("skopeo") is not None, "skopeo is not installed")
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    out = os.path.join(user_tmp, "saved.tar")
    ok(hp(user, store_env, "save", "-o", out, "test/layered:1"))
    cp = util.as_user(user, ["skopeo", "inspect", "--config", f"docker-archive:{out}"],
                      check=True)
    cfg = json.loads(cp.stdout)
    assert cfg["rootfs"]["diff_ids"] == image_files["layered"].diff_ids


def test_save_to_stdout_and_load_back(user, store_env, image_files, user_tmp):
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    out = os.path.join(user_tmp, "s.tar")
    with open(out, "wb") as f:
        cp = hp(user, store_env, "save", "test/layered:1", stdout=f, text=False)
    assert cp.returncode == 0
    env2 = {"HPCRUN_STORE": os.path.join(user_tmp, "store2")}
    cp = ok(hp(user, env2, "load", "-i", out))
    assert cp.stdout == "Loaded image: test/layered:1\n"
    cp = ok(hp(user, env2, "inspect", "-f", "{{.Id}}", "test/layered:1"))
    assert cp.stdout.strip() == image_files["layered"].id


def test_save_unknown_image_writes_nothing(user, store_env, user_tmp):
    out = os.path.join(user_tmp, "none.tar")
    cp = hp(user, store_env, "save", "-o", out, "nope:1")
    assert cp.returncode == 1 and "no such image: nope:1" in cp.stderr
    assert [f for f in os.listdir(user_tmp) if f != "store"] == []


def _rootfs_tar(user_tmp, busybox_rootfs, gz=False):
    from fixtures_image import busybox_entries
    p = os.path.join(user_tmp, "rootfs.tar" + (".gz" if gz else ""))
    with open(p, "wb") as f:
        f.write(tar_bytes(busybox_entries(busybox_rootfs), "gzip" if gz else ""))
    os.chmod(p, 0o644)
    return p


def test_import_with_changes(user, store_env, busybox_rootfs, user_tmp):
    p = _rootfs_tar(user_tmp, busybox_rootfs, gz=True)
    cp = ok(hp(user, store_env, "import", p, "imp/bb:1",
               "--change", "ENV A=1 B=two", "--change", 'CMD ["echo", "hi"]',
               "--change", "ENTRYPOINT /bin/sh", "--change", "WORKDIR /work",
               "--change", "USER 1000:1000", "--change", "LABEL org.x=y",
               "--change", "EXPOSE 8080", "--change", "VOLUME /data",
               "--change", "STOPSIGNAL SIGINT"))
    iid = cp.stdout.strip()
    assert iid.startswith("sha256:") and len(iid) == 71
    conf = json.loads(ok(hp(user, store_env, "inspect", "imp/bb:1")).stdout)[0]["Config"]
    assert conf == {"Env": ["A=1", "B=two"], "Cmd": ["echo", "hi"],
                    "Entrypoint": ["/bin/sh", "-c", "/bin/sh"], "WorkingDir": "/work",
                    "User": "1000:1000", "Labels": {"org.x": "y"},
                    "ExposedPorts": {"8080/tcp": {}}, "Volumes": {"/data": {}},
                    "StopSignal": "SIGINT"}


def test_import_from_stdin(user, store_env, busybox_rootfs, user_tmp):
    p = _rootfs_tar(user_tmp, busybox_rootfs)
    with open(p, "rb") as f:
        cp = hp(user, store_env, "import", "-", "imp/stdin:1", stdin=f, text=True)
    ok(cp)
    root = _rootfs(store_env, "imp/stdin:1", user)
    assert os.path.exists(os.path.join(root, "bin", "busybox"))


def test_import_bad_change(user, store_env, busybox_rootfs, user_tmp):
    p = _rootfs_tar(user_tmp, busybox_rootfs)
    cp = hp(user, store_env, "import", p, "x:1", "--change", "RUN rm -rf /")
    assert cp.returncode == 2
    assert "unsupported instruction 'RUN'" in cp.stderr and "hint:" in cp.stderr
    assert not os.path.exists(os.path.join(store_env["HPCRUN_STORE"], "records")) or \
        records(store_env["HPCRUN_STORE"]) == []


def test_import_not_a_tar(user, store_env, user_tmp):
    p = os.path.join(user_tmp, "x.tar")
    with open(p, "wb") as f:
        f.write(b"\x00garbage" * 200)
    os.chmod(p, 0o644)
    cp = hp(user, store_env, "import", p, "x:1")
    assert cp.returncode == 1 and "not a tar archive" in cp.stderr
    assert records(store_env["HPCRUN_STORE"]) == []


def test_export_is_the_flattened_rootfs(user, store_env, image_files, user_tmp):
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    out = os.path.join(user_tmp, "exp.tar")
    ok(hp(user, store_env, "export", "-o", out, "test/layered:1"))
    with tarfile.open(out) as t:
        names = {m.name.rstrip("/") for m in t.getmembers()}
    assert "etc/motd" in names and "bin/busybox" in names
    assert "etc/old" not in names and "opt/a/1" not in names and "opt/b/x" not in names
    assert "opt/a/3" in names and "opt/b/y" in names
    assert not any(n == ".hpcrun" or n.startswith(".hpcrun/") for n in names)


def test_export_tar_extracts_with_gnu_tar(user, store_env, image_files, user_tmp):
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    out = os.path.join(user_tmp, "exp.tar")
    ok(hp(user, store_env, "export", "-o", out, "test/layered:1"))
    d = os.path.join(user_tmp, "x")
    os.mkdir(d)
    os.chown(d, user.uid, user.gid)
    util.as_user(user, ["tar", "-xf", out, "-C", d, "--no-same-owner"], check=True)
    assert open(os.path.join(d, "new2")).read() == "new\n"


def test_oci_index_without_this_platform(user, store_env, image_files, user_tmp):
    """An archive whose index lists only another platform is refused, nothing recorded."""
    from fixtures_image import sha, write_oci_layout
    img = image_files["bb"]
    lay = write_oci_layout(os.path.join(user_tmp, "lay"), img, None)
    index = json.dumps({"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": sha(img.manifest), "size": len(img.manifest),
                                       "platform": {"os": "linux",
                                                    "architecture": "s390x"}}]}).encode()
    with open(os.path.join(lay, "blobs", "sha256", sha(index)[7:]), "wb") as f:
        f.write(index)
    with open(os.path.join(lay, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(index),
            "size": len(index), "annotations": {"org.opencontainers.image.ref.name": "x/y:1"}}]},
            f)
    p = os.path.join(user_tmp, "plat.tar")
    with tarfile.open(p, "w") as t:
        for n in os.listdir(lay):
            t.add(os.path.join(lay, n), arcname=n)
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1
    assert "no image for linux/" in cp.stderr and "hint:" in cp.stderr
    assert records(store_env["HPCRUN_STORE"]) == []


def test_change_env_legacy_form():
    from hpcrun.image.archive import apply_changes
    assert apply_changes({}, ["ENV GREETING hello world"]) == {"Env": ["GREETING=hello world"]}


def test_change_cmd_shell_form():
    from hpcrun.image.archive import apply_changes
    assert apply_changes({}, ["CMD echo $HOME"]) == {"Cmd": ["/bin/sh", "-c", "echo $HOME"]}


def test_change_env_overrides_earlier_value():
    from hpcrun.image.archive import apply_changes
    conf = apply_changes({"Env": ["A=1", "B=2"]}, ["ENV A=3"])
    assert conf["Env"] == ["A=3", "B=2"]


@pytest.mark.parametrize("change, message", [
    ("WORKDIR relative", "WORKDIR must be an absolute path"),
    ('CMD ["unterminated', "not a JSON array"),
    ("EXPOSE http", "invalid port 'http'"),
    ("ENV", "ENV needs an argument"),
    ("ENV A=1 B", "expected KEY=VALUE"),
])
def test_bad_change_refused(change, message):
    from hpcrun.errors import UsageError
    from hpcrun.image.archive import apply_changes
    with pytest.raises(UsageError, match=message):
        apply_changes({}, [change])


def test_export_without_layer_blobs_uses_the_directory(user, store_env, image_files, user_tmp):
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    layers = json.loads(ok(hp(user, store_env, "inspect", "-f", "{{json .Hpcrun.Layers}}",
                              "test/layered:1")).stdout)
    for dg in layers:
        os.unlink(os.path.join(store_env["HPCRUN_STORE"], "blobs", "sha256", dg[7:]))
    out = os.path.join(user_tmp, "exp.tar")
    ok(hp(user, store_env, "export", "-o", out, "test/layered:1"))
    with tarfile.open(out) as t:
        names = {m.name.rstrip("/") for m in t.getmembers()}
    assert "etc/motd" in names and "etc/old" not in names
    assert not any(n.startswith(".hpcrun") for n in names)
