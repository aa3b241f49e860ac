"""Reading webdataset / img2dataset tar shards (SPEC sections 5 and 6).

``expand_shards`` turns a shard spec (paths, folders, brace patterns, fsspec URLs) into a list
of shard URLs; ``iter_samples`` streams one shard and yields a ``Sample`` per webdataset key,
with its members' raw bytes in tar order so the writer can copy them byte for byte. Images are
not decoded here (``decode_image`` does it, in the embed stage).

Damaged shards: when a tar is truncated or a header is corrupt, ``iter_samples`` first yields
every complete sample read before the damage, then raises ``CorruptShardError`` carrying the
number of samples it yielded. A caller that wants to go on (record a ledger entry for the
shard, move to the next one) catches it, or iterates a ``ShardStream``, which stops quietly
and keeps the error in ``.error``. The sample whose members were being read when the damage
was found is dropped: more of its members (its json with the uid, say) may have followed.
A tar that ends without an end-of-archive marker counts as truncated (``tarfile`` accepts
one; every tar writer writes the marker, and a shard cut off at a member boundary is the
common way to lose one). An ``OSError`` while streaming (a dropped connection, say) is
reported the same way; a caller may retry a remote shard before recording it as damaged.

The tar format itself (members, headers, checksums) is ``pipeline.io.tar``'s. Compressed
tars (``.tar.gz`` ...) are decompressed by fsspec (``compression="infer"``).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import lzma
import os
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import braceexpand
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import infer_compression
from PIL import Image

from pipeline.errors import ConceptpruneError
from pipeline.ids import derive_uid, is_valid_uid
from pipeline.io.decode import DEFAULT_RULES, DecodeRules, ImageDecodeError, decode_picture
from pipeline.io.tar import JoinedTars, TarDamage, iter_member_names, iter_member_spans, padded

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif")  # gif: its first frame (SPEC §5b)
CAPTION_EXT = "txt"
JSON_EXT = "json"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")

_READ_BUFFER = 1 << 20
_GLOB_CHARS = re.compile(r"[*?\[]")
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: __index__ and such


class ShardError(ConceptpruneError, ValueError):
    """A shard spec or a shard that cannot be used."""


class CorruptShardError(ShardError):
    """A truncated or corrupt tar; raised after the samples read before the damage."""

    def __init__(self, url: str, samples_read: int, detail: str, shard: str | None = None
                 ) -> None:
        self.url = url
        self.shard = shard or shard_name(url)
        self.samples_read = samples_read
        self.detail = detail
        super().__init__(f"corrupt shard {url}: {detail} (after {samples_read} samples)")

    def __reduce__(self) -> tuple[type, tuple[str, int, str, str]]:  # for Ray / Spark
        return (type(self), (self.url, self.samples_read, self.detail, self.shard))


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
    uid_derived: bool = False  # its json gave no uid: derived from shard name and key
    # where the members lie in the (uncompressed) tar: (start, end) of them all, headers and
    # padding included, and (start, end) of the json member's bytes; span is None where
    # anything else lies between them. The write step copies such spans without parsing.
    span: tuple[int, int] | None = None
    json_span: tuple[int, int] | None = None

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
        raise ShardError("no shards given: set input.shards to tar files, folders, globs or "
                         "brace patterns")
    out: list[str] = []
    for pattern in items:
        found: list[str] = []
        missing: list[str] = []
        for part in braceexpand.braceexpand(pattern):
            shards = _expand_one(part)
            found += shards
            if not shards:
                missing.append(part)
        if not found:
            raise ShardError(
                f"no shards match {pattern!r} (input.shards): "
                + (_other_format(pattern) or "point input.shards at existing .tar files, "
                   "folders holding them, globs or brace patterns such as "
                   "'data/{00000..00099}.tar'"))
        if missing:
            log.warning("%d of the %d shards %r names do not exist and are skipped: %s%s",
                        len(missing), len(missing) + len(found), pattern,
                        ", ".join(missing[:5]), ", ..." if len(missing) > 5 else "")
        out.extend(found)
    return out


def _stem(url: str) -> str:
    """The shard file's basename without its tar suffix (``.../00042.tar`` -> ``00042``):
    how img2dataset names a shard's sidecar files."""
    base = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in TAR_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _components(url: str) -> list[str]:
    """A shard's location as [root, folder, ..., file]: the root is the URL's scheme
    (``s3://``) or ``/`` for a local path, made absolute."""
    if _is_url(url):
        scheme, rest = url.split("://", 1)
        return [f"{scheme}://", *[p for p in rest.split("/") if p]]
    return ["/", *[p for p in os.path.abspath(url).split(os.sep) if p]]


_OTHER_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".tfrecord": "tfrecord"}


def _other_format(pattern: str) -> str | None:
    """What a folder holds instead of tar shards, said with the formats read; None when it
    holds nothing recognisable (or is not a local folder)."""
    folder = os.path.expanduser(pattern)
    if _is_url(folder) or not os.path.isdir(folder):
        return None
    names = os.listdir(folder)
    for suffix, fmt in _OTHER_FORMATS.items():
        if any(n.endswith(suffix) and not n.endswith("_stats.json") for n in names):
            return (f"the folder holds {fmt} files but no .tar shards: img2dataset's "
                    f"'{fmt}' output format, which conceptprune does not read. It reads "
                    "webdataset tar shards (img2dataset --output_format webdataset) as "
                    "input.shards, clip-retrieval embeddings as input.embeddings and "
                    "DataComp parquet + npz as input.datacomp")
    return None


def shard_name(url: str) -> str:
    """A lone shard's name: its file name (``.../00042.tar`` -> ``00042.tar``)."""
    return _components(url)[-1]


def shard_names(urls: list[str]) -> list[str]:
    """Every input shard's name (SPEC §5): its path relative to the deepest folder that
    holds every input shard of the run, so same-named shards of two folders differ
    (``a/00042.tar``, ``b/00042.tar``) while moving a whole dataset keeps its names (and
    so its derived uids). Remote URLs keep scheme and bucket in the comparison."""
    split = [_components(u) for u in urls]
    common = os.path.commonprefix([c[:-1] for c in split])
    if not common:  # nothing shared, not even the scheme: the whole URL names it
        return [c[0] + "/".join(c[1:]) for c in split]
    return ["/".join(c[len(common):]) for c in split]


# --- img2dataset sidecars ---------------------------------------------------------------


def _sidecar(url: str, suffix: str) -> str:
    head = url.rstrip("/").rsplit("/", 1)[0] if "/" in url else ""
    name = _stem(url) + suffix
    return f"{head}/{name}" if head else name


def _read_sidecar(url: str, suffix: str, read: Callable[[BinaryIO], Any]) -> Any:  # noqa: ANN401
    """``read`` of the shard's img2dataset sidecar ``NNNNN{suffix}``, or None when absent."""
    fs, fs_path = fsspec.core.url_to_fs(_sidecar(url, suffix))
    if not fs.exists(fs_path):
        return None
    with fs.open(fs_path, "rb") as f:
        return read(f)


def read_stats(url: str) -> dict[str, Any] | None:
    """The shard's img2dataset ``NNNNN_stats.json``, or None when absent."""
    return _read_sidecar(url, "_stats.json", lambda f: json.loads(f.read()))


def read_sidecar_parquet(url: str) -> pa.Table | None:
    """The shard's img2dataset ``NNNNN.parquet`` (one row per sample), or None when absent."""
    return _read_sidecar(url, ".parquet", pq.read_table)


def sidecar_schema(url: str) -> pa.Schema | None:
    """The schema of the shard's img2dataset ``NNNNN.parquet``, or None when absent."""
    return _read_sidecar(url, ".parquet", pq.read_schema)


def download_failures(url: str, name: str, keys_read: set[str]) -> list[dict[str, Any]]:
    """The URLs img2dataset tried for this shard and could not download or resize, from its
    sidecar ``NNNNN.parquet`` (``status`` other than success): one failed ledger record each,
    at stage ``download`` with img2dataset's ``error_message``, so every URL attempted is
    accounted for. None for a shard without that sidecar."""
    table = read_sidecar_parquet(url)
    if table is None or "status" not in table.column_names or "key" not in table.column_names:
        return []
    rows = table.to_pylist()
    out = []
    for row in rows:
        key = row.get("key")
        if row.get("status") == "success" or key is None or str(key) in keys_read:
            continue
        key = str(key)
        uid = row.get("uid")
        derived = not is_valid_uid(uid)
        if derived:
            uid = derive_uid(name, key)
        error = row.get("error_message") or row.get("status") or "not downloaded"
        out.append({"key": key, "uid": uid, "shard": name, "caption": row.get("caption"),
                    "failed_reason": f"img2dataset could not get {row.get('url') or key}: "
                                     f"{error}",
                    "failed_stage": "download", "span": None, "json_span": None,
                    "uid_derived": derived})
    return out


# what reading a damaged (possibly compressed) stream raises
_READ_ERRORS = (TarDamage, EOFError, OSError, zlib.error, lzma.LZMAError)


def split_member_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member, webdataset's way: the key runs to the basename's first
    dot. None for members that belong to no sample (no dot, or ``__meta__`` files)."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash or (name.startswith("__") and _META_MEMBER.match(name)):
        return None
    return name[:dot], name[dot + 1 :]


MAX_JSON_DEPTH = 100  # json.loads fails near the interpreter's stack limit, which differs
_OPENERS = re.compile(rb"[\[{]")  # by engine and thread: a fixed limit decides the same


def json_too_deep(data: bytes) -> bool:
    """Whether arrays and objects nest more than MAX_JSON_DEPTH levels (brackets inside
    strings do not count). Cheap for the usual json: fewer openers than the limit, at all,
    settle it without a scan."""
    if len(_OPENERS.findall(data, 0)) <= MAX_JSON_DEPTH:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def count_samples(url: str) -> int | None:
    """The samples of a local uncompressed shard, counted from its tar headers alone (runs
    of members sharing a key, as ``iter_samples`` groups them); None for any other shard.
    For progress totals where img2dataset left no stats: it reads 512 bytes a member."""
    path = local_tar_path(url)
    if path is None:
        return None
    count, key = 0, None
    with open(path, "rb") as f:
        for name in iter_member_names(f):
            parts = split_member_name(name)
            if parts is not None and parts[0] != key:
                count, key = count + 1, parts[0]
    return count


def make_sample(shard: str, key: str, members: list[tuple[str, bytes]]) -> Sample:
    """Build a Sample from one key's members; problems go into ``failed_reason``."""
    sample = Sample(key=key, uid="", shard=shard, members=members)
    problems: list[str] = []
    exts: set[str] = set()
    caption: bytes | None = None
    cut = len(key) + 1
    if key.startswith("/") or ".." in key.split("/"):
        problems.append(f"member name {members[0][0]!r} is absolute or climbs out of the tar "
                        "('..'): such a name is never copied into an output shard")
    for name, data in members:
        ext = name[cut:].lower()
        if ext in exts:
            problems.append(f"duplicate member {name}")
        exts.add(ext)
        if ext == CAPTION_EXT:
            caption = data
        elif ext == JSON_EXT:
            if json_too_deep(data):
                problems.append(f"undecodable json {name}: nested too deep (over "
                                f"{MAX_JSON_DEPTH} levels)")
                continue
            try:
                meta = json.loads(data)
            except ValueError as err:
                problems.append(f"undecodable json {name}: {err}")
                continue
            if isinstance(meta, dict):
                sample.meta = meta
            else:
                problems.append(f"json {name} is not an object")
        elif ext in IMAGE_EXTS and sample.image_bytes is None:
            sample.image_ext, sample.image_bytes = ext, data
    uid = sample.meta.get("uid")
    if uid is not None and not is_valid_uid(uid):
        problems.append(f"invalid uid {uid!r} in {key}.json (not 32 hex digits)")
        uid = None
    sample.uid = uid if uid is not None else derive_uid(shard, key)
    sample.uid_derived = uid is None
    if caption is not None:
        try:
            sample.caption = caption.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"undecodable caption {key}.txt (not utf-8)")
    if sample.image_bytes is None:
        problems.insert(0, "missing image")
    elif caption is None:
        problems.insert(0, "missing caption")
    if problems:
        sample.failed_reason = "; ".join(problems)
    return sample


def local_tar_path(url: str) -> str | None:
    """The file path of a local, uncompressed shard (one that can be opened, mapped and
    copied from as is); None for any other."""
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem) and infer_compression(path) is None:
        return path
    return None


@contextmanager
def _open_stream(url: str) -> Iterator[BinaryIO]:
    """The shard as a byte stream behind one large buffer, so that the reads of headers and
    members are served from memory; local uncompressed files skip fsspec's wrapper."""
    path = local_tar_path(url)
    if path is not None:
        with open(path, "rb", buffering=_READ_BUFFER) as f:
            yield f
        return
    with fsspec.open(url, "rb", compression="infer") as raw:
        yield io.BufferedReader(_Chunks(raw), _READ_BUFFER)


class _Chunks(io.RawIOBase):
    """A (decompressing) stream handed on one decompressed chunk at a time (``read1``).

    A large ``read()`` of a gzip file cut short raises and drops all it had decompressed,
    so a buffer as big as the shard lost every sample before the damage; read in chunks,
    all complete members before it are parsed.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._read = getattr(raw, "read1", raw.read)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # noqa: ANN401 - a writable buffer
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _with_span(sample: Sample, offsets: list[tuple[int, int]]) -> Sample:
    """Set the sample's spans from its members' (start, data_start) offsets."""
    end = offsets[0][0]
    for (name, data), (start, data_start) in zip(sample.members, offsets, strict=True):
        if start < 0 or start != end:
            sample.json_span = None
            return sample
        end = data_start + padded(len(data))
        if name[len(sample.key) + 1 :].lower() == JSON_EXT:
            sample.json_span = (data_start, data_start + len(data))
    sample.span = (offsets[0][0], end)
    return sample


def tar_identity(url: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of a local, uncompressed shard, whose spans the write step may
    copy; None for any other."""
    path = local_tar_path(url)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


_IDENTITY_KEYS = (b"conceptprune.tar_size", b"conceptprune.tar_mtime_ns")


def identity_metadata(identity: tuple[int, int]) -> dict[bytes, bytes]:
    """Parquet schema metadata naming the tar (by ``tar_identity``) that spans describe."""
    return {k: str(v).encode() for k, v in zip(_IDENTITY_KEYS, identity, strict=True)}


def identity_from_metadata(metadata: dict[bytes, bytes] | None) -> tuple[int, int] | None:
    if not metadata or not all(k in metadata for k in _IDENTITY_KEYS):
        return None
    size, mtime_ns = (int(metadata[k]) for k in _IDENTITY_KEYS)
    return size, mtime_ns


SPAN_COLUMNS = ("tar_start", "tar_end", "json_start", "json_end")


def span_columns(spans: list[tuple[int, int] | None],
                 json_spans: list[tuple[int, int] | None]) -> dict[str, pa.Array]:
    """Samples' ``span`` and ``json_span`` as the int64 columns of the embed step's metadata
    (null where a sample has none), which the write step copies by."""
    def column(values: list[tuple[int, int] | None], j: int) -> pa.Array:
        return pa.array([None if v is None else v[j] for v in values], pa.int64())

    return dict(zip(SPAN_COLUMNS, (column(spans, 0), column(spans, 1), column(json_spans, 0),
                                   column(json_spans, 1)), strict=True))


def iter_samples(url: str, name: str | None = None) -> Iterator[Sample]:
    """Stream one shard's samples, in tar order (members of a sample are consecutive).

    ``name`` is the shard's name in the run (``shard_names``; its file name by default):
    the samples' ``shard`` and the input of their derived uids.

    Raises ``CorruptShardError`` after the last complete sample when the tar is damaged
    (see the module docstring); a shard that cannot be opened raises fsspec's ``OSError``.
    """
    shard = name or shard_name(url)
    count = 0
    key: str | None = None
    members: list[tuple[str, bytes]] = []
    offsets: list[tuple[int, int]] = []
    with _open_stream(url) as f:
        stream = iter_member_spans(f)
        while True:
            try:
                item = next(stream, None)
            except _READ_ERRORS as err:
                reason = str(err) or type(err).__name__
                if isinstance(err, JoinedTars) and key is not None:  # its members all read
                    count += 1
                    yield _with_span(make_sample(shard, key, members), offsets)
                elif key is not None:  # the sample being read: a ledger row, failed
                    broken = make_sample(shard, key, members)
                    broken.failed_reason = f"the shard breaks off while this sample is read " \
                                           f"({reason})"
                    broken.span = broken.json_span = None
                    count += 1
                    yield broken
                raise CorruptShardError(url, count, reason, shard) from err
            if item is None:
                break
            member, data, start, data_start = item
            tail = member[len(key):] if key is not None and member.startswith(key) else ""
            if tail[:1] == "." and "/" not in tail:
                members.append((member, data))  # the common case: the sample goes on
                offsets.append((start, data_start))
                continue
            parts = split_member_name(member)
            if parts is None:
                continue  # a member of no sample: the next member's start shows the gap
            if key is not None:
                count += 1
                yield _with_span(make_sample(shard, key, members), offsets)
            key, members, offsets = parts[0], [(member, data)], [(start, data_start)]
    if key is not None:
        yield _with_span(make_sample(shard, key, members), offsets)


class ShardStream:
    """Iterate a shard's samples; damage ends the iteration quietly and sets ``.error``.

    ``.count`` is the number of samples yielded, so a caller can write a ledger entry for
    the damaged shard and go on with the next one.
    """

    def __init__(self, url: str, name: str | None = None) -> None:
        self.url = url
        self.name = name
        self.count = 0
        self.error: CorruptShardError | None = None

    def __iter__(self) -> Iterator[Sample]:
        try:
            for sample in iter_samples(self.url, self.name):
                self.count += 1
                yield sample
        except CorruptShardError as err:
            self.error = err


def decode_image(sample: Sample, rules: DecodeRules = DEFAULT_RULES) -> Image.Image:
    """The sample's image as a person sees it, in 8-bit RGB (``decode.decode_picture``);
    ``ImageDecodeError`` names the key and shard otherwise."""
    if sample.image_bytes is None:
        raise ImageDecodeError(f"no image for {sample.key} in shard {sample.shard}")
    return decode_picture(sample.image_bytes, max_pixels=rules.max_pixels,
                          background=rules.background,
                          where=f"{sample.key}.{sample.image_ext or '?'} in shard {sample.shard}")


