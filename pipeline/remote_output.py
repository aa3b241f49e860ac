"""An output folder in object storage (``s3://bucket/pruned``, any fsspec URL).

The run itself writes a local mirror of the output (its swaps, locks and resumes need a file
system), then this module uploads it: the shards and the ledger first, ``subset.npy``, the
report last, and the manifest of what runs wrote there at the very end, so a reader who sees
the report sees a complete output. Like a local output, a remote one that holds files no run
wrote is refused unless ``overwrite``, and a rerun deletes only the files its manifest lists.

The mirror and the work folder are local: ``work`` when it is set (the mirror in
``WORK/_output``), else ``~/.cache/conceptprune/<hash of the URL>/``. Two runs on one remote
output from different machines are not kept apart (the lock is the local mirror's).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import fsspec

from pipeline.errors import RunError
from pipeline.output_guard import MANIFEST, NAMED, OVERWRITE_HINT, FolderNotOursError

log = logging.getLogger(__name__)

UPLOAD_ORDER = ("shards", "ledger", "subset.npy", "logs", "report")  # report: last of all


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local_places(output: str, work: str | None) -> tuple[Path, Path]:
    """(the local mirror of ``output``, the local work folder)."""
    if work is not None:
        if is_remote(work):
            raise RunError(f"work {work!r} must be a local folder (intermediates need a file "
                             "system); leave it unset to use ~/.cache/conceptprune")
        return Path(work) / "_output", Path(work)
    root = Path.home() / ".cache" / "conceptprune" / hashlib.sha256(
        output.encode()).hexdigest()[:16]
    return root / "output", root / "work"


def _manifest(fs: Any, root: str) -> dict[str, Any] | None:  # noqa: ANN401 - fsspec fs
    try:
        data = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def claim_remote(output: str, overwrite: bool) -> None:
    """Refuse, touching nothing, a remote output holding files no run wrote."""
    fs, root = fsspec.core.url_to_fs(output)
    if not fs.exists(root):
        return
    found = [p[len(root) + 1:] for p in fs.find(root)]
    manifest = _manifest(fs, root)
    known = set((manifest or {}).get("files", {})) | {MANIFEST}
    foreign = [name for name in found
               if name not in known and name.split("/", 1)[0] not in NAMED]
    if manifest is None:
        foreign = [name for name in found if name != MANIFEST]
    if foreign and not overwrite:
        raise FolderNotOursError(
            f"the output {output} already holds files no conceptprune run wrote there "
            f"({', '.join(sorted(foreign)[:3])}{', ...' if len(foreign) > 3 else ''}): "
            f"choose a new or empty output, or {OVERWRITE_HINT}")


def upload(local: Path, output: str) -> None:
    """Put the local mirror's output at ``output``: what the last run listed goes first,
    then the entries in ``UPLOAD_ORDER``, then the manifest."""
    fs, root = fsspec.core.url_to_fs(output)
    old = _manifest(fs, root) or {}
    stale = [f"{root}/{name}" for name in old.get("files", {})]
    stale = [p for p in stale if fs.exists(p)]
    if stale:
        fs.rm(stale)
    for entry in UPLOAD_ORDER:
        source = local / entry
        if source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()
                               and not p.name.startswith(".")):
                fs.put_file(str(path), f"{root}/{path.relative_to(local).as_posix()}")
        elif source.is_file():
            fs.put_file(str(source), f"{root}/{entry}")
    if (local / MANIFEST).exists():
        fs.put_file(str(local / MANIFEST), f"{root}/{MANIFEST}")
    log.info("uploaded the output to %s", output)
