"""Same bytes whatever the machine (SPEC §2, §3, §8): one embeddings input planted with exact
copies, near-ties at semdedup's line and rows between two k-means centroids; kernel threads
1, 2 and 3, another bucket plan, other BLAS kernels, the faiss and torch backends and a
kernel as wrong as the error bound allows all give the same subset.npy, ledger and report.
(Ray joined by address and Spark run the same input in their own modules.) An image run
likewise on 1 and 2 threads and on torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from same_bytes import assert_same_run
from test_resume_images import assert_same_result, raw_config
from tie_data import near_ties, settings

from pipeline import blas_kernels
from pipeline.algorithms import exact, proposers
from pipeline.algorithms.proposers import blas_earlier
from pipeline.config import validate_config
from pipeline.runner import run
from pipeline.synth.images import synth_images

REPORT_IGNORE = ("engine", "timings_s", "parameters", "command")


@pytest.fixture(scope="module")
def ties(tie_input: Path) -> Path:
    return tie_input


@pytest.fixture(scope="module")
def reference(ties: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    cfg = settings(ties, out)
    cfg["engine"] = {"threads": 1}
    run(validate_config(cfg))
    return out


def test_the_input_splits_hairs_where_decisions_are_made(reference: Path) -> None:
    got = near_ties(reference)
    # members within float32's error of 1 - eps; rows within it of two centroids, per fit
    assert got["line"] >= 300 and got["semdedup"] >= 250 and got["dbp"] >= 250, got


@pytest.mark.parametrize("engine", [{"threads": 2}, {"threads": 3, "bucket_rows": 1500}],
                         ids=["threads-2", "threads-3-small-buckets"])
def test_any_thread_count_and_bucket_plan_gives_the_same_bytes(
        ties: Path, reference: Path, tmp_path: Path, engine: dict) -> None:
    cfg = settings(ties, tmp_path / "out")
    cfg["engine"] = engine
    run(validate_config(cfg))
    assert_same_run(tmp_path / "out", reference, parts=("subset.npy", "ledger", "report"),
                    report_ignore=REPORT_IGNORE)


# torch warns (once per process) when handed read-only memory, as the store's files are
@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_the_faiss_and_torch_backends_give_the_blas_bytes(ties: Path, reference: Path,
                                                          tmp_path: Path, backend: str) -> None:
    """The reference ran on auto: numpy's BLAS on this CPU."""
    if backend == "torch":
        pytest.importorskip("torch")
    cfg = settings(ties, tmp_path / "out")
    cfg["kmeans"] = {"backend": backend}
    run(validate_config(cfg))
    assert_same_run(tmp_path / "out", reference, parts=("subset.npy", "ledger", "report"),
                    report_ignore=REPORT_IGNORE)


@pytest.mark.parametrize("core", ["Nehalem", "SkylakeX"])
def test_other_blas_kernels_give_the_same_bytes(ties: Path, reference: Path, tmp_path: Path,
                                                core: str) -> None:
    """OpenBLAS's SSE4 kernels, and its AVX-512 ones where this CPU has them, round the
    proposals otherwise than the reference's kernels: the CLI in a fresh process with them."""
    if core == "SkylakeX" and not blas_kernels.AVX512_FLAGS.issubset(
            blas_kernels.cpu_identity()[1]):
        pytest.skip("this CPU has no AVX-512")
    out = tmp_path / "out"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(settings(ties, out)))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(path),
                           "--no-progress"], env={**os.environ, "OPENBLAS_CORETYPE": core},
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels = next(line for line in (out / "logs" / "run.log").read_text().splitlines()
                   if "BLAS kernels:" in line)
    assert kernels.split(";")[0].count(core) == 2, kernels  # numpy's and faiss's OpenBLAS
    assert_same_run(out, reference, parts=("subset.npy", "ledger", "report"),
                    report_ignore=REPORT_IGNORE)


class JitteredIndex:
    def __init__(self, base: np.ndarray, noise: float, rng: np.random.Generator) -> None:
        self.base, self.noise, self.rng = base, noise, rng

    def top(self, queries: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        s = queries @ self.base.T
        s += self.rng.uniform(-self.noise, self.noise, s.shape).astype(np.float32)
        ids = np.argsort(-s, axis=1, kind="stable")[:, :r]
        return np.take_along_axis(s, ids, axis=1), ids


class JitteredProposer:
    """numpy's float32 products plus noise of up to half the proven error bound: a kernel
    that rounds as badly as any allowed one, and differently on every call."""

    name, gpu = "jittered", False

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def noise(self, d: int) -> float:
        return exact.window(d) / (4 * exact.SLACK)

    def index(self, base: np.ndarray) -> JitteredIndex:
        return JitteredIndex(base, self.noise(base.shape[1]), self.rng)

    def earlier(self, vectors, block_rows, window, eligible):  # noqa: ANN001, ANN201
        h = self.noise(vectors.shape[1])

        def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            s = a @ b.T
            return s + self.rng.uniform(-h, h, s.shape).astype(np.float32)

        return blas_earlier(vectors, block_rows, window, eligible, product)


def test_a_kernel_as_wrong_as_allowed_changes_no_byte(ties: Path, reference: Path,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = iter(range(1000))
    monkeypatch.setattr(proposers, "make_proposer",
                        lambda *_: JitteredProposer(next(seeds)))
    run(validate_config(settings(ties, tmp_path / "out")))
    assert_same_run(tmp_path / "out", reference, parts=("subset.npy", "ledger", "report"),
                    report_ignore=REPORT_IGNORE)
    # without the exact re-check the same kernel changes decisions on this input
    monkeypatch.setattr(exact, "window", lambda d: 0.0)
    run(validate_config(settings(ties, tmp_path / "unchecked")))
    with pytest.raises(AssertionError, match="ledger"):
        assert_same_run(tmp_path / "unchecked", reference, parts=("ledger",))


# ---------------------------------------------------------------- an image run


def image_run(data: Path, out: Path, threads: int, backend: str = "faiss") -> None:
    """The CLI in a fresh process whose kernels (torch's included) start on ``threads``
    threads, as a Ray worker given one thread does, clustering on ``backend``."""
    cfg = raw_config(data, out)
    cfg["semdedup"]["eps"] = 0.0002  # random weights: look-alikes everywhere
    cfg["engine"] = {"threads": threads}
    cfg["kmeans"] = {"backend": backend}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(path),
                           "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_an_image_run_on_1_thread_and_faiss_gives_the_bytes_of_2_threads_and_torch(
        tmp_path: Path) -> None:
    """Shards of 37 samples embedded in batches of 16: every shard ends in a short batch,
    which CPU kernels would run with another algorithm per thread count."""
    data = synth_images(tmp_path / "data", 111, seed=9, samples_per_shard=37, concepts=4)
    image_run(data, tmp_path / "one", 1)
    image_run(data, tmp_path / "two", 2, backend="torch")
    assert_same_result(tmp_path / "two", tmp_path / "one")
