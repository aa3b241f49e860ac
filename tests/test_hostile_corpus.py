"""A generated corpus of hostile inputs, each with the outcome a user should get: a counted
ledger failure with a reason that names the problem, a sample read as usual, or a clear error
that names the problem and the fix. One image run reads every sample-level and shard-level
case at once, beside a shard of ordinary pictures; its ledger must account for every sample
the corpus holds (none lost, none invented). Run-level cases (embeddings, metadata, config,
file system) each get their own run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import shutil
import tarfile
import unicodedata
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_error_messages import _restore_logging, cli, make_data, one_line, write_config
from test_resume_images import assert_same_result
from test_shards import png_header_only

from pipeline.config import validate_config
from pipeline.ids import derive_uid
from pipeline.io.shard_writer import ShardWriter
from pipeline.runner import run
from pipeline.synth.images import synth_images

__all__ = ["_restore_logging"]

OK = "ok"  # read, decoded and pruned as usual: kept or removed, never failed


@dataclass(frozen=True)
class Special:
    """A tar member that is no regular file: a link (``tarfile.SYMTYPE``, ``LNKTYPE``) to
    ``target``, or a folder (``DIRTYPE``)."""

    kind: bytes
    target: str = ""


Member = tuple[str, "bytes | Special"]


@dataclass(frozen=True)
class Case:
    """One hostile sample: its members and what the ledger must say of it."""

    key: str
    members: list[Member]
    stage: str  # OK, or the stage its failure is recorded at
    reason: str = ""  # a part of the failure's reason


def image(mode: str = "RGB", size: tuple[int, int] = (40, 30), fmt: str = "PNG",
          **params: object) -> bytes:
    colour = {"RGB": (200, 30, 30), "RGBA": (30, 200, 30, 128), "CMYK": (0, 200, 200, 0),
              "I;16": 40000, "L": 90, "1": 1, "LA": (90, 128)}[mode]
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt, **params)
    return buf.getvalue()


def sample(key: str, img: bytes | None = None, caption: bytes | None = b"a caption",
           meta: dict | bytes | None = None, ext: str = "png") -> list[Member]:
    members = [] if img is None else [(f"{key}.{ext}", img)]
    if caption is not None:
        members.append((f"{key}.txt", caption))
    data = meta if isinstance(meta, bytes) else json.dumps(meta or {}).encode()
    members.append((f"{key}.json", data))
    return members


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def sideways() -> bytes:
    return orientation(6)


def with_chunk(kind: bytes, data: bytes, png: bytes | None = None) -> bytes:
    """A PNG with one more chunk right after its IHDR."""
    png = png or image()
    chunk = (len(data).to_bytes(4, "big") + kind + data
             + zlib.crc32(kind + data).to_bytes(4, "big"))
    return png[:33] + chunk + png[33:]


def palette_trns() -> bytes:
    pic = Image.new("P", (20, 20), 0)
    pic.putpalette([200, 30, 30, 30, 30, 200])
    pic.paste(1, (0, 0, 10, 20))
    buf = io.BytesIO()
    pic.save(buf, format="PNG", transparency=1)  # a tRNS chunk: colour 1 see-through
    return buf.getvalue()


def apng() -> bytes:
    frames = [Image.new("RGBA", (20, 20), c) for c in ((200, 0, 0, 255), (0, 0, 200, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def nan_floats() -> bytes:
    buf = io.BytesIO()
    Image.new("F", (40, 30), float("nan")).save(buf, format="TIFF")
    return buf.getvalue()


def garbled_jpeg() -> bytes:
    """Noise in the middle of the entropy-coded data: decoders conceal it, as viewers do."""
    buf = io.BytesIO()
    Image.effect_noise((120, 120), 50).convert("RGB").save(buf, format="JPEG")
    raw = bytearray(buf.getvalue())
    raw[len(raw) // 2 : len(raw) // 2 + 40] = b"\xaa" * 40
    return bytes(raw)


def noise_png() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((120, 120), 50).save(buf, format="PNG")
    return buf.getvalue()


def garbled_webp() -> bytes:
    """Its VP8 frame header overwritten (libwebp conceals a garbled body, not this)."""
    raw = image(fmt="WEBP")
    return raw[:20] + b"\xaa" * 10 + raw[30:]


def orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return image(exif=exif)


def deep_json(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


def key_sample(key: str) -> list[Member]:
    return sample(key, image())


def upper_exts(key: str) -> list[Member]:
    return [(f"{key}.PNG", image()), (f"{key}.TXT", b"shouting"), (f"{key}.JSON", b"{}")]


TAKEN_UID = "f" * 32  # the first ordinary picture's uid, given again below

CASES = [
    Case("../../etc/evil", sample("../../etc/evil", image()), "read", "climbs out of the tar"),
    Case("/abs/evil", sample("/abs/evil", image()), "read", "is absolute or climbs out"),
    Case("twice", [("twice.png", image()), ("twice.png", image()), ("twice.txt", b"c")],
         "read", "duplicate member twice.png"),
    Case("nocaption", sample("nocaption", image(), caption=None), "read", "missing caption"),
    Case("noimage", sample("noimage"), "read", "missing image"),
    Case("tiffonly", sample("tiffonly", image(fmt="TIFF"), ext="tiff"), "read",
         "missing image"),  # not an image extension webdataset shards carry
    Case("latin1", sample("latin1", image(), caption="café".encode("latin-1")), "read",
         "undecodable caption"),
    Case("badjson", sample("badjson", image(), meta=b"{not json"), "read", "undecodable json"),
    Case("jsonlist", sample("jsonlist", image(), meta=b"[1, 2]"), "read", "is not an object"),
    Case("shortuid", sample("shortuid", image(), meta={"uid": "abc"}), "read", "invalid uid"),
    Case("intuid", sample("intuid", image(), meta={"uid": 7}), "read", "invalid uid 7"),
    Case("takenuid", sample("takenuid", image(), meta={"uid": TAKEN_UID}), "read",
         f"duplicate uid {TAKEN_UID}"),
    Case("garbage", sample("garbage", b"\x00garbage" * 20), "embed", "cannot decode image"),
    Case("emptyimg", sample("emptyimg", b""), "embed", "cannot decode image"),
    Case("cutjpeg", sample("cutjpeg", image(size=(300, 200), fmt="JPEG")[:400], ext="jpg"),
         "embed", "cannot decode image"),
    Case("huge", sample("huge", png_header_only(12000, 12000)), "embed",
         "more than embed.max_pixels=40000000"),
    Case("bomb", sample("bomb", png_header_only(20000, 20000)), "embed",
         "more than embed.max_pixels=40000000"),
    Case("pngasjpg", sample("pngasjpg", image(), ext="jpg"), OK),
    Case("emptycap", sample("emptycap", image(), caption=b""), OK),
    Case("script", sample("script", image(), caption=b"<script>alert(1)</script>"), OK),
    Case("longcap", sample("longcap", image(), caption=b"x" * 200_000), OK),
    Case("upperuid", sample("upperuid", image(), meta={"uid": "ABCDEF" + "0" * 26}), OK),
    Case("nulluid", sample("nulluid", image(), meta={"uid": None}), OK),
    Case("alpha", sample("alpha", image("RGBA")), OK),
    Case("cmyk", sample("cmyk", image("CMYK", fmt="JPEG"), ext="jpg"), OK),
    Case("deep16", sample("deep16", image("I;16")), OK),
    Case("grey", sample("grey", image("L")), OK),
    Case("animated", sample("animated", animated_webp(), ext="webp"), OK),
    Case("animgif", sample("animgif", animated_gif(), ext="gif"), OK),
    Case("sideways", sample("sideways", sideways()), OK),
    Case("ключ", sample("ключ", image()), OK),
    Case("with space", sample("with space", image()), OK),
    Case("dir/in/key", sample("dir/in/key", image()), OK),
    # webdataset reads __index__.json as a sample too (its skip_meta wants __x__ or __x__/)
    Case("__index__", [("__index__.json", b"{}")], "read", "missing image"),
    # json
    Case("deepjson", sample("deepjson", image(), meta=deep_json(100_000)), "read",
         "undecodable json deepjson.json: nested too deep"),  # json.loads: RecursionError
    Case("nanjson", sample("nanjson", image(), meta=b'{"w": NaN, "h": Infinity}'), OK),
    Case("jsonnull", sample("jsonnull", image(), meta=b"null"), "read", "is not an object"),
    Case("emptyjson", sample("emptyjson", image(), meta=b""), "read", "undecodable json"),
    Case("bomjson", sample("bomjson", image(), meta=b'\xef\xbb\xbf{"a": 1}'), OK),
    Case("utf16json", sample("utf16json", image(), meta='{"a": "b"}'.encode("utf-16")), OK),
    Case("bytejson", sample("bytejson", image(), meta=b'{"a": "\xff"}'), "read",
         "undecodable json bytejson.json: 'utf-8' codec"),
    Case("longint", sample("longint", image(), meta=b'{"n": ' + b"7" * 5000 + b"}"), "read",
         "Exceeds the limit (4300 digits)"),  # Python's int digit limit: a ValueError
    # a json field the output parquet cannot hold as it is (kept, it is json text there)
    Case("odd fields", sample("odd fields", image(), meta=b'{"n": 1180591620717411303424, '
                                                         b'"extra": {}, "tags": [{}]}'), OK),
    # the later of two "uid" fields wins, as in every json reader
    Case("twouids", sample("twouids", image(), meta=b'{"uid": "' + TAKEN_UID.encode()
                                                     + b'", "uid": "zz"}'), "read",
         "invalid uid 'zz'"),
    # uids
    Case("booluid", sample("booluid", image(), meta={"uid": True}), "read", "invalid uid True"),
    Case("nonhexuid", sample("nonhexuid", image(), meta={"uid": "g" + "0" * 31}), "read",
         "invalid uid 'g0000"),
    # int(x, 16) takes spaces, a 0x prefix and other scripts' digits: 32 characters that
    # are not 32 hex digits, refused when the uids are read as 128-bit numbers
    Case("spaceuid", sample("spaceuid", image(), meta={"uid": " " + "1" * 31}), "read",
         "not 32 hex digits"),
    Case("0xuid", sample("0xuid", image(), meta={"uid": "0x" + "2" * 30}), "read",
         "not 32 hex digits"),
    Case("arabicuid", sample("arabicuid", image(), meta={"uid": "\u0663" * 32}), "read",
         "not 32 hex digits"),
    Case("loweruid", sample("loweruid", image(), meta={"uid": "abcdef" + "0" * 26}), "read",
         f"duplicate uid abcdef{'0' * 26}: an earlier sample has it (key upperuid "),
    # members
    Case("symlink", [("symlink.png", Special(tarfile.SYMTYPE, "/etc/passwd")),
                     ("symlink.txt", b"c"), ("symlink.json", b"{}")], "read", "missing image"),
    Case("hardlink", [("hardlink.png", Special(tarfile.LNKTYPE, "twice.png")),
                      ("hardlink.txt", b"c"), ("hardlink.json", b"{}")], "read",
         "missing image"),
    Case("UPPER", upper_exts("UPPER"), OK),  # extensions are read case-blind
    Case("bothcase", [("bothcase.png", image()), ("bothcase.PNG", image()),
                      ("bothcase.txt", b"c")], "read", "duplicate member bothcase.PNG"),
    Case("seg", sample("seg", image(), ext="seg.png"), "read", "missing image"),
    # keys
    Case("rep", key_sample("rep"), OK),
    Case("line\nbreak", key_sample("line\nbreak"), OK),
    Case("k" * 300, key_sample("k" * 300), OK),  # a GNU long-name header
    Case(unicodedata.normalize("NFC", "café"), key_sample(unicodedata.normalize("NFC", "café")),
         OK),
    Case(unicodedata.normalize("NFD", "café"), key_sample(unicodedata.normalize("NFD", "café")),
         OK),  # the same text to a reader, other bytes: another key, another derived uid
    Case("000123", key_sample("000123"), OK),
    Case("./dotslash", key_sample("./dotslash"), OK),  # `tar cf x.tar ./` names them so
    # a key again after another sample: its derived uid again
    Case("rep", key_sample("rep"), "read",
         f"duplicate uid {derive_uid('hostile/00000.tar', 'rep')}: an earlier sample has it "
         "(key rep in shard hostile/00000.tar)"),
    # captions
    Case("bomcap", sample("bomcap", image(), caption=b"\xef\xbb\xbfa caption"), OK),
    Case("nulcap", sample("nulcap", image(), caption=b"a\x00caption"), OK),
    Case("blankcap", sample("blankcap", image(), caption=b" \t\r\n "), OK),
    Case("emojicap", sample("emojicap", image(), caption="a 🐈‍⬛ caption".encode()), OK),
    Case("cesu8", sample("cesu8", image(), caption=b"a \xed\xa0\xbd\xed\xb8\x80 cat"), "read",
         "undecodable caption cesu8.txt"),  # a surrogate pair in utf-8: not utf-8
    # pictures
    Case("tiny", sample("tiny", image(size=(1, 1))), OK),
    Case("thin", sample("thin", image(size=(2000, 1))), OK),
    Case("trns", sample("trns", palette_trns()), OK),
    Case("bilevel", sample("bilevel", image("1")), OK),
    Case("greyalpha", sample("greyalpha", image("LA")), OK),
    Case("progressive", sample("progressive", image(fmt="JPEG", progressive=True), ext="jpg"),
         OK),
    Case("halfpng", sample("halfpng", noise_png()[:3000]), "embed",
         "cannot decode image halfpng.png in shard hostile/00000.tar: image file is truncated"),
    Case("html", sample("html", b"<html><body>404 Not Found</body></html>", ext="jpg"),
         "embed", "cannot identify image file"),
    # an eXIf chunk that is no TIFF: the picture is fine, its orientation unreadable
    Case("badexif", sample("badexif", with_chunk(b"eXIf", b"not a tiff header")), OK),
    Case("orient9", sample("orient9", orientation(9)), OK),  # no such orientation: as stored
    Case("bmpaspng", sample("bmpaspng", image(fmt="BMP")), OK),  # PIL reads what it is
    Case("tiffaspng", sample("tiffaspng", image(fmt="TIFF")), OK),
    Case("giftrns", sample("giftrns", image("L", fmt="GIF", transparency=90), ext="gif"), OK),
    Case("ztxtbomb", sample("ztxtbomb", with_chunk(b"zTXt", b"c\x00\x00" + zlib.compress(
        b"a" * 2_000_000, 9))), "embed", "Decompressed data too large"),
    Case("badwebp", sample("badwebp", garbled_webp(), ext="webp"), "embed",
         "cannot decode image badwebp.webp"),
    Case("zerowide", sample("zerowide", png_header_only(0, 10)), "embed",
         "cannot decode image zerowide.png"),
    Case("badcrc", sample("badcrc", image()[:29] + bytes(4) + image()[33:]), "embed",
         "cannot decode image badcrc.png"),
    Case("noisyjpeg", sample("noisyjpeg", garbled_jpeg(), ext="jpg"), OK),
    Case("apng", sample("apng", apng()), OK),
    Case("nanfloat", sample("nanfloat", nan_floats()), OK),
]
NOT_SAMPLES = [("README", b"no extension: a member of no sample"),
               ("__meta__/notes.txt", b"webdataset's meta folder"),
               ("._rgb.png", b"\x00\x05\x16\x07 macOS AppleDouble: a dot file, no sample"),
               ("folder", Special(tarfile.DIRTYPE))]


def tar_of(members: list[Member], fmt: int = tarfile.GNU_FORMAT,
           pax: dict[str, str] | None = None) -> tuple[bytes, list[int]]:
    """The tar's bytes and each member's data offset; ``pax``: a global pax header."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, Special):
                info.type, info.linkname = data.kind, data.target
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return raw, [m.offset_data for m in tar.getmembers()]


def plain(n: int, prefix: str) -> list[Member]:
    return [m for i in range(n) for m in sample(f"{prefix}{i}", image(size=(40 + i, 30)))]


@dataclass(frozen=True)
class ShardCase:
    """A whole shard damaged some way: how many of its samples read well, and whether the
    sample being read when it broke off gets a failed row."""

    name: str
    make: Callable[[], bytes]
    good: int
    broken: int
    damaged: bool


def cut_inside_third_sample() -> bytes:
    raw, offsets = tar_of(plain(4, "cut"))
    return raw[: offsets[6] + 10]  # inside the third sample's image: the second is pending


def bad_checksum() -> bytes:
    raw, offsets = tar_of(plain(4, "sum"))
    header = offsets[6] - 512  # the third sample's first header
    return raw[:header + 148] + b"9999999\x00" + raw[header + 156:]


def no_end_marker() -> bytes:
    raw, offsets = tar_of(plain(3, "noend"))
    last = len(plain(1, "x")[-1][1])  # the last json's size
    return raw[: offsets[-1] + -(-last // 512) * 512]  # every member whole, no marker


def gzip_cut() -> bytes:
    raw, _ = tar_of(plain(8, "gz"))
    packed = gzip.compress(raw, mtime=0)
    return packed[: len(packed) * 3 // 4]


def size_in_base256() -> bytes:
    """The first member's size in GNU base-256 form (as for members of 8 GiB or more)."""
    raw, offsets = tar_of(plain(2, "b256"))
    out = bytearray(raw)
    at = offsets[0] - 512
    size = int(out[at + 124 : at + 135], 8)
    out[at + 124 : at + 136] = b"\x80" + size.to_bytes(11, "big")
    out[at + 148 : at + 156] = b" " * 8
    out[at + 148 : at + 156] = b"%06o\0 " % sum(out[at : at + 512])
    return bytes(out)


def two_gzip_members() -> bytes:  # as pigz, bgzip or `cat a.gz b.gz` make
    raw, _ = tar_of(plain(3, "gm"))
    return gzip.compress(raw[:5000], mtime=0) + gzip.compress(raw[5000:], mtime=0)


SHARD_CASES = [
    ShardCase("truncated.tar", cut_inside_third_sample, 1, 1, True),
    ShardCase("checksum.tar", bad_checksum, 1, 1, True),
    ShardCase("noend.tar", no_end_marker, 2, 1, True),
    ShardCase("zero.tar", lambda: b"", 0, 0, True),
    ShardCase("noise.tar", lambda: bytes(np.random.default_rng(1).integers(0, 256, 3000,
                                                                           np.uint8)), 0, 0, True),
    ShardCase("notgzip.tar.gz", lambda: tar_of(plain(2, "ng"))[0], 0, 0, True),
    ShardCase("fine.tar.xz", lambda: lzma.compress(tar_of(plain(3, "xz"))[0]), 3, 0, False),
    ShardCase("empty.tar", lambda: tar_of([])[0], 0, 0, False),  # the end marker alone
    ShardCase("folderfirst.tar", lambda: tar_of([("imgs", Special(tarfile.DIRTYPE)),
                                                 *plain(2, "imgs/f")])[0], 2, 0, False),
    ShardCase("paxglobal.tar", lambda: tar_of(plain(2, "pg"), tarfile.PAX_FORMAT,
                                              {"comment": "a global header"})[0], 2, 0, False),
    ShardCase("paxnames.tar", lambda: tar_of(plain(2, "ключ" + "p" * 120),
                                             tarfile.PAX_FORMAT)[0], 2, 0, False),
    ShardCase("base256.tar", size_in_base256, 2, 0, False),
    ShardCase("aftermarker.tar", lambda: tar_of(plain(2, "am"))[0] + b"junk" * 300, 2, 0,
              False),  # tar reads nothing past its end marker
    # `cat a.tar b.tar`: b's samples lie past a's end marker, where tar and webdataset stop
    # (GNU tar reads them with --ignore-zeros only): a's are read, the shard is reported
    # damaged, naming the cause and the fix, so b's samples are not lost without a word
    ShardCase("catted.tar", lambda: tar_of(plain(2, "ca"))[0] + tar_of(plain(2, "cb"))[0], 2,
              0, True),
    ShardCase("trailing.tar.gz", lambda: gzip.compress(tar_of(plain(3, "tg"))[0], mtime=0)
              + b"trailing garbage" * 8, 3, 0, False),  # gzip -d: "trailing garbage ignored"
    ShardCase("members.tar.gz", two_gzip_members, 3, 0, False),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "in"
    synth_images(root / "ordinary", 40, seed=2, samples_per_shard=40, concepts=3)
    members = [m for case in CASES for m in case.members]
    cut = len(CASES[0].members)  # between two samples
    members[cut:cut] = NOT_SAMPLES
    (root / "hostile").mkdir()
    (root / "hostile" / "00000.tar").write_bytes(tar_of(members)[0])
    # the ordinary shard's first sample gets TAKEN_UID, so the hostile copy comes later
    tar = root / "ordinary" / "00000.tar"
    with tarfile.open(tar) as t:
        ordinary = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    for i, (name, data) in enumerate(ordinary):
        if name.endswith(".json"):
            ordinary[i] = (name, json.dumps({**json.loads(data), "uid": TAKEN_UID}).encode())
            break
    tar.write_bytes(tar_of(ordinary)[0])
    for case in SHARD_CASES:
        (root / "damaged").mkdir(exist_ok=True)
        (root / "damaged" / case.name).write_bytes(case.make())
    (root.parent / "digests.json").write_text(json.dumps(file_digests(root)))
    return root


def file_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``: the runs must change none of the user's files."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def corpus_config(corpus: Path, out: Path) -> object:
    shards = [str(corpus / "ordinary" / "00000.tar"), str(corpus / "hostile" / "00000.tar"),
              *(str(corpus / "damaged" / c.name) for c in SHARD_CASES)]
    return validate_config({
        "input": {"shards": shards}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
                  "workers": 0},
        "semdedup": {"k": 2, "eps": 0.0001}, "dbp": {"k": 2, "keep_fraction": 0.5},
        "kmeans": {"niter": 2}})


@pytest.fixture(scope="module")
def local_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("hostile-local") / "out"
    return out, run(corpus_config(corpus, out)).input_samples


def test_every_hostile_input_gets_its_outcome_and_every_sample_is_accounted_for(
        corpus: Path, local_run: tuple[Path, int]) -> None:
    assert len(CASES) + len(NOT_SAMPLES) + len(SHARD_CASES) >= 30
    out, input_samples = local_run
    rows = pq.read_table(out / "ledger").to_pylist()
    by_shard: dict[str, list[dict]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], []).append(row)

    hostile: dict[str, list[dict]] = {}
    for row in by_shard["hostile/00000.tar"]:  # in tar order
        hostile.setdefault(row["key"], []).append(row)
    assert sorted((k, len(v)) for k, v in hostile.items()) == sorted(
        Counter(c.key for c in CASES).items()), "one row per sample, none invented"
    seen: Counter[str] = Counter()
    for case in CASES:
        row = hostile[case.key][seen[case.key]]
        seen[case.key] += 1
        if case.stage == OK:
            assert row["status"] in ("kept", "removed"), (case.key, row["reason"])
        else:
            assert (row["status"], row["stage"]) == ("failed", case.stage), case.key
            assert case.reason in row["reason"], (case.key, row["reason"])
            assert " at 0x" not in row["reason"] and "BytesIO" not in row["reason"]
    assert hostile["upperuid"][0]["uid"] == "ABCDEF" + "0" * 26
    assert hostile["script"][0]["status"] != "failed"

    report = json.loads((out / "report" / "report.json").read_text())
    damaged = {Path(d["shard"]).name: d for d in report["embed"]["damaged_shards"]}
    for case in SHARD_CASES:
        got = by_shard.get(f"damaged/{case.name}", [])
        fine = [r for r in got if r["status"] != "failed"]
        broke = [r for r in got if "breaks off while this sample is read" in (r["reason"] or "")]
        assert (len(fine), len(broke), len(got)) == (case.good, case.broken,
                                                     case.good + case.broken), case.name
        assert (case.name in damaged) == case.damaged, case.name

    corpus_samples = 40 + len(CASES) + sum(c.good + c.broken for c in SHARD_CASES)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("kept", "removed", "failed")}
    assert len(rows) == input_samples == report["input_samples"] == corpus_samples
    assert sum(counts.values()) == corpus_samples, "a sample unaccounted for"
    assert counts["failed"] == report["failed"]
    written = sum(1 for _ in (out / "shards").glob("*.tar"))
    assert written and report["output_shards"]["samples"] == counts["kept"]
    assert file_digests(corpus) == json.loads((corpus.parent / "digests.json").read_text()), \
        "an input file changed"


def test_the_corpus_gives_the_same_bytes_on_ray(corpus: Path, local_run: tuple[Path, int],
                                                tmp_path: Path) -> None:
    """Every outcome above holds on Ray: its ledger, subset and shards are the local run's."""
    pytest.importorskip("ray")
    import tempfile

    from pipeline.engines.ray_engine import RayEngine

    temp = tempfile.mkdtemp(prefix="cp-ray-", dir="/tmp")  # Ray's socket paths stay short
    engine = RayEngine(num_cpus=2, object_store_gb=0.25, temp_dir=temp, progress=False)
    try:
        run(corpus_config(corpus, tmp_path / "ray"), engine=engine)
    finally:
        engine.close()
        shutil.rmtree(temp, ignore_errors=True)
    local, _ = local_run
    assert_same_result(tmp_path / "ray", local)  # ledger, shards and subset


def write_embeddings_case(tmp_path: Path, case: str) -> Path:
    """An embeddings input broken one way; the config of a run over it."""
    data = make_data(tmp_path, files=2)
    img = sorted((data / "img_emb").glob("*.npy"))
    meta = sorted((data / "metadata").glob("*.parquet"))
    if case == "nan-rows":
        arr = np.load(img[0])
        arr[:3] = np.nan
        np.save(img[0], arr)
    elif case == "zero-rows":
        arr = np.load(img[0])
        arr[:2] = 0
        np.save(img[0], arr)
    elif case == "short-metadata":
        pq.write_table(pq.read_table(meta[0]).slice(1), meta[0])
    elif case == "no-key-column":
        pq.write_table(pq.read_table(meta[0]).drop(["image_path"]), meta[0])
    elif case == "other-dim":
        np.save(img[1], np.ones((np.load(img[1]).shape[0], 5), np.float16))
    elif case == "string-array":
        np.save(img[0], np.array(["a", "b"]))
    return data


EMBEDDING_CASES = [  # (case, exit code, what the output must say)
    ("nan-rows", 0, None),
    ("zero-rows", 0, None),
    ("short-metadata", 1, "metadata_0.parquet"),
    ("no-key-column", 1, "image_path"),
    ("other-dim", 1, "img_emb_1.npy"),
    ("string-array", 1, "img_emb_0.npy"),
]


@pytest.mark.parametrize(("case", "code", "says"), EMBEDDING_CASES,
                         ids=[c[0] for c in EMBEDDING_CASES])
def test_hostile_embeddings(tmp_path: Path, case: str, code: int, says: str | None) -> None:
    data = write_embeddings_case(tmp_path, case)
    res = cli(str(write_config(tmp_path, data)))
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    if code == 0:  # counted failures with their reason, every sample in the ledger
        rows = pq.read_table(tmp_path / "out" / "ledger").to_pylist()
        failed = [r for r in rows if r["status"] == "failed"]
        assert len(failed) == (3 if case == "nan-rows" else 2)
        assert all("embedding" in r["reason"] for r in failed)
    else:
        assert says in one_line(res.output)


RUN_CASES = [  # (case, settings, what the error must say)
    ("keep more than all", {"dbp.keep_fraction": 1.5}, "dbp.keep_fraction"),
    ("unknown setting", {"dbp.keeep": 3}, "keeep"),
    ("impossible budget", {"dbp.balance": 1.0, "dbp.k": 40, "dbp.keep_fraction": 0.01},
     "lower bounds"),
    ("negative eps", {"semdedup.eps": -1}, "semdedup.eps"),
    ("not a colour", {"embed.background": "mauve-ish"}, "mauve-ish"),
    ("eps not a number", {"semdedup.eps": float("nan")}, "semdedup.eps"),
    ("temperature not a number", {"dbp.temperature": float("nan")}, "dbp.temperature"),
    ("fraction not a number", {"dbp.keep_fraction": float("nan")},
     "dbp.keep_fraction: Input should be a finite number"),
    ("threshold not a number", {"clip_filter.enabled": True,
                                "clip_filter.threshold": float("nan")},
     "clip_filter.threshold: Input should be a finite number"),  # it removed everything
    ("infinite eps", {"semdedup.eps": float("inf")}, "semdedup.eps"),
    ("a yes for a number", {"dbp.k": True}, "k takes a number or a name, not True"),
    ("iterations without end", {"kmeans.niter": 10**9}, "kmeans.niter"),
    ("seed in words", {"seed": "forty-two"}, "seed"),
    ("half a cluster", {"dbp.k": 2.5}, "dbp.k"),
    ("no pixels at all", {"embed.max_pixels": 0}, "embed.max_pixels"),
    ("shard name climbs out", {"write.shard_name": "../x{:05d}"}, "write.shard_name"),
    ("a section as text", {"dbp": "fast"}, "dbp"),
    ("two inputs", {"input.shards": "/nowhere/00000.tar"}, "set exactly one of input.shards"),
    ("more concepts than samples", {"dbp.k": 100_000}, "set dbp.k to at most"),
    ("keep more than there are", {"dbp.keep_count": 10**9}, "lower dbp.keep_count"),
]


@pytest.mark.parametrize(("case", "settings", "says"), RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_hostile_settings(tmp_path: Path, case: str, settings: dict, says: str) -> None:
    data = make_data(tmp_path)
    res = cli(str(write_config(tmp_path, data, **settings)))
    assert res.exit_code != 0 and "Traceback" not in res.output, case
    assert says in one_line(res.output), res.output


def test_hostile_file_system(tmp_path: Path) -> None:
    """An output path that is a file, an input pattern matching nothing, an input shard that
    is a folder named like a tar: each a clear error naming the path."""
    data = make_data(tmp_path)
    (tmp_path / "afile").write_text("x")
    res = cli(str(write_config(tmp_path, data, output=str(tmp_path / "afile"))))
    assert res.exit_code == 1 and "afile" in one_line(res.output)
    res = cli(str(write_config(tmp_path, None, **{"input.embeddings": None,
                                                  "input.shards": str(tmp_path / "no*.tar")})))
    assert res.exit_code == 1 and "no shards match" in one_line(res.output)
    (tmp_path / "dir.tar").mkdir()
    res = cli(str(write_config(tmp_path, None, **{"input.embeddings": None,
                                                  "input.shards": str(tmp_path / "dir.tar")})))
    assert res.exit_code == 1 and "dir.tar" in one_line(res.output)
    (tmp_path / "notars").mkdir()
    (tmp_path / "notars" / "00000.txt").write_text("x")
    res = cli(str(write_config(tmp_path, None, **{"input.embeddings": None,
                                                  "input.shards": str(tmp_path / "notars")})))
    assert res.exit_code == 1 and f"no shards match '{tmp_path / 'notars'}'" in one_line(
        res.output)


@pytest.mark.parametrize("what", ["zip", "empty tar"])
def test_shards_without_a_sample_are_a_clear_error(tmp_path: Path, what: str) -> None:
    """A zip file named .tar, a tar holding nothing: no sample to prune, said plainly."""
    shard = tmp_path / "in" / "00000.tar"
    shard.parent.mkdir()
    if what == "zip":
        with zipfile.ZipFile(shard, "w") as z:
            z.writestr("a.png", image())
    else:
        shard.write_bytes(tar_of([])[0])
    embed = {"model": "conceptprune-tiny-vit", "pretrained": None, "workers": 0}
    res = cli(str(write_config(tmp_path, None, **{"input.embeddings": None, "embed": embed,
                                                  "input.shards": str(shard)})))
    text = one_line(res.output)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "no sample could be read from the 1 input shards" in text and "tar tvf" in text


def test_json_fields_parquet_cannot_hold_reach_the_output_as_json_text(tmp_path: Path
                                                                      ) -> None:
    """A kept sample's json fields become its row of the output parquet: an integer past 64
    bits and an empty object (parquet has no struct without fields) crashed the write step;
    such a column is json text, as a column of mixed types is."""
    records = [{"n": 2**70, "extra": {}, "tags": [{}], "w": 1.5},
               {"n": 3, "tags": [{}], "w": float("nan")}]
    with ShardWriter(tmp_path) as writer:
        for i, record in enumerate(records):
            writer.write([(f"s{i}.txt", b"c")], f"s{i}", record)
    rows = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    assert [(r["n"], r["extra"], r["tags"]) for r in rows] == [
        (str(2**70), "{}", "[{}]"), ("3", None, "[{}]")]
    assert rows[0]["w"] == 1.5 and np.isnan(rows[1]["w"])


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_img2dataset_parquet_or_arrow_output_is_named(tmp_path: Path, fmt: str) -> None:
    """img2dataset's output_format parquet / arrow: the error names the format found and
    the ones read."""
    folder = tmp_path / "img2dataset_out"
    folder.mkdir()
    (folder / f"00000.{fmt}").write_bytes(b"not read")
    (folder / "00000_stats.json").write_text("{}")
    res = cli(str(write_config(tmp_path, None, **{"input.embeddings": None,
                                                  "input.shards": str(folder)})))
    text = one_line(res.output)
    assert res.exit_code == 1 and f"holds {fmt} files but no .tar shards" in text
    assert "--output_format webdataset" in text and "input.embeddings" in text
