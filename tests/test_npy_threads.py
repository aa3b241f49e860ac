"""Array files are read under one header lock: CPython 3.11's AST constructor is not safe to use
from two threads at once (python/cpython#106905), and ``np.load`` parses every header with it."""

from __future__ import annotations

import ast
import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pipeline.io import npy

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def overlap_probe(monkeypatch):
    """Counts how many threads are inside ``ast.literal_eval`` at once (slowed to 2 ms so that
    unguarded parses do overlap)."""
    real = ast.literal_eval
    state = {"inside": 0, "most": 0}
    guard = threading.Lock()

    def probed(node_or_string):
        with guard:
            state["inside"] += 1
            state["most"] = max(state["most"], state["inside"])
        time.sleep(0.002)
        try:
            return real(node_or_string)
        finally:
            with guard:
                state["inside"] -= 1

    monkeypatch.setattr(ast, "literal_eval", probed)
    return state


def _hammer(read, times: int = 24) -> None:
    """``read(i)`` for i < times on four threads."""
    with ThreadPoolExecutor(4) as pool:
        for result in pool.map(read, range(times)):
            assert result.shape == (3, 2)


def test_the_probe_sees_plain_np_load_parse_headers_on_several_threads(tmp_path, overlap_probe):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((3, 2), np.float32))
    _hammer(lambda _: np.load(path, mmap_mode="r"))
    assert overlap_probe["most"] > 1  # else the next test could not fail


def test_every_read_of_ours_parses_one_header_at_a_time(tmp_path, overlap_probe):
    path = tmp_path / "a.npy"
    array = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(path, array)
    data = path.read_bytes()
    archive = io.BytesIO()
    np.savez(archive, img=array)
    packed = archive.getvalue()
    readers = [lambda: npy.load(path, mmap=True), lambda: npy.load(path),
               lambda: npy.load_bytes(data), lambda: npy.npz_member(packed, "img")]
    _hammer(lambda i: readers[i % len(readers)]())
    for read in readers:
        np.testing.assert_array_equal(read(), array)
    assert overlap_probe["most"] == 1
    assert npy.npz_member(packed, "txt") is None and npy.npz_keys(packed) == ["img"]


def test_the_pipeline_reads_arrays_only_through_the_locked_reader():
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("pipeline", "jobs")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "pipeline" / "io" / "npy.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bnp\.load\(|open_memmap\(|read_array_header", line)
    ]
    assert not offenders, f"read arrays with pipeline.io.npy instead: {offenders}"
