"""End-to-end runs over generated clip-retrieval and DataComp inputs."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from same_bytes import assert_same_arrays, assert_same_file

from pipeline.config import validate_config
from pipeline.ids import SUBSET_DTYPE, uids_to_u128
from pipeline.output_guard import MANIFEST
from pipeline.runner import run
from pipeline.stages import dbp as dbp_stage
from pipeline.synth.embeddings import SynthSpec, synth_embeddings

SPEC = SynthSpec(samples=3000, dim=32, concepts=12, files=3, seed=1, near_dup_noise=0.001)


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_embeddings(tmp_path_factory.mktemp("emb") / "data", SPEC)


def config(data: Path, out: Path, **over: object) -> object:
    raw: dict = {
        "input": {"embeddings": str(data)}, "output": str(out), "seed": 3, "progress": False,
        "semdedup": {"k": 8, "eps": 0.01},
        "clip_filter": {"enabled": True, "keep_fraction": 0.9},
        "dbp": {"k": 6, "keep_fraction": 0.5},
    }
    for dotted, value in over.items():
        node = raw
        *path, last = dotted.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return validate_config(raw)


def ledger(out: Path) -> pa.Table:
    return pq.read_table(out / "ledger")


def test_run_writes_subset_ledger_report(emb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run(config(emb_dir, out))
    led = ledger(out)
    assert led.num_rows == SPEC.samples
    status = np.array(led.column("status").to_pylist())
    kept_uids = np.array(led.filter(pa.compute.equal(led["status"], "kept"))["uid"].to_pylist())

    subset = np.load(out / "subset.npy")
    assert subset.dtype == SUBSET_DTYPE
    assert np.all(np.diff(subset["f0"].astype(np.float64)) >= 0)
    hi, lo, ok = uids_to_u128(list(kept_uids))
    assert ok.all()
    assert set(zip(subset["f0"], subset["f1"], strict=True)) == set(zip(hi, lo, strict=True))
    assert len(subset) == summary.kept == (status == "kept").sum()

    report = json.loads((out / "report" / "report.json").read_text())
    assert report["input_samples"] == SPEC.samples
    names = [s["name"] for s in report["stages"]]
    assert names == ["read", "semdedup", "clip_filter", "dbp"]
    for before, after in zip(report["stages"], report["stages"][1:], strict=False):
        assert after["in"] == before["out"]
        assert after["out"] == after["in"] - after["removed"]
    dbp_in = report["stages"][-1]["in"]
    assert report["kept"] == int(np.floor(0.5 * dbp_in + 0.5))
    clusters = report["clusters"]
    assert {"id", "size", "d_intra", "d_inter", "complexity", "probability", "budget",
            "kept"} <= set(clusters[0])
    assert sum(c["budget"] for c in clusters) == report["kept"]
    assert all(c["kept"] == c["budget"] for c in clusters)
    assert abs(sum(c["probability"] for c in clusters) - 1) < 1e-9
    # each stage's removals in the ledger match the report
    stages = np.array(led.column("stage").to_pylist())
    for s in report["stages"][1:]:
        assert ((status == "removed") & (stages == s["name"])).sum() == s["removed"]
    # the dbp columns are filled exactly for the samples that reached dbp
    reached = np.isin(stages, ["dbp"])
    assert led.column("cluster").is_null().to_numpy(zero_copy_only=False).sum() == \
        SPEC.samples - reached.sum()
    # columns of few values are dictionary-encoded, distinct strings written plain
    for part in sorted((out / "ledger").glob("*.parquet")):
        meta = pq.ParquetFile(part).metadata
        coded = {meta.schema.column(i).name: meta.row_group(0).column(i).has_dictionary_page
                 for i in range(meta.num_columns)}
        assert coded["status"] and coded["shard"] and not coded["uid"] and not coded["key"]


def test_every_planted_duplicate_group_in_one_cluster_collapses(emb_dir: Path,
                                                                 tmp_path: Path) -> None:
    """SemDeDup compares members of one cluster only: a group of planted copies collapses to
    one survivor when it shares a cluster (all exact copies do, and near copies unless a
    cluster boundary runs between them, which is rare)."""
    out = tmp_path / "out"
    run(config(emb_dir, out, clip_filter__enabled=False, dbp__enabled=False))
    led = ledger(out)
    keys = led.column("key").to_pylist()
    status = dict(zip(keys, led.column("status").to_pylist(), strict=True))
    cluster = dict(zip(keys, led.column("dedup_cluster").to_pylist(), strict=True))
    truth = pq.read_table(emb_dir / "ground_truth.parquet").to_pylist()
    groups: dict[str, set[str]] = {}
    for row in truth:
        groups.setdefault(row["duplicate_of"], {row["duplicate_of"]}).add(row["key"])
    assert groups
    exact = {row["duplicate_of"] for row in truth if row["kind"] == "exact"}
    split = 0
    for source, members in groups.items():
        survivors = [k for k in members if status[k] == "kept"]
        if len({cluster[k] for k in members}) > 1:
            assert source not in exact, members
            split += 1
            continue
        assert len(survivors) == 1, (members, survivors)
    assert split <= 0.02 * len(groups), split
    # every removal names an earlier member and a similarity above 1 - eps
    removed = led.filter(pa.compute.equal(led["status"], "removed"))
    assert removed.num_rows >= len(truth) - split
    assert removed.column("dup_of").null_count == 0
    assert min(removed.column("dup_similarity").to_pylist()) > 1 - 0.01
    assert set(removed.column("stage").to_pylist()) == {"semdedup"}


def test_ledger_invariant_per_shard(emb_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(config(emb_dir, out))
    led = ledger(out)
    report = json.loads((out / "report" / "report.json").read_text())
    shards = led.column("shard").to_pylist()
    assert set(shards) == {f"metadata_{i}" for i in range(SPEC.files)}
    for shard, counts in report["shards"].items():
        assert counts["read"] == shards.count(shard)
        assert counts["kept"] + counts["removed"] + counts["failed"] == counts["read"]


def test_report_histograms_count_the_samples_each_one_is_about(emb_dir: Path,
                                                               tmp_path: Path) -> None:
    """clip_before: the samples reaching the clip filter; clip_after: those it let through
    (its removals are the ledger's stage 'clip_filter'); dup_similarity: every member
    semdedup ranked, the ones it removed included (before its removals)."""
    out = tmp_path / "out"
    run(config(emb_dir, out))
    led = ledger(out)
    report = json.loads((out / "report" / "report.json").read_text())
    hist = report["histograms"]
    status = np.array(led.column("status").to_pylist(), dtype=object)
    stage = np.array(led.column("stage").to_pylist(), dtype=object)
    clip = np.array(led.column("clip_score").to_pylist(), dtype=np.float64)  # None -> nan
    sim = np.array(led.column("dup_similarity").to_pylist(), dtype=np.float64)

    def counts(values: np.ndarray) -> list[int]:
        values = np.clip(values[np.isfinite(values)], -1.0, 1.0)  # float32 cosines reach 1+
        return np.histogram(values, np.linspace(-1.0, 1.0, 201))[0].tolist()

    dedup = (status == "removed") & (stage == "semdedup")
    filtered = (status == "removed") & (stage == "clip_filter")
    steps = {s["name"]: s for s in report["stages"]}
    assert filtered.sum() == steps["clip_filter"]["removed"] > 0
    assert dedup.sum() == steps["semdedup"]["removed"] > 0
    reaching = (status != "failed") & ~dedup
    assert sum(hist["clip_before"]) == steps["clip_filter"]["in"] == reaching.sum()
    assert sum(hist["clip_after"]) == steps["clip_filter"]["out"] == steps["dbp"]["in"]
    assert hist["clip_before"] == counts(clip[reaching])
    assert hist["clip_after"] == counts(clip[reaching & ~filtered])
    # the similarity histogram is taken before semdedup's removals: they are in it
    assert np.isfinite(sim[dedup]).all() and (sim[dedup] > 1 - 0.01).all()
    assert hist["dup_similarity"] == counts(sim)
    assert sum(hist["dup_similarity"]) == np.isfinite(sim).sum()
    assert sum(hist["dup_similarity"][-1:]) >= dedup.sum()  # all of them in the top bin


def test_bad_vectors_are_counted_failures(tmp_path: Path) -> None:
    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=400, dim=16, concepts=4))
    img = np.load(data / "img_emb" / "img_emb_0.npy")
    img[5] = np.nan
    img[7] = 0
    np.save(data / "img_emb" / "img_emb_0.npy", img)
    txt = np.load(data / "text_emb" / "text_emb_0.npy")
    txt[9] = np.inf
    np.save(data / "text_emb" / "text_emb_0.npy", txt)
    out = tmp_path / "out"
    run(config(data, out, semdedup__k=2, dbp__k=2))
    led = ledger(out).to_pylist()
    assert led[5]["status"] == "failed" and "NaN" in led[5]["reason"]
    assert led[5]["stage"] == "read"
    assert led[7]["status"] == "failed" and "zero vector" in led[7]["reason"]
    assert led[9]["clip_score"] is None
    assert led[9]["status"] == "removed" and led[9]["stage"] in ("semdedup", "clip_filter")
    if led[9]["stage"] == "clip_filter":
        assert "no clip score" in led[9]["reason"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["failed"] == 2
    assert report["stages"][0] == {"name": "read", "in": 400, "out": 398, "removed": 2}


def test_mismatched_rows_name_the_files(tmp_path: Path) -> None:
    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=100, dim=8, concepts=2))
    np.save(data / "img_emb" / "img_emb_0.npy", np.ones((99, 8), dtype=np.float16))
    with pytest.raises(ValueError, match=r"img_emb_0\.npy has 99 rows.*metadata_0\.parquet"):
        run(config(data, tmp_path / "out", semdedup__k=2, dbp__k=2))


def test_k_larger_than_vectors_is_a_clear_error(tmp_path: Path) -> None:
    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=50, dim=8, concepts=2))
    with pytest.raises(ValueError, match=r"semdedup\.k=80 is larger than the 50 vectors"):
        run(config(data, tmp_path / "out", semdedup__k=80))


def test_infeasible_budget_names_the_numbers(tmp_path: Path) -> None:
    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=200, dim=8, concepts=3))
    with pytest.raises(ValueError, match=r"dbp\.keep_count=500 exceeds the \d+ samples"):
        run(config(data, tmp_path / "out", semdedup__enabled=False,
                   clip_filter__enabled=False, dbp__keep_count=500))
    with pytest.raises(ValueError, match=r"lower bounds sum to \d+ > target N=20"):
        run(config(data, tmp_path / "out2", semdedup__enabled=False,
                   clip_filter__enabled=False, dbp__keep_count=20, dbp__k=10,
                   dbp__balance=100.0))


def test_resume_after_crash_gives_the_same_subset(emb_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    clean = tmp_path / "clean"
    run(config(emb_dir, clean))

    crashed = tmp_path / "crashed"
    calls = {"semdedup": 0}
    import pipeline.stages.semdedup as sem_stage

    real_sem, real_dbp = sem_stage.run_semdedup, dbp_stage.run_dbp

    def counting_sem(*a, **kw):  # noqa: ANN002, ANN003
        calls["semdedup"] += 1
        return real_sem(*a, **kw)

    def boom(*a, **kw):  # noqa: ANN002, ANN003
        raise RuntimeError("killed in dbp")

    monkeypatch.setattr(sem_stage, "run_semdedup", counting_sem)
    monkeypatch.setattr(dbp_stage, "run_dbp", boom)
    with pytest.raises(RuntimeError):
        run(config(emb_dir, crashed))
    assert not (crashed / "subset.npy").exists()
    monkeypatch.setattr(dbp_stage, "run_dbp", real_dbp)
    summary = run(config(emb_dir, crashed))
    assert calls["semdedup"] == 1  # the finished step was not redone
    assert "semdedup" in summary.skipped_steps
    assert_same_file(crashed / "subset.npy", clean / "subset.npy")

    again = run(config(emb_dir, crashed))  # after success: nothing to do
    assert again.skipped_steps == ["read", "semdedup", "clip_filter", "dbp", "write"]
    assert calls["semdedup"] == 1


def test_changed_setting_redoes_only_later_steps(emb_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    run(config(emb_dir, out))
    first = json.loads((out / "report" / "report.json").read_text())
    summary = run(config(emb_dir, out, dbp__keep_fraction=0.25))
    assert summary.skipped_steps == ["semdedup", "clip_filter"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["stages"][:3] == first["stages"][:3]
    assert report["kept"] == int(np.floor(0.25 * report["stages"][-1]["in"] + 0.5))


def test_same_seed_same_bytes(emb_dir: Path, tmp_path: Path) -> None:
    run(config(emb_dir, tmp_path / "a", vector_cache_gb=1))  # held in memory
    run(config(emb_dir, tmp_path / "b", vector_cache_gb=0))  # streamed from the work folder
    assert_same_file(tmp_path / "a" / "subset.npy", tmp_path / "b" / "subset.npy")


def test_a_local_run_hashes_derived_uids_in_helper_processes(
        emb_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its parts, read on threads at once, hash their derived uids in helper processes (one
    per part read at once), and the uids are those hashed here."""
    from pipeline import uid_hashing

    for name in ("_IDLE", "_STARTED", "_UNAVAILABLE"):
        monkeypatch.setattr(uid_hashing, name, [])
    run(config(emb_dir, tmp_path / "a"))
    started = list(uid_hashing._STARTED)
    assert 1 <= len(started) <= 3 and not uid_hashing._UNAVAILABLE
    uid_hashing.close_helpers()
    table = ledger(tmp_path / "a")
    from pipeline.ids import derive_u128, u128_to_uids

    want = u128_to_uids(*derive_u128(table.column("shard"), table.column("key")))
    got = np.array(table.column("uid").to_pylist(), dtype="S32")
    assert_same_arrays(got, want, "the ledger's derived uids")


def _write_datacomp(folder: Path, shard: str, n: int, rng: np.random.Generator,
                    uids: list[str] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    uids = uids or [f"{rng.integers(0, 2**63):016x}{rng.integers(0, 2**63):016x}"
                    for _ in range(n)]
    pq.write_table(pa.table({"uid": uids, "text": [f"caption {i}" for i in range(n)],
                             "clip_l14_similarity_score": rng.random(n)}),
                   folder / f"{shard}.parquet")
    arrays = {f"{m}_{kind}": rng.standard_normal((n, d)).astype(np.float16)
              for m, d in (("l14", 16), ("b32", 8)) for kind in ("img", "txt")}
    np.savez(folder / f"{shard}.npz", **arrays)


def test_datacomp_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "dc"
    _write_datacomp(folder, "00000000", 300, rng)
    _write_datacomp(folder, "00000001", 200, rng)
    for model, dim in (("l14", 16), ("b32", 8)):
        out = tmp_path / f"out_{model}"
        cfg = validate_config({
            "input": {"datacomp": str(folder), "datacomp_model": model}, "output": str(out),
            "progress": False, "semdedup": {"k": 3, "eps": 0.05},
            "clip_filter": {"enabled": True, "threshold": 0.0}, "dbp": {"k": 4},
        })
        run(cfg)
        led = ledger(out)
        assert led.num_rows == 500
        assert set(led.column("shard").to_pylist()) == {"00000000", "00000001"}
        # uids travel untouched from the parquet
        src = pq.read_table(folder / "00000000.parquet").column("uid").to_pylist()
        assert led.column("uid").to_pylist()[:300] == src
        vec = np.load(folder / "00000000.npz")[f"{model}_img"]
        assert vec.shape[1] == dim
        txt = np.load(folder / "00000000.npz")[f"{model}_txt"].astype(np.float32)
        img = vec.astype(np.float32)
        expect = (img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
        got = np.array(led.column("clip_score").to_pylist()[:300], dtype=np.float32)
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)


def test_datacomp_missing_npz_and_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "dc"
    _write_datacomp(folder, "a", 20, rng)
    pq.write_table(pa.table({"uid": ["0" * 32]}), folder / "b.parquet")
    cfg = validate_config({"input": {"datacomp": str(folder)}, "output": str(tmp_path / "o"),
                           "progress": False, "semdedup": {"k": 2}, "dbp": {"k": 2}})
    with pytest.raises(ValueError, match=r"b\.parquet has no embeddings file b\.npz"):
        run(cfg)


def test_bad_uid_is_a_counted_failure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "dc"
    uids = [f"{i:032x}" for i in range(60)]
    uids[3] = "not-a-uid"
    _write_datacomp(folder, "s", 60, rng, uids=uids)
    out = tmp_path / "out"
    run(validate_config({"input": {"datacomp": str(folder)}, "output": str(out),
                         "progress": False, "semdedup": {"k": 2}, "dbp": {"k": 2}}))
    row = ledger(out).to_pylist()[3]
    assert row["status"] == "failed" and "not-a-uid" in row["reason"]


def test_embed_stage_contract_columns(tmp_path: Path) -> None:
    """Metadata written by the embed stage: earlier failures and precomputed CLIP scores."""
    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=300, dim=16, concepts=3,
                                                         with_text=False))
    meta_path = data / "metadata" / "metadata_0.parquet"
    meta = pq.read_table(meta_path)
    n = meta.num_rows
    reasons = [None] * n
    stages = [None] * n
    reasons[4], stages[4] = "undecodable image: cannot identify image file", "embed"
    reasons[6], stages[6] = "missing caption", "read"
    scores = np.linspace(0.0, 0.5, n).astype(np.float32)
    meta = meta.append_column("failed_reason", pa.array(reasons, pa.string()))
    meta = meta.append_column("failed_stage", pa.array(stages, pa.string()))
    meta = meta.append_column("clip_score", pa.array(scores))
    meta = meta.append_column("shard", pa.array(["00007"] * n))
    pq.write_table(meta, meta_path)
    img = np.load(data / "img_emb" / "img_emb_0.npy")
    img[[4, 6]] = 0
    np.save(data / "img_emb" / "img_emb_0.npy", img)

    out = tmp_path / "out"
    run(config(data, out, semdedup__enabled=False, clip_filter__keep_fraction=None,
               clip_filter__threshold=0.25, dbp__k=3))
    led = ledger(out).to_pylist()
    assert (led[4]["status"], led[4]["stage"]) == ("failed", "embed")
    assert led[4]["reason"].startswith("undecodable image")
    assert (led[6]["status"], led[6]["stage"], led[6]["reason"]) == \
        ("failed", "read", "missing caption")
    assert {r["shard"] for r in led} == {"00007"}
    for i, row in enumerate(led):
        if row["status"] != "failed":
            assert row["clip_score"] == pytest.approx(scores[i])
            if scores[i] < 0.25:
                assert (row["status"], row["stage"]) == ("removed", "clip_filter")


def test_a_rerun_over_fewer_files_leaves_only_its_own_ledger(emb_dir: Path,
                                                             tmp_path: Path) -> None:
    fewer = tmp_path / "fewer"
    for sub, name in (("img_emb", "img_emb_{}.npy"), ("text_emb", "text_emb_{}.npy"),
                      ("metadata", "metadata_{}.parquet")):
        (fewer / sub).mkdir(parents=True)
        for i in range(2):
            shutil.copyfile(emb_dir / sub / name.format(i), fewer / sub / name.format(i))
    out = tmp_path / "out"
    run(config(emb_dir, out))
    summary = run(config(fewer, out))  # the same output folder, fewer input files
    rows = sum(pq.ParquetFile(fewer / "metadata" / f"metadata_{i}.parquet").metadata.num_rows
               for i in range(2))
    assert summary.input_samples == rows == ledger(out).num_rows
    assert len(np.load(out / "subset.npy")) == summary.kept
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != MANIFEST]


def test_a_long_d_inter_logs_its_progress_and_keeps_its_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """Where k makes d_inter long, it logs progress lines and a summary as it goes, block by
    block; the concepts it computes are those of one block, without a meter."""
    from pipeline.algorithms import budget

    caplog.set_level(logging.INFO)  # as the command line logs (pytest's root: warnings)
    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=400, dim=16, concepts=4))
    run(config(data, tmp_path / "plain", dbp__k=6))
    monkeypatch.setattr(dbp_stage, "INTER_PROGRESS_FROM", 2)
    monkeypatch.setattr(budget, "INTER_BLOCK_PRODUCTS", 2 * 6)  # blocks of 2 concepts
    out = tmp_path / "shown"
    run(config(data, out, dbp__k=6, progress=True, progress_interval_s=0))
    log = (out / "logs" / "run.log").read_text()
    concepts = int(re.search(r"dbp: d_inter: (\d+) concepts in [\dms.]+, ", log).group(1))
    assert concepts >= 4
    assert re.search(rf"dbp: d_inter: 2/{concepts} concepts \(\d+%\)", log), log
    for name in ("clusters.parquet", "subset.npy"):
        found = sorted((tmp_path / "plain").rglob(name))
        assert found, name
        for path in found:
            twin = out / path.relative_to(tmp_path / "plain")
            assert path.read_bytes() == twin.read_bytes(), path


def test_a_fit_sample_larger_than_the_free_memory_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fit draws its sample, a sample the machine cannot hold is an error that
    names the sizes and the settings to lower, not the OOM killer part way through."""
    from types import SimpleNamespace

    import psutil

    from pipeline.stages.clusters import fit_memory

    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=400, dim=16, concepts=4))
    need = fit_memory(400, 16, 8)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=need - 1))
    with pytest.raises(ValueError, match=r"k-means fit of semdedup\.k=8 holds a sample of 400 "
                       r"vectors of 16 \([\d.]+ GiB in all\), more than the [\d.]+ GiB of "
                       r"memory available to this process on .*: lower "
                       r"kmeans\.max_points_per_centroid .* or semdedup\.k"):
        run(config(data, tmp_path / "out", semdedup__k=8))
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=need))
    run(config(data, tmp_path / "out", semdedup__k=8))  # just enough: the same run goes on
    assert (tmp_path / "out" / "subset.npy").exists()


def test_a_placeholder_copied_hundreds_of_times_gives_the_same_bytes_either_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input where one vector stands for hundreds of samples (a placeholder image) and a
    few others for dozens: SemDeDup decides the copies of a member with HEAVY_COPIES or more
    from that member instead of as rows, and the run's subset, ledger and report are the
    bytes of one that takes every copy as a row, on 1 and 2 kernel threads."""
    from same_bytes import assert_same_run

    from pipeline.algorithms import semdedup

    data = synth_embeddings(tmp_path / "data", SynthSpec(samples=3000, dim=32, concepts=6,
                                                         files=3, seed=4))
    rng = np.random.default_rng(4)
    for f in range(3):  # the placeholder in every part, and parts' own popular vectors
        path = data / "img_emb" / f"img_emb_{f}.npy"
        img = np.load(path)
        if f == 0:
            placeholder = img[10].copy()
        rows = rng.choice(np.arange(20, len(img)), size=230, replace=False)
        img[rows[:150]] = placeholder
        img[rows[150:]] = img[rng.integers(20, len(img))]
        np.save(path, img)
    outs = {}
    for name, heavy, threads in (("rows", 10**9, 1), ("heavy", 64, 2), ("heavy-1", 64, 1)):
        monkeypatch.setattr(semdedup, "HEAVY_COPIES", heavy)
        outs[name] = tmp_path / name
        run(config(data, outs[name], semdedup__k=4, engine__threads=threads))
    removed = ledger(outs["rows"]).filter(pa.compute.equal(ledger(outs["rows"])["stage"],
                                                           "semdedup"))
    assert removed.num_rows >= 449 + 3 * 79  # every copy of both kinds, at least
    for name in ("heavy", "heavy-1"):
        assert_same_run(outs[name], outs["rows"], parts=("subset.npy", "ledger", "report"),
                        report_ignore=("engine", "timings_s", "parameters", "command"))
