"""Every clear error the README promises: triggered through the real code path, each message
must name the file or the setting concerned and say how to fix it."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import EXIT_BUG, ConceptpruneError
from pipeline.stages.ledger import LedgerInvariantError, check_invariant
from pipeline.synth.embeddings import SynthSpec, synth_embeddings

SAMPLES, DIM = 60, 8


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    """`conceptprune run` points the root logger at the runner's stderr; undo it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def make_data(tmp_path: Path, **spec: object) -> Path:
    fields = {"samples": SAMPLES, "dim": DIM, "concepts": 3, **spec}
    return synth_embeddings(tmp_path / "data", SynthSpec(**fields))


def write_config(tmp_path: Path, data: Path | None = None, **over: object) -> Path:
    """A small, fast config; ``over`` maps dotted settings to values (None deletes one)."""
    raw: dict = {
        "input": {"embeddings": str(data or tmp_path / "data")},
        "output": str(tmp_path / "out"),
        "semdedup": {"k": 2},
        "dbp": {"k": 2},
        "kmeans": {"niter": 2},
    }
    for dotted, value in over.items():
        *path, last = dotted.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / "prune.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, ["run", *args, "--no-progress"])


def one_line(text: str) -> str:
    """The output with the log prefix gone and line breaks joined, for substring checks."""
    return " ".join(text.split())


def run_fails(config: Path, *sets: str, code: int = 1) -> str:
    args = [str(config)]
    for item in sets:
        args += ["--set", item]
    res = cli(*args)
    assert res.exit_code == code, res.output
    if code == 1:
        assert " ERROR " in res.output, res.output  # logged, not a traceback
    else:
        assert res.output.startswith("error: "), res.output
    return one_line(res.output)


# --- configuration ----------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    out = run_fails(missing, code=2)
    assert f"config file {missing} does not exist" in out
    assert "check the path" in out and "--set input.embeddings=DIR --set output=DIR" in out


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {embeddings: /data\noutput: [/out\n")
    out = run_fails(bad, code=2)
    assert f"config file {bad} is not valid YAML" in out
    assert "fix the syntax where the parser stopped" in out
    assert re.search(r"line \d+", out)  # the parser's position comes with it


def test_yaml_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text("- input\n- output\n")
    out = run_fails(listed, code=2)
    assert f"config file {listed} holds a list at the top level" in out
    assert "must hold a mapping of settings (input:, output:, dbp: ...)" in out


def test_unknown_setting_names_it_and_the_valid_ones(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, **{"dbp.kk": 3})
    out = run_fails(cfg, code=2)
    assert f"invalid configuration in {cfg}" in out
    assert "dbp.kk: unknown setting; remove it or correct its name" in out
    assert "keep_fraction" in out and "conceptprune config-schema" in out
    # a top-level typo given with --set
    out = run_fails(write_config(tmp_path), "ouptut=/x", code=2)
    assert "ouptut: unknown setting" in out and "output" in out


def test_missing_required_setting_says_how_to_set_it(tmp_path: Path) -> None:
    out = run_fails(write_config(tmp_path, output=None), code=2)
    assert "output: required; set it in the config file or with --set output=VALUE" in out


def test_a_missing_input_names_settings_that_work_when_pasted(tmp_path: Path) -> None:
    """`--set input=VALUE` is no setting: the hint names input.shards and input.embeddings,
    and each --set it shows is accepted as shown."""
    import shlex

    from pipeline.config import load_config

    res = cli("--set", f"output={tmp_path / 'o'}")
    assert res.exit_code == 2
    said = one_line(res.output)
    assert "input: required" in said and "--set input=" not in said
    shown_all = re.findall(r"--set (input\.\S+?)(?=\)|,|$)", said)
    assert len(shown_all) == 2, said
    for shown in shown_all:
        (item,) = shlex.split(shown)
        cfg = load_config(None, [item, f"output={tmp_path / 'o'}"])
        assert cfg.input.shards or cfg.input.embeddings, item


@pytest.mark.parametrize("item, expected", [
    ("dbp.k", ["--set expects key=value, got 'dbp.k'", "example: --set dbp.k=200"]),
    ("=3", ["--set '=3' has no key before '='", "write --set section.setting=value"]),
    (" =3", ["--set ' =3' has no key before '='", "write --set section.setting=value"]),
    ("seed.x=1", ["--set 'seed.x=1': seed is a single setting, not a section",
                  "set it directly (--set seed=VALUE)"]),
    ("dbp.k.x=1", ["dbp.k is a single setting, not a section", "(--set dbp.k=VALUE)"]),
    ("dbp.keep_fraction=2", ["dbp.keep_fraction must be in (0, 1], got 2"]),
    ("semdedup.eps=1.5", ["semdedup.eps: Input should be less than 1"]),
])
def test_bad_set_overrides(tmp_path: Path, item: str, expected: list[str]) -> None:
    out = run_fails(write_config(tmp_path), item, code=2)
    for text in expected:
        assert text in out


def test_set_through_a_setting_given_in_the_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, seed=4)
    out = run_fails(cfg, "seed.x=1", code=2)
    assert "seed is a single setting, not a section" in out and "--set seed=VALUE" in out


def test_invalid_value_from_set_names_file_and_override(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    out = run_fails(cfg, "dbp.keep_fraction=2", code=2)
    assert f"invalid configuration in {cfg} with its --set overrides" in out
    assert "dbp.keep_fraction must be in (0, 1]" in out


# --- missing files ----------------------------------------------------------------------


def test_embeddings_folder_missing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    out = run_fails(write_config(tmp_path, missing))
    assert f"input.embeddings folder {missing} does not exist" in out
    assert "set input.embeddings to a clip-retrieval output folder" in out


def test_folder_without_img_emb(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    for path in (data / "img_emb").iterdir():
        path.unlink()
    out = run_fails(write_config(tmp_path, data))
    assert f"no img_emb/img_emb_{{i}}.npy files under {data}" in out
    assert "input.embeddings must point at a clip-retrieval output folder" in out


def test_img_emb_without_its_metadata(tmp_path: Path) -> None:
    data = make_data(tmp_path, files=2)
    (data / "metadata" / "metadata_1.parquet").unlink()
    out = run_fails(write_config(tmp_path, data))
    assert (f"{data}/img_emb/img_emb_1.npy has no metadata file "
            "metadata/metadata_1.parquet beside it") in out
    assert "add it (one row per embedding, in the same order, with an image_path column)" in out


def write_datacomp(folder: Path, shard: str, n: int = 30, dims: dict | None = None) -> None:
    rng = np.random.default_rng(len(shard))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": [f"{rng.integers(0, 2**63):032x}" for _ in range(n)],
                             "text": [f"caption {i}" for i in range(n)]}),
                   folder / f"{shard}.parquet")
    arrays = {f"{model}_{kind}": rng.standard_normal((n, d)).astype(np.float16)
              for model, d in (dims or {"l14": 16}).items() for kind in ("img", "txt")}
    np.savez(folder / f"{shard}.npz", **arrays)


def datacomp_config(tmp_path: Path, folder: Path, **over: object) -> Path:
    return write_config(tmp_path, **{"input.embeddings": None, "input.datacomp": str(folder),
                                     **over})


def test_datacomp_parquet_without_npz(tmp_path: Path) -> None:
    folder = tmp_path / "dc"
    write_datacomp(folder, "a")
    write_datacomp(folder, "b")
    (folder / "b.npz").unlink()
    out = run_fails(datacomp_config(tmp_path, folder))
    assert f"{folder}/b.parquet has no embeddings file b.npz beside it" in out
    assert "add it (arrays l14_img and l14_txt in the parquet's row order)" in out


def test_datacomp_npz_without_the_chosen_model(tmp_path: Path) -> None:
    folder = tmp_path / "dc"
    write_datacomp(folder, "a")  # l14 arrays only
    out = run_fails(datacomp_config(tmp_path, folder, **{"input.datacomp_model": "b32"}))
    assert f"{folder}/a.npz has no array 'b32_img' (it holds l14_img, l14_txt)" in out
    assert "set input.datacomp_model to one that is present" in out
    assert "cannot read" not in out  # not re-wrapped as a read failure


def test_datacomp_folder_missing_or_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    out = run_fails(datacomp_config(tmp_path, missing))
    assert f"input.datacomp folder {missing} does not exist" in out
    assert "set input.datacomp to a folder of DataComp {shard}.parquet" in out
    missing.mkdir()
    out = run_fails(datacomp_config(tmp_path, missing))
    assert f"no {{shard}}.parquet files under {missing}" in out
    assert "input.datacomp must point at a folder" in out


def test_shards_pattern_matching_nothing(tmp_path: Path) -> None:
    pattern = f"{tmp_path}/shards/{{00000..00003}}.tar"
    cfg = write_config(tmp_path, **{"input.embeddings": None, "input.shards": pattern})
    out = run_fails(cfg)
    assert f"no shards match '{pattern}' (input.shards)" in out
    assert "point input.shards at existing .tar files" in out


# --- array shapes and dtypes ------------------------------------------------------------


@pytest.mark.parametrize("make, fix", [
    (lambda: np.ones(SAMPLES * DIM, np.float32),
     f"holds an array of shape ({SAMPLES * DIM},); expected a 2-D (rows, dim) array"),
    (lambda: np.ones((SAMPLES, DIM, 1), np.float32),
     f"holds an array of shape ({SAMPLES}, {DIM}, 1); expected a 2-D (rows, dim) array"),
    (lambda: np.ones((SAMPLES, DIM), np.int32),
     "holds int32 values; expected float16 or float32 embeddings: save them again as float16 "
     "or float32"),
    (lambda: np.full((SAMPLES, DIM), "x", dtype=object),
     "Python objects in dtype); it must be a .npy file holding a float16 or float32 "
     "(rows, dim) array"),
], ids=["1-D", "3-D", "int", "object"])
def test_bad_img_emb_array(tmp_path: Path, make: object, fix: str) -> None:
    data = make_data(tmp_path)
    target = data / "img_emb" / "img_emb_0.npy"
    np.save(target, make(), allow_pickle=True)
    out = run_fails(write_config(tmp_path, data))
    assert str(target) in out
    assert fix in out
    if "shape" in fix:
        assert "reshape it to (rows, dim) and save it again" in out


def test_row_count_mismatch_names_both_files(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    np.save(data / "img_emb" / "img_emb_0.npy", np.ones((SAMPLES - 1, DIM), np.float16))
    out = run_fails(write_config(tmp_path, data))
    assert (f"{data}/img_emb/img_emb_0.npy has {SAMPLES - 1} rows but "
            f"{data}/metadata/metadata_0.parquet has {SAMPLES}") in out
    assert "must hold one row per sample, in the same order" in out


def test_text_dimension_differs_names_both_files(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    np.save(data / "text_emb" / "text_emb_0.npy", np.ones((SAMPLES, DIM + 4), np.float16))
    out = run_fails(write_config(tmp_path, data))
    assert (f"{data}/text_emb/text_emb_0.npy has dimension {DIM + 4} but "
            f"{data}/img_emb/img_emb_0.npy has {DIM}") in out
    assert "use text embeddings of the model that made the image ones" in out


@pytest.mark.parametrize("missing", ["img_emb/img_emb_1.npy", "text_emb/text_emb_1.npy",
                                     "img_emb/img_emb_0.npy"])
def test_a_part_missing_one_of_its_files_is_an_error_naming_it(tmp_path: Path,
                                                              missing: str) -> None:
    """Not a silent loss: without its image embeddings a part's samples would be absent from
    the ledger, without its text embeddings they would all fail clip_filter."""
    data = make_data(tmp_path, files=2)
    (data / missing).unlink()
    out = run_fails(write_config(tmp_path, data))
    num = missing[-5]
    if missing.startswith("img_emb"):
        assert (f"{data}/metadata/metadata_{num}.parquet has no image embeddings file "
                f"img_emb/img_emb_{num}.npy beside it") in out
    else:
        assert f"{data}/img_emb/img_emb_1.npy has no text_emb/text_emb_1.npy beside it" in out
    assert not (tmp_path / "out" / "ledger").exists()


def test_parts_with_different_dimensions(tmp_path: Path) -> None:
    data = make_data(tmp_path, files=2)
    rows = pq.read_metadata(data / "metadata" / "metadata_1.parquet").num_rows
    rng = np.random.default_rng(0)
    for kind in ("img_emb", "text_emb"):
        np.save(data / kind / f"{kind}_1.npy",
                rng.standard_normal((rows, DIM + 4)).astype(np.float16))
    out = run_fails(write_config(tmp_path, data))
    assert (f"{data}/img_emb/img_emb_0.npy has dimension {DIM}, "
            f"{data}/img_emb/img_emb_1.npy has dimension {DIM + 4}") in out
    assert "every part must come from the same model; re-embed the odd parts" in out


def test_metadata_without_key_columns(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    meta = data / "metadata" / "metadata_0.parquet"
    pq.write_table(pq.read_table(meta, columns=["caption", "url"]), meta)
    out = run_fails(write_config(tmp_path, data))
    assert f"{meta} has neither an 'image_path' nor a 'key' nor a 'uid' column" in out
    assert "add one of them (image_path in clip-retrieval metadata" in out


# --- settings the data cannot satisfy ---------------------------------------------------


def test_semdedup_k_larger_than_the_vectors(tmp_path: Path) -> None:
    out = run_fails(write_config(tmp_path, make_data(tmp_path)), "semdedup.k=500")
    assert f"semdedup.k=500 is larger than the {SAMPLES} vectors" in out
    assert f"set semdedup.k to at most {SAMPLES}" in out


def test_dbp_k_larger_than_the_vectors(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_data(tmp_path))
    out = run_fails(cfg, "semdedup.enabled=false", "dbp.k=500")
    assert f"dbp.k=500 is larger than the {SAMPLES} vectors" in out
    assert f"set dbp.k to at most {SAMPLES}" in out


def test_dbp_keep_count_too_large(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_data(tmp_path))
    out = run_fails(cfg, "semdedup.enabled=false", "dbp.keep_count=1000")
    assert f"dbp.keep_count=1000 exceeds the {SAMPLES} samples that reach dbp" in out
    assert "lower dbp.keep_count or use dbp.keep_fraction" in out


def test_dbp_balance_too_high(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_data(tmp_path))
    out = run_fails(cfg, "semdedup.enabled=false", "dbp.k=5", "dbp.keep_count=10",
                    "dbp.balance=100")
    assert re.search(r"dbp lower bounds sum to \d+ > target N=10 \(balance=100", out), out
    assert "lower dbp.balance, lower dbp.k, or keep more samples" in out


def test_clip_filter_without_text_embeddings(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_data(tmp_path, with_text=False))
    out = run_fails(cfg, "clip_filter.enabled=true", "clip_filter.keep_fraction=0.9")
    assert "clip_filter is enabled but the input has no text embeddings" in out
    assert "add them or set clip_filter.enabled=false" in out


def test_errors_also_reach_the_run_log(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_data(tmp_path))
    run_fails(cfg, "semdedup.k=500")
    log_text = (tmp_path / "out" / "logs" / "run.log").read_text()
    assert "set semdedup.k to at most" in log_text


def test_a_full_disk_says_which_folders_and_how_to_resume(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A write cut short by a full disk names no file ([Errno 28] alone): the message names
    the folders the run writes and what to do."""
    import errno

    import pipeline.stages.dbp

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline.stages.dbp, "run_dbp", full)
    out = one_line(run_fails(write_config(tmp_path, make_data(tmp_path))))
    assert (f"No space left on device: the disk of the work folder {tmp_path}/out/_work or "
            f"of the output {tmp_path}/out is full; free space there") in out
    assert "run the same command to resume" in out


def test_a_bug_says_so_with_its_traceback_and_exit_code_70(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """An exception that is no user's to fix is not dressed up as one: the traceback, the
    word that it is a bug, exit code 70, in the output and in the run's log."""
    import pipeline.stages.dbp

    def broken(*_: object) -> None:
        raise ZeroDivisionError("division by zero in dbp")

    monkeypatch.setattr(pipeline.stages.dbp, "run_dbp", broken)
    cfg = write_config(tmp_path, make_data(tmp_path))
    res = cli(str(cfg))
    assert res.exit_code == EXIT_BUG, res.output
    for text in (res.output, (tmp_path / "out" / "logs" / "run.log").read_text()):
        assert "this is a bug in conceptprune" in text
        assert "Traceback" in text and "ZeroDivisionError: division by zero in dbp" in text


def test_every_error_a_user_can_fix_shares_one_base() -> None:
    """Every error class of the library is a ConceptpruneError (the command line prints it
    as one line) but the ledger invariant's, which only a bug can break."""
    import importlib
    import inspect
    import pkgutil

    import pipeline

    found = {}
    for info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if info.name.startswith(("pipeline.synth", "pipeline.demo")):
            continue
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, Exception) \
                    and not name.startswith("_"):  # private ones never leave their module
                found[name] = cls
    assert len(found) >= 15, sorted(found)
    assert {n for n, c in found.items() if not issubclass(c, ConceptpruneError)} == \
        {"LedgerInvariantError"}
    assert not issubclass(LedgerInvariantError, ConceptpruneError)


# --- the ledger invariant ---------------------------------------------------------------


def write_ledger(folder: Path, rows: list[tuple[str, str]], name: str = "part-00000") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shards, status = zip(*rows, strict=True)
    pq.write_table(pa.table({"shard": list(shards), "status": list(status)}),
                   folder / f"{name}.parquet")
    return folder


GOOD = [("s0", "kept")] * 3 + [("s0", "removed")] * 2 + [("s0", "failed")] + \
       [("s1", "kept")] * 4


def test_correct_ledger_passes_and_counts(tmp_path: Path) -> None:
    folder = write_ledger(tmp_path / "ledger", GOOD[:5])
    write_ledger(folder, GOOD[5:], "part-00001")  # counts add up across part files
    counts = check_invariant(folder, Counter({"s0": 6, "s1": 4}))
    assert counts == {"s0": {"read": 6, "kept": 3, "removed": 2, "failed": 1},
                      "s1": {"read": 4, "kept": 4, "removed": 0, "failed": 0}}
    # a shard read with no samples has no ledger rows, and that is fine
    counts = check_invariant(folder, Counter({"s0": 6, "s1": 4, "empty": 0}))
    assert counts["empty"] == {"read": 0, "kept": 0, "removed": 0, "failed": 0}


@pytest.mark.parametrize("rows, read, expected", [
    (GOOD[1:], {"s0": 6, "s1": 4},
     ["s0: read 6, ledger kept 2 + removed 2 + failed 1 = 5"]),
    (GOOD + [("s1", "kept")], {"s0": 6, "s1": 4},
     ["s1: read 4, ledger kept 5 + removed 0 + failed 0 = 5"]),
    (GOOD + [("s1", "maybe")], {"s0": 6, "s1": 4},
     ["s1: read 4, ledger kept 4 + removed 0 + failed 0 = 4",
      "rows with unknown status 'maybe' (1)"]),
    (GOOD[:-1] + [("s1", "maybe")], {"s0": 6, "s1": 4},
     ["s1: read 4, ledger kept 3 + removed 0 + failed 0 = 3",
      "rows with unknown status 'maybe' (1)"]),
    (GOOD + [("s9", "kept")] * 2, {"s0": 6, "s1": 4},
     ["s9: 2 rows in the ledger but the shard was never read"]),
    (GOOD, {"s0": 6, "s1": 4, "s2": 7},
     ["s2: read 7, ledger kept 0 + removed 0 + failed 0 = 0"]),
], ids=["fewer", "more", "unknown-status", "unknown-status-short", "never-read",
        "missing-shard"])
def test_broken_ledger_fails_the_invariant(tmp_path: Path, rows: list, read: dict,
                                           expected: list[str]) -> None:
    folder = write_ledger(tmp_path / "ledger", rows)
    with pytest.raises(LedgerInvariantError) as err:
        check_invariant(folder, Counter(read))
    message = str(err.value)
    assert f"ledger invariant broken in {folder}" in message
    for text in expected:
        assert text in message
    # only the broken shard is listed
    listed = {line.split(":")[0].strip() for line in message.splitlines()[1:]}
    assert len(listed) == 1
