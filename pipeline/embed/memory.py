"""Keep freed memory in the process while models run on the CPU.

glibc serves large blocks (a batch's activations: tens to hundreds of MB) with fresh ``mmap``s
and returns them to the system when freed, so every batch page-faults its activations in
again: on a 2-core machine that doubled the time of a convnet forward pass (4 million page
faults for five batches of 64 images), most of it system time. Raising glibc's mmap and trim
thresholds for the duration keeps those blocks in the heap for the next batch; leaving
restores glibc's defaults and trims the heap. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_DEFAULT_THRESHOLD = 128 * 1024  # glibc's default for both
_RETAIN = 1 << 30  # blocks below 1 GiB come from the heap and stay there when freed


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, freed large blocks stay in the heap; yields whether that applied."""
    libc = _glibc()
    applied = bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, _RETAIN)
                   and libc.mallopt(_M_TRIM_THRESHOLD, _RETAIN))
    if not applied:
        log.debug("cannot tune the allocator here (not glibc): models run with its defaults")
    try:
        yield applied
    finally:
        if libc is not None and applied:
            libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)
            libc.malloc_trim(0)
