"""Pictures for the report (image path): for the largest, the most complex and the least
complex concepts, some kept and some pruned samples; and a few duplicate pairs semdedup found,
side by side with their similarity.

Samples are taken in ledger order, so they come from the first input shards and only those
shards are read again. Each picture is decoded as the models saw it (``decode_image``) and
saved as a small JPEG thumbnail beside the page; the full images are never copied.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io.decode import DecodeRules, ImageDecodeError
from pipeline.io.shards import ShardStream, decode_image

log = logging.getLogger(__name__)

PER_SIDE = 6  # kept and pruned samples shown per concept
PAIRS = 5  # duplicate pairs shown
THUMB = 160  # pixels, the longer side
_COLUMNS = ["key", "uid", "shard", "status", "stage", "cluster", "dup_of", "dup_similarity"]


def chosen_concepts(clusters: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(concept id, why it is shown): the largest, the most and the least complex."""
    rows = [c for c in clusters if c["size"]]
    if not rows:
        return []
    complex_rows = [c for c in rows if c["complexity"] is not None] or rows
    picks = [(max(rows, key=lambda c: (c["size"], -c["id"]))["id"], "largest"),
             (max(complex_rows, key=lambda c: (c["complexity"] or 0, -c["id"]))["id"],
              "most complex"),
             (min(complex_rows, key=lambda c: (c["complexity"] or 0, c["id"]))["id"],
              "least complex")]
    out: list[tuple[int, str]] = []
    for cid, why in picks:
        for i, (seen, reasons) in enumerate(out):
            if seen == cid:
                out[i] = (seen, f"{reasons}, {why}")
                break
        else:
            out.append((cid, why))
    return out


def _find_rows(ledger: Path, concepts: list[int], want_pairs: bool) -> tuple[dict, list]:
    """Ledger rows of the chosen concepts (kept / pruned by dbp) and semdedup removals."""
    picked: dict[tuple[int, str], list[dict]] = {(c, side): [] for c in concepts
                                                 for side in ("kept", "pruned")}
    pairs: list[dict] = []
    for path in sorted(ledger.glob("*.parquet")):
        table = pq.read_table(path, columns=_COLUMNS)
        for row in table.filter(pc.is_in(table["cluster"], pa.array(concepts, pa.int32()))
                                ).to_pylist() if concepts else []:
            side = ("kept" if row["status"] == "kept" else
                    "pruned" if row["status"] == "removed" and row["stage"] == "dbp" else None)
            slot = picked.get((row["cluster"], side or ""))
            if slot is not None and len(slot) < PER_SIDE:
                slot.append(row)
        if want_pairs and len(pairs) < PAIRS:
            removed = table.filter(pc.and_(pc.equal(table["stage"], "semdedup"),
                                           pc.equal(table["status"], "removed")))
            pairs += removed.slice(0, PAIRS - len(pairs)).to_pylist()
        if all(len(s) == PER_SIDE for s in picked.values()) and \
                (not want_pairs or len(pairs) == PAIRS):
            break
    return picked, pairs


def _partners(ledger: Path, uids: set[str]) -> dict[str, dict]:
    """The ledger rows of these uids (the samples duplicates were kept for)."""
    found: dict[str, dict] = {}
    for path in sorted(ledger.glob("*.parquet")):
        if len(found) == len(uids):
            break
        table = pq.read_table(path, columns=_COLUMNS)
        for row in table.filter(pc.is_in(table["uid"], pa.array(sorted(uids)))).to_pylist():
            found.setdefault(row["uid"], row)
    return found


def _thumbnails(rows: list[dict], urls: dict[str, str], folder: Path,
                rules: DecodeRules) -> dict[str, dict[str, Any]]:
    """A thumbnail and the caption of each row's sample, by uid, reading each shard once."""
    by_shard: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], {})[row["uid"]] = row
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, Any]] = {}
    for shard, wanted in by_shard.items():
        url = urls.get(shard)
        if url is None:
            continue
        left = dict(wanted)
        try:
            for sample in ShardStream(url, shard):
                if sample.uid not in left:
                    continue
                left.pop(sample.uid)
                entry: dict[str, Any] = {"caption": sample.caption or "", "thumb": None}
                try:
                    image = decode_image(sample, rules)
                    image.thumbnail((THUMB, THUMB))
                    name = f"{len(out):04d}.jpg"
                    image.save(folder / name, format="JPEG", quality=80)
                    entry["thumb"] = f"{folder.name}/{name}"
                except ImageDecodeError as err:
                    entry["error"] = str(err)
                out[sample.uid] = entry
                if not left:
                    break
        except OSError as err:  # a shard gone since the run: the page shows no picture
            log.warning("report: cannot read %s for its thumbnails: %s", url, err)
    return out


def _shown(row: dict, pictures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"key": row["key"], "shard": row["shard"], "uid": row["uid"],
            "status": row["status"],
            **pictures.get(row["uid"], {"caption": "", "thumb": None})}


def collect_examples(ledger: Path, clusters: list[dict[str, Any]], urls: dict[str, str],
                     folder: Path, rules: DecodeRules, semdedup: bool) -> dict[str, Any]:
    """The report's ``examples``: the chosen concepts' samples and the duplicate pairs, their
    thumbnails written to ``folder`` (named relative to the page)."""
    concepts = chosen_concepts(clusters)
    picked, removed = _find_rows(ledger, [c for c, _ in concepts], semdedup)
    partners = _partners(ledger, {r["dup_of"] for r in removed if r["dup_of"]})
    rows = [r for side in picked.values() for r in side] + removed + list(partners.values())
    pictures = _thumbnails(rows, urls, folder, rules)
    sizes = {c["id"]: c for c in clusters}
    return {
        "concepts": [{"id": cid, "why": why, "size": sizes[cid]["size"],
                      "kept_count": sizes[cid]["kept"],
                      "complexity": sizes[cid]["complexity"],
                      "kept": [_shown(r, pictures) for r in picked[(cid, "kept")]],
                      "pruned": [_shown(r, pictures) for r in picked[(cid, "pruned")]]}
                     for cid, why in concepts],
        "duplicate_pairs": [{"similarity": r["dup_similarity"],
                             "removed": _shown(r, pictures),
                             "kept_for": _shown(partners[r["dup_of"]], pictures)}
                            for r in removed if r["dup_of"] in partners],
    }
