"""Spherical k-means: seeded fit, exact nearest-centroid assignment (SPEC 2)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.algorithms.kmeans import (
    Assigner,
    KMeansError,
    check_k,
    fit_spherical,
)


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(k: int = 4, per: int = 50, d: int = 16, noise: float = 0.05):
    """k tight blobs around orthogonal directions e_0 .. e_{k-1}."""
    rng = np.random.default_rng(0)
    label = np.repeat(np.arange(k), per)
    x = np.eye(d)[label] + noise * rng.standard_normal((len(label), d))
    return normalise(x), label


# ---------------------------------------------------------------- k check


def test_check_k_names_the_setting_and_numbers() -> None:
    check_k(10, 10, "dbp.k")  # k == n is fine
    with pytest.raises(KMeansError) as err:
        check_k(11, 10, "dbp.k")
    msg = str(err.value)
    assert "dbp.k" in msg and "11" in msg and "10" in msg


def test_fit_spherical_rejects_k_above_n() -> None:
    x, _ = blobs()
    with pytest.raises(KMeansError, match="semdedup.k"):
        fit_spherical(x[:5], 6, 5, 0, setting="semdedup.k")


# ---------------------------------------------------------------- fit


def test_fit_spherical_shape_unit_norm_deterministic() -> None:
    x, _ = blobs()
    c = fit_spherical(x, 4, 10, seed=3)
    assert c.shape == (4, 16) and c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(c, fit_spherical(x, 4, 10, seed=3))


def test_fit_spherical_single_centroid_is_normalised_mean() -> None:
    # spherical k-means with k = 1: the centroid is the mean direction of the data
    x, _ = blobs(k=3)
    c = fit_spherical(x, 1, 5, seed=0)
    mean = x.astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(c[0], mean / np.linalg.norm(mean), atol=1e-5)


def test_fit_spherical_k_equal_n_puts_a_centroid_on_every_point() -> None:
    x = normalise(np.random.default_rng(2).standard_normal((6, 8)))
    c = fit_spherical(x, 6, 5, seed=0)
    sims = x @ c.T
    assert (sims.max(axis=1) > 1 - 1e-5).all()
    assert len(set(sims.argmax(axis=1).tolist())) == 6


# Lloyd's algorithm is local: an unlucky seeded initialisation (two starting centroids in one
# blob, none in another: seeds 0 and 9 here) can converge to a split blob, so the seeds are
# fixed. The fit gives the same bytes for a seed on any machine, so this is stable.
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fit_spherical_recovers_separated_blobs(seed: int) -> None:
    x, label = blobs()
    c = fit_spherical(x, 4, 20, seed=seed)
    assigned, _ = Assigner(c).assign(x)
    table = np.zeros((4, 4), dtype=int)
    np.add.at(table, (label, assigned), 1)
    # a permutation: every blob goes whole to one cluster, every cluster gets one blob
    assert ((table > 0).sum(axis=0) == 1).all() and ((table > 0).sum(axis=1) == 1).all()
    # and each centroid sits on its blob's direction
    match = table.argmax(axis=0)  # blob of each cluster
    np.testing.assert_array_less(0.99, np.einsum("ij,ij->i", c, np.eye(16)[match]))


def test_a_fit_logs_how_much_of_a_full_lloyd_fit_it_did(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """Separated blobs settle after a few iterations: the later ones search no row again,
    score no moved centroid and sum no cluster again, and the log says what share of a full
    fit was done: its products (the rows searched and the moved centroids scored) and its
    cluster sums."""
    x, _ = blobs()
    with caplog.at_level("INFO", logger="pipeline.algorithms.kmeans"):
        fit_spherical(x, 4, 20, seed=1)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("k-means:"))
    assert line.startswith("k-means: 20 iterations on 200 rows x 4 centroids: "), line
    products, searched, summed = (float(v) for v in re.findall(r"(\d+)% of", line))
    assert 0 < searched <= products < 50 and 0 < summed < 50, line
    # products and rows searched differ where moved centroids were scored: on rows without
    # clusters, 40 centroids keep moving a few at a time
    x = np.random.default_rng(2).standard_normal((400, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline.algorithms.kmeans"):
        fit_spherical(x, 40, 20, seed=1)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("k-means:"))
    products, searched, summed = (float(v) for v in re.findall(r"(\d+)% of", line))
    assert searched < products <= 100, line


# ---------------------------------------------------------------- assign


def test_assigner_hand_computed() -> None:
    c = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    x = np.array([[0.6, 0.8], [0.8, 0.6], [-0.6, -0.8], [0, -1]], dtype=np.float32)
    ids, dist = Assigner(c).assign(x)
    assert ids.dtype == np.int32 and dist.dtype == np.float32
    assert ids.tolist()[:3] == [1, 0, 2]
    np.testing.assert_allclose(dist[:3], [0.2, 0.2, 0.4], atol=1e-6)
    # (0, -1) is orthogonal to c0 and c2 and opposite c1: distance 1 to its nearest
    assert ids[3] in (0, 2)
    assert dist[3] == pytest.approx(1.0, abs=1e-6)


def test_assigner_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    c = normalise(rng.standard_normal((37, 24)))
    x = normalise(rng.standard_normal((500, 24)))
    sims = x.astype(np.float64) @ c.T.astype(np.float64)
    ids, dist = Assigner(c).assign(x)
    top2 = np.sort(sims, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-5
    assert np.array_equal(ids[clear], sims.argmax(axis=1)[clear])
    np.testing.assert_allclose(dist, 1.0 - sims.max(axis=1), atol=1e-5)
    # batches are independent of each other
    ids2, dist2 = Assigner(c).assign(x[250:])
    assert np.array_equal(ids2, ids[250:])
    np.testing.assert_allclose(dist2, dist[250:], atol=1e-6)


@pytest.mark.parametrize(("n", "d", "k"), [(20_000, 64, 100), (50_000, 128, 500),
                                           (20_000, 512, 2_000)])
def test_the_fit_s_memory_estimate_bounds_what_it_allocates(n: int, d: int, k: int) -> None:
    """``fit_memory``, which a run checks against the free memory before it draws the
    sample, is at least the peak of numpy's allocations for the sample and the fit (measured
    1.0-1.4x below it without the products' blocks, so the blocks' allowance is not what
    makes it hold)."""
    import tracemalloc

    from pipeline.algorithms import proposers
    from pipeline.stages.clusters import fit_memory

    tracemalloc.start()
    try:
        x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        fit_spherical(x, k, 4, seed=0, proposer=proposers.BlasProposer())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    blocks = fit_memory(0, d, 0)
    assert peak <= fit_memory(n, d, k) - blocks, (peak, fit_memory(n, d, k) - blocks)
