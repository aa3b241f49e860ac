"""SemDeDup within one cluster (SPEC section 3), exact for any cluster size.

Members are ordered farthest-from-centroid first (ties by uid). Member j is compared with
every earlier member i < j; m_j = max_i cos(e_i, e_j), and j is a near-duplicate when
m_j > 1 - eps. Rows are processed in blocks, and a block only needs its products with the
members before it, so the work is the lower triangle of the Gram matrix and memory is
O(block x cluster size). The products only propose; m_j and its member are decided on
exact values (``exact.py``), so the decisions are the same on any backend and thread count.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipeline.algorithms import exact
from pipeline.algorithms.ordering import member_order
from pipeline.algorithms.proposers import FaissProposer, Proposer
from pipeline.algorithms.selection import decimal


class BlockMeter(Protocol):
    """Told how far a cluster's blocks of rows are (a progress meter: a cluster of a million
    distinct members is 5 x 10^11 pairs, minutes of products)."""

    def begin(self, rows: int, pairs: int) -> None:
        """The rows decided block by block and their pairs (each row with every earlier)."""

    def advance(self, rows: int, pairs: int) -> None:
        """A block of ``rows`` decided, ``pairs`` of them."""


def earlier_pairs(members: int | np.ndarray) -> int | np.ndarray:
    """The pairs of a cluster of ``members`` (each member with every earlier one): the
    measure of its products."""
    return members * (members - 1) // 2


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


HASH_ROWS = 4096  # rows hashed at a time (16 MB of uint64 at d = 512)


def _row_hashes(words: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of 32-bit words: sum_i w_i m_i mod 2^64 with fixed random
    odd m_i. Two rows differing in any word rarely collide, and a collision only costs the
    exact comparison it falls back to."""
    multipliers = np.random.default_rng(0x5EED).integers(1, 2**63, words.shape[1],
                                                          dtype=np.uint64) | np.uint64(1)
    out = np.empty(len(words), dtype=np.uint64)
    for start in range(0, len(words), HASH_ROWS):
        chunk = words[start : start + HASH_ROWS].astype(np.uint64)
        out[start : start + HASH_ROWS] = (chunk * multipliers).sum(axis=1)  # wraps
    return out


def first_identical(vectors: np.ndarray) -> np.ndarray:
    """For each row, the first row holding exactly the same bits (itself when none does).

    Rows are grouped by a hash of their first four values, then only rows sharing a group
    are hashed whole and each checked bit for bit against the first row of its hash: copies
    cost their own bytes, distinct rows almost nothing. Where a check fails (a collision),
    every shared row is compared whole by sorting, as before hashing (which took 4.4 s for
    300,000 copies of one row at d = 512)."""
    rows = np.ascontiguousarray(vectors)
    n, d = rows.shape
    out = np.arange(n)
    if n < 2 or d == 0:
        return out
    words = rows.view(np.uint32)
    first = _first_of_equal(_row_hashes(words[:, : min(words.shape[1], 4)]))
    shared = np.flatnonzero(np.bincount(first, minlength=n)[first] > 1)
    if not len(shared):
        return out
    candidate = shared[_first_of_equal(_row_hashes(words[shared]))]
    same = np.ones(len(shared), dtype=bool)
    for start in range(0, len(shared), HASH_ROWS):
        piece = slice(start, start + HASH_ROWS)
        same[piece] = (words[shared[piece]] == words[candidate[piece]]).all(axis=1)
    if same.all():
        out[shared] = candidate
    else:  # a collision: these rows compared whole, exactly
        whole = rows[shared].view(np.dtype((np.void, rows.strides[0])))[:, 0]
        out[shared] = shared[_first_of_equal(whole)]
    return out


# copies of one member from which they are decided together as one column of products
# (their member against every later distinct one) instead of each as a row against every
# earlier member: a cluster of 30,000 copies of one image among 2,000 others took 4.9 s as
# rows, quadratic in the copies (LAION-style data has clusters of millions of placeholders)
HEAVY_COPIES = 64


def max_earlier_similarity(vectors: np.ndarray, block_rows: int = 256,
                           proposer: Proposer | None = None, meter: BlockMeter | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """For ordered unit rows, m_j = max_{i<j} <e_i, e_j> (exact, float64) and the i achieving
    it, the smallest i among equal values. For j = 0, m is -inf and i is -1.

    The proposer's blocks name each row's most similar earlier member, or, where a runner-up
    lies within the window, every candidate: those are decided on exact values. A member
    bit-identical to an earlier one can never be the earliest best (the earlier one has the
    same exact value), so the proposer does not consider it: a cluster of thousands of
    copies needs no exact re-check. A member with ``HEAVY_COPIES`` copies or more has its
    copies decided from it (``_copies_from_their_first``), not as rows of the blocks.
    ``meter``, when given, follows the blocks.
    """
    e = np.ascontiguousarray(vectors, dtype=np.float32)
    n = e.shape[0]
    if n < 2:
        return np.full(n, -np.inf), np.full(n, -1, dtype=np.int64)
    proposer = proposer or FaissProposer()
    win = exact.window(e.shape[1])
    first = first_identical(e)
    eligible = first == np.arange(n)
    copies = np.where(eligible, np.bincount(first, minlength=n) - 1, 0)
    heavy = copies >= HEAVY_COPIES
    if not heavy.any():
        return _by_rows(e, block_rows, proposer, win, eligible, meter)
    as_rows = np.flatnonzero(~heavy[first] | eligible)
    best = np.full(n, -np.inf)
    arg = np.full(n, -1, dtype=np.int64)
    sub = e[as_rows]
    got, at = _by_rows(sub, block_rows, proposer, win, eligible[as_rows], meter)
    best[as_rows] = got
    arg[as_rows] = np.where(at >= 0, as_rows[np.maximum(at, 0)], -1)
    _copies_from_their_first(e, first, heavy, sub, as_rows, eligible[as_rows], best, arg,
                             win)
    return best, arg


# candidate pairs decided at once: a cluster's are gathered over its blocks up to this many
# (each row's come from one block, so a row is never split), which bounds their memory
# where near-ties are many (2^20 pairs: 40 MB with their exact values)
PAIR_BATCH = 1 << 20


def _by_rows(e: np.ndarray, block_rows: int, proposer: Proposer, win: float,
             eligible: np.ndarray, meter: BlockMeter | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """m_j and its member for every row (``max_earlier_similarity``): the blocks propose,
    then the candidates are decided (``PAIR_BATCH`` pairs at a time) and m_j computed
    exactly in few calls, not in a few per block (per block, the calls' own costs were a
    fifth of a bucket's time beside its products: 1.05 s against 0.80)."""
    n = e.shape[0]
    best = np.full(n, -np.inf, dtype=np.float64)
    arg = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return best, arg
    if meter is not None:
        meter.begin(n - 1, int(earlier_pairs(n)))
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def decide() -> None:
        rows = np.concatenate([r for r, _ in pending])
        cols = np.concatenate([c for _, c in pending])
        values = exact.dot_pairs(e, e, rows, cols)
        _, chosen = exact.best_per_row(rows, cols, values, n)
        decided = chosen >= 0
        arg[decided] = chosen[decided]
        pending.clear()

    waiting = 0
    for block in proposer.earlier(e, block_rows, win, eligible):
        arg[block.start : block.stop] = block.best
        if len(block.pair_row):
            pending.append((block.pair_row, block.pair_col))
            waiting += len(block.pair_row)
            if waiting >= PAIR_BATCH:
                decide()
                waiting = 0
        if meter is not None:  # rows j in [start, stop) have j earlier members each
            meter.advance(block.stop - block.start,
                          (block.start + block.stop - 1) * (block.stop - block.start) // 2)
    if pending:
        decide()
    best[1:] = exact.dot_rows(e[1:], e, b_rows=arg[1:])
    return best, arg


def _copies_from_their_first(e: np.ndarray, first: np.ndarray, heavy: np.ndarray,
                             sub: np.ndarray, sub_rows: np.ndarray, sub_distinct: np.ndarray,
                             best: np.ndarray, arg: np.ndarray, win: float) -> None:
    """m_j and its member for the copies of every ``heavy`` member f, from f's own (in
    ``best`` and ``arg`` already). ``sub`` holds the rows ``sub_rows`` of ``e`` (every
    distinct member among them, flagged by ``sub_distinct``), in order.

    A copy j of f has f's bits, so <e_i, e_j> = <e_i, e_f> for every i, exactly. Its
    earlier members are those before f (their best is f's m_f and member, all earlier than
    f), f itself (the value <e_f, e_f>), and those between f and j; copies among these are
    never the earliest best (each one's first comes before it with the same value), so the
    distinct members after f decide: the highest exact <e_i, e_f> over those before j, the
    earliest i among equal values. One float32 column, every later distinct member's product
    with f, proposes: the exact best of any run of them after f has a fast score within the
    window of the best fast score up to it (each is within a quarter of the window of its
    exact value), so only those members are computed exactly, and a running exact maximum
    over them answers every copy. The tie rule then orders the three: m_f's member, f, the
    later one."""
    rows = np.setdiff1d(np.arange(len(e)), sub_rows, assume_unique=True)  # the copies
    owners = first[rows]
    order = np.argsort(owners, kind="stable")  # by member, its copies in row order
    rows, owners = rows[order], owners[order]
    starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    for a, b in zip(starts, [*starts[1:], len(rows)], strict=True):
        f, copies = int(owners[a]), rows[a:b]
        self_value = exact.dot_rows(e[f : f + 1], e[f : f + 1])[0]
        lo, hi = np.searchsorted(sub_rows, [f + 1, int(copies[-1])])
        later = np.full(len(copies), -np.inf)
        later_arg = np.full(len(copies), -1, dtype=np.int64)
        if hi > lo:  # the rows between f and its last copy: the distinct members count
            distinct = sub_distinct[lo:hi]
            fast = np.where(distinct, sub[lo:hi] @ e[f], -np.inf)
            near = sub_rows[lo:hi][distinct & (fast >= np.maximum.accumulate(fast) - win)]
            values = exact.dot_pairs(e, e, near, np.full(len(near), f))
            running = np.maximum.accumulate(values)
            rises = np.r_[True, running[1:] > running[:-1]]  # the first to reach each maximum
            holder = np.maximum.accumulate(np.where(rises, np.arange(len(values)), 0))
            before = np.searchsorted(near, copies) - 1  # the last candidate before each copy
            some = before >= 0
            later[some] = running[before[some]]
            later_arg[some] = near[holder[before[some]]]
        own = (best[f] >= self_value) & (best[f] >= later)  # m_f's member is the earliest
        itself = ~own & (self_value >= later)
        arg[copies] = np.where(own, arg[f], np.where(itself, f, later_arg))
        best[copies] = np.where(own, best[f], np.where(itself, self_value, later))


def removed_at(similarity: np.ndarray, eps: float) -> np.ndarray:
    """semdedup's decision: m_j > 1 - eps, eps the decimal as written, on float64 m_j (the
    comparison is exact; NaN, no earlier member, is never removed)."""
    return exact.above(similarity, 1 - decimal(eps))


def removed_count(ascending: np.ndarray, eps: float) -> int:
    """``removed_at(values, eps).sum()`` for m_j sorted ascending, none NaN (the same cut)."""
    return exact.count_above(ascending, 1 - decimal(eps))


def decide_cluster(vectors: np.ndarray, eps: float, block_rows: int = 256,
                   proposer: Proposer | None = None, meter: BlockMeter | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``dedup_cluster``'s three arrays and m_j itself (float64, NaN for the first member);
    ``meter`` follows the blocks."""
    best, arg = max_earlier_similarity(vectors, block_rows, proposer, meter)
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
