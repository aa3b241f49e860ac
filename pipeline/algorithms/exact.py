"""Inner products that decide, computed the same way on every machine (SPEC §2, §3).

A fast kernel (BLAS, faiss, torch, on a CPU or a GPU) sums the products of an inner product in
whatever order its blocking, SIMD width and thread count pick, so its float32 results differ in
the last bits from one machine, thread count or device to another. Here every decisive inner
product of two float32 rows is computed one way only:

- each product ``a_i * b_i`` in float64, which is exact (24 + 24 significant bits fit in 53);
- the d products summed in one fixed order, **numpy's pairwise summation** of a contiguous
  row, which this module states (``pairwise_sum``) and checks: a row of fewer than 8 values
  is added one by one to 0; up to 128 values go round-robin into 8 running sums (the first
  8 values start them), which are combined as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 +
  r7)), then the values past the last multiple of 8 are added one by one; a longer row is
  split after its first n/2 values (rounded down to a multiple of 8) and the two halves'
  sums added. Each step is one IEEE addition, so neither SIMD width nor thread count can
  change a bit. Before a process sums rows of a width with ``np.add.reduce`` (a single
  pass, several times faster than any order spelled out in numpy calls), it checks once
  that its numpy gives exactly the stated order on rows built to expose any other; where it
  does not, the stated order is computed column by column instead (slower, the same bits);
- the float64 result rounded once where a float32 value is stored.

**The window.** A fast kernel's float32 inner product ŝ of two rows of norm at most 1 + ρ
differs from the exact one s by at most γ_d (1 + ρ)², γ_d = d·u / (1 − d·u), u = 2⁻²⁴, in any
summation order, with or without fused multiply-adds (Higham, *Accuracy and Stability of
Numerical Algorithms*, §3.1, with Σ|a_i b_i| ≤ ‖a‖‖b‖). The float64 sum differs from s by at
most γ_d with u = 2⁻⁵³. So |ŝ − v| ≤ δ = γ_d(u32)(1 + ρ)² + γ_d(u64) for the value v used
here, and when the fast score of a proposal p beats another candidate c by more than 2δ, then
v_p ≥ ŝ_p − δ > ŝ_c + δ ≥ v_c: the proposal is right. Every candidate whose fast score lies
within ``window(d)`` = 2δ (doubled again for slack) of the best is re-decided on v with the
tie rules of SPEC. Stored unit rows have ρ < 1e-5 (a float32 division per element after a
float64 norm). The bound needs true float32 products: TF32 or bf16 matrix units are off in
every proposer (see ``proposers.py``).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np

from pipeline.io.buffers import take_rows, thread_scratch

# Bump when a value computed here (or how the embed step runs its CPU batches) changes: it is
# part of the embed and read fingerprints, so work done by another version is done again.
EXACT_VERSION = 2

log = logging.getLogger(__name__)

U32 = 2.0**-24
U64 = 2.0**-53
NORM_SLACK = 1e-5  # stored unit rows: |‖x‖ − 1| below this
SLACK = 2.0  # the window is twice the proven bound

# elements per piece: each side of a piece widened to float64 is 2 MB at d = 512 (rows of
# 512: 470 ns at 1 MB a side, 426 at 2 MB, 550 at 8 MB on this project's VM)
_PIECE_ELEMENTS = 1 << 18
_PARALLEL_ROWS = 16384  # from this many rows the pieces are spread over threads
_PIECE_BUFFERS = (("dot_rows x", np.float64), ("dot_rows y", np.float64),
                  ("dot_rows taken", np.float32))


def gamma(d: int, u: float) -> float:
    return d * u / (1.0 - d * u)


def window(d: int) -> float:
    """Fast scores closer than this to the best may be in either order exactly."""
    delta = gamma(d, U32) * (1.0 + NORM_SLACK) ** 2 + gamma(d, U64) * (1.0 + NORM_SLACK) ** 2
    return SLACK * 2.0 * delta


PAIRWISE_BLOCK = 128  # rows longer than this are split in two
_UNROLL = 8


def pairwise_sum(p: np.ndarray) -> np.ndarray:
    """Sums of float64 ``p`` over its last axis in the stated order, spelled out one column
    at a time (vectorised over the other axes): the definition ``row_sums`` is checked
    against, and its fallback."""
    p = np.asarray(p, dtype=np.float64)

    def part(lo: int, n: int) -> np.ndarray:
        if n < _UNROLL:
            res = np.zeros(p.shape[:-1])
            for i in range(lo, lo + n):
                res = res + p[..., i]
            return res
        if n <= PAIRWISE_BLOCK:
            r = [p[..., lo + j].copy() for j in range(_UNROLL)]
            full = n - n % _UNROLL
            for i in range(_UNROLL, full, _UNROLL):
                for j in range(_UNROLL):
                    r[j] = r[j] + p[..., lo + i + j]
            res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
            for i in range(lo + full, lo + n):
                res = res + p[..., i]
            return res
        half = n // 2
        half -= half % _UNROLL
        return part(lo, half) + part(lo + half, n - half)

    return part(0, p.shape[-1])


_CHECKED: dict[int, bool] = {}
_REDUCE = np.add.reduce  # the one-pass sum trusted after the check


def _reduce_is_pairwise(d: int) -> bool:
    """Whether ``np.add.reduce`` over contiguous float64 rows of width ``d`` gives exactly
    ``pairwise_sum`` here (checked once per width, on rows whose sums depend on the order:
    values spread over 60 binary orders of magnitude, of both signs)."""
    ok = _CHECKED.get(d)
    if ok is None:
        rng = np.random.default_rng(d)
        rows = rng.standard_normal((32, d)) * np.exp2(rng.integers(-30, 30, (32, d)))
        want = pairwise_sum(rows)  # both call forms row_sums uses: into out, and not
        ok = _CHECKED[d] = bool(np.array_equal(_REDUCE(rows, axis=-1), want)
                                and np.array_equal(_REDUCE(rows, axis=-1, out=np.empty(32)),
                                                   want))
        if not ok:
            log.warning("numpy %s does not sum rows of %d values in the order exact.py states: "
                        "exact inner products are summed value by value instead (the same "
                        "results, slower)", np.__version__, d)
    return ok


def row_sums(p: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Sums of float64 ``p`` over its last axis in the stated order (into ``out``)."""
    p = np.ascontiguousarray(p, dtype=np.float64)
    if p.shape[-1] == 0 or not _reduce_is_pairwise(p.shape[-1]):
        sums = pairwise_sum(p)
        if out is None:
            return sums
        out[...] = sums
        return out
    return _REDUCE(p, axis=-1, out=out)


def threads() -> int:
    """Threads this thread's exact kernels may use: its OpenMP count (engine.threads, one in
    a concurrent map's worker), else the machine's cores."""
    try:
        import faiss

        return max(1, faiss.omp_get_max_threads())
    except ImportError:  # pragma: no cover - faiss is a core dependency
        return os.cpu_count() or 1


def dot_rows(a: np.ndarray, b: np.ndarray, a_rows: np.ndarray | None = None,
             b_rows: np.ndarray | None = None) -> np.ndarray:
    """Row-wise inner products of float32 rows, float64, in the fixed order: of ``a[i]`` and
    ``b[i]``, or of ``a[a_rows[i]]`` and ``b[b_rows[i]]`` when the rows are given. ``b`` may
    be float64 holding float32 values (widened once by the caller): the same results.

    Rows are gathered a piece at a time (never a whole gathered copy: fresh memory costs
    page faults that here cost more than the arithmetic).
    """
    a = np.asarray(a, dtype=np.float32)
    # float64 ``b`` holds float32 values widened (a caller's copy made once): its rows are
    # taken as they are, not widened again for every row that names them
    b = np.asarray(b)
    b = b if b.dtype == np.float64 else b.astype(np.float32, copy=False)
    n = len(a) if a_rows is None else len(a_rows)
    if (len(b) if b_rows is None else len(b_rows)) != n or a.ndim != 2 or b.ndim != 2 \
            or a.shape[1] != b.shape[1]:
        raise ValueError(f"dot_rows needs rows of one width, as many on each side: {a.shape} "
                         f"({n} taken), {b.shape}")
    d = a.shape[1]
    out = np.empty(n, dtype=np.float64)
    if d == 0:
        out[:] = 0.0
        return out
    step = max(1, _PIECE_ELEMENTS // d)
    # a row with itself (norms): one side widened and squared, the same products
    squares = a is b and a_rows is None and b_rows is None

    def pieces(first: int, last: int) -> None:
        """Rows [first, last), a piece at a time in this thread's buffers. Both sides are
        widened to float64 first and then multiplied: the same products as a multiply that
        casts as it goes, which numpy runs element by element at twice the time."""
        rows = min(step, last - first)
        size = rows * d
        # this thread's buffers: fresh ones for every call cost more than the arithmetic
        # (1,024 rows of 512 a call: 2.9 against 0.40 us a row)
        wide_x, wide_y, taken = (thread_scratch(name, size, dtype)[:size].reshape(rows, d)
                                 for name, dtype in _PIECE_BUFFERS)
        for s in range(first, last, step):
            sl = slice(s, min(last, s + step))
            m = sl.stop - sl.start
            x, y = wide_x[:m], wide_y[:m]
            np.copyto(x, a[sl] if a_rows is None else take_rows(a, a_rows[sl], taken[:m]))
            if squares:
                np.multiply(x, x, out=x)
            else:
                if b.dtype == np.float64 and b_rows is not None:
                    take_rows(b, b_rows[sl], y)
                else:
                    np.copyto(y, b[sl] if b_rows is None else take_rows(b, b_rows[sl],
                                                                          taken[:m]))
                np.multiply(x, y, out=x)
            row_sums(x, out=out[sl])

    count = min(threads(), max(1, n // _PARALLEL_ROWS))
    if count > 1:  # rows are independent: the same bits on any thread count
        bounds = np.linspace(0, n, count + 1).astype(int)
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(pieces, bounds[:-1], bounds[1:]))
    else:
        pieces(0, n)
    return out


def dot_pairs(x: np.ndarray, base: np.ndarray, rows: np.ndarray, cols: np.ndarray
              ) -> np.ndarray:
    """v(x[rows[i]], base[cols[i]]) for every pair i, float64."""
    return dot_rows(x, base, rows, cols)


def dots(x: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Every inner product of the rows of ``x`` with the rows of ``base``: (n, m) float64."""
    x = np.asarray(x, dtype=np.float32)
    base = np.asarray(base, dtype=np.float32)
    n, m = len(x), len(base)
    out = np.empty((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return out
    d = x.shape[1]
    rows = max(1, _PIECE_ELEMENTS // max(1, m * d))
    cols = m if rows > 1 else max(1, _PIECE_ELEMENTS // max(1, d))
    for s in range(0, n, rows):
        for c in range(0, m, cols):
            p = np.multiply(x[s : s + rows, None, :], base[None, c : c + cols, :],
                            dtype=np.float64)
            out[s : s + rows, c : c + cols] = row_sums(p)
    return out


def norms(x: np.ndarray) -> np.ndarray:
    """Row norms, float64: the square root (correctly rounded) of the fixed-order sum of
    squares.

    Rows holding a NaN or an infinite value give NaN or inf, as they should.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        return np.sqrt(dot_rows(x, x))


def best_per_row(row: np.ndarray, col: np.ndarray, value: np.ndarray, rows: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """For pairs (row, col, value): each row's largest value and its column, the smallest
    column among equal values. Rows without a pair get -inf and -1."""
    best = np.full(rows, -np.inf)
    arg = np.full(rows, -1, dtype=np.int64)
    if len(row) == 0:
        return best, arg
    order = np.lexsort((col, -value, row))
    r = row[order]
    first = order[np.r_[True, r[1:] != r[:-1]]]
    best[row[first]] = value[first]
    arg[row[first]] = col[first]
    return best, arg


def cut(threshold: Fraction) -> tuple[float, bool]:
    """The double ``b`` and strictness of ``v > threshold`` for doubles v: (b, True) means
    v > b, (b, False) means v >= b."""
    near = float(threshold)  # correctly rounded
    if Fraction(near) == threshold:
        return near, True
    # the threshold lies strictly between two adjacent doubles: v > t iff v >= the upper one
    return (near if Fraction(near) > threshold else float(np.nextafter(near, np.inf))), False


def above(values: np.ndarray, threshold: Fraction) -> np.ndarray:
    """values > threshold, exactly: float64 ``values`` against a rational ``threshold`` (the
    decimal a user wrote, say 1 - 0.07), not against its nearest double."""
    bound, strict = cut(threshold)
    return np.asarray(values) > bound if strict else np.asarray(values) >= bound


def count_above(ascending: np.ndarray, threshold: Fraction) -> int:
    """``above(ascending, threshold).sum()`` for float64 values sorted ascending, none NaN,
    by one binary search."""
    bound, strict = cut(threshold)
    return len(ascending) - int(np.searchsorted(ascending, bound,
                                                side="right" if strict else "left"))


def round_once(values: np.ndarray) -> np.ndarray:
    """float64 results stored as float32: one rounding (to nearest, ties to even)."""
    return np.asarray(values, dtype=np.float64).astype(np.float32)
