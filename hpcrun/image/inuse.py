"""Which images running containers use: one read of /proc, matched per image.

`rmi`, `prune` and `convert` refuse to take an image directory from under a running
container, as Docker does. A container that is still starting is not visible here yet:
the store's lease (Store.lease) covers that window, from resolving the image until the
container's root is pinned. Standard library only.
"""
from __future__ import annotations

import os


def container_roots() -> list:
    """(pid, (st_dev, st_ino) of its root, lower layers of its root overlay) of every
    process in a root other than ours: running containers (this user's, or all as
    root). Read once, matched against images by running_containers."""
    try:
        own = os.stat("/")
    except OSError:
        return []
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            r = os.stat(f"/proc/{name}/root")
        except OSError:
            continue                    # gone, or not ours to look at
        if (r.st_dev, r.st_ino) != (own.st_dev, own.st_ino):
            out.append((int(name), (r.st_dev, r.st_ino), _root_lowers(name)))
    return out


def running_containers(rootfs: str, roots=None) -> list[int]:
    """Pids of running containers whose root file system is the image directory
    `rootfs`: bound as the root, or the lower layer of the overlay hpcrun puts on it
    (the C core mounts lowerdir=.../oldroot<rootfs>). `roots`: container_roots(), if
    already read."""
    try:
        real = os.path.realpath(rootfs)
        st = os.stat(real)
    except OSError:
        return []
    lower = "/oldroot" + real
    return sorted(pid for pid, root, lowers in (container_roots() if roots is None else roots)
                  if root == (st.st_dev, st.st_ino) or lower in lowers)


def _root_lowers(pid: str) -> set:
    """The lower layers of the overlays mounted at process pid's root."""
    lowers: set = set()
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return lowers
    for line in lines:
        fields = line.split(" - ", 1)
        if len(fields) != 2 or line.split()[4] != "/":
            continue
        opts = fields[1].split()
        if len(opts) < 3 or opts[0] != "overlay":
            continue
        for opt in opts[2].split(","):
            if opt.startswith("lowerdir="):
                lowers.update(opt[len("lowerdir="):].split(":"))
    return lowers
