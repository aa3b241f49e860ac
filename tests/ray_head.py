"""A Ray cluster started apart (`ray start --head --block` in its own process group), as a
user's cluster would be; stopping it touches no other Ray of the test session."""

from __future__ import annotations

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


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextmanager
def ray_head(dashboard: bool = False) -> Iterator[RayHead]:
    """A 2-CPU head on free ports of 127.0.0.1 (with the job server when ``dashboard``)."""
    ray_bin = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="cp-head-", dir="/tmp")
    # the job agent's own port too: the default one may be taken by another Ray
    port, dash, agent = _free_ports(3)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    web = (["--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}"]
           if dashboard else ["--include-dashboard=false"])
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
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
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)
