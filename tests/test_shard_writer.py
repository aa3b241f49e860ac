"""The shard writer: byte-for-byte members, rolling, sidecars, determinism."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from same_bytes import assert_same_file

from pipeline.io.shard_writer import ShardWriter, records_table
from pipeline.io.shards import iter_samples
from pipeline.io.tar import header_block, iter_members, member_bytes


def make_samples(n: int, seed: int = 0, size: int = 3000) -> list[tuple[str, list, dict]]:
    """(key, members, record) of n samples with random image bytes of about ``size``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        key = f"{i:09d}"
        meta = {"uid": rng.bytes(16).hex(), "url": f"https://x.invalid/{i}", "width": i}
        members = [(f"{key}.jpg", rng.bytes(int(rng.integers(size // 2, size * 3 // 2)))),
                   (f"{key}.txt", f"caption {i}".encode()),
                   (f"{key}.json", json.dumps(meta).encode())]
        out.append((key, members, {**meta, "caption": f"caption {i}"}))
    return out


def write_all(out: Path, samples: list, **kw: int) -> ShardWriter:
    with ShardWriter(out, **kw) as writer:
        for key, members, record in samples:
            writer.write(members, key, record)
    return writer


def test_webdataset_reads_back_byte_equal_members(tmp_path: Path) -> None:
    samples = make_samples(30)
    writer = write_all(tmp_path / "out", samples, max_count=12)
    urls = [str(s.path) for s in writer.shards]
    got = list(wds.WebDataset(urls, shardshuffle=False))
    assert [g["__key__"] for g in got] == [k for k, _, _ in samples]
    for g, (_, members, _) in zip(got, samples, strict=True):
        for name, data in members:
            assert g[name.split(".", 1)[1]] == data
    # and our reader agrees, members in the same order
    ours = [s for u in urls for s in iter_samples(u)]
    assert [s.members for s in ours] == [m for _, m, _ in samples]


def test_roll_by_count_and_start_index(tmp_path: Path) -> None:
    writer = write_all(tmp_path, make_samples(25), max_count=10, start_index=7)
    assert [(s.name, s.count) for s in writer.shards] == [
        ("00007", 10), ("00008", 10), ("00009", 5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{i:05d}{ext}" for i in (7, 8, 9) for ext in (".tar", ".parquet", "_stats.json"))
    for shard in writer.shards:
        assert shard.bytes == shard.path.stat().st_size


def test_roll_by_bytes(tmp_path: Path) -> None:
    samples = make_samples(20, size=2000)
    sizes = [member_bytes(m) for _, m, _ in samples]
    limit = sum(sizes[:3]) + 1024 + 100  # the first three samples and the end marker fit
    writer = write_all(tmp_path, samples, max_bytes=limit)
    assert writer.shards[0].count == 3
    assert sum(s.count for s in writer.shards) == 20
    for shard in writer.shards:
        assert shard.path.stat().st_size <= limit
    # a sample larger than the limit gets a shard of its own
    big = make_samples(3, size=20000)
    writer = write_all(tmp_path / "big", big, max_bytes=5000)
    assert [s.count for s in writer.shards] == [1, 1, 1]


def test_sidecars_beside_each_tar(tmp_path: Path) -> None:
    samples = make_samples(15)
    writer = write_all(tmp_path, samples, max_count=10)
    start = 0
    for shard in writer.shards:
        table = pq.read_table(shard.path.with_suffix(".parquet"))
        assert table.column_names[:3] == ["key", "uid", "caption"]
        assert {"url", "width"} <= set(table.column_names)
        part = samples[start : start + shard.count]
        assert table.column("key").to_pylist() == [k for k, _, _ in part]
        assert table.column("uid").to_pylist() == [r["uid"] for _, _, r in part]
        assert table.column("width").to_pylist() == [r["width"] for _, _, r in part]
        stats = json.loads((tmp_path / f"{shard.name}_stats.json").read_text())
        assert stats["count"] == stats["successes"] == shard.count
        assert stats["failed_to_download"] == stats["failed_to_resize"] == 0
        assert stats["duration"] >= 0 and stats["status_dict"] == {"success": shard.count}
        start += shard.count


def test_deterministic_headers_and_bytes(tmp_path: Path) -> None:
    samples = make_samples(12)
    a = write_all(tmp_path / "a", samples, max_count=5)
    b = write_all(tmp_path / "b", samples, max_count=5)
    for x, y in zip(a.shards, b.shards, strict=True):
        assert_same_file(x.path, y.path)
    with tarfile.open(a.shards[0].path) as tar:
        for m in tar:
            assert (m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) == (0, 0, 0, 0o644, "", "")
            assert m.isfile()


def test_header_matches_tarfile() -> None:
    for name, size in [("a.jpg", 0), ("dir/000000001.jpg", 123456), ("x" * 100, 5)]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o644, "", ""
        assert header_block(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8",
                                                   "surrogateescape")


def test_long_and_unicode_names_round_trip(tmp_path: Path) -> None:
    key = "d" * 80 + "/" + "k" * 40
    members = [(f"{key}.jpg", b"img"), (f"{key}.txt", b"cap"), ("ünï.jpg", b"i2"),
               ("ünï.txt", b"c2")]
    with ShardWriter(tmp_path) as writer:
        writer.write(members[:2], key, {})
        writer.write(members[2:], "ünï", {})
    path = writer.shards[0].path
    with tarfile.open(path) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == members
    with open(path, "rb") as f:
        assert list(iter_members(f)) == members


def test_copy_of_read_samples(tmp_path: Path) -> None:
    src = write_all(tmp_path / "src", make_samples(8))
    samples = list(iter_samples(str(src.shards[0].path)))
    with ShardWriter(tmp_path / "dst") as writer:
        for sample in samples:
            writer.write_sample(sample)
    assert_same_file(writer.shards[0].path, src.shards[0].path)
    table = pq.read_table(tmp_path / "dst" / "00000.parquet")
    assert table.column("uid").to_pylist() == [s.uid for s in samples]
    assert table.column("caption").to_pylist() == [s.caption for s in samples]


def test_exception_drops_the_unfinished_shard(tmp_path: Path) -> None:
    samples = make_samples(7)
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_count=5) as writer:
        for key, members, record in samples:
            writer.write(members, key, record)
        raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["00000.parquet", "00000.tar", "00000_stats.json"]
    assert [s.count for s in writer.shards] == [5]


def test_nothing_written_makes_no_files(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "o") as writer:
        pass
    assert writer.shards == [] and not (tmp_path / "o").exists()
    with pytest.raises(ValueError):
        ShardWriter(tmp_path, max_count=0)


def test_many_members_in_one_sample(tmp_path: Path) -> None:
    members = [("k.jpg", b"x"), ("k.txt", b"t")] + [(f"k.extra{i}", bytes([i % 256]) * i)
                                                    for i in range(700)]
    with ShardWriter(tmp_path) as writer:
        writer.write(members, "k", {})
    (sample,) = iter_samples(str(writer.shards[0].path))
    assert sample.members == members


def test_records_table_mixed_types() -> None:
    table = records_table(["a", "b", "c"], [
        {"uid": "u1", "caption": "x", "w": 1, "exif": {"a": 1}},
        {"uid": "u2", "caption": None, "w": "wide", "extra": True},
        {"uid": "u3", "caption": "z", "exif": [1, 2]},
    ])
    assert table.column_names == ["key", "uid", "caption", "w", "exif", "extra"]
    assert table.column("w").to_pylist() == ["1", '"wide"', None]  # mixed: json text
    assert table.column("extra").to_pylist() == [None, True, None]
    buf = io.BytesIO()
    pq.write_table(table, buf)


_KEYS = st.from_regex(r"[a-z0-9_é]{1,40}(/[a-z0-9_-]{1,40}){0,3}", fullmatch=True)
_SAMPLES = st.lists(
    st.tuples(_KEYS, st.lists(st.tuples(st.sampled_from(["jpg", "png", "txt", "json", "cls"]),
                                        st.binary(max_size=1100)),
                              min_size=1, max_size=4, unique_by=lambda m: m[0])),
    min_size=1, max_size=6, unique_by=lambda s: s[0])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=_SAMPLES)
def test_property_round_trip(tmp_path: Path, samples: list) -> None:
    out = tmp_path / "prop"
    with ShardWriter(out, max_count=3) as writer:
        for key, members in samples:
            writer.write([(f"{key}.{ext}", data) for ext, data in members], key, {})
    got = [s for shard in writer.shards for s in iter_samples(str(shard.path))]
    assert [s.key for s in got] == [k for k, _ in samples]
    assert [s.members for s in got] == [[(f"{k}.{e}", d) for e, d in m] for k, m in samples]
    for shard in writer.shards:
        with tarfile.open(shard.path) as tar:
            assert all(tar.extractfile(m).read() is not None for m in tar)
        shard.path.unlink()


def test_failed_write_leaves_no_partial_tar(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int, parts: list) -> int:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"), ShardWriter(tmp_path) as writer:
        for key, members, record in make_samples(3):
            writer.write(members, key, record)
        monkeypatch.setattr(os, "writev", full_disk)
    assert os.listdir(tmp_path) == [] and writer.shards == []
    with pytest.raises(ValueError, match="no members"):
        ShardWriter(tmp_path).write([], "k", {})


def test_a_failed_write_mid_run_keeps_finished_shards_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from pipeline.io import shard_writer

    real = shard_writer._write_all
    calls = {"n": 0}

    def disk_full_on_third(fd: int, pending: list) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, pending)

    monkeypatch.setattr(shard_writer, "_write_all", disk_full_on_third)
    monkeypatch.setattr(shard_writer, "_FLUSH_BYTES", 50_000)  # a flush every few samples
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space"), ShardWriter(out, max_count=10) as writer:
        for key, members, record in make_samples(60, size=20_000):
            writer.write(members, key, record)
    assert calls["n"] >= 3
    assert not list(out.glob(".*tmp*"))  # the shard being written is removed
    for tar in out.glob("*.tar"):  # what is left is whole: tar, parquet and stats
        assert tar.with_suffix(".parquet").exists()
        assert len(list(iter_samples(str(tar)))) == 10


def _keys_per_shard(writer: ShardWriter) -> list[list[str]]:
    return [[s.key for s in iter_samples(str(shard.path))] for shard in writer.shards]


def test_a_shard_never_holds_a_key_twice(tmp_path: Path) -> None:
    """Input shards whose keys restart: the writer starts a new shard at a repeated key,
    sample by sample and when copying spans, and drops nothing."""
    samples = make_samples(4)
    again = [(key, members, record) for key, members, record in samples[:2]]  # keys 0 and 1
    writer = write_all(tmp_path / "w", samples + again + samples[2:3], max_count=100)
    assert _keys_per_shard(writer) == [[f"{i:09d}" for i in range(4)],
                                       [f"{i:09d}" for i in (0, 1, 2)]]
    # spans: one source tar holding keys 0 1 2 3 0 1 2, copied in one call
    src = write_all(tmp_path / "src", samples + again + samples[2:3], max_count=100)
    raw = b"".join(s.path.read_bytes()[:-1024] for s in src.shards)  # both, end markers off
    offsets = []
    with tarfile.open(fileobj=io.BytesIO(raw + bytes(1024))) as tar:
        members = tar.getmembers()
    for m in members[::3]:
        offsets.append(m.offset)
    ends = [*offsets[1:], members[-1].offset_data + -(-members[-1].size // 512) * 512]
    keys = [m.name.split(".")[0] for m in members[::3]]
    with ShardWriter(tmp_path / "spans", max_count=100) as copier:
        copier.copy_spans(memoryview(raw), np.array(offsets), np.array(ends), keys,
                          [{} for _ in keys])
    assert _keys_per_shard(copier) == [[f"{i:09d}" for i in range(4)],
                                       [f"{i:09d}" for i in (0, 1, 2)]]
