"""The report's thumbnails, read from the input shards with a bounded number of reads.

- A sample whose byte span the embed step recorded (``SPAN_COLUMNS`` of
  ``WORK/embed/metadata/metadata_{part}.parquet``, row for row the ledger part's) in an
  uncompressed tar is read with one ranged read of that span, its own members and nothing
  else: a seek and a read in a local file (one that has not changed since it was embedded),
  a range request for a remote one. What is read must parse as that sample (same key and
  uid), or it counts as not read by span.
- The others are read by streaming their shard up to the last of them; at most
  ``MAX_SCANS`` shards are streamed (those holding the most of them first, then by name),
  and a picture in any other such shard is shown without its thumbnail, saying why.

So a report makes at most one ranged read (of at most ``MAX_SPAN`` bytes) per picture and
streams at most ``MAX_SCANS`` shards. Each picture is decoded as the models saw it
(``decode_image``) and saved as a small JPEG thumbnail beside the page.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.parquet as pq

from pipeline.io.decode import DecodeRules, ImageDecodeError
from pipeline.io.shards import (
    SPAN_COLUMNS,
    Sample,
    ShardStream,
    decode_image,
    identity_from_metadata,
    local_tar_path,
    make_sample,
    split_member_name,
    tar_identity,
)
from pipeline.io.tar import ZERO_BLOCK, TarDamage, iter_members

log = logging.getLogger(__name__)

THUMB = 160  # pixels, the longer side
MAX_SCANS = 4  # shards streamed for pictures without a usable span
MAX_SPAN = 64 << 20  # bytes: a larger sample is not read for its thumbnail
Span = tuple[int, int]


def _recorded(metadata: Path | None, part: int, url: str, rows: list[dict[str, Any]]
              ) -> dict[int, tuple[Span | None, str | None]]:
    """(span, caption) of these rows of one part, by ledger row, from the embed metadata;
    the span is None where it cannot be read by span."""
    path = None if metadata is None else metadata / f"metadata_{part}.parquet"
    if path is None or not path.exists():
        return {}
    parquet = pq.ParquetFile(path)
    names = set(parquet.schema_arrow.names)
    if "key" not in names:
        return {}
    spans_ok = set(SPAN_COLUMNS[:2]) <= names and url.lower().endswith(".tar")
    if spans_ok and local_tar_path(url) is not None:  # a local tar: the one embedded?
        spans_ok = identity_from_metadata(parquet.schema_arrow.metadata) == tar_identity(url)
    columns = ["key"] + (["caption"] if "caption" in names else []) + \
        (list(SPAN_COLUMNS[:2]) if spans_ok else [])
    table = parquet.read(columns=columns)
    out: dict[int, tuple[Span | None, str | None]] = {}
    for row in rows:
        if row["row"] >= table.num_rows:
            continue
        got = table.slice(row["row"], 1).to_pylist()[0]
        if got["key"] != row["key"]:
            continue  # not the row the ledger's is
        start, end = got.get("tar_start"), got.get("tar_end")
        span = (start, end) if start is not None and end is not None and \
            0 <= start < end and end - start <= MAX_SPAN else None
        out[row["row"]] = (span, got.get("caption"))
    return out


def read_span(url: str, shard: str, span: Span, key: str, uid: str) -> Sample | None:
    """The sample at ``span`` of the tar, or None where those bytes are not that sample."""
    start, end = span
    try:
        path = local_tar_path(url)
        with open(path, "rb") if path is not None else fsspec.open(url, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        members = list(iter_members(io.BytesIO(data + ZERO_BLOCK)))
    except (OSError, TarDamage) as err:
        log.warning("report: cannot read %s of %s for its thumbnail: %s", key, url, err)
        return None
    names = {split_member_name(name) for name, _ in members}
    if len(data) != end - start or not members or {n and n[0] for n in names} != {key}:
        return None
    sample = make_sample(shard, key, members)
    return sample if sample.uid == uid else None


def _thumbnail(sample: Sample, rules: DecodeRules, folder: Path, number: int
               ) -> dict[str, Any]:
    entry: dict[str, Any] = {"caption": sample.caption or "", "thumb": None}
    try:
        image = decode_image(sample, rules)
        image.thumbnail((THUMB, THUMB))
        name = f"{number:04d}.jpg"
        image.save(folder / name, format="JPEG", quality=80)
        entry["thumb"] = f"{folder.name}/{name}"
    except ImageDecodeError as err:
        entry["error"] = str(err)
    return entry


def _scan(url: str, shard: str, wanted: dict[str, dict[str, Any]],
          make: Callable[[Sample], None]) -> None:
    """Stream one shard up to the last wanted sample, making each one's thumbnail."""
    left = dict(wanted)
    try:
        for sample in ShardStream(url, shard):
            if left.pop(sample.uid, None) is not None:
                make(sample)
                if not left:
                    break
    except OSError as err:  # a shard gone since the run: the page shows no picture
        log.warning("report: cannot read %s for its thumbnails: %s", url, err)


def read_pictures(rows: list[dict[str, Any]], urls: dict[str, str], metadata: Path | None,
                  folder: Path, rules: DecodeRules) -> dict[str, dict[str, Any]]:
    """A thumbnail (or why there is none) and the caption of each row's sample, by uid; a
    row carries its ledger columns and ``part`` and ``row`` (``ledger_sample``)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, Any]] = {}

    def make(sample: Sample) -> None:
        out[sample.uid] = _thumbnail(sample, rules, folder, len(out))

    unique = {r["uid"]: r for r in rows}
    by_part: dict[int, list[dict[str, Any]]] = {}
    for row in unique.values():
        by_part.setdefault(row["part"], []).append(row)
    to_scan: dict[str, dict[str, dict[str, Any]]] = {}
    captions: dict[str, str] = {}
    for part, part_rows in sorted(by_part.items()):
        url = urls.get(part_rows[0]["shard"])
        if url is None:
            continue
        recorded = _recorded(metadata, part, url, part_rows)
        for row in sorted(part_rows, key=lambda r: r["row"]):
            span, caption = recorded.get(row["row"], (None, None))
            captions[row["uid"]] = caption or ""
            sample = None if span is None else read_span(url, row["shard"], span,
                                                         row["key"], row["uid"])
            if sample is not None:
                make(sample)
            else:
                to_scan.setdefault(row["shard"], {})[row["uid"]] = row
    order = sorted(to_scan, key=lambda shard: (-len(to_scan[shard]), shard))
    for shard in order[:MAX_SCANS]:
        _scan(urls[shard], shard, to_scan[shard], make)
    for shard in order[MAX_SCANS:]:
        for uid in to_scan[shard]:
            out[uid] = {"caption": captions.get(uid, ""), "thumb": None,
                        "error": f"not read: the page streams at most {MAX_SCANS} shards "
                                 "for samples without a recorded span"}
    return out
