"""tests/same_bytes.py: outputs that differ fail at once with a short message naming the first
differences (subset positions, ledger rows, report.json paths, byte offsets); equal ones
pass."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from same_bytes import (
    LIMIT,
    assert_same_arrays,
    assert_same_bytes,
    assert_same_contents,
    assert_same_file,
    assert_same_files,
    assert_same_json,
    assert_same_rows,
    assert_same_run,
)

ROWS = 200_000
SHARD_BYTES = 6_000_000
CHANGED = np.arange(1000, ROWS, 37)  # 5,379 ledger rows set to failed, every other one moved


def ledger(rows: int, changed: np.ndarray | None = None) -> pa.Table:
    rng = np.random.default_rng(0)
    status = np.where(np.arange(rows) % 3 == 0, "removed", "kept").astype(object)
    distance = rng.random(rows).astype(np.float32)
    if changed is not None:
        status[changed] = "failed"
        distance[changed[::2]] += 1
    return pa.table({"key": [f"{i:09d}" for i in range(rows)],
                     "uid": [f"{i:032x}" for i in range(rows)],
                     "status": pa.array(status, pa.string()),
                     "reason": pa.array([None] * rows, pa.string()),
                     "distance": distance})


def report(**changes: Any) -> dict[str, Any]:
    return {"engine": "local", "timings_s": {"read": 1.5}, "kept": 1000,
            "stages": [{"name": "read", "out": 2000}, {"name": "dbp", "out": 1000}],
            "shards": {"00000.tar": {"read": 2000, "kept": 1000}}, **changes}


def write_run(root: Path, *, rows: int = 50, changed: np.ndarray | None = None,
              subset_rows: tuple[int, ...] = (), shard_bytes: int = 4096,
              shard_offset: int | None = None, **report_changes: Any) -> Path:
    """A run-like output folder: ledger/part-00000.parquet, subset.npy, report/report.json
    and shards/00000.tar (random bytes, one flipped at shard_offset)."""
    for sub in ("ledger", "report", "shards"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    pq.write_table(ledger(rows, changed), root / "ledger" / "part-00000.parquet")
    subset = np.zeros(rows // 2, dtype="u8,u8")
    subset["f0"] = np.arange(rows // 2)
    subset["f1"] = 7
    subset["f1"][list(subset_rows)] = 9
    np.save(root / "subset.npy", subset)
    (root / "report" / "report.json").write_text(json.dumps(report(**report_changes)))
    shard = bytearray(np.random.default_rng(1).integers(0, 256, shard_bytes, np.uint8))
    if shard_offset is not None:
        shard[shard_offset] ^= 0xFF
    (root / "shards" / "00000.tar").write_bytes(bytes(shard))
    return root


def failure(check: Any, *args: Any, **kwargs: Any) -> str:
    """check's AssertionError message, which must be short."""
    with pytest.raises(AssertionError) as caught:
        check(*args, **kwargs)
    message = str(caught.value)
    assert len(message) <= LIMIT, message[:500]
    return message


def test_identical_runs_pass(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", rows=ROWS, shard_bytes=SHARD_BYTES)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert_same_run(b, a)
    assert_same_run(b, a, parts=("subset.npy", "ledger"), report_ignore=("engine",))
    assert_same_files(b / "ledger", a / "ledger")
    assert_same_file(b / "subset.npy", a / "subset.npy")


def test_a_large_run_that_differs_everywhere_fails_fast_and_short(tmp_path: Path) -> None:
    want = write_run(tmp_path / "want", rows=ROWS, shard_bytes=SHARD_BYTES)
    got = write_run(tmp_path / "got", rows=ROWS, shard_bytes=SHARD_BYTES, changed=CHANGED,
                    subset_rows=(5, 90_000), shard_offset=3_000_000, kept=1001,
                    stages=[{"name": "read", "out": 2000}, {"name": "dbp", "out": 1001}])
    start = time.perf_counter()
    message = failure(assert_same_run, got, want,
                      report_ignore=("engine", "timings_s", "parameters", "command"))
    assert time.perf_counter() - start < 20, "the explanation is slow"
    lines = message.splitlines()
    assert lines[0] == f"run outputs: {got} (got) vs {want} (want)"
    # subset.npy: the first differing positions with both values
    assert "subset.npy: 2 of the 100,000 common elements differ" in message
    assert "[5]: got (5, 9), want (5, 7)" in message
    assert "[90000]: got (90000, 9), want (90000, 7)" in message
    # the ledger: counts per column, then the first rows by number with key and uid
    assert (f"ledger/part-00000.parquet: {len(CHANGED):,} of {ROWS:,} rows differ; rows "
            f"differing per column: status {len(CHANGED):,}, distance "
            f"{len(CHANGED[::2]):,}") in message
    first = next(line for line in lines if line.startswith("  row "))
    assert first.startswith("  row 1,000 (key='000001000', uid='0000000000000000000000000000"
                            "03e8'): 2 columns differ: status: got 'failed', want 'kept'; "
                            "distance: got 1.01")
    assert "  row 1,037 (key='000001037'" in message
    assert "reason" not in message and "row 999" not in message
    # report.json: the differing paths, not the ignored keys
    assert "report.json (less ['command', 'engine', 'parameters', 'timings_s']): JSON " \
           "paths that differ: 2; first:" in message
    assert "$.kept: got 1001, want 1000" in message
    assert "$.stages[1].out: got 1001, want 1000" in message
    assert "timings_s" not in message.split("report.json")[1].split("\n", 1)[1]
    # a multi-MB file: its first differing offset
    assert (f"shards/00000.tar: bytes differ: got {SHARD_BYTES:,} bytes, want "
            f"{SHARD_BYTES:,}; first difference at offset 3,000,000") in message


def test_thousands_of_differing_files_and_huge_values_stay_bounded(tmp_path: Path) -> None:
    long = "x" * 100_000
    for side, value in (("got", long + "y"), ("want", long + "z")):
        folder = tmp_path / side / "shards"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"key": [long] * 300, "uid": [value] * 300,
                                 **{f"c{j}": [value] * 300 for j in range(20)}}),
                       folder / "0-big.parquet")
        for i in range(2000):
            (folder / f"{i:05d}.txt").write_text(f"{side} {i}")
        (folder / f"only-{side}-{long[:100]}").write_text("")
    message = failure(assert_same_files, tmp_path / "got" / "shards",
                      tmp_path / "want" / "shards")
    assert "shards/: names only in got (1): 'only-got-xxx" in message
    assert "shards/: names only in want (1): 'only-want-xxx" in message
    assert "shards/0-big.parquet: 300 of 300 rows differ; rows differing per column: uid " \
           "300, c0 300, c1 300, c2 300, c3 300, c4 300, c5 300, c6 300, and 13 more columns" \
           in message
    assert "  row 0 (key='xxxxxxxx" in message and "): 21 columns differ: uid: got " \
           "…'xxxxxxxxxxxxxxxxxxxxy'…, want …'xxxxxxxxxxxxxxxxxxxxz'… (lengths 100,001 and " \
           "100,001, first differing at 100,000)" in message
    assert "shards/00000.txt: bytes differ: got 5 bytes, want 6; first difference at " \
           "offset 0 (differing bytes in the common 5: 5)\n  got  [0:5] 67 6f 74 20 30  " \
           "b'got 0'" in message
    assert "differing entries in shards/ (2,001): '0-big.parquet', '00000.txt'" in message


def test_ignored_report_keys_and_stats_times_are_left_out(tmp_path: Path) -> None:
    want = write_run(tmp_path / "want")
    got = write_run(tmp_path / "got", engine="ray", timings_s={"read": 9.0})
    assert_same_run(got, want, report_ignore=("engine", "timings_s"))
    message = failure(assert_same_run, got, want, report_ignore=("timings_s",))
    assert "$.engine: got 'ray', want 'local'" in message and "timings" not in \
        message.split("(less")[1].split("\n", 1)[1]
    times = ("start_time", "end_time", "duration")
    for side, start, count in (("got", 1.0, 5), ("want", 2.0, 5), ("other", 3.0, 6)):
        (tmp_path / side / "shards").mkdir(parents=True, exist_ok=True)
        (tmp_path / side / "shards" / "00000_stats.json").write_text(
            json.dumps({"count": count, "start_time": start, "end_time": start + 1}))
    assert_same_files(tmp_path / "got" / "shards", tmp_path / "want" / "shards",
                      json_ignore={"*_stats.json": times})
    assert_same_run(got, want, parts=("shards",), json_ignore={"*_stats.json": times})
    shutil.copy(tmp_path / "other" / "shards" / "00000_stats.json", got / "shards")
    message = failure(assert_same_files, got / "shards", want / "shards", "shards",
                      json_ignore={"*_stats.json": times})
    assert "shards/00000_stats.json: (less ['duration', 'end_time', 'start_time']) JSON " \
           "paths that differ: 1; first:\n  $.count: got 6, want 5" in message
    message = failure(assert_same_files, got / "shards", want / "shards")  # as bytes
    assert "$.start_time: got 3.0, want 2.0" in message


def test_assert_same_bytes_names_offset_lengths_and_bytes_around() -> None:
    assert_same_bytes(b"abc", b"abc", "x")
    message = failure(assert_same_bytes, b"0123456789abcdefXYZ", b"0123456789abcdefxyz", "blob")
    assert message.splitlines() == [
        "blob",
        "bytes differ: got 19 bytes, want 19; first difference at offset 16 (differing "
        "bytes in the common 19: 3)",
        "  got  [8:19] 38 39 61 62 63 64 65 66 58 59 5a  b'89abcdefXYZ'",
        "  want [8:19] 38 39 61 62 63 64 65 66 78 79 7a  b'89abcdefxyz'"]
    message = failure(assert_same_bytes, b"abc", b"abcdef", "short")
    assert "got 3 bytes, want 6; first difference at offset 3 (one is the other's start)" \
        in message
    big = np.random.default_rng(2).integers(0, 256, 8_000_000, np.uint8).tobytes()
    message = failure(assert_same_bytes, big, big[:4_000_000] + bytes(4_000_000), "8 MB")
    assert "got 8,000,000 bytes, want 8,000,000; first difference at offset 4,000,000" \
        in message


def test_a_tar_difference_names_its_member(tmp_path: Path) -> None:
    def tar(text: bytes) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
            for name, data in (("a.txt", b"first member"), ("b.txt", text)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    (tmp_path / "got.tar").write_bytes(tar(b"second member"))
    (tmp_path / "want.tar").write_bytes(tar(b"second MEMBER"))
    message = failure(assert_same_file, tmp_path / "got.tar", tmp_path / "want.tar")
    assert "first difference at offset 1,543 in tar member 'b.txt' (data +7)" in message


def test_assert_same_arrays_names_positions_dtype_and_shape() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert_same_arrays(a, a.copy(), "a")
    b = a.copy()
    b[1, 2] = np.nan
    message = failure(assert_same_arrays, b, a, "grid")
    assert "1 of the 12 common elements differ; first:\n  [1, 2]: got nan, want 6.0" in message
    message = failure(assert_same_arrays, a.astype(np.float64), a, "wide")
    assert "dtype: got float64, want float32" in message and "elements are equal" in message
    message = failure(assert_same_arrays, np.arange(5), np.arange(7), "short")
    assert "shape: got (5,), want (7,)" in message
    assert "the common 5 elements are equal" in message
    message = failure(assert_same_arrays, np.zeros(0, "u8,u8"), np.zeros(1, "u8,u8"), "empty")
    assert "shape: got (0,), want (1,)" in message


def test_a_subset_of_other_length_names_both_lengths(tmp_path: Path) -> None:
    subset = np.zeros(10, dtype="u8,u8")
    np.save(tmp_path / "want.npy", subset)
    subset["f0"][3] = 1
    np.save(tmp_path / "got.npy", subset[:8])
    message = failure(assert_same_file, tmp_path / "got.npy", tmp_path / "want.npy")
    assert "shape: got (8,), want (10,)" in message
    assert "1 of the 8 common elements differ; first:\n  [3]: got (1, 0), want (0, 0)" \
        in message


def test_ledgers_of_other_lengths_or_metadata(tmp_path: Path) -> None:
    pq.write_table(ledger(100), tmp_path / "want.parquet")
    pq.write_table(ledger(90), tmp_path / "got.parquet")
    message = failure(assert_same_file, tmp_path / "got.parquet", tmp_path / "want.parquet")
    assert "rows: got 90, want 100 (compared by row number over the first 90)" in message
    assert "the common 90 rows are equal" in message
    table = ledger(100)
    pq.write_table(table.replace_schema_metadata({"note": "other"}), tmp_path / "got.parquet")
    message = failure(assert_same_file, tmp_path / "got.parquet", tmp_path / "want.parquet")
    assert "the files' bytes differ (metadata or encoding): bytes differ" in message
    pq.write_table(table.drop_columns(["reason"]), tmp_path / "got.parquet")
    message = failure(assert_same_file, tmp_path / "got.parquet", tmp_path / "want.parquet")
    assert "schemas differ: columns only in want ['reason']" in message


def test_rows_json_and_contents() -> None:
    rows = ledger(1000).to_pylist()
    assert_same_rows(rows, [dict(r) for r in rows], "rows")
    other = [dict(r) for r in rows]
    other[700]["reason"] = "dup"
    message = failure(assert_same_rows, other, rows, "ledger rows")
    assert "1 of 1,000 rows differ; rows differing per column: reason 1; first:\n" \
           "  row 700 (key='000000700', uid='000000000000000000000000000002bc'): reason: " \
           "got 'dup', want None" in message
    assert_same_json({"a": 1, "t": 2}, {"a": 1, "t": 3}, "report", ignore=("t",))
    message = failure(assert_same_json, {"a": [1, {"b": 2}], "x y": 1}, {"a": [1, {"b": 3}]},
                      "report")
    assert "JSON paths that differ: 2; first:\n  $.a[1].b: got 2, want 3\n  $['x y']: got 1, " \
           "want (missing)" in message
    assert_same_contents({"a": b"1"}, {"a": b"1"}, "snapshot")
    message = failure(assert_same_contents, {"a": b"1", "b": b"2"}, {"a": b"3"}, "snapshot")
    assert "names only in got (1): 'b'" in message and "a: bytes differ" in message


def test_missing_parts_and_unknown_parts(tmp_path: Path) -> None:
    want = write_run(tmp_path / "want")
    got = write_run(tmp_path / "got")
    shutil.rmtree(got / "shards")
    message = failure(assert_same_run, got, want)
    assert f"shards/: no such folder: {got / 'shards'}" in message
    (got / "subset.npy").unlink()
    message = failure(assert_same_run, got, want, parts=("subset.npy",))
    assert f"subset.npy: no such file: {got / 'subset.npy'}" in message
    with pytest.raises(ValueError, match="unknown parts"):
        assert_same_run(got, want, parts=("ledgers",))
