"""Which OpenBLAS kernels this process asks for, chosen before numpy or faiss loads OpenBLAS.

OpenBLAS picks its kernels from the CPU model it recognises. On the Zen 5 EPYC of one of this
project's VMs, neither numpy's copy (0.3.31) nor faiss's (0.3.15) knew the CPU and both ran
their AVX2 (Haswell, Zen) kernels. Asked for the AVX-512 ones (``OPENBLAS_CORETYPE=SkylakeX``),
numpy's float32 matrix product ran at 449 GFLOP/s instead of 241, and the 1M x 512 bench run
took 21.5 s instead of 28.5 s. On a Zen 4 EPYC (half-width AVX-512 units) numpy's copy takes
the SkylakeX kernels by itself, and either choice runs within 8% of the other (numpy's
product a little faster on Haswell's, faiss's search a little faster on SkylakeX's). The
results are the same bytes either way: every decision is made on exact values
(``algorithms/exact.py``).

So on an AMD CPU that has the AVX-512 subsets those kernels need, ``prefer_avx512`` sets
``OPENBLAS_CORETYPE`` before OpenBLAS loads, unless the environment already names a core
type (set it, to ``Haswell`` say, to keep another choice). Child processes (a local Ray or
Spark cluster) inherit it; workers started apart decide for their own CPU when they import
``pipeline`` before numpy, and otherwise keep OpenBLAS's own choice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from pathlib import Path

log = logging.getLogger(__name__)

VARIABLE = "OPENBLAS_CORETYPE"
AVX512_CORE = "SkylakeX"
# the instruction subsets OpenBLAS's SkylakeX kernels use
AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
CPUINFO = Path("/proc/cpuinfo")

chosen: str | None = None  # what ``prefer_avx512`` set in this process, if anything


def cpu_identity(cpuinfo: Path = CPUINFO) -> tuple[str, frozenset[str]]:
    """(vendor, instruction flags) of the first CPU in ``cpuinfo``; empty where there is no
    such file (not Linux) or it cannot be read."""
    vendor, flags = "", frozenset()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return vendor, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags":
            flags = frozenset(value.split())
            break
    return vendor, flags


def avx512_core_for(vendor: str, flags: frozenset[str]) -> str | None:
    """The core type to ask OpenBLAS for on this CPU, or None for its own choice: AVX-512
    kernels on AMD CPUs that have the subsets they need (OpenBLAS names those CPUs Haswell
    or Zen); Intel CPUs with AVX-512 OpenBLAS recognises itself."""
    if vendor == "AuthenticAMD" and AVX512_FLAGS.issubset(flags):
        return AVX512_CORE
    return None


def prefer_avx512(environ: MutableMapping[str, str] = os.environ,
                  cpuinfo: Path = CPUINFO) -> str | None:
    """Set ``OPENBLAS_CORETYPE`` for this CPU unless ``environ`` names one already; returns
    the value set, or None. Call it before numpy is imported: OpenBLAS reads it once, when
    it loads."""
    global chosen
    if environ.get(VARIABLE):
        return None
    core = avx512_core_for(*cpu_identity(cpuinfo))
    if core is not None:
        environ[VARIABLE] = core
        if environ is os.environ:
            chosen = core
    return core


def describe() -> str:
    """One line on the BLAS kernels this process runs (numpy's and faiss's OpenBLAS), for the
    run's log."""
    from threadpoolctl import threadpool_info

    found = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
             for i in threadpool_info() if i.get("user_api") == "blas"]
    why = (f"; {VARIABLE}={chosen} set by conceptprune for this AMD CPU with AVX-512"
           if chosen else (f"; {VARIABLE}={os.environ[VARIABLE]} from the environment"
                           if os.environ.get(VARIABLE) else ""))
    return f"BLAS kernels: {', '.join(found) or 'none loaded'}{why}"
