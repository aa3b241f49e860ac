"""Helpers shared by the tar tests."""

from __future__ import annotations

import tarfile


def seven_digit_checksums(raw: bytes) -> bytes:
    """The tar with every header's checksum written as seven octal digits and a NUL, a form
    the standard allows (most writers put six digits, a NUL and a space)."""
    out = bytearray(raw)
    pos = 0
    while pos + 512 <= len(out) and any(out[pos : pos + 512]):
        block = out[pos : pos + 512]
        size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        block[148:156] = b"%07o\0" % tarfile.calc_chksums(bytes(block))[0]
        out[pos : pos + 512] = block
        pos += 512 + size + (-size % 512)
    return bytes(out)
