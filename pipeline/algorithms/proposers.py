"""Fast kernels that propose and never decide (SPEC §2, §3): the nearest centroids of a
vector and the most similar earlier member of a cluster, from float32 products on faiss,
BLAS or torch (on a CPU or a CUDA GPU).

A proposer returns its best guess and, for the rows where a runner-up lies within the window
of ``exact.window`` of the best, every candidate inside that window; ``kmeans`` and
``semdedup`` then decide on exact values. So the backend and its thread count change the
speed, never a result: pick the fastest (``make_proposer``).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

from pipeline.algorithms import exact
from pipeline.errors import ConceptpruneError
from pipeline.float32_products import full_float32
from pipeline.io.buffers import thread_scratch

BACKENDS = ("auto", "blas", "faiss", "torch")
DEVICES = ("auto", "cpu", "gpu")


class BackendError(ConceptpruneError, ValueError):
    """A clustering backend or device that cannot run here; the message says what to set."""


@dataclass
class EarlierBlock:
    """Rows [start, stop) of a cluster: each row's proposed most similar earlier member,
    and (row, col) pairs of every candidate of the rows that need deciding exactly."""

    start: int
    stop: int
    best: np.ndarray  # int64, one per row
    pair_row: np.ndarray  # int64 rows in [start, stop)
    pair_col: np.ndarray  # int64 earlier members


class Index(Protocol):
    def top(self, queries: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``r`` largest fast inner products of every query with the indexed rows:
        (float32 scores, int64 ids), each (n, r), best first."""


class NearIndex(Index, Protocol):
    def near(self, queries: np.ndarray, window: float, scores: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every query's best indexed row (int64) and, for the queries whose runner-up lies
        within ``window`` of the best, (query, row) pairs of every row that does, the best
        included: the candidates are complete, however many there are. ``scores`` (n, 2),
        when given, receives each query's fast score of its best row and of its runner-up
        (-inf where there is none)."""


class Proposer(Protocol):
    name: str
    gpu: bool

    def index(self, base: np.ndarray) -> Index:
        """``base`` (unit float32 rows) ready for ``top`` queries."""

    def earlier(self, vectors: np.ndarray, block_rows: int, window: float,
                eligible: np.ndarray) -> Iterator[EarlierBlock]:
        """For ordered unit rows: each row j >= 1's proposed argmax over eligible i < j of
        <e_i, e_j>, block by block, with the candidates of the rows whose runner-up is
        within ``window`` of the best."""


@functools.lru_cache(maxsize=4)
def _upper(rows: int) -> np.ndarray:
    """0 below the diagonal, -inf on and above it: added to a block's products with its own
    rows, it bars every member not earlier than the row (one pass, where a boolean mask's
    assignment took four times as long). Read-only, and kept for the next clusters of the
    same block size (a bucket's 117 clusters built theirs in 33 ms)."""
    upper = np.where(np.triu(np.ones((rows, rows), dtype=bool)), np.float32(-np.inf),
                     np.float32(0.0))
    upper.flags.writeable = False
    return upper


def _near_pairs(start: int, near: np.ndarray, best: np.ndarray, r: np.ndarray, c: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([near, near[r]]).astype(np.int64) + start
    cols = np.concatenate([best[near], c]).astype(np.int64)
    return rows, cols


def _best_and_candidates(sims: np.ndarray, window: float, start: int,
                         scores: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's best column of the block products ``sims`` (overwritten), and the (row +
    ``start``, column) pairs of the rows whose runner-up lies within ``window`` of their
    best: the best and every other column inside the window. ``scores`` (rows, 2), when
    given, receives the best and the runner-up product of each row."""
    at = np.arange(len(sims))
    best = sims.argmax(axis=1)
    top = sims[at, best]
    sims[at, best] = -np.inf
    second = sims.max(axis=1)
    if scores is not None:
        scores[:, 0], scores[:, 1] = top, second
    near = np.flatnonzero(second >= top - window)
    if not len(near):
        return best, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    r, c = np.nonzero(sims[near] >= (top[near] - window)[:, None])
    return best, *_near_pairs(start, near, best, r, c)


def _matmul(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``rows @ cols.T`` into this thread's buffer, valid until its next call (blocks of up
    to 256 MB: fresh ones cost page faults that here cost more than the copy)."""
    need = len(rows) * len(cols)
    buffer = thread_scratch("block products", need, np.float32)
    return np.matmul(rows, cols.T, out=buffer[:need].reshape(len(rows), len(cols)))


# a cluster's eligible rows (bit-identical copies left out) are copied into columns of their
# own up to this size: products without the copies' columns cost less, and no pass masks
# them (5% copies, the bench's share: 0.9 of 23 thread-seconds); a bigger cluster masks
# instead of doubling its memory
ELIGIBLE_COPY_BYTES = 256 << 20


def blas_earlier(vectors: np.ndarray, block_rows: int, window: float, eligible: np.ndarray,
                 product: Callable[[np.ndarray, np.ndarray], np.ndarray] = _matmul
                 ) -> Iterator[EarlierBlock]:
    """The block proposer on this process's BLAS (numpy's float32 matrix product), or on
    another ``product`` of row blocks."""
    e = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(e)
    block_rows = max(1, int(block_rows))
    upper = _upper(block_rows)
    barred = None if eligible.all() else ~eligible
    at = None  # the members whose columns the products hold, when not all
    if barred is not None and e.nbytes <= ELIGIBLE_COPY_BYTES:
        at = np.flatnonzero(eligible)  # row 0 is always one: every row j >= 1 has a column
        columns = e[at]
    for start in range(1, n, block_rows):
        stop = min(n, start + block_rows)
        rows = stop - start
        if at is None:
            sims = product(e[start:stop], e[:stop])  # rows j in [start, stop), columns i < stop
            sims[:, start:stop] += upper[:rows, :rows]
            if barred is not None:
                sims[:, barred[:stop]] = -np.inf
        else:  # only eligible columns: those of members before each row count
            lo, hi = np.searchsorted(at, [start, stop])
            sims = product(e[start:stop], columns[:hi])
            if hi - lo == rows:  # every row of the block is a column: the plain triangle
                sims[:, lo:hi] += upper[:rows, :rows]
            else:
                np.copyto(sims[:, lo:hi], -np.inf,
                          where=at[lo:hi][None, :] >= np.arange(start, stop)[:, None])
        best, pair_row, pair_col = _best_and_candidates(sims, window, start)
        if at is not None:
            best, pair_col = at[best], at[pair_col]
        yield EarlierBlock(start, stop, best.astype(np.int64), pair_row, pair_col)


class _FaissIndex:
    def __init__(self, base: np.ndarray, gpu: bool, device: int | None) -> None:
        base = np.ascontiguousarray(base, dtype=np.float32)
        index = faiss.IndexFlatIP(base.shape[1])
        if gpu:
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, device or 0, index)
        index.add(base)
        self._index = index

    def top(self, queries: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), r)
        return scores, ids.astype(np.int64)


class FaissProposer:
    """faiss's flat inner-product search (CPU, or a GPU with faiss-gpu) for centroids; the
    process's BLAS for semdedup's blocks."""

    def __init__(self, gpu: bool = False, device: int | None = None) -> None:
        if gpu and faiss_gpus() == 0:
            raise BackendError("kmeans.backend=faiss on the GPU, but faiss sees no GPU: "
                               "install faiss-gpu, or set kmeans.device=cpu")
        self.gpu = gpu
        self.device = device
        self.name = f"faiss-gpu:{device or 0}" if gpu else "faiss-cpu"

    def index(self, base: np.ndarray) -> Index:
        return _FaissIndex(base, self.gpu, self.device)

    def earlier(self, vectors: np.ndarray, block_rows: int, window: float,
                eligible: np.ndarray) -> Iterator[EarlierBlock]:
        return blas_earlier(vectors, block_rows, window, eligible)


# products of one block of queries: 2 MB of float32, which the core's caches mostly hold;
# larger blocks pack the centroids for BLAS fewer times (200,000 x 500 at d = 512 on two
# threads at once: 312-316k vectors/s in blocks of 512 KB, 331k in blocks of 2 MB, the same
# at 4 MB). But at least NEAR_MIN_ROWS queries, up to NEAR_MAX_ELEMENTS (32 MB): against
# thousands of centroids a few dozen rows made products too thin for BLAS (20,000 x 5,000
# at d = 512: 1.29 s in blocks of 26 rows, 0.67 s in blocks of 256; 60,000 x 5,000 at
# d = 64: 0.38 -> 0.30 s)
NEAR_BLOCK_ELEMENTS = 1 << 19
NEAR_MIN_ROWS = 256
NEAR_MAX_ELEMENTS = 1 << 23
NEAR_THREAD_ROWS = 8192  # from this many queries per thread, the rows are split over threads


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread() -> Any:
    """A block in which this process's BLAS runs on one thread. The libraries are found
    once: ``threadpool_limits`` reads the process's memory map on every call (2 ms each
    in a run, where a fit's searches make dozens of calls)."""
    return _controller().limit(limits=1, user_api="blas")


def near_block_rows(k: int) -> int:
    """Queries per block of products with ``k`` centroids (see NEAR_BLOCK_ELEMENTS)."""
    k = max(1, k)
    return max(NEAR_BLOCK_ELEMENTS // k, min(NEAR_MIN_ROWS, NEAR_MAX_ELEMENTS // k), 1)


class _BlasIndex:
    """Centroids as columns for this process's BLAS: a block of queries at a time, one
    float32 product, the best of each row, and the window checked on the next best."""

    def __init__(self, base: np.ndarray) -> None:
        self.columns = np.ascontiguousarray(np.asarray(base, dtype=np.float32).T)

    def top(self, queries: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.ascontiguousarray(queries, dtype=np.float32) @ self.columns
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :r]
        return np.take_along_axis(scores, ids, axis=1), ids.astype(np.int64)

    def near(self, queries: np.ndarray, window: float, scores: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(x)
        best = np.empty(n, dtype=np.int64)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        threads = max(1, min(exact.threads(), n // NEAR_THREAD_ROWS))
        if threads > 1:  # row ranges side by side, each with a one-thread product: the
            # argmax passes run beside the products instead of after them (the fit's 20
            # searches at 128,000 x 500 took 6.3 s so, 7.6 s with one two-thread product)
            bounds = np.linspace(0, n, threads + 1).astype(int)
            with one_blas_thread(), ThreadPoolExecutor(threads) as pool:
                parts = list(pool.map(lambda i: self._near_rows(
                    x, bounds[i], bounds[i + 1], window, best, scores), range(threads)))
            found = [pair for part in parts for pair in part]
        else:
            found = self._near_rows(x, 0, n, window, best, scores)
        if not found:
            return best, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return best, np.concatenate([r for r, _ in found]), np.concatenate([c for _, c in found])

    def _near_rows(self, x: np.ndarray, lo: int, hi: int, window: float, best: np.ndarray,
                   scores: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        k = self.columns.shape[1]
        step = near_block_rows(k)
        sims = np.empty((min(step, max(1, hi - lo)), k), dtype=np.float32)
        found = []
        for start in range(lo, hi, step):
            rows = min(step, hi - start)
            s = np.matmul(x[start : start + rows], self.columns, out=sims[:rows])
            best[start : start + rows], pair_row, pair_col = _best_and_candidates(
                s, window, start, None if scores is None else scores[start : start + rows])
            if len(pair_row):
                found.append((pair_row, pair_col))
        return found


class BlasProposer:
    """numpy's float32 matrix products on this CPU (its BLAS), for centroids and semdedup's
    blocks: here the fastest CPU proposer (``bench/bench_embeddings_run.py``)."""

    gpu = False
    name = "blas-cpu"

    def index(self, base: np.ndarray) -> Index:
        return _BlasIndex(base)

    def earlier(self, vectors: np.ndarray, block_rows: int, window: float,
                eligible: np.ndarray) -> Iterator[EarlierBlock]:
        return blas_earlier(vectors, block_rows, window, eligible)


class _TorchIndex:
    def __init__(self, proposer: TorchProposer, base: np.ndarray) -> None:
        self.p = proposer
        self.base = proposer.to_device(base)

    def top(self, queries: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.p.torch
        n, k = len(queries), len(self.base)
        scores = np.empty((n, r), dtype=np.float32)
        ids = np.empty((n, r), dtype=np.int64)
        step = max(1, self.p.max_elements // max(1, k))  # a (step x k) product at a time
        with torch.inference_mode(), full_float32(torch):
            for s in range(0, n, step):
                q = self.p.to_device(queries[s : s + step])
                v, i = torch.topk(q @ self.base.T, r, dim=1)
                scores[s : s + step] = v.cpu().numpy()
                ids[s : s + step] = i.cpu().numpy()
        return scores, ids


class TorchProposer:
    """torch's float32 matrix products and top-k, on a CUDA GPU or this CPU."""

    def __init__(self, gpu: bool = False, device: int | None = None) -> None:
        try:
            import torch
        except ImportError as err:
            raise BackendError("kmeans.backend=torch needs torch: install the 'embed' extra "
                               "(pip install 'conceptprune[embed]') or set "
                               "kmeans.backend=faiss") from err
        if gpu and not torch.cuda.is_available():
            raise BackendError("kmeans.backend=torch on the GPU, but torch sees no CUDA "
                               "device: set kmeans.device=cpu, or run where a GPU is")
        self.torch = torch
        self.gpu = gpu
        self.device = torch.device(f"cuda:{device or 0}") if gpu else torch.device("cpu")
        self.name = f"torch-{self.device}"
        # elements of one block of products: 1 GiB of float32 on a GPU, 256 MiB on a CPU
        self.max_elements = (1 << 28) if gpu else (1 << 26)

    def to_device(self, x: np.ndarray) -> Any:  # noqa: ANN401 - a torch tensor
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not x.flags.writeable:  # a read-only view of the store's files: torch warns that
            x = x.copy()  # it may write a tensor's memory, so it gets a copy of its own
        t = self.torch.from_numpy(x)
        return t.to(self.device, non_blocking=False) if self.gpu else t

    def index(self, base: np.ndarray) -> Index:
        return _TorchIndex(self, base)

    def earlier(self, vectors: np.ndarray, block_rows: int, window: float,
                eligible: np.ndarray) -> Iterator[EarlierBlock]:
        torch = self.torch
        n = len(vectors)
        if n < 2:
            return
        block_rows = max(1, min(int(block_rows), self.max_elements // n))
        with torch.inference_mode(), full_float32(torch):
            e = self.to_device(vectors)
            upper = torch.triu(torch.ones((block_rows, block_rows), dtype=torch.bool,
                                          device=self.device))
            barred = None if eligible.all() else \
                torch.from_numpy(~eligible).to(self.device)
            for start in range(1, n, block_rows):
                stop = min(n, start + block_rows)
                rows = stop - start
                sims = e[start:stop] @ e[:stop].T
                sims[:, start:stop].masked_fill_(upper[:rows, :rows], -float("inf"))
                if barred is not None:
                    sims[:, barred[:stop]] = -float("inf")
                top, best = sims.max(dim=1)
                at = torch.arange(rows, device=self.device)
                sims[at, best] = -float("inf")
                near = torch.nonzero(sims.max(dim=1).values >= top - window).flatten()
                pair_row = pair_col = np.zeros(0, dtype=np.int64)
                best_np = best.cpu().numpy().astype(np.int64)
                if len(near):
                    r, c = torch.nonzero(sims[near] >= (top[near] - window)[:, None],
                                         as_tuple=True)
                    pair_row, pair_col = _near_pairs(start, near.cpu().numpy(), best_np,
                                                     r.cpu().numpy(), c.cpu().numpy())
                yield EarlierBlock(start, stop, best_np, pair_row, pair_col)


def faiss_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def _nvidia_driver() -> bool:
    """Whether this machine has an NVIDIA driver: found without importing torch (seconds)."""
    return os.path.exists("/dev/nvidiactl") or os.path.isdir("/proc/driver/nvidia")


def torch_gpus() -> int:
    if "torch" not in sys.modules and not _nvidia_driver():
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check(backend: str, device: str) -> None:
    if backend not in BACKENDS:
        raise BackendError(f"kmeans.backend must be one of {', '.join(BACKENDS)}, got "
                           f"{backend!r}")
    if device not in DEVICES:
        raise BackendError(f"kmeans.device must be one of {', '.join(DEVICES)}, got "
                           f"{device!r}")
    if backend == "blas" and device == "gpu":
        raise BackendError("kmeans.backend=blas runs on the CPU only: set kmeans.device=cpu "
                           "(or auto), or kmeans.backend=torch or faiss for the GPU")


def choose(backend: str, device: str) -> tuple[str, bool]:
    """(backend, on a GPU) that ``backend`` and ``device`` settings name on this machine.

    auto: a GPU when one is there (torch on CUDA, else faiss-gpu), else numpy's BLAS on the
    CPU, the fastest CPU proposer here (``bench/bench_embeddings_run.py``). device=gpu asks
    for a GPU without looking: the workers that get one may be other machines.
    """
    check(backend, device)
    if device == "cpu":
        return ("blas" if backend == "auto" else backend), False
    if backend == "auto":
        if torch_gpus():
            return "torch", True
        if faiss_gpus():
            return "faiss", True
        # a GPU asked for where this process sees none: the workers' (torch, the common one)
        return ("torch", True) if device == "gpu" else ("blas", False)
    if backend == "blas":
        return backend, False
    if device == "gpu":
        return backend, True
    found = torch_gpus() if backend == "torch" else faiss_gpus()
    return backend, found > 0


def make_proposer(backend: str, gpu: bool, device: int | None = None) -> Proposer:
    """The proposer ``choose`` named, on GPU ``device`` (None: the first one) when ``gpu``."""
    if backend == "torch":
        return TorchProposer(gpu, device)
    if backend == "blas":
        return BlasProposer()
    return FaissProposer(gpu, device)
