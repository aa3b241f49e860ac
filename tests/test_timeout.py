"""Every test runs under pytest-timeout's limit (pyproject.toml: [tool.pytest.ini_options]
timeout), so a hung test fails in minutes with the stacks of its threads instead of holding
CI until its own limit."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_the_suite_runs_under_a_per_test_timeout(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.hasplugin("timeout"), \
        "pytest-timeout is not installed: pip install -e '.[dev]'"
    limit = float(request.config.getini("timeout") or 0)
    assert 0 < limit <= 600, f"timeout = {limit!r} in [tool.pytest.ini_options]"


def test_a_test_past_the_ini_timeout_fails(tmp_path: Path) -> None:
    """The ini key does stop a test: a sleeping test under `timeout = 1` fails in about a
    second (in a pytest of its own, so this one does not wait)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout = 1\n")
    (tmp_path / "test_sleeps.py").write_text(
        "import time\n\n\ndef test_sleeps():\n    time.sleep(60)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_sleeps.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Failed: Timeout (>1.0s) from pytest-timeout" in proc.stdout, proc.stdout[-2000:]
    assert "1 failed" in proc.stdout and took < 60
