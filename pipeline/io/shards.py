"""Reading webdataset / img2dataset tar shards (SPEC sections 5 and 6).

``expand_shards`` turns a shard spec (paths, folders, brace patterns, fsspec URLs) into a list
of shard URLs; ``iter_samples`` streams one shard and yields a ``Sample`` per webdataset key,
with its members' raw bytes in tar order so the writer can copy them byte for byte. Images are
not decoded here (``decode_image`` does it, in the embed stage).

Damaged shards: when a tar is truncated or a header is corrupt, ``iter_samples`` first yields
every complete sample read before the damage, then raises ``CorruptShardError`` carrying the
number of samples it yielded. A caller that wants to go on (record a ledger entry for the
shard, move to the next one) catches it, or iterates a ``ShardStream``, which stops quietly
and keeps the error in ``.error``. The sample being read when the damage was found is dropped
(its members may be incomplete). A tar cut exactly at a member boundary cannot be told apart
from a tar without an end-of-archive marker (tarfile accepts both); its last sample then
usually fails as "missing caption" or "missing image".

The tar parser is a small streaming one: ``tarfile`` costs tens of microseconds per header
and copies every member several times in stream mode, which made reading alone slower than
copying the shard. It handles ustar, pax (``x``/``g``) and GNU long-name (``L``/``K``)
headers; tests check it against ``tarfile`` on the same archives. Compressed tars
(``.tar.gz`` ...) are decompressed by fsspec (``compression="infer"``).
"""

from __future__ import annotations

import glob
import io
import json
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import braceexpand
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.ids import derive_uid, is_valid_uid

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"
JSON_EXT = "json"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_GLOB_CHARS = re.compile(r"[*?\[]")
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: __index__ and the like


class ShardError(ValueError):
    """A shard spec or a shard that cannot be used."""


class CorruptShardError(ShardError):
    """A truncated or corrupt tar; raised after the samples read before the damage."""

    def __init__(self, url: str, samples_read: int, detail: str) -> None:
        self.url = url
        self.shard = shard_name(url)
        self.samples_read = samples_read
        self.detail = detail
        super().__init__(f"corrupt shard {url}: {detail} (after {samples_read} samples)")


class ImageDecodeError(ValueError):
    """The image bytes of a sample cannot be decoded."""


@dataclass
class Sample:
    """One webdataset sample: the members sharing a key, in tar order."""

    key: str
    uid: str
    shard: str
    image_ext: str | None = None
    image_bytes: bytes | None = None
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    members: list[tuple[str, bytes]] = field(default_factory=list)
    failed_reason: str | None = None

    @property
    def failed(self) -> bool:
        return self.failed_reason is not None


# --- shard specs ------------------------------------------------------------------------


def _is_url(path: str) -> bool:
    return "://" in path


def _is_tar(path: str) -> bool:
    return path.endswith(TAR_SUFFIXES)


def _expand_one(item: str) -> list[str]:
    """The shards one brace-free item names; [] when it names none."""
    if _is_url(item):
        if _is_tar(item) and not _GLOB_CHARS.search(item):
            return [item]  # an explicit shard URL: no listing call per shard
        fs, path = fsspec.core.url_to_fs(item)
        if _GLOB_CHARS.search(path):
            found = fs.glob(path)
        elif fs.isdir(path):
            found = [p for p in fs.ls(path, detail=False) if _is_tar(p)]
        else:
            found = [path] if fs.exists(path) else []
        return sorted(fs.unstrip_protocol(p) for p in found if _is_tar(p))
    item = os.path.expanduser(item)
    if _GLOB_CHARS.search(item):
        return sorted(p for p in glob.glob(item) if _is_tar(p))
    if os.path.isdir(item):
        return sorted(os.path.join(item, n) for n in os.listdir(item) if _is_tar(n))
    return [item] if os.path.isfile(item) else []


def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs of a spec: paths, folders (their ``*.tar``), globs, brace patterns, URLs.

    Local paths stay paths and URLs stay URLs. Shards named by a brace pattern that do not
    exist locally are skipped (img2dataset leaves gaps where a shard failed); a pattern or
    path naming no shard at all is an error. Remote shard URLs are not checked one by one.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items:
        raise ShardError("no shards given")
    out: list[str] = []
    for pattern in items:
        found = [s for part in braceexpand.braceexpand(pattern) for s in _expand_one(part)]
        if not found:
            raise ShardError(f"no shards match {pattern!r}")
        out.extend(found)
    return out


def shard_name(url: str) -> str:
    """The shard's name: its basename without ``.tar`` (``.../00042.tar`` -> ``00042``)."""
    base = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in TAR_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


# --- img2dataset sidecars ---------------------------------------------------------------


def _sidecar(url: str, suffix: str) -> str:
    head = url.rstrip("/").rsplit("/", 1)[0] if "/" in url else ""
    name = shard_name(url) + suffix
    return f"{head}/{name}" if head else name


def read_stats(url: str) -> dict[str, Any] | None:
    """The shard's img2dataset ``NNNNN_stats.json``, or None when absent."""
    path = _sidecar(url, "_stats.json")
    fs, fs_path = fsspec.core.url_to_fs(path)
    if not fs.exists(fs_path):
        return None
    with fs.open(fs_path, "rb") as f:
        return json.loads(f.read())


def read_sidecar_parquet(url: str) -> pa.Table | None:
    """The shard's img2dataset ``NNNNN.parquet`` (one row per sample), or None when absent."""
    path = _sidecar(url, ".parquet")
    fs, fs_path = fsspec.core.url_to_fs(path)
    if not fs.exists(fs_path):
        return None
    with fs.open(fs_path, "rb") as f:
        return pq.read_table(f)


# --- the tar stream ---------------------------------------------------------------------


class _Damage(Exception):
    """Internal: the tar stream cannot be read further."""


# what reading a damaged (possibly compressed) stream raises
_READ_ERRORS = (_Damage, EOFError, OSError, zlib.error, lzma.LZMAError)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Damage(f"truncated {what} ({len(data)} of {n} bytes)")
    return data


def _number(field_: bytes) -> int:
    if field_[:1] and field_[0] & 0x80:  # GNU base-256
        return tarfile.nti(field_)
    text = field_.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _check_header(block: bytes, offset: int) -> None:
    try:
        stored = _number(block[148:156])
    except ValueError as err:
        raise _Damage(f"unreadable header at byte {offset}") from err
    if stored != sum(block) - sum(block[148:156]) + 256 and stored not in tarfile.calc_chksums(
            block):
        raise _Damage(f"bad header checksum at byte {offset}")


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        length = int(data[pos : data.index(b" ", pos)])
        record = data[data.index(b" ", pos) + 1 : pos + length - 1]
        k, _, v = record.partition(b"=")
        records[k.decode("utf-8")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return records


def iter_tar_members(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular-file member of a tar stream, in order.

    Raises ``_Damage`` where the stream is truncated or a header is corrupt.
    """
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        block = f.read(_BLOCK)
        if not block or block == _ZERO_BLOCK:
            return
        if len(block) != _BLOCK:
            raise _Damage(f"truncated header at byte {offset}")
        _check_header(block, offset)
        kind = block[156:157]
        size = int(pax["size"]) if "size" in pax else _number(block[124:136])
        data = _read_exact(f, size, f"member at byte {offset}")
        pad = -size % _BLOCK
        if pad:
            _read_exact(f, pad, f"padding at byte {offset}")
        offset += _BLOCK + size + pad
        if kind == b"x":
            pax = _pax_records(data)
            continue
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind in (b"g", b"K"):
            continue
        if kind in _REGULAR:
            name = pax.get("path") or long_name
            if name is None:
                name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                prefix = block[345:500].split(b"\0", 1)[0]
                if block[257:265] == b"ustar\x0000" and prefix:
                    name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            yield name, data
        long_name, pax = None, {}


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member, webdataset's way: the key runs to the basename's first
    dot. None for members that belong to no sample (no dot, or ``__meta__`` files)."""
    if _META_MEMBER.search(name):
        return None
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:
        return None
    return name[:dot], name[dot + 1 :]


def make_sample(shard: str, key: str, members: list[tuple[str, bytes]]) -> Sample:
    """Build a Sample from one key's members; problems go into ``failed_reason``."""
    sample = Sample(key=key, uid="", shard=shard, members=members)
    reasons: list[str] = []
    seen: set[str] = set()
    caption_bytes: bytes | None = None
    for name, data in members:
        ext = name[name.find(".", name.rfind("/") + 1) + 1 :].lower()
        if ext in seen:
            reasons.append(f"duplicate member {name}")
        seen.add(ext)
        if ext in IMAGE_EXTS and sample.image_bytes is None:
            sample.image_ext, sample.image_bytes = ext, data
        elif ext == CAPTION_EXT:
            caption_bytes = data
        elif ext == JSON_EXT:
            try:
                meta = json.loads(data)
            except ValueError as err:
                reasons.append(f"undecodable json {name}: {err}")
                continue
            if isinstance(meta, dict):
                sample.meta = meta
            else:
                reasons.append(f"json {name} is not an object")
    uid = sample.meta.get("uid")
    if uid is not None and not is_valid_uid(uid):
        reasons.append(f"invalid uid {uid!r} in {key}.json (not 32 hex digits)")
    sample.uid = uid if is_valid_uid(uid) else derive_uid(shard, key)
    if caption_bytes is not None:
        try:
            sample.caption = caption_bytes.decode("utf-8")
        except UnicodeDecodeError:
            reasons.append(f"undecodable caption {key}.txt (not utf-8)")
    if sample.image_bytes is None:
        reasons.insert(0, "missing image")
    elif caption_bytes is None:
        reasons.insert(0, "missing caption")
    sample.failed_reason = "; ".join(reasons) or None
    return sample


def iter_samples(url: str) -> Iterator[Sample]:
    """Stream one shard's samples, in tar order (members of a sample are consecutive).

    Raises ``CorruptShardError`` after the last complete sample when the tar is damaged
    (see the module docstring); a shard that cannot be opened raises fsspec's ``OSError``.
    """
    shard = shard_name(url)
    count = 0
    key: str | None = None
    members: list[tuple[str, bytes]] = []
    with fsspec.open(url, "rb", compression="infer") as f:
        stream = iter_tar_members(f)
        while True:
            try:
                item = next(stream, None)
            except _READ_ERRORS as err:
                raise CorruptShardError(url, count, str(err) or type(err).__name__) from err
            if item is None:
                break
            parts = split_member_name(item[0])
            if parts is None:
                continue
            if parts[0] != key:
                if key is not None:
                    count += 1
                    yield make_sample(shard, key, members)
                key, members = parts[0], []
            members.append(item)
    if key is not None:
        yield make_sample(shard, key, members)


class ShardStream:
    """Iterate a shard's samples; damage ends the iteration quietly and sets ``.error``.

    ``.count`` is the number of samples yielded, so a caller can write a ledger entry for
    the damaged shard and go on with the next one.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.count = 0
        self.error: CorruptShardError | None = None

    def __iter__(self) -> Iterator[Sample]:
        try:
            for sample in iter_samples(self.url):
                self.count += 1
                yield sample
        except CorruptShardError as err:
            self.error = err


def decode_image(sample: Sample) -> Image.Image:
    """The sample's image as RGB; ``ImageDecodeError`` names the key and shard otherwise."""
    where = f"{sample.key}.{sample.image_ext or '?'} in shard {sample.shard}"
    if sample.image_bytes is None:
        raise ImageDecodeError(f"no image for {sample.key} in shard {sample.shard}")
    try:
        with Image.open(io.BytesIO(sample.image_bytes)) as img:
            img.load()
            if img.mode == "P" and "transparency" in img.info:
                return img.convert("RGBA").convert("RGB")
            return img.convert("RGB")
    except Exception as err:  # PIL raises many types for bad bytes
        raise ImageDecodeError(f"cannot decode image {where}: {err}") from err
