"""pipeline.io.tar checked against Python's tarfile on generated archives: every member type,
GNU long names and long links, pax records (local and global), ustar prefixes, base-256
numbers, checksums in every form, and the vectorised checks the write step relies on."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tar_helpers import seven_digit_checksums

from pipeline.io.tar import (
    BLOCK,
    TarDamage,
    checksum_ok,
    checksum_sums,
    checksums_ok,
    header_block,
    iter_member_spans,
    iter_members,
    member_bytes,
    padded,
    parse_number,
    spans_hold,
)

FORMATS = [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]
LONG = "d" * 70 + "/" + "e" * 70 + "/k"  # over 100 bytes, with no ustar prefix split


def every_kind_archive(fmt: int) -> bytes:
    """A tar holding each member type tarfile can write, with long and non-ASCII names where
    the format allows them, and a global pax header in pax format."""
    buf = io.BytesIO()
    pax_headers = {"comment": "global"} if fmt == tarfile.PAX_FORMAT else None
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_headers) as tar:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
                link: str = "", **pax: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            if pax:
                info.pax_headers = pax
            tar.addfile(info, io.BytesIO(data) if kind in (tarfile.REGTYPE, tarfile.CONTTYPE)
                        else None)

        add("dir", tarfile.DIRTYPE)
        add("dir/a.jpg", data=b"image a" * 100)
        add("dir/a.txt", data=b"caption a")
        add("link", tarfile.SYMTYPE, link="dir/a.jpg")
        add("hard", tarfile.LNKTYPE, link="dir/a.txt")
        add("fifo", tarfile.FIFOTYPE)
        add("char", tarfile.CHRTYPE)
        add("block", tarfile.BLKTYPE)
        add("contig.bin", tarfile.CONTTYPE, data=b"contiguous")
        add("empty.txt")
        add("x" * 60 + "/" + "y" * 60 + ".jpg", data=b"prefixed")  # ustar prefix split
        if fmt != tarfile.USTAR_FORMAT:
            add(LONG + ".jpg", data=b"long name " * 60)
            add("long-link", tarfile.SYMTYPE, link="t" * 150)  # GNU 'K' or pax linkpath
            add("ünï/é.txt", data=b"non-ascii")
        if fmt == tarfile.PAX_FORMAT:
            add("with-records.json", data=b"{}", comment="a pax record", mtime="1.5")
    return buf.getvalue()


@pytest.mark.parametrize("fmt", FORMATS, ids=["ustar", "gnu", "pax"])
def test_members_and_offsets_match_tarfile(fmt: int) -> None:
    raw = every_kind_archive(fmt)
    ours = list(iter_member_spans(io.BytesIO(raw)))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        files = [m for m in tar if m.isfile()]
        theirs = [(m.name, tar.extractfile(m).read()) for m in files]
    assert [(n, d) for n, d, _, _ in ours] == theirs
    assert len(theirs) >= 5
    for (_, data, start, data_start), member in zip(ours, files, strict=True):
        assert data_start == member.offset_data
        assert raw[data_start : data_start + len(data)] == data
        # a member's first header is where tarfile's header (extended ones included) starts,
        # unless something describing no sample sits before it
        assert start in (member.offset, -1)
    assert list(iter_members(io.BytesIO(raw))) == theirs


def test_a_global_pax_header_right_before_a_member_breaks_its_span() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global"}) as tar:
        for name in ("a.jpg", "a.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    spans = list(iter_member_spans(io.BytesIO(buf.getvalue())))
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        offsets = [m.offset for m in tar]
    assert [s for _, _, s, _ in spans] == [-1, offsets[1]]


@pytest.mark.parametrize("fmt", FORMATS, ids=["ustar", "gnu", "pax"])
def test_damage_is_found_wherever_the_archive_is_cut(fmt: int) -> None:
    raw = every_kind_archive(fmt)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        end = max(m.offset_data + padded(m.size) for m in tar)
    for cut in range(0, end + BLOCK, BLOCK // 2):
        with pytest.raises(TarDamage):
            list(iter_member_spans(io.BytesIO(raw[:cut])))


def test_a_flipped_header_byte_is_damage() -> None:
    raw = bytearray(every_kind_archive(tarfile.USTAR_FORMAT))
    raw[10] ^= 1
    with pytest.raises(TarDamage, match="bad header at byte 0"):
        list(iter_members(io.BytesIO(bytes(raw))))


@given(st.integers(-(2**60), 2**63))
def test_numbers_in_octal_and_base256_read_as_tarfile_writes_them(n: int) -> None:
    field = tarfile.itn(n, 12, tarfile.GNU_FORMAT)
    assert parse_number(field) == n == tarfile.nti(field)


def test_garbled_numbers_are_errors() -> None:
    for field in (b"\x81" + bytes(11), b"12x4\0", b"\xfe" + bytes(7)):
        with pytest.raises(ValueError):
            parse_number(field)


@settings(max_examples=200)
@given(st.binary(min_size=BLOCK, max_size=BLOCK))
def test_checksum_sums_equal_tarfiles(block: bytes) -> None:
    assert checksum_sums(block) == tuple(tarfile.calc_chksums(block))


def test_checksums_in_every_form_and_the_vectorised_check_agree() -> None:
    raw = every_kind_archive(tarfile.USTAR_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        offsets = [m.offset for m in tar]
    six = [raw[o : o + BLOCK] for o in offsets]
    seven = [seven_digit_checksums(h + bytes(2 * BLOCK))[:BLOCK] for h in six]

    def with_field(block: bytes, field: bytes) -> bytes:
        return block[:148] + field + block[156:]

    unsigned, signed = checksum_sums(six[1])
    spaces = with_field(six[1], b"  %06o" % unsigned)
    base256 = with_field(six[1], b"\x80" + unsigned.to_bytes(7, "big"))
    high = bytearray(six[1])
    high[300] = 200  # a byte >= 128: signed and unsigned sums differ
    signed_sum = with_field(bytes(high), b"%06o\0 " % checksum_sums(bytes(high))[1])
    bad = [with_field(six[1], b"%06o\0 " % (unsigned + 1)), with_field(six[1], b"\x81" * 8),
           with_field(six[1], b"zzzzzz\0 ")]
    good = [*six, *seven, spaces, base256, signed_sum]
    assert all(checksum_ok(b) for b in good) and not any(checksum_ok(b) for b in bad)
    headers = np.frombuffer(b"".join(good + bad), np.uint8).reshape(-1, BLOCK)
    assert checksums_ok(headers).tolist() == [True] * len(good) + [False] * len(bad)


def test_written_headers_read_back_and_sizes_add_up() -> None:
    members = [("a.jpg", b"x" * 513), ("a.txt", b""), (LONG + ".jpg", b"long"),
               ("ünï.txt", b"u"), ("b" * 100 + ".j", b"101 bytes of name")]
    raw = b"".join(header_block(n, len(d)) + d + bytes(padded(len(d)) - len(d))
                   for n, d in members)
    assert len(raw) == member_bytes(members)
    raw += bytes(2 * BLOCK)
    assert list(iter_members(io.BytesIO(raw))) == members
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == members


def _keys(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [k.encode() for k in keys]
    offsets = np.cumsum([0, *map(len, encoded)]).astype(np.int64)
    return offsets, np.frombuffer(b"".join(encoded), np.uint8)


def test_recorded_spans_hold_until_the_tar_changes() -> None:
    names = ["k1.jpg", "k1.txt", "k2.jpg", "long" + "n" * 120 + ".jpg"]
    raw = b"".join(header_block(n, 7) + b"payload" + bytes(padded(7) - 7) for n in names)
    raw += bytes(2 * BLOCK)
    spans = [(s, d) for _, _, s, d in iter_member_spans(io.BytesIO(raw))]
    starts = np.array([spans[0][0], spans[2][0], spans[3][0]], np.int64)
    ends = np.array([spans[2][0], spans[3][0], len(raw) - 2 * BLOCK], np.int64)
    keys = _keys(["k1", "k2", "long" + "n" * 120])
    assert spans_hold(raw, starts, ends, *keys)
    assert spans_hold(raw, starts[:0], ends[:0], *_keys([]))
    assert not spans_hold(raw, starts, ends, *_keys(["k1", "k3", "long" + "n" * 120]))
    assert not spans_hold(raw, starts + BLOCK, ends, *keys)  # not a header
    assert not spans_hold(raw, starts, ends + len(raw), *keys)  # past the end
    assert not spans_hold(raw, starts + 1, ends, *keys)  # off the block bounds
    changed = bytearray(raw)
    changed[spans[2][0] + 120] ^= 1  # inside k2's header (its mode field)
    assert not spans_hold(bytes(changed), starts, ends, *keys)


@pytest.mark.parametrize("fmt", FORMATS, ids=["ustar", "gnu", "pax"])
def test_a_header_scan_names_the_members_tarfile_does(fmt: int) -> None:
    from pipeline.io.tar import iter_member_names

    raw = every_kind_archive(fmt)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        files = [m.name for m in tar if m.isfile()]
    assert list(iter_member_names(io.BytesIO(raw))) == files
    cut = raw[: len(raw) // 2]  # damaged: stops quietly, a prefix of the names
    assert files[: len(list(iter_member_names(io.BytesIO(cut))))] == \
        list(iter_member_names(io.BytesIO(cut)))


def test_samples_counted_from_headers_equal_the_samples_read(tmp_path) -> None:  # noqa: ANN001
    from pipeline.io.shards import count_samples, iter_samples

    members = [(f"k{i // 3}.{ext}", b"x" * (i * 100)) for i, ext in
               zip(range(30), ["jpg", "txt", "json"] * 10, strict=True)]
    members.insert(4, ("README", b"no sample"))
    raw = b"".join(header_block(n, len(d)) + d + bytes(padded(len(d)) - len(d))
                   for n, d in members) + bytes(2 * BLOCK)
    (tmp_path / "00000.tar").write_bytes(raw)
    url = str(tmp_path / "00000.tar")
    assert count_samples(url) == len(list(iter_samples(url))) == 10
    assert count_samples(f"{url}.gz") is None
