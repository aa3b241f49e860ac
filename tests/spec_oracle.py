"""An independent reading of SPEC §2–§4, for checking a finished run from its outputs alone.

Nothing here calls the pipeline's algorithms: orderings are Python sorts on (key, uid
string), m_j is a plain loop in float64, the budget's λ is found by bisection, counts use
exact fractions of the decimal settings. The run's outputs (ledger, report, the centroids
saved in the work folder) are checked against what these give for the same input vectors.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

# float32 work in the pipeline against float64 here
TOL = 2e-5


def exact(setting: float) -> Fraction:
    """The decimal the user wrote, as an exact fraction."""
    return Fraction(str(setting))


def round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def derived_uid(shard: str, key: str) -> str:
    return hashlib.sha256(f"{shard}{key}".encode()).hexdigest()[:32]


def unit64(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 unit rows and whether each row is usable (finite, non-zero)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        norm = np.sqrt((x * x).sum(axis=1))
    ok = np.isfinite(norm) & (norm > 1e-12)
    out = np.zeros_like(x)
    out[ok] = x[ok] / norm[ok, None]
    return out, ok


@dataclass
class Ledger:
    rows: list[dict[str, Any]]

    @classmethod
    def read(cls, out: Path) -> Ledger:
        parts = sorted((out / "ledger").glob("part-*.parquet"))
        rows: list[dict[str, Any]] = []
        for p in parts:
            rows += pq.read_table(p).to_pylist()
        return cls(rows)

    def column(self, name: str) -> list[Any]:
        return [r[name] for r in self.rows]

    def mask(self, pred) -> np.ndarray:  # noqa: ANN001
        return np.array([bool(pred(r)) for r in self.rows])


@dataclass
class Checked:
    """What the oracle derived, for the sensitivity checks of the tests."""

    semdedup_removed: set[int] = field(default_factory=set)
    similarity: dict[int, float] = field(default_factory=dict)  # m_j of every ranked member
    clip_removed: set[int] = field(default_factory=set)
    dbp_reaching: np.ndarray | None = None
    dbp_budget: np.ndarray | None = None
    dbp_inputs: dict[str, Any] = field(default_factory=dict)
    tie_cuts: dict[str, int] = field(default_factory=dict)


# -- SPEC §3 ------------------------------------------------------------------------------

def farthest_first(members: list[int], distance: list[float], uid: list[str]) -> list[int]:
    return sorted(members, key=lambda i: (-distance[i], uid[i]))


def _check_eps_curve(curve: dict[str, Any], checked: Checked, eps: float,
                     stage: dict[str, Any]) -> None:
    """SPEC §3: the report's removals at other eps are those the oracle's m_j give (up to
    members within TOL of 1 - eps), and at the run's eps exactly the run's."""
    assert curve["exact"] and curve["reaching"] == stage["in"]
    assert curve["removed"][curve["eps"].index(eps)] == stage["removed"]
    m = np.array(list(checked.similarity.values()), dtype=np.float64)
    for e, got in zip(curve["eps"], curve["removed"], strict=True):
        assert int((m > 1 - e + TOL).sum()) <= got <= int((m > 1 - e - TOL).sum()), e


def max_earlier(vectors: np.ndarray, order: list[int]) -> list[tuple[float, list[int]]]:
    """Per position j of ``order``: (m_j, every earlier member within TOL of m_j)."""
    out: list[tuple[float, list[int]]] = [(-math.inf, [])]
    for j in range(1, len(order)):
        sims = vectors[order[:j]] @ vectors[order[j]]
        m = float(sims.max())
        out.append((m, [order[i] for i in np.flatnonzero(sims >= m - TOL)]))
    return out


def budget(size: np.ndarray, prob: np.ndarray, target: int, k: int, balance: float
           ) -> np.ndarray:
    """SPEC §4: water-filled by bisection on λ, then integerised."""
    m = max(1, math.floor(exact(balance) * target / k))
    lb = np.minimum(m, size).astype(np.float64)
    ub = size.astype(np.float64)
    ideal = target * prob
    lo, hi = float((lb - ideal).min()) - 1, float((ub - ideal).max()) + 1
    for _ in range(300):
        mid = (lo + hi) / 2
        if np.clip(ideal + mid, lb, ub).sum() < target:
            lo = mid
        else:
            hi = mid
    x = np.clip(ideal + hi, lb, ub)
    base = np.minimum(np.floor(x + 1e-9).astype(np.int64), size)
    left = target - int(base.sum())
    frac = x - base
    open_ = [j for j in range(len(size)) if base[j] < size[j]]
    for j in sorted(open_, key=lambda j: (-frac[j], j))[:left]:
        base[j] += 1
    return base


def complexity_probability(d_intra: np.ndarray, d_inter: np.ndarray, tau: float,
                           combine=np.multiply) -> np.ndarray:  # noqa: ANN001
    c = combine(d_intra, d_inter)
    ok = ~np.isnan(c)
    p = np.zeros(len(c))
    z = np.exp((c[ok] - c[ok].max()) / tau)
    p[ok] = z / z.sum()
    return p


def inter(centroids: np.ndarray, nonempty: np.ndarray, l: int) -> np.ndarray:  # noqa: E741
    ids = list(np.flatnonzero(nonempty))
    out = np.full(len(centroids), np.nan)
    if len(ids) == 1:
        out[ids[0]] = 1.0
        return out
    ll = min(l, len(ids) - 1)
    for j in ids:
        d = sorted(1 - float(centroids[j] @ centroids[i]) for i in ids if i != j)
        out[j] = sum(d[:ll]) / ll
    return out


# -- the whole run ------------------------------------------------------------------------

def check_run(out: Path, cfg: dict[str, Any], image: np.ndarray, uids: list[str],
              text: np.ndarray | None = None, given_scores: np.ndarray | None = None,
              work: Path | None = None) -> Checked:
    """Assert every rule of SPEC §2–§4 and §7 on the outputs of a finished run.

    ``cfg`` is the run's configuration as a plain dict (the report's ``parameters``);
    ``image`` the input image vectors in ledger order, ``uids`` the expected uids.
    """
    work = work or out / "_work"
    led = Ledger.read(out)
    n = len(led.rows)
    assert n == len(image) == len(uids)
    assert led.column("uid") == uids, "uids must travel untouched (SPEC §5)"
    x, usable = unit64(image)
    uid = uids
    report = json.loads((out / "report" / "report.json").read_text())
    status = led.column("status")
    stage = led.column("stage")
    checked = Checked()

    failed = {i for i in range(n) if not usable[i]}
    assert {i for i in range(n) if status[i] == "failed"} == failed
    alive = [i for i in range(n) if i not in failed]
    stages = [{"name": "read", "in": n, "out": len(alive), "removed": len(failed)}]

    # SPEC §3
    sd = cfg["semdedup"]
    if sd["enabled"]:
        centroids = np.load(work / "semdedup" / "centroids.npy").astype(np.float64)
        k = k_dedup = sd["k"] if sd["k"] != "auto" else max(1, round(len(alive) / 10000))
        assert centroids.shape == (k, x.shape[1])
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
        cl = led.column("dedup_cluster")
        dist = led.column("dedup_distance")
        _check_assignment(x, centroids, alive, cl, dist, "semdedup")
        assert all(cl[i] is None for i in failed)
        dup_of, sim = led.column("dup_of"), led.column("dup_similarity")
        removed: set[int] = set()
        ambiguous: set[int] = set()
        threshold = 1 - sd["eps"]
        for c in range(k):
            members = farthest_first([i for i in alive if cl[i] == c], dist, uid)
            checked.tie_cuts["semdedup_distance_ties"] = checked.tie_cuts.get(
                "semdedup_distance_ties", 0) + _ties(members, dist)
            for pos, (j, (m, best)) in enumerate(zip(members, max_earlier(x, members),
                                                     strict=True)):
                if pos == 0:
                    assert dup_of[j] is None and sim[j] is None, f"first member {uid[j]}"
                    continue
                assert abs(sim[j] - m) < TOL, (uid[j], sim[j], m)
                assert dup_of[j] in {uid[i] for i in best}, (
                    f"{uid[j]}: dup_of {dup_of[j]} is not an earlier member reaching m_j")
                checked.similarity[j] = m
                if abs(m - threshold) <= TOL:
                    ambiguous.add(j)  # float32 against float64 may go either way
                elif m > threshold:
                    removed.add(j)
        assert len(ambiguous) <= 2, "test data too close to the eps boundary"
        got = {i for i in alive if status[i] == "removed" and stage[i] == "semdedup"}
        assert got - ambiguous == removed, (len(got), len(removed))
        removed = got
        checked.semdedup_removed = removed
        for i in removed:
            assert f"{threshold:g}" in led.rows[i]["reason"]
        stages.append({"name": "semdedup", "in": len(alive), "out": len(alive) - len(removed),
                       "removed": len(removed)})
        alive = [i for i in alive if i not in removed]
    else:
        assert all(v is None for v in led.column("dedup_cluster"))

    # SPEC §1 step 3
    cf = cfg["clip_filter"]
    scores = led.column("clip_score")
    if text is not None:
        t, t_ok = unit64(text)
        for i in range(n):
            if usable[i] and t_ok[i]:
                assert abs(scores[i] - float(x[i] @ t[i])) < 1e-3, i
            else:
                assert scores[i] is None, i
    if given_scores is not None:
        for i in alive:
            assert scores[i] == given_scores[i]
    if cf["enabled"]:
        scored = [i for i in alive if scores[i] is not None]
        if cf["threshold"] is not None:
            keep = {i for i in scored if scores[i] >= np.float32(cf["threshold"])}
        else:
            n_keep = round_half_up(exact(cf["keep_fraction"]) * len(scored))
            ranked = sorted(scored, key=lambda i: (-scores[i], uid[i]))
            keep = set(ranked[:n_keep])
            if 0 < n_keep < len(ranked):
                cut = scores[ranked[n_keep - 1]]
                checked.tie_cuts["clip_cut_tie"] = int(scores[ranked[n_keep]] == cut)
        removed = set(alive) - keep
        checked.clip_removed = removed
        got = {i for i in alive if status[i] == "removed" and stage[i] == "clip_filter"}
        assert got == removed, (len(got), len(removed))
        stages.append({"name": "clip_filter", "in": len(alive),
                       "out": len(alive) - len(removed), "removed": len(removed)})
        alive = [i for i in alive if i not in removed]

    # SPEC §4
    db = cfg["dbp"]
    if db["enabled"]:
        centroids = np.load(work / "dbp" / "centroids.npy").astype(np.float64)
        k = db["k"]
        assert centroids.shape == (k, x.shape[1])
        cl = led.column("cluster")
        dist = led.column("distance")
        _check_assignment(x, centroids, alive, cl, dist, "dbp")
        reaching = set(alive)
        assert all(cl[i] is None for i in range(n) if i not in reaching)
        size = np.array([sum(1 for i in alive if cl[i] == c) for c in range(k)])
        with np.errstate(invalid="ignore"):
            d_intra = np.array([np.mean([dist[i] for i in alive if cl[i] == c])
                                if size[c] else np.nan for c in range(k)])
        d_inter = inter(centroids, size > 0, db["l"])
        prob = complexity_probability(d_intra, d_inter, db["temperature"])
        m_total = len(alive)
        target = (db["keep_count"] if db["keep_count"] is not None
                  else round_half_up(exact(db["keep_fraction"]) * m_total))
        x_budget = budget(size, prob, target, k, db["balance"])
        assert x_budget.sum() == target
        clusters = report["clusters"]
        assert [c["id"] for c in clusters] == list(range(k))
        for c, row in enumerate(clusters):
            assert row["size"] == size[c]
            for name, want in (("d_intra", d_intra[c]), ("d_inter", d_inter[c]),
                               ("complexity", d_intra[c] * d_inter[c])):
                if np.isnan(want):
                    assert row[name] is None
                else:
                    assert row[name] == pytest.approx(want, rel=1e-5), (c, name)
            assert row["probability"] == pytest.approx(prob[c], rel=1e-5, abs=1e-12), c
            assert row["budget"] == x_budget[c], (c, row["budget"], x_budget[c])
            assert row["kept"] == x_budget[c]
        keep: set[int] = set()
        for c in range(k):
            members = [i for i in alive if cl[i] == c]
            if db["keep"] == "hard":
                ranked = sorted(members, key=lambda i: (-dist[i], uid[i]))
            elif db["keep"] == "easy":
                ranked = sorted(members, key=lambda i: (dist[i], uid[i]))
            else:
                ranked = [i for i in members if status[i] == "kept"]
                assert len(ranked) == x_budget[c]
            chosen = ranked[: x_budget[c]]
            if db["keep"] != "random" and 0 < x_budget[c] < len(ranked):
                cut = ranked[x_budget[c] - 1]
                if dist[ranked[x_budget[c]]] == dist[cut]:
                    checked.tie_cuts["dbp_cut_tie"] = checked.tie_cuts.get("dbp_cut_tie", 0) + 1
                    sign = -1 if db["keep"] == "hard" else 1
                    by_row = sorted(members, key=lambda i: (sign * dist[i], i))
                    if set(by_row[: x_budget[c]]) != set(chosen):
                        checked.tie_cuts["dbp_uid_decides"] = checked.tie_cuts.get(
                            "dbp_uid_decides", 0) + 1
            keep |= set(chosen)
        got = {i for i in range(n) if status[i] == "kept"}
        assert got == keep
        assert all(stage[i] == "dbp" for i in keep)
        removed = reaching - keep
        assert {i for i in reaching if status[i] == "removed" and stage[i] == "dbp"} == removed
        stages.append({"name": "dbp", "in": len(reaching), "out": len(keep),
                       "removed": len(removed)})
        checked.dbp_reaching = np.array(sorted(reaching))
        checked.dbp_budget = x_budget
        checked.dbp_inputs = {"size": size, "d_intra": d_intra, "d_inter": d_inter,
                              "centroids": centroids, "target": target,
                              "cluster": cl, "distance": dist, "members": alive}
        alive = sorted(keep)

    # SPEC §7
    kept = [i for i in range(n) if status[i] == "kept"]
    steps = [s for s in ("semdedup", "clip_filter", "dbp") if cfg[s]["enabled"]]
    assert all(stage[i] == (steps or ["read"])[-1] for i in kept)
    assert kept == sorted(alive)
    assert report["input_samples"] == n and report["kept"] == len(kept)
    assert report["failed"] == len(failed)
    assert report["keep_fraction"] == pytest.approx(len(kept) / n, rel=1e-12)
    assert report["stages"] == stages
    per_shard: dict[str, dict[str, int]] = {}
    for row in led.rows:
        counts = per_shard.setdefault(row["shard"], {"read": 0, "kept": 0, "removed": 0,
                                                     "failed": 0})
        counts["read"] += 1
        counts[row["status"]] += 1
    assert report["shards"] == per_shard
    if sd["enabled"]:
        section = report["semdedup"]
        assert {key: section[key] for key in ("k", "eps")} == {"k": k_dedup, "eps": sd["eps"]}
        _check_eps_curve(section["curve"], checked, sd["eps"], stages[1])
    if db["enabled"]:
        assert report["dbp"] == {"k": db["k"], "target": checked.dbp_inputs["target"],
                                 "reaching": len(checked.dbp_reaching), "keep": db["keep"]}
    pairs = sorted((int(uid[i], 16) >> 64, int(uid[i], 16) & (2**64 - 1)) for i in kept)
    subset = np.load(out / "subset.npy")
    assert subset.dtype == np.dtype("u8,u8")
    assert [(int(a), int(b)) for a, b in subset.tolist()] == pairs
    return checked


def _check_assignment(x: np.ndarray, centroids: np.ndarray, rows: list[int], cl: list,
                      dist: list, name: str) -> None:
    """Every row is assigned to a nearest centroid, at distance 1 - <x, c>."""
    sims = x[rows] @ centroids.T
    for pos, i in enumerate(rows):
        assert cl[i] is not None, f"{name}: row {i} has no cluster"
        assert sims[pos, cl[i]] >= sims[pos].max() - TOL, f"{name}: row {i} not nearest"
        assert abs(dist[i] - (1 - sims[pos, cl[i]])) < TOL, f"{name}: distance of row {i}"


def _ties(members: list[int], dist: list) -> int:
    return sum(1 for a, b in zip(members, members[1:], strict=False) if dist[a] == dist[b])
