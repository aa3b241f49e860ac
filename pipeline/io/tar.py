"""The tar format, in one place: parsing a stream of members, header fields, checksums (one
header, or thousands at once with numpy), the headers the shard writer makes, and the check
that recorded byte spans still start with sound headers.

Why not ``tarfile``: it costs tens of microseconds per header and copies every member several
times in stream mode, which made reading a shard slower than copying it, and ``addfile``
copies data in 16 KiB pieces. This module reads ustar, pax (``x``/``g``) and GNU long-name
(``L``/``K``) headers; tests check it against ``tarfile`` on generated archives. ``tarfile``
is used here only through its public ``TarInfo.tobuf``, to make the header template and pax
headers, so the written bytes are the ones ``tarfile`` would write.
"""

from __future__ import annotations

import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np

from pipeline.errors import ConceptpruneError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
END_OF_ARCHIVE = bytes(2 * BLOCK)
REGULAR_KINDS = (ord("0"), 0, ord("7"))  # typeflags: regular file, old regular, contiguous
PAX, GNU_LONGNAME = ord("x"), ord("L")
NO_SAMPLE_KINDS = (ord("g"), ord("K"))  # global pax header, GNU long link name
MAX_USTAR_SIZE = 8**11 - 1
_BIG_MEMBER = 64 << 20
_AFTER_END = 10240 + BLOCK  # what follows an end marker: the marker's second block and the
# zeros up to tar's 10 KiB record, then, where two tars were joined with `cat`, a header
_CHKSUM = slice(148, 156)


class TarDamage(ConceptpruneError):
    """The tar stream cannot be read further (truncated, or a header is corrupt); the
    shard reader turns it into a ``CorruptShardError`` naming the shard."""


class JoinedTars(TarDamage):
    """The tar ended soundly, every member before complete, but another tar follows it."""


def padding(size: int) -> int:
    """Zero bytes after a member of ``size`` bytes, up to the next block."""
    return -size % BLOCK


def padded(size: int) -> int:
    return size + padding(size)


# --- header fields ------------------------------------------------------------------------


def parse_number(field: bytes) -> int:
    """A numeric header field: octal text up to the first NUL, or GNU base-256 (first byte
    0x80 for a positive, 0xff for a negative number). ValueError for a garbled field."""
    if field[0] & 0x80:
        if field[0] not in (0x80, 0xFF):
            raise ValueError(f"bad numeric field {field!r}")
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def header_size(block: bytes) -> int:
    """The member size a header states."""
    try:
        return int(block[124:135], 8)  # eleven octal digits and a NUL, the usual form
    except ValueError:
        return parse_number(block[124:136])


def checksum_sums(block: bytes) -> tuple[int, int]:
    """(unsigned, signed) sums of the header's bytes with the checksum field read as eight
    spaces: the standard's checksum, and the one some old writers made with signed chars."""
    data = bytes(block)
    unsigned = sum(data) - sum(data[_CHKSUM]) + 8 * ord(" ")
    high = sum(1 for b in data[:148] if b >= 128) + sum(1 for b in data[156:] if b >= 128)
    return unsigned, unsigned - 256 * high


def checksum_ok(block: bytes) -> bool:
    """The header checksum matches, with the field in any form the standard allows.

    ``sum(block)`` costs microseconds per header; adler32's low half is ``1 + sum`` modulo
    65521, which is as good a test of a garbled header and ten times cheaper. The field is
    read as writers commonly write it (six octal digits, NUL, space) first, then in any
    form (seven digits, leading spaces, base-256) against both sums.
    """
    total = (zlib.adler32(block) & 0xFFFF) - 1 - sum(block[_CHKSUM]) + 8 * ord(" ")
    try:
        if (total - int(block[148:154], 8)) % 65521 == 0:
            return True
    except ValueError:
        pass
    try:
        stored = parse_number(block[_CHKSUM])
    except ValueError:
        return False
    return stored in checksum_sums(block)


def checksums_ok(headers: np.ndarray) -> np.ndarray:
    """``checksum_ok`` of each row of an (n, 512) uint8 array: vectorised for the common
    six-octal-digits form, one by one for the rest."""
    total = headers.sum(axis=1, dtype=np.int64) - headers[:, _CHKSUM].sum(axis=1, dtype=np.int64)
    total += 8 * ord(" ")
    digits = headers[:, 148:154].astype(np.int64) - ord("0")
    octal = ((digits >= 0) & (digits <= 7)).all(axis=1) & (headers[:, 154] == 0)
    ok = octal & (digits @ (8 ** np.arange(5, -1, -1)) == total)
    for i in np.flatnonzero(~ok):  # another form, or bad
        ok[i] = checksum_ok(headers[i].tobytes())
    return ok


def pax_records(data: bytes) -> dict[str, str]:
    """The ``key=value`` records of a pax header's data."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        k, _, v = data[space + 1 : pos + length - 1].partition(b"=")
        records[k.decode("utf-8")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _ustar_name(block: bytes) -> str:
    end = block.find(0, 0, 100)
    name = block[: end if end >= 0 else 100].decode("utf-8", "surrogateescape")
    if block[345] and block[257:265] == b"ustar\x0000":  # POSIX name prefix
        prefix = block[345:500].split(b"\0", 1)[0]
        name = prefix.decode("utf-8", "surrogateescape") + "/" + name
    return name


# --- reading ------------------------------------------------------------------------------


def _read_big(read: Callable[[int], bytes], size: int) -> bytes:
    """Read a large member in pieces, so a garbled size cannot ask for a huge buffer."""
    parts = []
    while size > 0:
        part = read(min(size, _BIG_MEMBER))
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def iter_member_spans(f: BinaryIO) -> Iterator[tuple[str, bytes, int, int]]:
    """(name, bytes, start, data_start) of every regular-file member of a tar stream, in
    order; ``TarDamage`` where the stream is truncated or a header is corrupt.

    ``start`` is the byte offset of the member's first header block (its pax or GNU long-name
    header where it has one), or -1 where anything else (a global pax header, a long link
    name) sits between that and the member; ``data_start`` is where its bytes begin. The
    member, padding included, ends at ``data_start + padded(len(bytes))``. A stream without
    the end-of-archive marker counts as truncated.
    """
    read = f.read
    offset = 0
    start = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        block = read(BLOCK)
        if block == ZERO_BLOCK:
            try:
                after = read(_AFTER_END)
            except (OSError, EOFError, zlib.error, lzma.LZMAError):
                return  # a compressed stream's trailing garbage, past the tar's end: no tar
            _check_after_end(after, offset)
            return
        if len(block) != BLOCK:
            raise TarDamage(f"truncated header at byte {offset}" if block else
                            f"no end-of-archive marker after byte {offset} (truncated)")
        if not checksum_ok(block):
            raise TarDamage(f"bad header at byte {offset}")
        try:
            size = int(pax["size"]) if "size" in pax else header_size(block)
        except ValueError as err:
            raise TarDamage(f"unreadable header at byte {offset}: {err}") from err
        data = read(size) if size <= _BIG_MEMBER else _read_big(read, size)
        pad = padding(size)
        if len(data) != size or (pad and len(read(pad)) != pad):
            raise TarDamage(f"truncated member at byte {offset}")
        data_start = offset + BLOCK
        offset = data_start + size + pad
        kind = block[156]
        if kind in REGULAR_KINDS:
            if pax and "path" in pax:
                name = pax["path"]
            elif long_name is not None:
                name = long_name
            else:
                name = _ustar_name(block)
            yield name, data, start, data_start
        elif kind == PAX:
            try:
                pax = pax_records(data)
            except ValueError as err:
                raise TarDamage(f"unreadable pax header at byte {offset}: {err}") from err
            continue
        elif kind == GNU_LONGNAME:
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        elif kind in NO_SAMPLE_KINDS:
            start = -1  # they describe no sample
            continue
        long_name, pax = None, {}
        start = offset


def _check_after_end(after: bytes, offset: int) -> None:
    """``TarDamage`` where a sound header follows the end marker at ``offset``: two tars
    joined with `cat`, whose second part tar and webdataset never read. Junk that is no
    header is left alone, as tar leaves it."""
    for at in range(0, len(after) - BLOCK + 1, BLOCK):
        block = after[at : at + BLOCK]
        if block != ZERO_BLOCK and checksum_ok(block):
            raise JoinedTars(
                f"another tar starts at byte {offset + BLOCK + at}, after this one's "
                f"end-of-archive marker at byte {offset} (tars joined with `cat`?): its "
                "samples are not read; give the tars as separate shards, or join them with "
                "`tar --concatenate`")


def iter_member_names(f: BinaryIO) -> Iterator[str]:
    """The names of the regular-file members of a seekable tar, read from the headers
    alone: member data is skipped with ``seek`` (a header scan reads 512 bytes a member).
    Stops quietly where the tar ends or is damaged: what it gives is a count to show, not
    a reading of the shard."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        block = f.read(BLOCK)
        if len(block) != BLOCK or block == ZERO_BLOCK or not checksum_ok(block):
            return
        try:
            size = int(pax["size"]) if "size" in pax else header_size(block)
        except ValueError:
            return
        kind = block[156]
        if kind in (PAX, GNU_LONGNAME):
            data = f.read(size)
            f.seek(padding(size), 1)
            if kind == PAX:
                try:
                    pax = pax_records(data)
                except ValueError:
                    return
            else:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        f.seek(padded(size), 1)
        if kind in REGULAR_KINDS:
            yield pax.get("path") or long_name or _ustar_name(block)
        if kind not in NO_SAMPLE_KINDS:
            long_name, pax = None, {}


def iter_members(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular-file member of a tar stream, in order."""
    for name, data, _, _ in iter_member_spans(f):
        yield name, data


# --- writing ------------------------------------------------------------------------------


def _template() -> bytes:
    info = tarfile.TarInfo("")
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    block[124:136] = bytes(12)
    block[_CHKSUM] = b" " * 8
    return bytes(block)


_TEMPLATE = _template()
_TEMPLATE_SUM = sum(_TEMPLATE)
_NAME_PADS = [_TEMPLATE[n:124] for n in range(101)]  # after a name of n bytes
_MIDDLE = _TEMPLATE[136:148]
_TAIL = _TEMPLATE[156:]


def header_block(name: str, size: int) -> bytes:
    """The deterministic header block(s) of a regular-file member: mtime 0, uid/gid 0, mode
    0o644, empty user and group names, as ``tarfile`` writes them; names that do not fit a
    ustar header (over 100 bytes, or not ASCII) and members of 8 GiB or more get pax
    headers."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or size > MAX_USTAR_SIZE or not raw.isascii():
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = _TEMPLATE_SUM + sum(raw) + sum(size_field)
    return raw + _NAME_PADS[len(raw)] + size_field + _MIDDLE + b"%06o\0 " % checksum + _TAIL


def member_bytes(members: list[tuple[str, bytes]]) -> int:
    """Bytes the members take in a tar: headers plus data padded to 512."""
    return sum(len(header_block(n, len(d))) + padded(len(d)) for n, d in members)


# --- recorded spans -----------------------------------------------------------------------


def spans_hold(tar: memoryview | bytes, starts: np.ndarray, ends: np.ndarray,
               key_offsets: np.ndarray, key_text: np.ndarray) -> bool:
    """Each [start, end) lies inside ``tar`` on block bounds and starts with a sound header
    of its own sample: checksums of all headers at once, and, for plain ustar headers, the
    member name starting with the sample's key and a dot. Sample ``i``'s key is
    ``key_text[key_offsets[i]:key_offsets[i + 1]]`` (utf-8 bytes)."""
    if len(starts) == 0:
        return True
    if ends.max() > len(tar) or (ends - starts < BLOCK).any() or starts.min() < 0 \
            or (starts % BLOCK).any():
        return False
    blocks = np.frombuffer(tar, dtype=np.uint8, count=len(tar) // BLOCK * BLOCK)
    headers = blocks.reshape(-1, BLOCK)[starts // BLOCK]  # a copy: no view of tar remains
    del blocks
    if not checksums_ok(headers).all():
        return False
    lengths = np.diff(key_offsets)
    key_text = key_text if len(key_text) else np.zeros(1, np.uint8)
    rows = np.flatnonzero(np.isin(headers[:, 156], REGULAR_KINDS) & (lengths < 100))
    for j in range(int(lengths[rows].max(initial=0)) + 1):
        at = rows[lengths[rows] >= j]
        want = np.where(lengths[at] == j, ord("."),
                        key_text[np.minimum(key_offsets[at] + j, len(key_text) - 1)])
        if (headers[at, j] != want).any():
            return False
    return True
