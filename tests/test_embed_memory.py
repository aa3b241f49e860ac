"""The allocator setting of the embed stage: freed activations are reused, not re-faulted."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

import pytest

from pipeline.embed.memory import reuse_freed_memory

BLOCK = 64 << 20  # like one batch's activations


def _faults_allocating(times: int) -> int:
    """Minor page faults of malloc-ing, filling and freeing a large block ``times`` times,
    as torch's CPU tensors do (plain malloc, no huge pages)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        block = libc.malloc(BLOCK)
        assert block
        ctypes.memset(block, 1, BLOCK)
        libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_blocks_are_reused_inside_and_returned_after() -> None:
    pages = BLOCK // resource.getpagesize()
    with reuse_freed_memory() as applied:
        if not applied:
            pytest.skip("not glibc: the allocator is left alone")
        inside = _faults_allocating(5)
    outside = _faults_allocating(5)
    assert inside <= 2 * pages  # the first block faults in, the next ones reuse the heap
    assert outside >= 4 * pages  # with glibc's defaults back, every block faults in again
