"""The write step: copying by recorded span gives the same samples as copying by parsing."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from same_bytes import assert_same_file
from tar_helpers import seven_digit_checksums

from pipeline.io.shard_writer import ShardWriter
from pipeline.io.shards import (
    identity_metadata,
    iter_samples,
    span_columns,
    tar_identity,
)
from pipeline.io.tar import iter_members
from pipeline.stages.write_shards import write_kept


def sample_members(i: int, rng: np.random.Generator, key: str | None = None) -> list:
    key = key or f"{i:09d}"
    meta = {"uid": rng.bytes(16).hex(), "url": f"https://x.invalid/{i}", "width": i}
    return [(f"{key}.jpg", rng.bytes(int(rng.integers(200, 5000)))),
            (f"{key}.txt", f"caption {i}".encode()),
            (f"{key}.json", json.dumps(meta).encode())]


def ours(folder: Path, shards: int, per_shard: int, seed: int = 0) -> list[str]:
    """Input shards written by our own writer (its deterministic ustar headers)."""
    rng = np.random.default_rng(seed)
    with ShardWriter(folder, max_count=per_shard) as writer:
        for i in range(shards * per_shard):
            members = sample_members(i, rng)
            writer.write(members, members[0][0].split(".")[0], {})
    return [str(s.path) for s in writer.shards]


def by_tarfile(path: Path, entries: list[tuple[str, bytes | None]], pax: bool = False) -> str:
    """A tar written by ``tarfile`` with headers unlike ours (mtime, owner); an entry with
    None data is a directory."""
    fmt = tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.uname = 1_700_000_000, "someone"
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def embed_like(urls: list[str], folder: Path, keep: float, seed: int = 1
               ) -> tuple[list[Path], list[Path]]:
    """The ledger and metadata parts the pipeline would have, a fraction kept at random."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ledgers, metas = [], []
    for i, url in enumerate(urls):
        samples = list(iter_samples(url))
        status = ["kept" if rng.random() < keep else "removed" for _ in samples]
        ledger, meta = folder / f"ledger-{i}.parquet", folder / f"metadata_{i}.parquet"
        pq.write_table(pa.table({"key": [s.key for s in samples], "status": status}), ledger)

        table = pa.table({
            "key": [s.key for s in samples], "uid": [s.uid for s in samples],
            "caption": [s.caption for s in samples],
            **span_columns([s.span for s in samples], [s.json_span for s in samples])})
        pq.write_table(table.replace_schema_metadata(identity_metadata(tar_identity(url))), meta)
        ledgers.append(ledger)
        metas.append(meta)
    return ledgers, metas


def rewrite_keeping_size_and_mtime(path: Path, raw: bytes) -> None:
    """Change a tar's bytes so that its size and mtime still match what was recorded."""
    st = path.stat()
    assert len(raw) == st.st_size
    path.write_bytes(raw)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def read_back(written: list) -> tuple[list, list]:
    """(samples as (key, members), parquet rows) of the written shards."""
    samples = [(s.key, s.members) for w in written for s in iter_samples(str(w.path))]
    rows = [r for w in written for r in pq.read_table(w.path.with_suffix(".parquet")).to_pylist()]
    return samples, rows


def test_spans_cover_exactly_the_samples_members(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    long_key = "k" * 120  # a GNU long-name header precedes each of its members
    entries = sample_members(0, rng) + sample_members(1, rng, long_key) + sample_members(2, rng)
    url = by_tarfile(tmp_path / "a.tar", entries)
    raw = Path(url).read_bytes()
    samples = list(iter_samples(url))
    assert [s.key for s in samples] == ["000000000", long_key, "000000002"]
    for sample in samples:
        start, end = sample.span
        assert list(iter_members(io.BytesIO(raw[start:end] + bytes(1024)))) == sample.members
        js, je = sample.json_span
        assert raw[js:je] == dict(sample.members)[f"{sample.key}.json"]
    assert samples[0].span[1] == samples[1].span[0]  # back to back


def test_a_member_of_no_sample_between_members_leaves_no_span(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = sample_members(0, rng), sample_members(1, rng)
    entries = [a[0], ("somedir", None), *a[1:], ("README", b"no dot, no sample"), *b]
    samples = list(iter_samples(by_tarfile(tmp_path / "gap.tar", entries)))
    assert samples[0].span is None and samples[0].json_span is None
    assert samples[1].span is not None  # the stray member lay before it, not inside


@pytest.mark.parametrize("keep", [0.0, 0.3, 1.0])
def test_span_copy_is_byte_identical_on_our_own_shards(tmp_path: Path, keep: float) -> None:
    urls = ours(tmp_path / "in", shards=3, per_shard=40)
    ledgers, metas = embed_like(urls, tmp_path / "work", keep)
    fast, fast_n = write_kept(urls, ledgers, tmp_path / "fast", 25, 1 << 30,
                              metadata_parts=metas)
    slow, slow_n = write_kept(urls, ledgers, tmp_path / "slow", 25, 1 << 30)
    assert fast_n.by_parsing == 0 and slow_n.by_span == 0
    assert fast_n.by_span == slow_n.by_parsing == sum(w.count for w in slow)
    assert [(w.name, w.count, w.bytes) for w in fast] == [(w.name, w.count, w.bytes) for w in slow]
    for f, s in zip(fast, slow, strict=True):
        # same headers (ours, copied as they are), same members, same sidecar rows
        assert_same_file(f.path, s.path)
        assert pq.read_table(f.path.with_suffix(".parquet")).equals(
            pq.read_table(s.path.with_suffix(".parquet")))


def test_span_copy_rolls_by_bytes_like_the_writer(tmp_path: Path) -> None:
    urls = ours(tmp_path / "in", shards=2, per_shard=30)
    ledgers, metas = embed_like(urls, tmp_path / "work", 0.7)
    fast, _ = write_kept(urls, ledgers, tmp_path / "fast", 1000, 40_000,
                         metadata_parts=metas)
    slow, _ = write_kept(urls, ledgers, tmp_path / "slow", 1000, 40_000)
    assert len(fast) > 3
    assert [(w.count, w.bytes) for w in fast] == [(w.count, w.bytes) for w in slow]
    assert all(w.bytes <= 40_000 for w in fast)
    assert all(w.path.stat().st_size == w.bytes for w in fast)


def test_foreign_headers_are_copied_as_they_are(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    entries = [m for i in range(12) for m in sample_members(i, rng, f"s{i:03d}")]
    entries += sample_members(12, rng, "p" * 130)  # pax long names
    urls = [by_tarfile(tmp_path / "00000.tar", entries, pax=True)]
    ledgers, metas = embed_like(urls, tmp_path / "work", 0.6)
    fast, counts = write_kept(urls, ledgers, tmp_path / "fast", 100, 1 << 30,
                              metadata_parts=metas)
    slow, _ = write_kept(urls, ledgers, tmp_path / "slow", 100, 1 << 30)
    assert counts.by_span == sum(w.count for w in fast) > 0
    assert read_back(fast) == read_back(slow)
    with tarfile.open(fast[0].path) as tar:  # a valid tar, the input's own headers
        assert {m.mtime for m in tar.getmembers()} == {1_700_000_000}
    with tarfile.open(slow[0].path) as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_a_shard_with_gaps_is_copied_by_parsing(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    a, b = sample_members(0, rng), sample_members(1, rng)
    urls = [by_tarfile(tmp_path / "00000.tar", [a[0], ("junk", b"x"), *a[1:], *b])]
    ledgers, metas = embed_like(urls, tmp_path / "work", 1.0)
    fast, counts = write_kept(urls, ledgers, tmp_path / "fast", 100, 1 << 30,
                              metadata_parts=metas)
    assert (counts.by_span, counts.by_parsing) == (0, 2)
    assert [k for k, _ in read_back(fast)[0]] == ["000000000", "000000001"]


def test_a_shard_changed_since_embedding_is_read_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    urls = ours(tmp_path / "in", shards=2, per_shard=20)
    ledgers, metas = embed_like(urls, tmp_path / "work", 0.5)
    ours(tmp_path / "in", shards=2, per_shard=20, seed=9)  # rewritten: other bytes, sizes
    with caplog.at_level(logging.WARNING):
        fast, counts = write_kept(urls, ledgers, tmp_path / "fast", 100, 1 << 30,
                                  metadata_parts=metas)
    slow, _ = write_kept(urls, ledgers, tmp_path / "slow", 100, 1 << 30)
    assert counts.by_span == 0 and counts.by_parsing == sum(w.count for w in slow)
    assert "changed since" in caplog.text and urls[0] in caplog.text
    assert read_back(fast) == read_back(slow)


def test_headers_are_checked_even_when_size_and_mtime_match(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    urls = ours(tmp_path / "in", shards=1, per_shard=20)
    ledgers, metas = embed_like(urls, tmp_path / "work", 1.0)
    last = next(s for s in iter_samples(urls[0]) if s.key == "000000019")
    raw = bytearray(Path(urls[0]).read_bytes())
    raw[last.span[0] + 10] ^= 0xFF  # a name byte: the header's checksum no longer holds
    rewrite_keeping_size_and_mtime(Path(urls[0]), bytes(raw))
    with caplog.at_level(logging.WARNING):
        _, counts = write_kept(urls, ledgers, tmp_path / "fast", 100, 1 << 30,
                               metadata_parts=metas)
    # read again: the tar is damaged from that header on, so what follows is not copied
    assert counts.by_span == 0 and 0 < counts.by_parsing < 19
    assert counts.by_parsing + counts.not_copied == 20  # none lost unaccounted
    assert "changed since" in caplog.text


def test_headers_in_another_checksum_form_still_copy_by_span(tmp_path: Path) -> None:
    urls = ours(tmp_path / "in", shards=1, per_shard=15)
    path = Path(urls[0])
    path.write_bytes(seven_digit_checksums(path.read_bytes()))
    ledgers, metas = embed_like(urls, tmp_path / "work", 1.0)
    fast, counts = write_kept(urls, ledgers, tmp_path / "fast", 100, 1 << 30,
                              metadata_parts=metas)
    slow, _ = write_kept(urls, ledgers, tmp_path / "slow", 100, 1 << 30)
    assert counts.by_span == 15
    assert read_back(fast) == read_back(slow)


def test_a_json_member_that_no_longer_holds_an_object_is_read_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    urls = ours(tmp_path / "in", shards=1, per_shard=10)
    ledgers, metas = embed_like(urls, tmp_path / "work", 1.0)
    js, je = next(iter_samples(urls[0])).json_span
    raw = bytearray(Path(urls[0]).read_bytes())
    raw[js:je] = b"[" + b" " * (je - js - 2) + b"]"  # same size, headers untouched
    rewrite_keeping_size_and_mtime(Path(urls[0]), bytes(raw))
    with caplog.at_level(logging.WARNING):
        _, counts = write_kept(urls, ledgers, tmp_path / "out", 100, 1 << 30,
                               metadata_parts=metas)
    # read again; the sample whose json broke is no longer as embedded: counted, not copied
    assert (counts.by_span, counts.by_parsing, counts.not_copied) == (0, 9, 1)
    assert "changed since" in caplog.text


def test_samples_without_json_or_with_utf16_json_copy_by_span(tmp_path: Path) -> None:
    """The sidecar rows of the span copy equal the parsing copy's for a sample with no json
    member and for a json member in UTF-16 (which the one parse of all members cannot take)."""
    rng = np.random.default_rng(3)
    entries: list[tuple[str, bytes | None]] = []
    for i in range(6):
        for name, data in sample_members(i, rng):
            if name.endswith(".json") and i == 2:
                continue  # no json at all
            if name.endswith(".json") and i == 4:
                data = '{"uid": "%s", "caption_fr": "été"}' % ("ab" * 16)
                data = data.encode("utf-16")
            entries.append((name, data))
    urls = [by_tarfile(tmp_path / "00000.tar", entries)]
    ledgers, metas = embed_like(urls, tmp_path / "work", 1.0)
    fast, counts = write_kept(urls, ledgers, tmp_path / "fast", 100, 1 << 30,
                              metadata_parts=metas)
    slow, _ = write_kept(urls, ledgers, tmp_path / "slow", 100, 1 << 30)
    assert (counts.by_span, counts.by_parsing) == (6, 0)
    fast_samples, fast_rows = read_back(fast)
    slow_samples, slow_rows = read_back(slow)
    assert fast_samples == slow_samples
    assert fast_rows == slow_rows
    assert fast_rows[4]["caption_fr"] == "été"
    assert "url" not in fast_rows[2] or fast_rows[2]["url"] is None


def test_a_sample_read_again_is_chosen_by_position_not_by_key(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Keys may repeat in a shard: the kept one is copied, never a removed one of that key."""
    rng = np.random.default_rng(4)
    entries = [m for i, key in enumerate(["a", "b", "a", "c"])
               for m in sample_members(i, rng, key=key)]
    url = by_tarfile(tmp_path / "00000.tar", entries)  # read again: no recorded spans
    led = tmp_path / "ledger.parquet"
    pq.write_table(pa.table({"key": ["a", "b", "a", "c"],
                             "status": ["removed", "kept", "kept", "kept"]}), led)
    written, counts = write_kept([url], [led], tmp_path / "out", 100, 1 << 30)
    got, _ = read_back(written)
    samples = list(iter_samples(url))
    assert got == [(s.key, s.members) for s in samples[1:]]  # the second "a", not the first
    # a kept position the shard no longer holds as embedded is counted, not copied
    pq.write_table(pa.table({"key": ["a", "x", "a", "c", "d"],
                             "status": ["kept", "kept", "removed", "kept", "kept"]}), led)
    with caplog.at_level(logging.WARNING):
        written, counts = write_kept([url], [led], tmp_path / "out2", 100, 1 << 30)
    assert [k for k, _ in read_back(written)[0]] == ["a", "c"]
    assert counts.by_parsing == 2 and counts.not_copied == 2
    assert "no longer holds 2 kept samples" in caplog.text
