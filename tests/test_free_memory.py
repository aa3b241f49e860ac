"""The memory a process may still take: the machine's, or its memory cgroup's room."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import free_memory
from pipeline.free_memory import available_bytes, cgroup_room, memory_cgroups

UNLIMITED_V1 = "9223372036854771712"


def tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def test_v2_the_least_room_of_the_cgroup_and_its_parents(tmp_path: Path) -> None:
    """A Kubernetes pod: the container's own cgroup sets no limit, the pod's does; its
    inactive page cache counts as free."""
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/c1\n")
    root = tmp_path / "fs"
    tree(root, {"kubepods/memory.max": "max", "kubepods/memory.current": "9000000",
                "kubepods/pod1/memory.max": "1000000",
                "kubepods/pod1/memory.current": "400000",
                "kubepods/pod1/memory.stat": "anon 300000\ninactive_file 100000\nfile 100000",
                "kubepods/pod1/c1/memory.max": "max",
                "kubepods/pod1/c1/memory.current": "300000"})
    assert cgroup_room(proc, root) == 1_000_000 - (400_000 - 100_000)
    (root / "kubepods/pod1/c1/memory.max").write_text("500000\n")  # a tighter leaf wins
    assert cgroup_room(proc, root) == 500_000 - 300_000
    (root / "kubepods/pod1/c1/memory.max").write_text("max\n")
    (root / "kubepods/pod1/memory.max").write_text("max\n")
    assert cgroup_room(proc, root) is None  # no level sets a limit


def test_v1_and_a_hybrid_host(tmp_path: Path) -> None:
    """A Slurm job's memory controller (v1) beside an unlimited unified tree."""
    proc = tmp_path / "cgroup"
    proc.write_text("5:cpu,cpuacct:/slurm\n4:memory:/slurm/uid_0/job_7\n0::/\n")
    root = tmp_path / "fs"
    tree(root, {"memory/memory.limit_in_bytes": UNLIMITED_V1,
                "memory/slurm/memory.limit_in_bytes": UNLIMITED_V1,
                "memory/slurm/uid_0/job_7/memory.limit_in_bytes": "2000000",
                "memory/slurm/uid_0/job_7/memory.usage_in_bytes": "500000",
                "memory/slurm/uid_0/job_7/memory.stat":
                    "inactive_file 1\ntotal_inactive_file 200000",
                "memory.max": "max"})
    assert [t.limit for t in memory_cgroups(proc, root)] == ["memory.limit_in_bytes",
                                                             "memory.max"]
    assert cgroup_room(proc, root) == 2_000_000 - (500_000 - 200_000)


def test_without_cgroups_the_machine_s_memory(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(free_memory.psutil, "virtual_memory",
                        lambda: SimpleNamespace(available=123_456_789))
    assert cgroup_room(tmp_path / "absent", tmp_path) is None
    assert available_bytes(tmp_path / "absent", tmp_path) == 123_456_789
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job\n")
    tree(tmp_path / "fs", {"job/memory.max": "1000", "job/memory.current": "10"})
    assert available_bytes(proc, tmp_path / "fs") == 990  # the cgroup's room is less


def test_a_real_memory_cgroup_s_limit_is_seen_from_inside(tmp_path: Path) -> None:
    """On a host that lets this process make a child memory cgroup (root, cgroup v1 or a
    delegated v2 tree): a process moved into a child limited to 256 MiB sees at most that."""
    trees = [t for t in memory_cgroups() if (t.folder / t.limit).exists()]
    if not trees:
        pytest.skip("no memory cgroup with a limit file here")
    t = trees[0]
    child = t.folder / f"conceptprune-test-{os.getpid()}"
    try:
        child.mkdir()
    except OSError as err:
        pytest.skip(f"cannot make a memory cgroup here: {err}")
    try:
        limit = 256 * 2**20
        try:
            (child / t.limit).write_text(str(limit))
        except OSError as err:
            pytest.skip(f"cannot limit a memory cgroup here: {err}")
        code = ("import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
                "from pipeline.free_memory import available_bytes, cgroup_room; "
                "print(available_bytes(), cgroup_room())")
        out = subprocess.run([sys.executable, "-c", code, str(child / "cgroup.procs")],
                             capture_output=True, text=True, timeout=120, check=True,
                             cwd=Path(__file__).resolve().parents[1])
        available, room = (int(v) for v in out.stdout.split())
        assert 0 < room <= limit and available == room, out.stdout
    finally:
        child.rmdir()
