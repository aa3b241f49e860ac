"""A generated LAION-style webdataset with known structure, for demos, tests and benchmarks.

Every sample draws a *concept*: a shape kind, a colour and a background texture. Concepts have
different visual spreads: at spread near 0 all its images look alike (same place, size,
colour, background); at spread 1 position, size, rotation, hue and background vary widely.
A fraction of samples are planted duplicates of an earlier original sample: exact copies
(the same image bytes under another key) and near copies (the image shifted by a pixel or
two, resized by a few percent and re-encoded at another JPEG quality). Plants keep their
source's concept and caption, under their own key and uid; sources come from any earlier
shard.

Shards are ``NNNNN.tar`` with ``{key}.jpg|png``, ``{key}.txt`` and ``{key}.json`` members,
written by ``ShardWriter`` (so with ``NNNNN.parquet`` and ``NNNNN_stats.json`` beside them
and deterministic tar headers: a seed gives the same tar bytes on every run with the same
Pillow / libjpeg / zlib).
``ground_truth.parquet`` has one row per sample: ``key``, ``uid``, ``concept``,
``concept_name``, and for planted duplicates ``kind`` ("exact" or "near"),
``duplicate_of_key`` and ``duplicate_of_uid`` (null for originals).
"""

from __future__ import annotations

import colorsys
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from pipeline.io.shard_writer import ShardWriter
from pipeline.workdir import write_parquet

SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond")
TEXTURES = ("plain", "gradient", "stripes", "checker", "noise")
_COLOUR_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue",
                 "violet", "purple", "magenta")
_TEMPLATES = ("a photo of a {c} {s} on a {t} background",
              "{c} {s}, {t} background",
              "picture of a {c} {s} over a {t} pattern",
              "a {s} in {c} on {t}")


@dataclass(frozen=True)
class Concept:
    """What a concept's images share, and how much they vary (``spread`` in [0, 1])."""

    id: int
    shape: str
    hue: float
    texture: str
    spread: float

    @property
    def colour(self) -> str:
        return _COLOUR_NAMES[int(self.hue * len(_COLOUR_NAMES)) % len(_COLOUR_NAMES)]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape} on {self.texture}"


def make_concepts(n: int, rng: np.random.Generator) -> list[Concept]:
    """``n`` concepts, spreads evenly from near-uniform (0.02) to highly varied (1.0)."""
    spreads = rng.permutation(np.linspace(0.02, 1.0, n)) if n > 1 else np.array([0.5])
    hues = (np.arange(n) / max(n, 1) + rng.uniform(0, 1)) % 1.0
    return [Concept(i, SHAPES[int(rng.integers(len(SHAPES)))], float(hues[i]),
                    TEXTURES[int(rng.integers(len(TEXTURES)))], float(spreads[i]))
            for i in range(n)]


def _rgb(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, np.clip(sat, 0, 1), np.clip(val, 0, 1)))


def _background(concept: Concept, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """An (h, w, 3) uint8 texture in two colours near the concept's complementary hue."""
    s = concept.spread
    texture = concept.texture
    if rng.random() < 0.5 * s:
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    c1 = _rgb(concept.hue + 0.5 + rng.normal(0, 0.2 * s), 0.25, 0.9 + rng.normal(0, 0.05 * s))
    c2 = _rgb(concept.hue + 0.5 + rng.normal(0, 0.2 * s), 0.45, 0.6 + rng.normal(0, 0.1 * s))
    y, x = np.ogrid[0:h, 0:w]
    x, y = x.astype(np.float32), y.astype(np.float32)
    period = max(4.0, (0.2 + 0.1 * rng.normal(0, s)) * min(w, h))
    if texture == "plain":
        t = np.zeros((h, w), np.float32)
    elif texture == "gradient":
        angle = rng.normal(0, np.pi * s)
        t = (np.cos(angle) * x + np.sin(angle) * y) / (w + h) + 0.5
    elif texture == "stripes":
        t = np.sin(2 * np.pi * (x + y * rng.normal(0, s)) / period) > 0
    elif texture == "checker":
        t = (x // (period / 2) + y // (period / 2)) % 2
    else:
        t = rng.random((h, w), dtype=np.float32)
    t = np.clip(np.broadcast_to(t, (h, w)), 0, 1).astype(np.float32)[..., None]
    c1, c2 = (255 * c1).astype(np.float32), (255 * c2).astype(np.float32)
    return (c1 + (c2 - c1) * t).astype(np.uint8)


def render(concept: Concept, rng: np.random.Generator, min_size: int = 64,
           max_size: int = 128) -> Image.Image:
    """One RGB image of the concept, varied by its spread."""
    s = concept.spread
    mid, span = (min_size + max_size) / 2, (max_size - min_size) * (0.2 + 0.8 * s)
    w, h = (round(v) for v in mid + span * rng.uniform(-0.5, 0.5, size=2))
    img = Image.fromarray(_background(concept, w, h, rng), "RGB")
    draw = ImageDraw.Draw(img)
    cx = w * (0.5 + rng.uniform(-0.3, 0.3) * s)
    cy = h * (0.5 + rng.uniform(-0.3, 0.3) * s)
    r = min(w, h) * 0.3 * (1 + rng.uniform(-0.5, 0.5) * s)
    angle = rng.uniform(0, 2 * np.pi) * s
    fill = tuple(int(v) for v in 255 * _rgb(concept.hue + rng.normal(0, 0.08 * s),
                                           0.85, 0.85 + rng.normal(0, 0.1 * s)))
    box = (cx - r, cy - r, cx + r, cy + r)
    if concept.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif concept.shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif concept.shape == "cross":
        for a in (angle, angle + np.pi / 2):
            dx, dy = r * np.cos(a), r * np.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill, width=max(2, int(r / 3)))
    else:
        corners = {"square": 4, "triangle": 3, "diamond": 4}[concept.shape]
        start = angle + (np.pi / 4 if concept.shape == "square" else np.pi / 2)
        points = [(cx + r * np.cos(start + 2 * np.pi * k / corners),
                   cy - r * np.sin(start + 2 * np.pi * k / corners)) for k in range(corners)]
        draw.polygon(points, fill=fill)
    return img


def encode(img: Image.Image, ext: str, quality: int = 90) -> bytes:
    """Image bytes in a fixed, deterministic encoding."""
    buf = io.BytesIO()
    if ext == "png":
        img.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def near_copy(data: bytes, rng: np.random.Generator) -> bytes:
    """A near duplicate: shifted by up to two pixels, resized by a few percent and
    re-encoded as JPEG at another quality."""
    with Image.open(io.BytesIO(data)) as src:
        img = src.convert("RGB")
    arr = np.asarray(img)
    dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
    arr = np.roll(arr, (dy, dx), axis=(0, 1))
    scale = 1 + rng.choice([-1, 1]) * rng.uniform(0.02, 0.06)
    size = (max(8, round(img.width * scale)), max(8, round(img.height * scale)))
    out = Image.fromarray(arr).resize(size, Image.Resampling.BILINEAR)
    return encode(out, "jpg", quality=int(rng.integers(60, 86)))


def _plant(n: int, n_exact: int, n_near: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(source, kind) per sample: source -1 for originals; kind 0 original, 1 exact, 2 near.
    A source is always an original that comes earlier."""
    planted = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, n_exact + n_near),
                                 replace=False)) if n > 1 else np.array([], np.int64)
    kind = np.zeros(n, np.int8)
    kind[planted] = np.where(rng.permutation(len(planted)) < n_exact, 1, 2)
    originals = np.flatnonzero(kind == 0)
    before = np.searchsorted(originals, planted)  # originals earlier than each plant (>= 1)
    source = np.full(n, -1, np.int64)
    source[planted] = originals[(rng.random(len(planted)) * before).astype(np.int64)]
    return source, kind


def synth_images(out_dir: str | Path, samples: int, seed: int = 0,
                 samples_per_shard: int = 1000, concepts: int = 10,
                 exact_dup_fraction: float = 0.05, near_dup_fraction: float = 0.05,
                 png_fraction: float = 0.2, min_size: int = 64,
                 max_size: int = 128) -> Path:
    """Write the shards, their sidecars and ``ground_truth.parquet`` to ``out_dir``."""
    if samples < 1 or concepts < 1:
        raise ValueError(f"samples and concepts must be positive, got {samples}, {concepts}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    catalog = make_concepts(concepts, rng)
    weights = rng.dirichlet(np.full(concepts, 2.0))
    source, kind = _plant(samples, int(exact_dup_fraction * samples),
                          int(near_dup_fraction * samples), rng)
    needed = set(source[source >= 0].tolist())
    concept_of = rng.choice(concepts, size=samples, p=weights)
    uids = [rng.bytes(16).hex() for _ in range(samples)]
    digits = max(4, len(str(samples_per_shard - 1)))
    keys = [f"{i // samples_per_shard:05d}{i % samples_per_shard:0{digits}d}"
            for i in range(samples)]
    images: dict[int, tuple[str, bytes]] = {}
    captions: list[str] = []
    with ShardWriter(out, max_count=samples_per_shard, max_bytes=1 << 62) as writer:
        for i in range(samples):
            if kind[i] == 0:
                concept = catalog[int(concept_of[i])]
                ext = "png" if rng.random() < png_fraction else "jpg"
                data = encode(render(concept, rng, min_size, max_size), ext,
                              quality=int(rng.integers(80, 96)))
                caption = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(
                    c=concept.colour, s=concept.shape, t=concept.texture)
                if i in needed:
                    images[i] = (ext, data)
            else:
                j = int(source[i])
                concept_of[i] = concept_of[j]
                concept = catalog[int(concept_of[j])]
                ext, data = images[j]
                caption = captions[j]
                if kind[i] == 2:
                    ext, data = "jpg", near_copy(data, rng)
            captions.append(caption)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
            meta = {"uid": uids[i], "key": keys[i], "url": f"https://example.invalid/{keys[i]}"
                    f".{ext}", "caption": caption, "width": width, "height": height,
                    "concept": concept.id, "status": "success"}
            writer.write([(f"{keys[i]}.{ext}", data), (f"{keys[i]}.txt", caption.encode()),
                          (f"{keys[i]}.json", json.dumps(meta).encode())], keys[i], meta)
    kinds = np.array([None, "exact", "near"], dtype=object)[kind]
    dup_of = [int(s) if s >= 0 else None for s in source]
    write_parquet(out / "ground_truth.parquet", pa.table({
        "key": pa.array(keys, pa.string()),
        "uid": pa.array(uids, pa.string()),
        "duplicate_of_key": pa.array([None if j is None else keys[j] for j in dup_of],
                                     pa.string()),
        "duplicate_of_uid": pa.array([None if j is None else uids[j] for j in dup_of],
                                     pa.string()),
        "kind": pa.array(kinds, pa.string()),
        "concept": pa.array(concept_of.astype(np.int32)),
        "concept_name": pa.array([catalog[c].name for c in concept_of], pa.string()),
    }))
    return out
