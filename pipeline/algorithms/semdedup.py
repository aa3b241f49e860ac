"""SemDeDup within one cluster (SPEC section 3), exact for any cluster size.

Members are ordered farthest-from-centroid first (ties by uid). Member j is compared with
every earlier member i < j; m_j = max_i cos(e_i, e_j), and j is a near-duplicate when
m_j > 1 - eps. Rows are processed in blocks, and a block only needs its products with the
members before it, so the work is the lower triangle of the Gram matrix and memory is
O(block x cluster size). The products only propose; m_j and its member are decided on
exact values (``exact.py``), so the decisions are the same on any backend and thread count.
"""

from __future__ import annotations

import numpy as np

from pipeline.algorithms import exact
from pipeline.algorithms.ordering import member_order
from pipeline.algorithms.proposers import FaissProposer, Proposer
from pipeline.algorithms.selection import decimal


def dedup_order(distance: np.ndarray, uid_hi: np.ndarray, uid_lo: np.ndarray) -> np.ndarray:
    """Positions of the members, farthest from the centroid first, ties by uid ascending."""
    return member_order(np.zeros(len(distance), dtype=np.int32), distance, uid_hi, uid_lo)


def auto_block_rows(n: int, cap: int) -> int:
    """Rows per block: about an eighth of the cluster (more blocks skip more of the upper
    triangle, fewer blocks run bigger, faster products), at least 128, at most ``cap``."""
    return max(1, min(cap, max(128, n // 8)))


def _first_of_equal(keys: np.ndarray) -> np.ndarray:
    """For each key, the position of its first occurrence."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first[inverse.ravel()]


def first_identical(vectors: np.ndarray) -> np.ndarray:
    """For each row, the first row holding exactly the same bits (itself when none does).

    Rows are grouped by their first four values, then only rows sharing those are compared
    whole: copies cost their own bytes, distinct rows almost nothing."""
    rows = np.ascontiguousarray(vectors)
    n, d = rows.shape
    out = np.arange(n)
    if n < 2 or d == 0:
        return out
    head = np.ascontiguousarray(rows[:, : min(d, 4)])
    first = _first_of_equal(head.view(np.dtype((np.void, head.strides[0])))[:, 0])
    shared = np.flatnonzero(np.bincount(first, minlength=n)[first] > 1)
    if len(shared):
        whole = rows[shared].view(np.dtype((np.void, rows.strides[0])))[:, 0]
        out[shared] = shared[_first_of_equal(whole)]
    return out


def max_earlier_similarity(vectors: np.ndarray, block_rows: int = 256,
                           proposer: Proposer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For ordered unit rows, m_j = max_{i<j} <e_i, e_j> (exact, float64) and the i achieving
    it, the smallest i among equal values. For j = 0, m is -inf and i is -1.

    The proposer's blocks name each row's most similar earlier member, or, where a runner-up
    lies within the window, every candidate: those are decided on exact values. A member
    bit-identical to an earlier one can never be the earliest best (the earlier one has the
    same exact value), so the proposer does not consider it: a cluster of thousands of
    copies needs no exact re-check.
    """
    e = np.ascontiguousarray(vectors, dtype=np.float32)
    n = e.shape[0]
    best = np.full(n, -np.inf, dtype=np.float64)
    arg = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return best, arg
    proposer = proposer or FaissProposer()
    win = exact.window(e.shape[1])
    eligible = first_identical(e) == np.arange(n)
    for block in proposer.earlier(e, block_rows, win, eligible):
        rows = slice(block.start, block.stop)
        arg[rows] = block.best
        if len(block.pair_row):
            values = exact.dot_pairs(e, e, block.pair_row, block.pair_col)
            local = block.pair_row - block.start
            _, chosen = exact.best_per_row(local, block.pair_col, values,
                                           block.stop - block.start)
            decided = chosen >= 0
            arg[rows][decided] = chosen[decided]
        best[rows] = exact.dot_rows(e[rows], e, b_rows=arg[rows])
    return best, arg


def removed_at(similarity: np.ndarray, eps: float) -> np.ndarray:
    """semdedup's decision: m_j > 1 - eps, eps the decimal as written, on float64 m_j (the
    comparison is exact; NaN, no earlier member, is never removed)."""
    return exact.above(similarity, 1 - decimal(eps))


def removed_count(ascending: np.ndarray, eps: float) -> int:
    """``removed_at(values, eps).sum()`` for m_j sorted ascending, none NaN (the same cut)."""
    return exact.count_above(ascending, 1 - decimal(eps))


def decide_cluster(vectors: np.ndarray, eps: float, block_rows: int = 256,
                   proposer: Proposer | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``dedup_cluster``'s three arrays and m_j itself (float64, NaN for the first member)."""
    best, arg = max_earlier_similarity(vectors, block_rows, proposer)
    removed = removed_at(best, eps)
    m = np.where(arg >= 0, best, np.nan)
    similarity = np.where(arg >= 0, exact.round_once(np.where(arg >= 0, best, 0.0)), np.nan)
    return removed, arg, similarity.astype(np.float32), m


def dedup_cluster(vectors: np.ndarray, eps: float, block_rows: int = 256,
                  proposer: Proposer | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decide one cluster given its members already in dedup order.

    Returns ``(removed, dup_of_position, similarity)`` aligned with the ordered members;
    ``dup_of_position`` is -1 and ``similarity`` NaN for the first member. A member is
    removed when its exact m_j (float64) exceeds 1 - eps, eps the decimal as written (the
    comparison is exact); the similarity is m_j rounded once to float32.
    """
    return decide_cluster(vectors, eps, block_rows, proposer)[:3]
