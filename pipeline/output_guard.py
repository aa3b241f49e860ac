"""A run owns what it writes, and only that.

The output folder carries a manifest (``.conceptprune-output.json``) naming every file a run
wrote where runs replace whole entries (``shards/``, ``ledger/``); the work folder carries
one too. Before anything is written, a run refuses a folder that holds files no run wrote
there, unless told to take it over (``overwrite``), so a user's files are never deleted by
surprise. Files are added to the manifest before they are swapped in, so a run killed at
any point leaves only files the next run knows as its own.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import ConceptpruneError
from pipeline.run_lock import LOCK_NAME
from pipeline.workdir import read_json, unfinished_name, write_json

log = logging.getLogger(__name__)

MANIFEST = ".conceptprune-output.json"
WORK_MANIFEST = ".conceptprune-work.json"
CHECKED = ("shards", "ledger")  # replaced whole by a run: their files are listed
NAMED = ("subset.npy", "report", "logs")  # a run's by name in a folder that has the manifest
OVERWRITE_HINT = ("pass --overwrite (or --set overwrite=true) to let this run replace what it "
                  "writes there")


class FolderNotOursError(ConceptpruneError, ValueError):
    """A folder holds files no run of this tool wrote."""


def _files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (unfinished writes aside): path relative to its parent
    -> size."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not unfinished_name(path.name):
            out[str(path.relative_to(folder.parent))] = path.stat().st_size
    return out


def check_folder_paths(output: Path, work: Path) -> None:
    """Before anything is made in them: the output and work paths are not files."""
    if output.exists() and not output.is_dir():
        raise FolderNotOursError(
            f"the output {output} is a file, not a folder: set output to a folder (new or "
            "one an earlier run wrote)")
    if work.exists() and not work.is_dir():
        raise FolderNotOursError(f"the work folder {work} is a file: set work to a folder")


def claim_output(output: Path, overwrite: bool) -> None:
    """Make ``output`` this run's, or refuse it (nothing touched) when it holds files no run
    wrote in the entries a run replaces; clean what killed runs left unfinished."""
    output.mkdir(parents=True, exist_ok=True)
    manifest = read_json(output / MANIFEST)
    if manifest is None:
        others = sorted(p.name for p in output.iterdir() if p.name != LOCK_NAME)
        if others and not overwrite:
            raise FolderNotOursError(
                f"the output folder {output} already holds files no conceptprune run wrote "
                f"there ({_some(others)}): choose a new or empty output folder, or "
                f"{OVERWRITE_HINT} ({', '.join(CHECKED + NAMED)}; other files are never "
                "touched)")
        manifest = {"tool": "conceptprune", "files": {}}
    else:
        known = manifest.get("files", {})
        foreign = [name for entry in CHECKED if (output / entry).exists()
                   for name, size in _files(output / entry).items()
                   if known.get(name) != size]
        if foreign and not overwrite:
            raise FolderNotOursError(
                f"{output} holds files no conceptprune run wrote, in folders a run replaces "
                f"whole ({_some(foreign)}): move them out of {output}, or {OVERWRITE_HINT}")
    for entry in CHECKED + NAMED:
        _clean_unfinished(output / entry)
    _clean_unfinished(output, recursive=False)
    write_json(output / MANIFEST, manifest)


def own(output: Path, entry: str, source: Path) -> None:
    """Before ``source`` (a finished staging folder) becomes ``output/entry``: list its files
    in the manifest, so a kill right after the swap leaves no file the next run would not
    know as its own."""
    manifest = read_json(output / MANIFEST) or {"tool": "conceptprune", "files": {}}
    files = {k: v for k, v in manifest.get("files", {}).items()
             if not k.startswith(f"{entry}/")}
    for name, size in _files(source).items():
        files[f"{entry}/{name.split('/', 1)[1]}"] = size
    # the old entry's files stay listed too until the swap is done: both are the run's
    for name, size in (_files(output / entry).items() if (output / entry).exists() else ()):
        files.setdefault(name, size)
    manifest["files"] = files
    write_json(output / MANIFEST, manifest)


def settle(output: Path, entries: Iterable[str] = CHECKED) -> None:
    """After the swaps: the manifest lists exactly what the entries now hold."""
    manifest = read_json(output / MANIFEST) or {"tool": "conceptprune", "files": {}}
    files = {}
    for entry in entries:
        if (output / entry).exists():
            files.update(_files(output / entry))
    manifest["files"] = files
    write_json(output / MANIFEST, manifest)


def claim_work(work: Path, overwrite: bool) -> None:
    """The work folder, like the output: new, empty, or one a run made (its manifest)."""
    work.mkdir(parents=True, exist_ok=True)
    if read_json(work / WORK_MANIFEST) is None:
        others = sorted(p.name for p in work.iterdir() if p.name != LOCK_NAME)
        if others and not overwrite:
            raise FolderNotOursError(
                f"the work folder {work} already holds files no conceptprune run wrote there "
                f"({_some(others)}): a run deletes and rewrites the step folders in its work "
                f"folder, so set work to a new or empty folder, or {OVERWRITE_HINT}")
        write_json(work / WORK_MANIFEST, {"tool": "conceptprune"})
    _clean_unfinished(work)


def sweep_unfinished(output: Path, work: Path) -> None:
    """After a run stopped and its tasks with it: the unfinished writes it leaves (this run
    still holds both folders' locks)."""
    for entry in CHECKED + NAMED:
        _clean_unfinished(output / entry)
    _clean_unfinished(output, recursive=False)
    _clean_unfinished(work)


def _clean_unfinished(folder: Path, recursive: bool = True) -> None:
    """Remove the unfinished writes of killed runs (this run holds the folder's lock)."""
    if not folder.is_dir():
        return
    for path in list(folder.rglob(".*") if recursive else folder.glob(".*")):
        if unfinished_name(path.name) and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def user_file_in_output(path: Path, output: Path) -> bool:
    """Whether ``path`` lies in an entry of ``output`` that a run replaces (``shards/``,
    ``ledger/``, ``report/``, ...) yet is no file a run wrote there (not in the manifest with
    its size): a user's file that the run would delete."""
    if not any(inside(path, output / e) for e in CHECKED + NAMED):
        return False
    known = (read_json(output / MANIFEST) or {}).get("files", {})
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(output))
    try:
        return known.get(Path(rel).as_posix()) != path.stat().st_size
    except OSError:
        return False


def written_by_runs(path: Path, output: Path, work: Path) -> bool:
    """Whether ``path`` lies where a run writes: its output's entries or its work folder."""
    return inside(path, work) or any(inside(path, output / e) for e in CHECKED + NAMED)


def inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def _some(names: list[str], shown: int = 5) -> str:
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
