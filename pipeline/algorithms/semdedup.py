"""SemDeDup within one cluster (SPEC section 3), exact for any cluster size.

Members are ordered farthest-from-centroid first (ties by uid). Member j is compared with
every earlier member i < j; m_j = max_i cos(e_i, e_j), and j is a near-duplicate when
m_j > 1 - eps. Rows are processed in blocks, and a block only needs its products with the
members before it, so the work is the lower triangle of the Gram matrix and memory is
O(block x cluster size).
"""

from __future__ import annotations

import numpy as np

from pipeline.algorithms.ordering import grouped_order


def dedup_order(distance: np.ndarray, uid_hi: np.ndarray, uid_lo: np.ndarray) -> np.ndarray:
    """Positions of the members, farthest from the centroid first, ties by uid ascending."""
    return grouped_order(np.zeros(len(distance), dtype=np.int32), -distance, uid_hi, uid_lo)


def auto_block_rows(n: int, cap: int) -> int:
    """Rows per block: about an eighth of the cluster (more blocks skip more of the upper
    triangle, fewer blocks run bigger, faster products), at least 128, at most ``cap``."""
    return max(1, min(cap, max(128, n // 8)))


def max_earlier_similarity(vectors: np.ndarray, block_rows: int = 256
                           ) -> tuple[np.ndarray, np.ndarray]:
    """For ordered unit rows, m_j = max_{i<j} <e_i, e_j> and the i achieving it.

    Returns ``(m, arg)``; for j = 0, m is -inf and arg is -1. Ties in m go to the smallest i.
    """
    e = np.ascontiguousarray(vectors, dtype=np.float32)
    n = e.shape[0]
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return best, arg
    block_rows = max(1, int(block_rows))
    # i >= j inside the diagonal part of a block: masked out
    upper = np.triu(np.ones((block_rows, block_rows), dtype=bool))
    for start in range(1, n, block_rows):
        stop = min(n, start + block_rows)
        rows = stop - start
        sims = e[start:stop] @ e[:stop].T  # rows j in [start, stop), columns i < stop
        sims[:, start:stop][upper[:rows, :rows]] = -np.inf
        idx = sims.argmax(axis=1)
        best[start:stop] = np.take_along_axis(sims, idx[:, None], axis=1)[:, 0]
        arg[start:stop] = idx
    return best, arg


def dedup_cluster(vectors: np.ndarray, eps: float, block_rows: int = 256
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decide one cluster given its members already in dedup order.

    Returns ``(removed, dup_of_position, similarity)`` aligned with the ordered members;
    ``dup_of_position`` is -1 and ``similarity`` NaN for the first member.
    """
    best, arg = max_earlier_similarity(vectors, block_rows)
    removed = best > np.float32(1.0 - eps)
    similarity = np.where(arg >= 0, best, np.nan).astype(np.float32)
    return removed, arg, similarity
