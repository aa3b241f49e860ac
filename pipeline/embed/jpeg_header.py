"""Which image members the tensor decoder may take: a cheap look at a JPEG's header.

The tensor path (``tensor_decode``: nvJPEG on a GPU, libjpeg-turbo in tests) must give the
picture ``pipeline.io.decode.decode_picture`` gives (SPEC §5b). It is trusted only with what
it decodes the same way: a complete baseline or progressive Huffman JPEG of 8-bit samples,
greyscale or YCbCr with ordinary chroma subsampling, within the pixel limit, whose EXIF
orientation this module reads exactly as PIL does. Everything else -- PNG, WebP, GIF, CMYK
and YCCK, 12-bit, lossless, arithmetic coding, Adobe/RGB colour, a multi-picture file, a
truncated file, an EXIF or XMP block PIL may read otherwise, too many pixels -- is refused
here, with a reason, and
goes through the CPU path, which decodes or fails it exactly as before. Only the markers
before the first scan are read: no pixel is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConceptpruneError
from pipeline.io.decode import MAX_ASPECT

SOI, EOI, SOS, DQT, DHT = 0xD8, 0xD9, 0xDA, 0xDB, 0xC4
# SOF0 baseline and SOF1 extended sequential (Huffman), SOF2 progressive (Huffman)
TAKEN_SOF = frozenset({0xC0, 0xC1, 0xC2})
# every other start-of-frame: lossless, hierarchical, arithmetic-coded
OTHER_SOF = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
ORIENTATION_TAG = 0x0112
EXIF_HEADER = b"Exif\x00\x00"
XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EOI_SEARCH = 256  # an EOI this near the end, after the scan header: the file is complete


class NotForTensorPath(ConceptpruneError, ValueError):
    """This member goes through the CPU path; the message says why (for counts and logs)."""


@dataclass(frozen=True)
class JpegHeader:
    """What the tensor path needs of a JPEG it takes."""

    width: int
    height: int
    components: int  # 1 (greyscale) or 3 (YCbCr)
    orientation: int  # EXIF orientation 1-8 as PIL reads it; 1 = as stored
    progressive: bool

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_jpeg_header(data: bytes, max_pixels: int) -> JpegHeader:
    """The header of a JPEG the tensor path may take; ``NotForTensorPath`` otherwise.

    ``max_pixels``: a larger image is refused here, so the CPU path refuses it with its own
    message (SPEC §5b), before anything is decoded.
    """
    if data[:2] != b"\xff\xd8":
        raise NotForTensorPath("not a JPEG")
    frame: tuple[int, bytes] | None = None
    tables = _Tables()
    exif: list[bytes] = []
    adobe_transform: int | None = None
    pos, end = 2, len(data)
    while True:
        if pos + 4 > end:
            raise NotForTensorPath("truncated before its first scan")
        if data[pos] != 0xFF:
            raise NotForTensorPath("garbled marker segment")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in STANDALONE:
            pos += 2
            continue
        if marker in (SOI, EOI):
            raise NotForTensorPath("garbled marker segment")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) < length - 2:
            raise NotForTensorPath("truncated before its first scan")
        if marker == SOS:
            scan_at, scan = pos, body
            break
        if marker == DQT:
            tables.quantisation(body)
        elif marker == DHT:
            tables.huffman(body)
        if marker in TAKEN_SOF or marker in OTHER_SOF:
            if frame is not None:
                raise NotForTensorPath("more than one frame header")
            frame = (marker, body)
        elif marker == 0xE1 and body.startswith(EXIF_HEADER):
            exif.append(body[len(EXIF_HEADER) :])
        elif marker == 0xE1 and body.startswith(XMP_HEADER) and b"Orientation" in body:
            raise NotForTensorPath("XMP block with an orientation")  # PIL may read it
        elif marker == 0xE2 and body.startswith(b"MPF\x00"):
            raise NotForTensorPath("multi-picture file (MPO)")  # PIL reads it as frames
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe_transform = body[11]
        pos += 2 + length
    if frame is None:
        raise NotForTensorPath("no frame header")
    if data.rfind(b"\xff\xd9", max(scan_at, end - EOI_SEARCH)) < 0:
        raise NotForTensorPath("no end-of-image marker: truncated")
    header = _frame(*frame, adobe_transform)
    tables.check_scan(frame[1], scan, header.progressive)
    if header.width * header.height > max_pixels:
        raise NotForTensorPath("more pixels than embed.max_pixels")
    if max(header.width, header.height) > MAX_ASPECT * min(header.width, header.height):
        raise NotForTensorPath("longer than MAX_ASPECT times its short side")  # CPU crops it
    orientation = _orientation(exif)
    return JpegHeader(header.width, header.height, header.components, orientation,
                      header.progressive)


class _Tables:
    """The quantisation and Huffman tables defined before the first scan, and whether that
    scan's components and tables exist: libjpeg (PIL, and torchvision on the CPU) refuses a
    file where they do not, nvJPEG was seen decoding such a file anyway (a scan naming a
    component the frame lacks, on an H200): refused here, both paths fail it alike."""

    def __init__(self) -> None:
        self.quant: set[int] = set()
        self.huff: set[tuple[int, int]] = set()  # (class 0 DC / 1 AC, slot)

    def quantisation(self, body: bytes) -> None:
        pos = 0
        while pos < len(body):
            precision, slot = body[pos] >> 4, body[pos] & 15
            self.quant.add(slot)
            pos += 1 + 64 * (2 if precision else 1)
        if pos != len(body):
            raise NotForTensorPath("bad quantisation table")

    def huffman(self, body: bytes) -> None:
        pos = 0
        while pos + 17 <= len(body):
            kind, slot = body[pos] >> 4, body[pos] & 15
            counts = body[pos + 1 : pos + 17]
            symbols = body[pos + 17 : pos + 17 + sum(counts)]
            if sum(counts) > 256 or len(symbols) < sum(counts) or (
                    kind == 0 and any(v > 15 for v in symbols)):
                raise NotForTensorPath("bad Huffman table")
            used = [n for n in range(16) if counts[n]]
            code = 0
            for n in range(used[0], used[-1] + 1) if used else ():
                code += counts[n]  # as libjpeg checks: n + 1 bits, the all-ones code free
                if code >= 1 << (n + 1):
                    raise NotForTensorPath("bad Huffman table")
                code <<= 1
            self.huff.add((kind, slot))
            pos += 17 + sum(counts)
        if pos != len(body):
            raise NotForTensorPath("bad Huffman table")

    def check_scan(self, frame: bytes, scan: bytes, progressive: bool) -> None:
        count = frame[5]
        components = {frame[6 + 3 * i]: frame[8 + 3 * i] for i in range(count)}  # id -> table
        if any(q not in self.quant for q in components.values()):
            raise NotForTensorPath("a frame component's quantisation table is not defined")
        n = scan[0] if scan else 0
        if n == 0 or len(scan) < 1 + 2 * n + 3:
            raise NotForTensorPath("bad scan header")
        first_dc = scan[1 + 2 * n] == 0 and scan[3 + 2 * n] >> 4 == 0  # Ss = 0, Ah = 0
        for i in range(n):
            ident, tables = scan[1 + 2 * i], scan[2 + 2 * i]
            if ident not in components:
                raise NotForTensorPath("a scan names a component the frame lacks")
            needed = [] if progressive and not first_dc else [(0, tables >> 4)]
            if not progressive:
                needed.append((1, tables & 15))
            if any(t not in self.huff for t in needed):
                raise NotForTensorPath("a scan's Huffman table is not defined")


def _frame(marker: int, body: bytes, adobe_transform: int | None) -> JpegHeader:
    """The frame header's size and components, when the tensor path decodes them alike."""
    if marker not in TAKEN_SOF:
        raise NotForTensorPath("lossless, hierarchical or arithmetic-coded JPEG")
    if len(body) < 6:
        raise NotForTensorPath("short frame header")
    precision = body[0]
    height = int.from_bytes(body[1:3], "big")
    width = int.from_bytes(body[3:5], "big")
    count = body[5]
    if precision != 8:
        raise NotForTensorPath(f"{precision}-bit samples")
    if width == 0 or height == 0:
        raise NotForTensorPath("no size in the frame header")
    if count not in (1, 3):
        raise NotForTensorPath(f"{count} colour components (CMYK/YCCK or other)")
    if len(body) < 6 + 3 * count:
        raise NotForTensorPath("short frame header")
    comps = [body[6 + 3 * i : 9 + 3 * i] for i in range(count)]
    if count == 3:
        if adobe_transform == 0 or bytes(c[0] for c in comps) == b"RGB":
            raise NotForTensorPath("RGB-coded JPEG (no YCbCr)")
        luma = (comps[0][1] >> 4, comps[0][1] & 15)
        chroma = {(c[1] >> 4, c[1] & 15) for c in comps[1:]}
        if chroma != {(1, 1)} or luma[0] not in (1, 2, 4) or luma[1] not in (1, 2):
            raise NotForTensorPath("unusual chroma subsampling")
    return JpegHeader(width, height, count, 1, marker == 0xC2)


def _orientation(blocks: list[bytes]) -> int:
    """The EXIF orientation PIL's ``getexif`` gives, 1 where none (or an out-of-range
    value, which PIL also leaves as stored); refuses what PIL might read differently."""
    if not blocks:
        return 1
    if len(blocks) > 1:
        raise NotForTensorPath("more than one EXIF block")  # PIL joins them
    tiff = blocks[0]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8 or int.from_bytes(tiff[2:4], order) != 42:
        raise NotForTensorPath("unreadable EXIF block")
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd < 8 or ifd + 2 > len(tiff):
        raise NotForTensorPath("unreadable EXIF block")
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    if ifd + 2 + 12 * count > len(tiff):
        raise NotForTensorPath("unreadable EXIF block")
    for i in range(count):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if int.from_bytes(entry[0:2], order) != ORIENTATION_TAG:
            continue
        kind, n = int.from_bytes(entry[2:4], order), int.from_bytes(entry[4:8], order)
        if kind != 3 or n != 1:  # SHORT, one value: anything else PIL may read otherwise
            raise NotForTensorPath("EXIF orientation of an unusual type")
        value = int.from_bytes(entry[8:10], order)
        return value if 1 <= value <= 8 else 1
    return 1
