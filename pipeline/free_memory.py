"""Memory this process may still take: the machine's available memory, or less where a
memory cgroup caps the process (a Kubernetes pod's limit, a Slurm job's allocation, a
container's ``--memory``). Past a cgroup's limit the kernel kills the process (SIGKILL, no
message), however much the machine has free, so a step that is about to allocate a lot
checks this first and fails with a message instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned int64; anything above this is none
_UNLIMITED = 1 << 60


def available_bytes(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> int:
    """The machine's available memory (reclaimable page cache included), or the room left
    under this process's memory cgroup where that is less."""
    free = int(psutil.virtual_memory().available)
    room = cgroup_room(proc_cgroup, root)
    return free if room is None else min(free, room)


def cgroup_room(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> int | None:
    """The least room (limit - usage, the inactive page cache counted as free) over this
    process's memory cgroup and its parents, for cgroup v2 and v1; None where no level
    sets a limit or none can be read."""
    rooms = [room for tree in memory_cgroups(proc_cgroup, root) for room in _rooms(tree)]
    return min(rooms) if rooms else None


@dataclass(frozen=True)
class CgroupTree:
    """Where this process's memory cgroup is, and the names its version gives the files."""

    mount: Path  # the hierarchy's root as mounted here (a container's own cgroup)
    folder: Path  # the process's cgroup
    limit: str
    usage: str
    inactive: str  # memory.stat's key of the inactive page cache


def memory_cgroups(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT
                   ) -> list[CgroupTree]:
    """The memory cgroups ``proc_cgroup`` names: the unified (v2) one, the memory
    controller's (v1) one, or both on a hybrid host."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    trees = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: one unified hierarchy
            trees.append(CgroupTree(root, root / path.strip("/"), "memory.max",
                                    "memory.current", "inactive_file"))
        elif "memory" in controllers.split(","):  # v1: the memory controller's own tree
            mount = root / "memory"
            trees.append(CgroupTree(mount, mount / path.strip("/"), "memory.limit_in_bytes",
                                    "memory.usage_in_bytes", "total_inactive_file"))
    return trees


def _rooms(tree: CgroupTree) -> list[int]:
    """limit - (usage - inactive file cache) of every level from the process's cgroup up to
    the mount's root that sets a limit."""
    rooms = []
    folder = tree.folder
    while True:
        limit = _read_int(folder / tree.limit)
        if limit is not None and limit < _UNLIMITED:
            usage = _read_int(folder / tree.usage) or 0
            inactive = _stat(folder / "memory.stat", tree.inactive)
            rooms.append(limit - max(0, usage - inactive))
        if folder == tree.mount or tree.mount not in folder.parents:
            return rooms
        folder = folder.parent


def _read_int(path: Path) -> int | None:
    """An integer file of the cgroup tree; None for "max" (no limit) or one not there."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0
