"""The shard reader: spec expansion, sample grouping, failures, damaged tars, sidecars."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import tarfile
import zlib
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tar_helpers import seven_digit_checksums

from pipeline.config import EmbedConfig
from pipeline.ids import derive_uid
from pipeline.io.decode import DEFAULT_MAX_PIXELS, DecodeRules
from pipeline.io.shards import (
    CorruptShardError,
    ImageDecodeError,
    ShardError,
    ShardStream,
    decode_image,
    download_failures,
    expand_shards,
    iter_samples,
    read_sidecar_parquet,
    read_stats,
    shard_name,
    shard_names,
    split_member_name,
)
from pipeline.io.tar import iter_members

UID = "0123456789abcdef0123456789ABCDEF"


def png_bytes(colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


def tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar made by tarfile (not by our writer), with arbitrary header fields."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uname = len(data), 1_700_000_000, "someone"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sample_members(key: str, caption: str = "a cat", meta: dict | None = None,
                   image: bytes | None = None) -> list[tuple[str, bytes]]:
    members = [(f"{key}.jpg", image if image is not None else png_bytes())]
    members.append((f"{key}.txt", caption.encode()))
    members.append((f"{key}.json", json.dumps(meta if meta is not None else {}).encode()))
    return members


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(members, fmt))
    return str(path)


def good_shard(path: Path, n: int = 5) -> str:
    members = [m for i in range(n) for m in sample_members(f"{i:04d}", f"caption {i}",
                                                           {"uid": f"{i:032x}", "w": i})]
    return write_tar(path, members)


# --- expand_shards / shard_name -----------------------------------------------------------


def test_expand_directory_brace_glob_and_list(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    for i in (2, 0, 1):
        good_shard(tmp_path / "d" / f"{i:05d}.tar", 1)
    (tmp_path / "d" / "00000.parquet").write_bytes(b"")
    names = [str(tmp_path / "d" / f"{i:05d}.tar") for i in range(3)]
    assert expand_shards(str(tmp_path / "d")) == names
    assert expand_shards(str(tmp_path / "d" / "{00000..00002}.tar")) == names
    assert expand_shards(str(tmp_path / "d" / "*.tar")) == names
    assert expand_shards([names[2], names[0]]) == [names[2], names[0]]
    assert not caplog.records
    # gaps in a brace range (img2dataset leaves them) are skipped, and said
    assert expand_shards(str(tmp_path / "d" / "{00001..00005}.tar")) == names[1:]
    assert "3 of the 5 shards" in caplog.text and "00003.tar" in caplog.text


def test_expand_nothing_matches_names_the_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "{00000..00003}.tar")
    with pytest.raises(ShardError, match=r"00000\.\.00003"):
        expand_shards(pattern)
    with pytest.raises(ShardError, match="nope"):
        expand_shards(str(tmp_path / "nope.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="empty"):
        expand_shards(str(tmp_path / "empty"))
    with pytest.raises(ShardError):
        expand_shards([])
    assert issubclass(ShardError, ValueError)


def test_expand_urls_stay_urls(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    for i in range(3):
        fs.pipe(f"/exp/{i:05d}.tar", tar_bytes(sample_members("k")))
    listed = expand_shards("memory://exp")
    assert [u.split("://")[0] for u in listed] == ["memory"] * 3
    assert shard_names(listed) == ["00000.tar", "00001.tar", "00002.tar"]
    assert [s.key for u in listed for s in iter_samples(u)] == ["k"] * 3
    assert expand_shards("memory://exp/*.tar") == listed
    # explicit shard URLs are not listed one by one: kept as given
    assert expand_shards("s3://bucket/x/{00000..00002}.tar") == [
        f"s3://bucket/x/{i:05d}.tar" for i in range(3)]
    good_shard(tmp_path / "00000.tar", 1)
    url = f"file://{tmp_path}/00000.tar"
    assert expand_shards(url) == [url]
    with pytest.raises(ShardError, match="memory://nothing"):
        expand_shards("memory://nothing")


def test_shard_name() -> None:
    assert shard_name("/data/00042.tar") == "00042.tar"
    assert shard_name("s3://bucket/laion/00007.tar") == "00007.tar"
    assert shard_name("00001.tar.gz") == "00001.tar.gz"
    assert shard_name("memory://a/b/shard-3.tar") == "shard-3.tar"


def test_shard_names_are_relative_to_the_deepest_common_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEC §5: one folder gives file names; two folders keep what tells them apart;
    moving the whole dataset keeps every name."""
    assert shard_names(["/d/x/00042.tar", "/d/x/00043.tar"]) == ["00042.tar", "00043.tar"]
    assert shard_names(["/d/a/00042.tar", "/d/b/00042.tar"]) == ["a/00042.tar", "b/00042.tar"]
    assert shard_names(["/moved/here/a/00042.tar", "/moved/here/b/00042.tar"]) == [
        "a/00042.tar", "b/00042.tar"]
    assert shard_names(["/d/a/1.tar", "/d/a/deep/2.tar"]) == ["1.tar", "deep/2.tar"]
    assert shard_names(["/d/only.tar"]) == ["only.tar"]
    assert shard_names(["s3://b/x/0.tar", "s3://b/y/0.tar"]) == ["x/0.tar", "y/0.tar"]
    assert shard_names(["s3://b1/0.tar", "s3://b2/0.tar"]) == ["b1/0.tar", "b2/0.tar"]
    assert shard_names(["s3://b/0.tar", "gs://b/0.tar"]) == ["s3://b/0.tar", "gs://b/0.tar"]
    monkeypatch.chdir(tmp_path)  # relative paths are made absolute first
    assert shard_names(["a/0.tar", f"{tmp_path}/b/0.tar"]) == ["a/0.tar", "b/0.tar"]


def test_split_member_name_follows_webdataset() -> None:
    assert split_member_name("00001.jpg") == ("00001", "jpg")
    assert split_member_name("dir/00001.seg.png") == ("dir/00001", "seg.png")
    assert split_member_name("a.b/c.txt") == ("a.b/c", "txt")
    assert split_member_name("noext") is None
    assert split_member_name("dir/.hidden") is None
    assert split_member_name("__index__") is None
    assert split_member_name("__meta__/x.json") is None


# --- reading -------------------------------------------------------------------------------


def test_samples_members_and_identity(tmp_path: Path) -> None:
    url = good_shard(tmp_path / "00003.tar", 4)
    samples = list(iter_samples(url))
    assert [s.key for s in samples] == ["0000", "0001", "0002", "0003"]
    for i, s in enumerate(samples):
        assert s.failed_reason is None and not s.failed
        assert s.shard == "00003.tar"
        assert s.uid == f"{i:032x}"
        assert s.caption == f"caption {i}"
        assert s.meta == {"uid": f"{i:032x}", "w": i}
        assert s.image_ext == "jpg" and s.image_bytes == png_bytes()
        assert [n for n, _ in s.members] == [f"{i:04d}.jpg", f"{i:04d}.txt", f"{i:04d}.json"]
        assert decode_image(s).size == (8, 6)


def test_uid_derived_without_json_uid(tmp_path: Path) -> None:
    url = write_tar(tmp_path / "00009.tar", sample_members("k1", meta={"url": "x"})
                    + [("k2.png", png_bytes()), ("k2.txt", b"no json at all")])
    a, b = iter_samples(url)
    assert a.uid == derive_uid("00009.tar", "k1") and a.failed_reason is None
    assert b.uid == derive_uid("00009.tar", "k2") and b.meta == {} and b.image_ext == "png"
    assert b.failed_reason is None



def test_urls_img2dataset_could_not_get_have_uids_of_shard_name_then_key(
        tmp_path: Path) -> None:
    """SPEC §5 for the download failures of an img2dataset sidecar: no valid uid in its row,
    so the uid is the first 32 hex digits of sha256(shard name + key); a valid one is kept."""
    url = write_tar(tmp_path / "a" / "00042.tar", sample_members("000420000"))
    pq.write_table(pa.table({
        "key": ["000420000", "000420001", "000420002", "000420003"],
        "status": ["success", "failed_to_download", "failed_to_resize", "failed_to_download"],
        "url": ["http://x/0", "http://x/1", "http://x/2", "http://x/3"],
        "uid": [None, None, "not a uid", UID],
        "error_message": [None, "HTTP 404", "cannot resize", "timeout"],
    }), tmp_path / "a" / "00042.parquet")
    got = download_failures(url, "a/00042.tar", {"000420000"})
    want = [hashlib.sha256(f"a/00042.tar{k}".encode()).hexdigest()[:32]
            for k in ("000420001", "000420002")] + [UID]
    assert [(r["key"], r["uid"], r["shard"], r["uid_derived"]) for r in got] == [
        ("000420001", want[0], "a/00042.tar", True), ("000420002", want[1], "a/00042.tar", True),
        ("000420003", UID, "a/00042.tar", False)]
    assert got[0]["failed_stage"] == "download" and "HTTP 404" in got[0]["failed_reason"]

def test_uppercase_hex_uid_is_kept_untouched(tmp_path: Path) -> None:
    url = write_tar(tmp_path / "0.tar", sample_members("k", meta={"uid": UID}))
    assert next(iter_samples(url)).uid == UID


@pytest.mark.parametrize(("members", "reason"), [
    ([("k.txt", b"cap"), ("k.json", b"{}")], "missing image"),
    ([("k.jpg", b"x"), ("k.json", b"{}")], "missing caption"),
    ([("k.jpg", b"x"), ("k.txt", b"c"), ("k.json", b"{not json")], "undecodable json k.json"),
    ([("k.jpg", b"x"), ("k.txt", b"c"), ("k.json", b"[1, 2]")], "json k.json is not an object"),
    ([("k.jpg", b"x"), ("k.txt", b"c"), ("k.json", b'{"uid": "abc"}')], "invalid uid 'abc'"),
    ([("k.jpg", b"x"), ("k.txt", b"c"), ("k.json", b'{"uid": 7}')], "invalid uid 7"),
    ([("k.jpg", b"x"), ("k.txt", b"\xff\xfe"), ("k.json", b"{}")], "undecodable caption"),
    ([("k.jpg", b"x"), ("k.jpg", b"y"), ("k.txt", b"c")], "duplicate member k.jpg"),
])
def test_failed_reasons(tmp_path: Path, members: list[tuple[str, bytes]], reason: str) -> None:
    url = write_tar(tmp_path / "00001.tar", members + sample_members("next"))
    bad, good = iter_samples(url)
    assert bad.key == "k" and bad.failed and reason in bad.failed_reason
    assert bad.uid == derive_uid("00001.tar", "k")  # every sample gets a uid for the ledger
    assert bad.members == members
    assert good.key == "next" and good.failed_reason is None


def test_undecodable_image_error_names_key_and_shard(tmp_path: Path) -> None:
    url = write_tar(tmp_path / "00012.tar", sample_members("k7", image=b"not an image"))
    sample = next(iter_samples(url))
    assert sample.failed_reason is None  # images are decoded in the embed stage, not here
    with pytest.raises(ImageDecodeError, match=r"k7\.jpg in shard 00012"):
        decode_image(sample)
    sample.image_bytes, sample.image_ext = None, None
    with pytest.raises(ImageDecodeError, match="no image for k7 in shard 00012"):
        decode_image(sample)


def test_undecodable_image_reasons_are_the_same_on_every_run(tmp_path: Path) -> None:
    url = write_tar(tmp_path / "00012.tar", sample_members("k7", image=b"not an image"))
    reasons = []
    for _ in range(2):
        with pytest.raises(ImageDecodeError) as err:
            decode_image(next(iter_samples(url)))
        reasons.append(str(err.value))
    assert reasons[0] == reasons[1] and " at 0x" not in reasons[0]
    assert "BytesIO" not in reasons[0]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that says it is width x height (its pixels absent): only a header is read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_images_over_the_pixel_limit_are_refused_from_their_header(tmp_path: Path) -> None:
    huge = write_tar(tmp_path / "00003.tar",
                     sample_members("big", image=png_header_only(12000, 12000)))
    with pytest.raises(ImageDecodeError, match=r"big\.jpg in shard 00003\.tar has 12000 x 12000 = "
                       r"144000000 pixels, more than embed\.max_pixels=40000000"):
        decode_image(next(iter_samples(huge)))
    assert EmbedConfig().max_pixels == DEFAULT_MAX_PIXELS
    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, format="PNG")
    small = next(iter_samples(write_tar(tmp_path / "1.tar",
                                        sample_members("s", image=buf.getvalue()))))
    assert decode_image(small, DecodeRules(max_pixels=1200)).size == (40, 30)
    with pytest.raises(ImageDecodeError, match="1200 pixels, more than embed.max_pixels=1199"):
        decode_image(small, DecodeRules(max_pixels=1199))


def test_decode_image_gives_rgb(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("L", (5, 4), 128).save(buf, format="PNG")
    url = write_tar(tmp_path / "0.tar", sample_members("g", image=buf.getvalue()))
    img = decode_image(next(iter_samples(url)))
    assert img.mode == "RGB" and img.size == (5, 4)


def test_memory_url(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/mem/00004.tar", Path(good_shard(tmp_path / "00004.tar", 3)).read_bytes())
    samples = list(iter_samples("memory://mem/00004.tar"))
    assert [s.uid for s in samples] == [f"{i:032x}" for i in range(3)]
    assert samples[0].shard == "00004.tar"
    assert [s.key for s in iter_samples(f"file://{tmp_path}/00004.tar")] == [
        s.key for s in samples]


def test_gzip_tar(tmp_path: Path) -> None:
    raw = Path(good_shard(tmp_path / "00000.tar", 3)).read_bytes()
    (tmp_path / "00005.tar.gz").write_bytes(gzip.compress(raw, mtime=0))
    samples = list(iter_samples(str(tmp_path / "00005.tar.gz")))
    assert len(samples) == 3 and samples[0].shard == "00005.tar.gz"


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_and_dirs_match_tarfile(tmp_path: Path, fmt: int) -> None:
    long_dir = "d" * 60 + "/" + "e" * 60  # over 100 bytes: ustar prefix, pax or GNU long name
    members = sample_members(f"{long_dir}/k1") + sample_members("plain/k2")
    if fmt != tarfile.USTAR_FORMAT:
        members += sample_members("f" * 150) + sample_members("é-ünï")
    url = write_tar(tmp_path / "00000.tar", members, fmt)
    with open(url, "rb") as f:
        ours = list(iter_members(f))
    with tarfile.open(url) as tar:
        theirs = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    assert ours == theirs == members
    keys = [s.key for s in iter_samples(url)]
    assert keys[:2] == [f"{long_dir}/k1", "plain/k2"]


def test_non_sample_members_are_skipped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("somedir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in [("__index__", b"x"), ("README", b"y")] + sample_members("k"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "0.tar").write_bytes(buf.getvalue())
    (sample,) = iter_samples(str(tmp_path / "0.tar"))
    assert sample.key == "k" and sample.failed_reason is None


# --- damaged tars --------------------------------------------------------------------------


def test_a_cut_gzip_shard_gives_every_sample_before_the_damage(tmp_path: Path) -> None:
    raw = Path(good_shard(tmp_path / "full.tar", 40)).read_bytes()
    packed = gzip.compress(raw)
    cut = packed[: len(packed) * 3 // 4]
    (tmp_path / "00003.tar.gz").write_bytes(cut)
    readable = zlib.decompressobj(wbits=31).decompress(cut)  # all the cut file still holds
    (tmp_path / "00004.tar").write_bytes(readable)
    zipped, plain = ShardStream(str(tmp_path / "00003.tar.gz")), ShardStream(str(tmp_path /
                                                                                 "00004.tar"))
    got, want = list(zipped), list(plain)
    assert zipped.error is not None and len(want) > 20
    assert [(s.key, s.failed) for s in got] == [(s.key, s.failed) for s in want]


def test_truncated_tar_keeps_samples_before_the_damage(tmp_path: Path) -> None:
    raw = Path(good_shard(tmp_path / "full.tar", 6)).read_bytes()
    full = list(iter_samples(str(tmp_path / "full.tar")))
    # cut inside a header, inside member data, at a member boundary, before the end marker
    for cut in (len(raw) // 3 + 100, 700, 100, 6144, len(raw) // 2):
        path = tmp_path / "00002.tar"
        path.write_bytes(raw[:cut])
        got = []
        with pytest.raises(CorruptShardError) as info:
            for s in iter_samples(str(path)):
                got.append(s)
        err = info.value
        assert err.samples_read == len(got) and err.shard == "00002.tar" and err.url == str(path)
        assert "truncated" in err.detail and "00002" in str(err)
        assert isinstance(err, ShardError)
        assert [s.key for s in got] == [s.key for s in full[: len(got)]]
        assert all(s.failed_reason is None for s in got[:-1])
        if got and got[-1].failed:  # the sample being read when the tar broke off
            assert "breaks off while this sample is read" in got[-1].failed_reason
        assert len(got) < len(full)
    # the samples entirely before the cut survive
    path.write_bytes(raw[: len(raw) // 2])
    stream = ShardStream(str(path))
    kept = list(stream)
    assert stream.error is not None and stream.count == len(kept) == stream.error.samples_read
    assert len(kept) >= 2
    again = pickle.loads(pickle.dumps(stream.error))  # engines ship errors between processes
    assert (again.url, again.samples_read, again.detail, str(again)) == (
        stream.error.url, stream.error.samples_read, stream.error.detail, str(stream.error))


def test_corrupt_header_is_reported(tmp_path: Path) -> None:
    raw = bytearray(Path(good_shard(tmp_path / "full.tar", 4)).read_bytes())
    third = raw.index(b"0002.jpg")  # the header of the third sample's first member
    raw[third + 124 : third + 130] = b"zzzzzz"  # garbled size field
    (tmp_path / "00006.tar").write_bytes(bytes(raw))
    stream = ShardStream(str(tmp_path / "00006.tar"))
    # sample 0001 was still open when the damage was found (it may have had more members):
    # it has its ledger row, failed
    got = list(stream)
    assert [(s.key, s.failed) for s in got] == [("0000", False), ("0001", True)]
    assert "breaks off while this sample is read" in got[1].failed_reason
    assert stream.error is not None and "bad header" in stream.error.detail


def test_truncated_gzip_is_reported(tmp_path: Path) -> None:
    raw = gzip.compress(Path(good_shard(tmp_path / "full.tar", 6)).read_bytes(), mtime=0)
    (tmp_path / "00000.tar.gz").write_bytes(raw[: len(raw) // 2])
    stream = ShardStream(str(tmp_path / "00000.tar.gz"))
    list(stream)
    assert stream.error is not None and stream.count == stream.error.samples_read


def test_missing_shard_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_samples(str(tmp_path / "absent.tar")))


def test_clean_tar_has_no_error(tmp_path: Path) -> None:
    stream = ShardStream(good_shard(tmp_path / "0.tar", 3))
    assert len(list(stream)) == 3 and stream.error is None and stream.count == 3


# --- img2dataset sidecars ------------------------------------------------------------------


def test_sidecars(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = good_shard(tmp_path / "00000.tar", 2)
    assert read_stats(url) is None and read_sidecar_parquet(url) is None
    (tmp_path / "00000_stats.json").write_text(json.dumps({"count": 2, "successes": 2}))
    pq.write_table(pa.table({"key": ["0000", "0001"]}), tmp_path / "00000.parquet")
    assert read_stats(url) == {"count": 2, "successes": 2}
    assert read_sidecar_parquet(url).column("key").to_pylist() == ["0000", "0001"]
    fs = fsspec.filesystem("memory")
    fs.pipe("/side/00001_stats.json", b'{"count": 5}')
    assert read_stats("memory://side/00001.tar") == {"count": 5}
    assert read_sidecar_parquet("memory://side/00001.tar") is None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 6000), flips=st.lists(st.tuples(st.integers(0, 6000),
                                                          st.integers(0, 255)), max_size=4))
def test_any_damage_is_reported_never_raised(tmp_path: Path, cut: int,
                                             flips: list[tuple[int, int]]) -> None:
    raw = bytearray(tar_bytes(sample_members("a") + sample_members("b", meta={"uid": UID})
                              + sample_members("c" * 120)))
    for pos, value in flips:
        raw[pos % len(raw)] = value
    path = tmp_path / "00000.tar"
    path.write_bytes(bytes(raw[: len(raw) - cut]))
    stream = ShardStream(str(path))
    got = list(stream)
    assert stream.count == len(got) <= 3
    if stream.error is not None:
        assert stream.error.samples_read == len(got)


def test_garbled_base256_checksum_is_damage_not_a_crash(tmp_path: Path) -> None:
    """A checksum field whose first byte has the high bit set reads as GNU base-256, which
    tarfile rejects with its own error type: it must end the shard as damage."""
    raw = bytearray(tar_bytes(sample_members("a")))
    raw[148] = 0x81
    path = tmp_path / "00000.tar"
    path.write_bytes(bytes(raw))
    stream = ShardStream(str(path))
    assert list(stream) == []
    assert stream.error is not None and "bad header at byte 0" in str(stream.error)


def test_checksums_in_any_standard_form_are_accepted(tmp_path: Path) -> None:
    members = sample_members("a") + sample_members("b")
    path = tmp_path / "00000.tar"
    path.write_bytes(seven_digit_checksums(tar_bytes(members, fmt=tarfile.USTAR_FORMAT)))
    with tarfile.open(path) as tar:  # still a sound tar
        assert [m.name for m in tar.getmembers()] == [n for n, _ in members]
    stream = ShardStream(str(path))
    assert [s.key for s in stream] == ["a", "b"]
    assert stream.error is None


@pytest.mark.parametrize("key", ["../../x", "a/../../x", "/etc/x"])
def test_member_names_that_climb_out_or_are_absolute_fail_the_sample(tmp_path: Path,
                                                                     key: str) -> None:
    url = write_tar(tmp_path / "00001.tar", sample_members(key) + sample_members("next"))
    bad, good = iter_samples(url)
    assert bad.failed and "is absolute or climbs out of the tar" in bad.failed_reason
    assert good.key == "next" and not good.failed


def test_json_nesting_has_one_limit_on_every_engine(tmp_path: Path) -> None:
    """json.loads fails near the interpreter's stack limit, which differs by engine and
    thread; a fixed depth decides the same everywhere: 100 levels read, 101 a failed sample;
    brackets inside strings do not count."""
    from pipeline.io.shards import MAX_JSON_DEPTH

    def nested(depth: int, extra: str = "") -> bytes:
        return ('{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + extra + "}").encode()

    members = [("ok.jpg", b"x"), ("ok.txt", b"c"), ("ok.json", nested(MAX_JSON_DEPTH)),
               ("deep.jpg", b"x"), ("deep.txt", b"c"), ("deep.json", nested(MAX_JSON_DEPTH + 1)),
               ("str.jpg", b"x"), ("str.txt", b"c"),
               ("str.json", nested(3, ', "b": "' + "[{" * 500 + '"'))]
    ok, deep, strings = iter_samples(write_tar(tmp_path / "00000.tar", members))
    assert not ok.failed and not strings.failed
    assert deep.failed_reason == "undecodable json deep.json: nested too deep (over 100 levels)"


def test_tars_joined_with_cat_are_reported_and_junk_after_the_marker_is_not(
        tmp_path: Path) -> None:
    """`cat a.tar b.tar`: tar and webdataset stop at a's end marker, so b's samples would be
    lost without a word. a's samples are read whole (its last one too) and the shard is
    reported damaged, naming the cause and the fix; junk that is no tar is left alone."""
    a = tar_bytes(sample_members("a1") + sample_members("a2"))
    b = tar_bytes(sample_members("b1"))
    (tmp_path / "00000.tar").write_bytes(a + b)
    stream = ShardStream(str(tmp_path / "00000.tar"))
    got = list(stream)
    assert [s.key for s in got] == ["a1", "a2"] and not any(s.failed for s in got)
    assert stream.error is not None and stream.error.samples_read == 2
    assert "tars joined with `cat`" in str(stream.error)
    (tmp_path / "00001.tar").write_bytes(a + b"junk" * 600)
    stream = ShardStream(str(tmp_path / "00001.tar"))
    assert [s.key for s in stream] == ["a1", "a2"] and stream.error is None
