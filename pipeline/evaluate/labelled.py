"""A labelled evaluation set: an ImageFolder-style folder (one folder per class, named by the
class) or webdataset shards whose samples carry a ``cls`` member (the class index) and an
image, with the class names in a file (one a line, in index order)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipeline.evaluate.settings import EvaluateError
from pipeline.io.decode import decode_picture

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
CLASSNAMES_FILE = "classnames.txt"  # beside the shards, when no --classnames is given
MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class LabelledSet:
    path: Path
    kind: str  # "folder" or "shards"
    classnames: list[str]
    items: list[tuple[str, int]]  # folder: (file, label); shards: (shard, -1)
    identity: str

    def images(self) -> Iterator[tuple[Image.Image, int]]:
        """(RGB picture, class index) in a fixed order."""
        if self.kind == "folder":
            for file, label in self.items:
                yield _picture(Path(file).read_bytes(), file), label
            return
        from pipeline.io.shards import iter_samples

        for shard, _ in self.items:
            for sample in iter_samples(shard):
                members = dict((name[len(sample.key) + 1:].lower(), data)
                               for name, data in sample.members)
                if "cls" not in members or sample.image_bytes is None:
                    raise EvaluateError(f"sample {sample.key} of {shard} has no "
                                        f"{'cls' if 'cls' not in members else 'image'} "
                                        "member: every sample of a labelled set needs both")
                label = _label(members["cls"], f"{sample.key}.cls in {shard}",
                               len(self.classnames))
                yield _picture(sample.image_bytes, f"{sample.key} in {shard}"), label


def _picture(data: bytes, where: str) -> Image.Image:
    return decode_picture(data, where=where, max_pixels=MAX_PIXELS,
                          background=(255, 255, 255))


def _label(data: bytes, where: str, classes: int) -> int:
    try:
        label = int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise EvaluateError(f"{where} is not a class index: write the index as text "
                            "(0, 1, ...)") from None
    if not 0 <= label < classes:
        raise EvaluateError(f"{where} is class {label}, but the class names list {classes} "
                            f"classes (0 to {classes - 1})")
    return label


def _identity(entries: list[tuple[str, int, int]], classnames: list[str]) -> str:
    blob = json.dumps([entries, classnames]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_labelled(path: str, classnames_file: str | None = None) -> LabelledSet:
    """The labelled set at ``path``, or an EvaluateError that says how to lay it out."""
    root = Path(path)
    names = None
    if classnames_file is not None:
        names = [line.strip() for line in Path(classnames_file).read_text().splitlines()
                 if line.strip()]
    if root.is_dir() and not list(root.glob("*.tar")):
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        items = [(str(f), label) for label, folder in enumerate(folders)
                 for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if len(folders) < 2 or not items:
            raise EvaluateError(f"{root}: a labelled folder holds one folder of images per "
                                "class (at least two), named by the class, or webdataset "
                                "shards with .cls members")
        if names is None:
            names = [f.name for f in folders]
        elif len(names) != len(folders):
            raise EvaluateError(f"{classnames_file} lists {len(names)} classes, {root} has "
                                f"{len(folders)} class folders")
        entries = [(Path(f).relative_to(root).as_posix(), (s := Path(f).stat()).st_size,
                    s.st_mtime_ns) for f, _ in items]
        return LabelledSet(root, "folder", names, items, _identity(entries, names))
    from pipeline.io.shards import expand_shards

    shards = expand_shards(str(root))
    if not shards:
        raise EvaluateError(f"{path}: no images or shards found")
    if names is None:
        beside = (root if root.is_dir() else Path(shards[0]).parent) / CLASSNAMES_FILE
        if not beside.exists():
            raise EvaluateError(f"{path}: shards need class names: give --classnames FILE "
                                f"(one name a line, class 0 first) or put {CLASSNAMES_FILE} "
                                "beside them")
        names = [line.strip() for line in beside.read_text().splitlines() if line.strip()]
    entries = [(s, (st := Path(s).stat()).st_size, st.st_mtime_ns) for s in shards]
    return LabelledSet(root, "shards", names, [(s, -1) for s in shards],
                       _identity(entries, names))
