"""Pictures for the report (image path): for the largest, the most complex and the least
complex concepts, some kept and some pruned members; some duplicate pairs semdedup found,
side by side with their similarity; and some samples clip_filter removed.

Each set is a seeded sample across all the input shards (``ledger_sample``), and only those
samples are read again, by their recorded byte spans where the embed step recorded them
(``pictures``: one ranged read per picture, at most ``pictures.MAX_SCANS`` shards streamed).
Every shown sample carries the ledger's step, reason and figures, from which the page says
why it was pruned (``explain``); the full images are never copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.io.decode import DecodeRules
from pipeline.report.ledger_sample import Group, rows_of, seeded_sample
from pipeline.report.pictures import read_pictures

PER_SIDE = 6  # kept and pruned samples shown per concept
PAIRS = 5  # duplicate pairs shown
CLIP_REMOVED = 6  # samples clip_filter removed, shown
_SHOWN = ("key", "shard", "uid", "status", "stage", "reason", "cluster", "distance",
          "clip_score", "dup_of", "dup_similarity")


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


def _shown(row: dict[str, Any], pictures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    shown = {name: row[name] for name in _SHOWN}
    return {**shown, **pictures.get(row["uid"], {"caption": "", "thumb": None})}


def collect_examples(ledger: Path, clusters: list[dict[str, Any]], urls: dict[str, str],
                     folder: Path, rules: DecodeRules, semdedup: bool, *, seed: int = 0,
                     metadata: Path | None = None, clip_filter: bool = False
                     ) -> dict[str, Any]:
    """The report's ``examples``: the chosen concepts' samples, the duplicate pairs and
    clip_filter's removals, their thumbnails written to ``folder`` (named relative to the
    page); ``metadata`` is the embed step's metadata folder (the samples' byte spans)."""
    concepts = chosen_concepts(clusters)
    groups: dict[Group, int] = {(side, cid): PER_SIDE for cid, _ in concepts
                                for side in ("kept", "pruned")}
    if semdedup:
        groups["pairs"] = PAIRS
    if clip_filter:
        groups["clip"] = CLIP_REMOVED
    picked, lowest = seeded_sample(ledger, groups, seed, clip_cut=clip_filter)
    removed = [r for r in picked.get("pairs", []) if r["dup_of"]]
    partners = rows_of(ledger, {r["dup_of"] for r in removed}) if removed else {}
    rows = [r for group in picked.values() for r in group] + list(partners.values())
    pictures = read_pictures(rows, urls, metadata, folder, rules)
    sizes = {c["id"]: c for c in clusters}
    out: dict[str, Any] = {
        "concepts": [{"id": cid, "why": why, "size": sizes[cid]["size"],
                      "kept_count": sizes[cid]["kept"],
                      "complexity": sizes[cid]["complexity"],
                      "kept": [_shown(r, pictures) for r in picked[("kept", cid)]],
                      "pruned": [_shown(r, pictures) for r in picked[("pruned", cid)]]}
                     for cid, why in concepts],
        "duplicate_pairs": [{"similarity": r["dup_similarity"],
                             "removed": _shown(r, pictures),
                             "kept_for": _shown(partners[r["dup_of"]], pictures)}
                            for r in removed if r["dup_of"] in partners
                            and r["dup_similarity"] is not None],
        "seed": seed,
    }
    if clip_filter:
        out["clip_removed"] = [_shown(r, pictures) for r in picked["clip"]]
        out["clip_lowest_kept"] = lowest
    return out
