"""OpenBLAS's kernels chosen for the CPU before numpy loads them (``pipeline.blas_kernels``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import blas_kernels as bk

AMD = "AuthenticAMD"
FLAGS = "fpu sse2 avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl avx512_bf16"


def _cpuinfo(tmp_path: Path, vendor: str, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    cpu = f"processor\t: {{}}\nvendor_id\t: {vendor}\nmodel name\t: x\nflags\t\t: {flags}\n\n"
    path.write_text(cpu.format(0) + cpu.format(1))
    return path


@pytest.mark.parametrize(("vendor", "flags", "want"), [
    (AMD, FLAGS, "SkylakeX"),
    (AMD, FLAGS.replace(" avx512bw", ""), None),  # a subset the kernels need is missing
    (AMD, "fpu sse2 avx2 fma", None),
    ("GenuineIntel", FLAGS, None),  # OpenBLAS recognises Intel's AVX-512 CPUs itself
])
def test_avx512_kernels_are_asked_for_only_on_amd_cpus_that_have_them(
        tmp_path: Path, vendor: str, flags: str, want: str | None) -> None:
    environ: dict[str, str] = {}
    assert bk.prefer_avx512(environ, _cpuinfo(tmp_path, vendor, flags)) == want
    assert environ == ({} if want is None else {"OPENBLAS_CORETYPE": want})


def test_a_core_type_the_user_set_is_kept(tmp_path: Path) -> None:
    environ = {"OPENBLAS_CORETYPE": "Haswell"}
    assert bk.prefer_avx512(environ, _cpuinfo(tmp_path, AMD, FLAGS)) is None
    assert environ == {"OPENBLAS_CORETYPE": "Haswell"}


def test_no_cpuinfo_means_openblas_decides(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    assert bk.prefer_avx512(environ, tmp_path / "missing") is None
    assert environ == {}


def _loaded_kernels(env: dict[str, str]) -> list[str]:
    """The architectures of the OpenBLAS copies numpy and faiss load in a fresh process
    that imports ``pipeline`` first, as the console script does."""
    code = ("import pipeline, numpy, faiss, json\n"
            "from threadpoolctl import threadpool_info\n"
            "print(json.dumps([i['architecture'] for i in threadpool_info()"
            " if i['internal_api'] == 'openblas']))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_fresh_process_loads_the_kernels_chosen_for_this_cpu() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    want = bk.avx512_core_for(*bk.cpu_identity())
    got = _loaded_kernels(env)
    assert len(got) == 2  # numpy's and faiss's copies
    if want is not None:  # this machine: an AMD CPU with AVX-512
        assert got == [want, want]
    if "avx2" in bk.cpu_identity()[1]:  # a core type the user names wins
        assert _loaded_kernels({**env, "OPENBLAS_CORETYPE": "Haswell"}) == ["Haswell"] * 2
