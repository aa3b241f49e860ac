"""The embed step's files in the work folder: ``embed/KIND/KIND_N.ext`` for the shard at
place N of the input list (a clip-retrieval layout the read step takes as it is), with the
marker ``embed-NNNNN`` holding the shard's fingerprint (its name, file identity and the
embed settings).

A shard's embeddings belong to the shard, not to its place: when a shard is added to or
removed from the list before others, the shards after it move, and their files and markers
move with them instead of being embedded again (hours of GPU time on a real list).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.workdir import WorkDir

log = logging.getLogger(__name__)

MOVING = ".moving"  # embed/.moving/N/KIND/...: files on their way to place N
NEEDED = ("metadata", "img_emb")  # the kinds every embedded shard has


def _number(path: Path) -> int | None:
    num = path.stem.rsplit("_", 1)[-1]
    return int(num) if num.isdigit() else None


def remove_embed_files(folder: Path, stale: Callable[[int], bool]) -> None:
    """Remove the embed step's numbered files (``KIND/KIND_N.ext``) whose N is ``stale``."""
    for path in folder.glob("*/*_*.*"):
        num = _number(path)
        if num is not None and stale(num):
            path.unlink(missing_ok=True)


def _movable(work: WorkDir, folder: Path, places: int, todo: Sequence[int],
             fingerprints: dict[int, str]
             ) -> list[tuple[int, int, dict[str, Any], list[Path]]]:
    """(new place, old place, old marker, old files) of every place in ``todo`` whose
    fingerprint an old place's marker holds (an old place past the list's end or itself to
    be embedded again) with the files every embedded shard has."""
    wanted = {fingerprints[i]: i for i in todo}
    free = set(todo)
    found: dict[int, tuple[int, int, dict[str, Any], list[Path]]] = {}
    for marker in sorted(work.markers.glob("embed-*.json")):
        old = int(marker.stem.split("-")[1])
        if old < places and old not in free:
            continue  # current where it is
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        new = wanted.get(data.get("fingerprint"))
        files = [p for p in folder.glob(f"*/*_{old}.*") if _number(p) == old]
        if new is None or new == old or new in found or \
                {p.parent.name for p in files} < set(NEEDED):
            continue
        found[new] = (new, old, data, files)
    return list(found.values())


def foreseen_moves(work: WorkDir, folder: Path, places: int, todo: Sequence[int],
                   fingerprints: dict[int, str]) -> set[int]:
    """The places in ``todo`` a run would fill by moving a shard's files (nothing moves)."""
    return {new for new, _, _, _ in _movable(work, folder, places, todo, fingerprints)}


def hold_moved(work: WorkDir, folder: Path, places: int, todo: Sequence[int],
               fingerprints: dict[int, str]) -> dict[int, dict[str, Any]]:
    """Set aside the files of shards embedded before at another place (``_movable``): each
    such place's files go to ``embed/.moving/NEW/``. Returns each new place's marker stats.
    Call ``place_moved`` after the stale files went."""
    shutil.rmtree(folder / MOVING, ignore_errors=True)  # what a killed attempt left
    held: dict[int, dict[str, Any]] = {}
    for new, old, data, files in _movable(work, folder, places, todo, fingerprints):
        for path in files:
            dest = folder / MOVING / str(new) / path.parent.name / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        held[new] = {"fingerprint": data["fingerprint"], "stats": data.get("stats", {}),
                     "from": old}
    return held


def place_moved(work: WorkDir, folder: Path, held: dict[int, dict[str, Any]]) -> None:
    """Put the files ``hold_moved`` set aside at their new places, then their markers."""
    for new, what in sorted(held.items()):
        old = what["from"]
        for path in sorted((folder / MOVING / str(new)).glob("*/*")):
            kind = path.parent.name
            os.replace(path, folder / kind / f"{kind}_{new}{path.suffix}")
        work.mark(f"embed-{new:05d}", what["fingerprint"], {**what["stats"], "index": new})
        log.info("embed: shard %s moved from place %d to %d in the input list; its "
                 "embeddings moved with it", what["stats"].get("url"), old, new)
    shutil.rmtree(folder / MOVING, ignore_errors=True)
