"""A Ray cluster started apart (`ray start --head --block` in its own process group), as a
user's cluster would be; stopping it touches no other Ray of the test session."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RayHead:
    port: int
    dashboard: int
    env: dict[str, str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def stop_group(proc: subprocess.Popen, wait_s: float = 60) -> None:
    """SIGTERM the process group ``proc`` leads (started with start_new_session), then
    SIGKILL it if it has not ended after ``wait_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextmanager
def ray_head(dashboard: bool = False, cpus: int = 2) -> Iterator[RayHead]:
    """A head of ``cpus`` CPUs on free ports of 127.0.0.1 (with the job server when
    ``dashboard``). Its nodes are checked every second: a lost node is known in seconds."""
    ray_bin = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="cp-head-", dir="/tmp")
    # the job agent's own port too: the default one may be taken by another Ray
    port, dash, agent = free_ports(3)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    web = (["--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}"]
           if dashboard else ["--include-dashboard=false"])
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}",
         "--node-ip-address=127.0.0.1", *web, f"--temp-dir={temp}",
         "--object-store-memory=268435456", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        for wanted in (port, dash) if dashboard else (port,):
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", wanted)) == 0:
                        break
                assert head.poll() is None and time.monotonic() < deadline, "no Ray head"
                time.sleep(0.5)
        yield RayHead(port, dash, env)
    finally:
        # its processes end in a second; Ray's autoscaler monitor, and `ray start` waiting
        # on it, linger some 30 s after a SIGTERM: the rest of the group is then killed
        stop_group(head, wait_s=5)
        shutil.rmtree(temp, ignore_errors=True)


@dataclass(frozen=True)
class RayNode:
    """A worker node joined to a head; ``pgid`` is its process group (kill it to lose the
    node: `ray start`, its raylet, object store and workers)."""

    pgid: int
    process: subprocess.Popen


def _wait_for_nodes(head: RayHead, count: int, timeout_s: float = 120) -> None:
    """Wait, from a process of its own, until ``count`` nodes of the cluster are alive."""
    probe = (f"import ray, time; ray.init(address={head.address!r}, log_to_driver=False)\n"
             f"end = time.monotonic() + {timeout_s}\n"
             f"while sum(n['Alive'] for n in ray.nodes()) < {count}:\n"
             "    assert time.monotonic() < end\n"
             "    time.sleep(0.5)\n")
    subprocess.run([sys.executable, "-c", probe], env=head.env, check=True,
                   capture_output=True, timeout=timeout_s + 60)


@contextmanager
def ray_node(head: RayHead, cpus: int = 2, env: dict[str, str] | None = None
             ) -> Iterator[RayNode]:
    """A second node of ``cpus`` CPUs on this machine, on free ports of its own, with
    ``env`` added to its processes' environment (its workers inherit it)."""
    ray_bin = Path(sys.executable).with_name("ray")
    ports = free_ports(6)
    names = ("node-manager-port", "object-manager-port", "metrics-export-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port")
    node = subprocess.Popen(
        [str(ray_bin), "start", f"--address={head.address}", "--block", f"--num-cpus={cpus}",
         "--node-ip-address=127.0.0.1", "--object-store-memory=268435456",
         "--disable-usage-stats", *(f"--{n}={p}" for n, p in zip(names, ports, strict=True))],
        env={**head.env, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        _wait_for_nodes(head, 2)
        yield RayNode(node.pid, node)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait()
