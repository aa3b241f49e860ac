"""End to end through the CLI, every rule of SPEC §2–§4 recomputed from the outputs alone.

The data is built here with known structure: concepts of different spread, planted exact
copies (ties in distance) and near copies, uids whose order is not the row order, CLIP
scores rounded so that many tie, and a few unusable vectors. Each run's settings differ from
the defaults, and every test also shows that its data makes the setting matter: the oracle's
answer under another value (τ = 1, l clamped, complexity as a sum, another eps) differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from same_bytes import assert_same_file
from spec_oracle import (
    budget,
    check_run,
    complexity_probability,
    derived_uid,
    inter,
)
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import validate_config

DIM, FILES, PER_FILE, CONCEPTS = 16, 3, 400, 8


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_vectors(seed: int = 11) -> dict[str, Any]:
    """Image and text vectors with concepts, planted copies and unusable rows."""
    rng = np.random.default_rng(seed)
    n = FILES * PER_FILE
    centers = _unit(rng.standard_normal((CONCEPTS, DIM)))
    spread = np.linspace(0.15, 0.9, CONCEPTS)  # concepts of very different spread
    concept = rng.choice(CONCEPTS, size=n, p=rng.dirichlet(np.full(CONCEPTS, 3.0)))
    img = _unit(centers[concept] + spread[concept, None] * rng.standard_normal((n, DIM)))
    # exact copies, 1 to 4 each, anywhere in the input (other files too)
    rows = rng.permutation(n)
    sources, pos = rows[:90], 90
    groups = []
    for s in sources:
        copies = rows[pos : pos + int(rng.integers(1, 5))]
        pos += len(copies)
        img[copies] = img[s]
        groups.append((s, copies))
    # near copies: cosine to their source from about 0.9 to 0.999
    near_src, near = rows[pos : pos + 60], rows[pos + 60 : pos + 120]
    noise = rng.uniform(0.03, 0.5, len(near))[:, None] * _unit(rng.standard_normal((60, DIM)))
    img[near] = _unit(img[near_src] + noise)
    img = img.astype(np.float16)
    agree = rng.uniform(0.2, 2.5, n)[:, None]
    txt = _unit(agree * img.astype(np.float64) + rng.standard_normal((n, DIM)) / 4)
    txt = txt.astype(np.float16)
    img[[5, 900]] = np.nan
    img[401] = 0
    txt[77] = np.nan
    return {"image": img, "text": txt, "copies": groups}


def write_clip_retrieval(root: Path, vec: dict[str, Any], with_text: bool,
                         uids: list[str] | None = None,
                         scores: np.ndarray | None = None) -> list[str]:
    """clip-retrieval layout; returns the uid of every row (given, or derived per SPEC §5)."""
    out: list[str] = []
    for f in range(FILES):
        sl = slice(f * PER_FILE, (f + 1) * PER_FILE)
        for sub in ("img_emb", "text_emb", "metadata"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        np.save(root / "img_emb" / f"img_emb_{f}.npy", vec["image"][sl])
        if with_text:
            np.save(root / "text_emb" / f"text_emb_{f}.npy", vec["text"][sl])
        keys = [f"{f:03d}{i:05d}" for i in range(PER_FILE)]
        cols: dict[str, Any] = {"image_path": keys, "caption": ["a caption"] * PER_FILE}
        if uids is not None:
            cols["uid"] = uids[sl]
            out += uids[sl]
        else:
            out += [derived_uid(f"metadata_{f}", k) for k in keys]
        if scores is not None:
            cols["clip_score"] = pa.array(scores[sl], pa.float32())
        pq.write_table(pa.table(cols), root / "metadata" / f"metadata_{f}.parquet")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("oracle")
    vec = make_vectors()
    n = FILES * PER_FILE
    rng = np.random.default_rng(5)
    given = [f"{rng.integers(0, 2**62):016x}{rng.integers(0, 2**62):016x}" for _ in range(n)]
    # precomputed scores on a 0.01 grid: many ties, and ties at every cut
    scores = np.round(rng.uniform(0.1, 0.4, n), 2).astype(np.float32)
    for source, copies in vec["copies"]:
        scores[copies] = scores[source]  # an exact copy has the same caption
    return {
        "vec": vec,
        "scores": scores,
        "text_uids": write_clip_retrieval(root / "text", vec, with_text=True),
        "score_uids": write_clip_retrieval(root / "scores", vec, with_text=False,
                                           uids=given, scores=scores),
        "root": root,
    }


def run_cli(tmp: Path, data_dir: Path, settings: dict[str, Any], name: str = "out"
            ) -> tuple[Path, dict[str, Any]]:
    """``conceptprune run CONFIG`` on a YAML file; returns the output and the full config."""
    out = tmp / name
    raw = {"input": {"embeddings": str(data_dir)}, "output": str(out), **settings}
    cfg_file = tmp / f"{name}.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(cfg_file), "--no-progress"])
    assert result.exit_code == 0, result.output
    full = validate_config({**raw, "progress": False}).model_dump(mode="json")
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["parameters"] == full
    return out, full


def alternative_budget(checked, **change: Any) -> np.ndarray:  # noqa: ANN001
    """The oracle's budget with one rule or setting changed (for sensitivity checks)."""
    i = checked.dbp_inputs
    d_inter = inter(i["centroids"], i["size"] > 0, change.get("l", i["l"]))
    prob = complexity_probability(i["d_intra"], d_inter, change.get("tau", i["tau"]),
                                  change.get("combine", np.multiply))
    return budget(i["size"], prob, i["target"], len(i["size"]),
                  change.get("balance", i["balance"]))


def oracle(out: Path, cfg: dict[str, Any], data: dict[str, Any], text: bool):  # noqa: ANN201
    vec = data["vec"]
    checked = check_run(out, cfg, vec["image"],
                        data["text_uids"] if text else data["score_uids"],
                        text=vec["text"] if text else None,
                        given_scores=None if text else data["scores"])
    if cfg["dbp"]["enabled"]:
        checked.dbp_inputs.update(l=cfg["dbp"]["l"], tau=cfg["dbp"]["temperature"],
                                  balance=cfg["dbp"]["balance"])
    return checked


def uid_order_matters(ledger_uids: list[str], groups: list[list[int]]) -> bool:
    """Some group of tied rows has its smallest uid somewhere other than its first row."""
    return any(min(g, key=lambda i: ledger_uids[i]) != min(g) for g in groups if len(g) > 1)


def test_full_recipe_hard(tmp_path: Path, data: dict[str, Any]) -> None:
    out, cfg = run_cli(tmp_path, data["root"] / "text", {
        "seed": 3,
        "semdedup": {"k": 5, "eps": 0.05},
        "clip_filter": {"enabled": True, "keep_fraction": 0.75},
        "dbp": {"k": 8, "l": 3, "temperature": 0.05, "keep_fraction": 0.4},
    })
    checked = oracle(out, cfg, data, text=True)
    assert checked.semdedup_removed and checked.clip_removed
    # the data makes each setting matter
    other_eps = {j for j, m in checked.similarity.items() if m > 1 - 0.07}
    assert other_eps != checked.semdedup_removed
    b = checked.dbp_budget
    assert not np.array_equal(alternative_budget(checked, tau=1.0), b)
    assert not np.array_equal(alternative_budget(checked, tau=0.1), b)
    assert not np.array_equal(alternative_budget(checked, l=20), b)
    assert not np.array_equal(alternative_budget(checked, combine=np.add), b)
    # exact copies tie in distance, and their uid order is not their row order
    led = pq.read_table(out / "ledger").to_pylist()
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(led):
        if r["dedup_cluster"] is not None:
            groups.setdefault((r["dedup_cluster"], r["dedup_distance"]), []).append(i)
    assert uid_order_matters(data["text_uids"], list(groups.values()))
    # a removed member points at a survivor that sits farther from its centroid
    removed = [r for r in led if r["stage"] == "semdedup" and r["status"] == "removed"]
    by_uid = {r["uid"]: r for r in led}
    assert all(by_uid[r["dup_of"]]["dedup_distance"] >= r["dedup_distance"] for r in removed)
    assert all(r["dup_of"] != r["uid"] for r in removed)


def test_balance_and_easy_with_keep_count(tmp_path: Path, data: dict[str, Any]) -> None:
    out, cfg = run_cli(tmp_path, data["root"] / "text", {
        "seed": 1,
        "semdedup": {"k": 4, "eps": 0.15},
        "dbp": {"k": 7, "l": 2, "temperature": 0.02, "keep_count": 300, "balance": 0.8,
                "keep": "easy"},
    })
    checked = oracle(out, cfg, data, text=True)
    b = checked.dbp_budget
    assert b.sum() == 300
    m = int(0.8 * 300 / 7)
    size = checked.dbp_inputs["size"]
    assert (b == np.minimum(m, size)).any(), "the balance floor binds somewhere"
    assert not np.array_equal(alternative_budget(checked, balance=0.0), b)
    assert not np.array_equal(alternative_budget(checked, l=20), b)
    other_eps = {j for j, s in checked.similarity.items() if s > 1 - 0.07}
    assert other_eps != checked.semdedup_removed


def test_random_keep_is_seeded(tmp_path: Path, data: dict[str, Any]) -> None:
    settings = {"seed": 7, "semdedup": {"enabled": False},
                "dbp": {"k": 6, "l": 4, "keep_fraction": 0.5, "keep": "random"}}
    out7, cfg = run_cli(tmp_path, data["root"] / "text", settings, "seed7")
    oracle(out7, cfg, data, text=True)
    again, _ = run_cli(tmp_path, data["root"] / "text", settings, "again7")
    assert_same_file(again / "subset.npy", out7 / "subset.npy")
    out8, cfg8 = run_cli(tmp_path, data["root"] / "text", {**settings, "seed": 8}, "seed8")
    oracle(out8, cfg8, data, text=True)
    assert (out8 / "subset.npy").read_bytes() != (out7 / "subset.npy").read_bytes()
    # neither the farthest nor the closest members: a sample of the whole concept
    hard, _ = run_cli(tmp_path, data["root"] / "text",
                      {**settings, "dbp": {**settings["dbp"], "keep": "hard"}}, "hard")
    assert (hard / "subset.npy").read_bytes() != (out7 / "subset.npy").read_bytes()


def test_ties_in_clip_score_and_distance(tmp_path: Path, data: dict[str, Any]) -> None:
    """Precomputed scores on a grid: the top-fraction cut falls inside a tie; exact copies
    reach dbp and tie in distance at the budget cut. Ties go to the smaller uid."""
    out, cfg = run_cli(tmp_path, data["root"] / "scores", {
        "seed": 2, "semdedup": {"enabled": False},
        "clip_filter": {"enabled": True, "keep_fraction": 0.6},
        "dbp": {"k": 24, "l": 2, "keep_fraction": 0.55},
    })
    checked = oracle(out, cfg, data, text=False)
    assert checked.tie_cuts["clip_cut_tie"] == 1
    assert checked.tie_cuts.get("dbp_uid_decides", 0) >= 3, checked.tie_cuts
    # a fixed fraction would keep another count
    reaching = len(checked.clip_removed) + len(checked.dbp_reaching)
    assert len(checked.dbp_reaching) == int(np.floor(0.6 * reaching + 0.5))


def test_clip_threshold_keeps_scores_equal_to_it(tmp_path: Path, data: dict[str, Any]) -> None:
    out, cfg = run_cli(tmp_path, data["root"] / "scores", {
        "semdedup": {"k": "auto", "eps": 0.05},  # 1,197 usable samples: k = 1
        "clip_filter": {"enabled": True, "threshold": 0.27},
        "dbp": {"enabled": False},
    })
    checked = oracle(out, cfg, data, text=False)
    led = pq.read_table(out / "ledger").to_pylist()
    at = [r for r in led if r["clip_score"] == np.float32(0.27) and r["stage"] != "semdedup"]
    assert at and all(r["status"] == "kept" for r in at)
    assert any(r["clip_score"] == np.float32(0.26) for r in led if r["stage"] == "clip_filter")
    assert checked.clip_removed
