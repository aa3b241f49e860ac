"""The allocator setting of the embed stage: freed activations are reused, not re-faulted."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Measured in a fresh interpreter: earlier tests in the same process (torch, faiss, threads)
# leave the heap and glibc's dynamic thresholds in states that change the fault counts.
_MEASURE = textwrap.dedent(
    """
    import ctypes, ctypes.util, json, resource
    from pipeline.embed.memory import reuse_freed_memory

    BLOCK = 64 << 20  # like one batch's activations
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def faults(times):
        # malloc, fill and free a large block, as torch's CPU tensors do
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(times):
            block = libc.malloc(BLOCK)
            assert block
            ctypes.memset(block, 1, BLOCK)
            libc.free(block)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with reuse_freed_memory() as applied:
        inside = faults(5) if applied else 0
    outside = faults(5)
    print(json.dumps({"applied": applied, "inside": inside, "outside": outside,
                      "pages": BLOCK // resource.getpagesize()}))
    """
)


def test_freed_blocks_are_reused_inside_and_returned_after() -> None:
    done = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True,
                          check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    if not got["applied"]:
        pytest.skip("not glibc: the allocator is left alone")
    pages = got["pages"]
    assert got["inside"] <= 2 * pages  # the first block faults in, the next ones reuse the heap
    assert got["outside"] >= 4 * pages  # with glibc's defaults back, every block faults in again
