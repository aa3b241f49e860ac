"""The steps' one order of members (``ordering.py``): by group, then key, then uid."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.algorithms.ordering import _by_group_and_key, grouped_order

SPECIAL = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1.5, -1.5, 1e-45, -1e-45],
                   dtype=np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_one_key_sort_is_lexsort_on_every_float(seed: int) -> None:
    """The 64-bit key sorts as lexsort does: -0.0 equal to 0.0, NaNs of either sign last and
    equal, negative groups first, ties in input order."""
    rng = np.random.default_rng(seed)
    for n in (1, 7, 2000):
        group = rng.integers(-3, 4, n).astype(np.int32)
        key = np.where(rng.random(n) < 0.5, rng.choice(SPECIAL, n),
                       rng.standard_normal(n)).astype(np.float32)
        assert np.array_equal(_by_group_and_key(group, key), np.lexsort((key, group)))


def test_grouped_order_is_the_four_key_lexsort() -> None:
    rng = np.random.default_rng(9)
    n = 5000
    group = rng.integers(0, 20, n).astype(np.int32)
    key = rng.choice(np.array([0.25, -0.0, 0.0, 0.5], dtype=np.float32), n)
    hi = rng.integers(0, 3, n).astype(np.uint64)
    lo = rng.integers(0, 2**63, n).astype(np.uint64)
    assert np.array_equal(grouped_order(group, key, hi, lo), np.lexsort((lo, hi, key, group)))
