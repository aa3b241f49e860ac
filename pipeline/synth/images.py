"""A generated LAION-style webdataset with known structure, for demos, tests and benchmarks.

Every sample draws a *concept*: a shape kind, a colour and a background texture. Concepts have
different visual spreads: at spread near 0 all its images look alike (same place, size,
colour, background); at spread 1 position, size, rotation, hue and background vary widely.
A fraction of samples are planted duplicates of an earlier original sample: exact copies
(the same image bytes under another key) and near copies (the image shifted by a pixel or
two, resized by a few percent and re-encoded at another JPEG quality). Plants keep their
source's concept and caption, under their own key and uid; sources come from any earlier
shard.

That is the default ``style="shapes"``. ``style="scenes"`` (the demo's) draws richer
pictures (``render_scene``): a textured background, a dozen small unrelated objects and one
or more of the concept's shape, with spread deciding how far texture, colours, count,
brightness and focus stray from the concept's own look. On a pretrained image model's
features its near copies (``near_copy_scene``: re-encoded, cropped by a pixel, resized by
a few percent or shifted in colour, in the source's format) stay closer to their source
than any two different pictures of a concept, which the default shapes do not.

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
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from pipeline.io.shard_writer import ShardWriter
from pipeline.workdir import write_parquet

STYLES = ("shapes", "scenes")
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
    _draw_shape(draw, concept.shape, cx, cy, r, angle, fill)
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                angle: float, fill: tuple[int, ...]) -> None:
    """One filled shape of radius ``r`` centred at (cx, cy), turned by ``angle``."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif shape == "cross":
        for a in (angle, angle + np.pi / 2):
            dx, dy = r * np.cos(a), r * np.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill, width=max(2, int(r / 3)))
    else:
        corners = {"square": 4, "triangle": 3, "diamond": 4}[shape]
        start = angle + (np.pi / 4 if shape == "square" else np.pi / 2)
        points = [(cx + r * np.cos(start + 2 * np.pi * k / corners),
                   cy - r * np.sin(start + 2 * np.pi * k / corners)) for k in range(corners)]
        draw.polygon(points, fill=fill)


def _concept_look(concept: Concept) -> np.ndarray:
    """The concept's own background look, fixed per concept: texture period (share of the
    picture's side), texture angle, hue, and saturation and value of its two colours."""
    crng = np.random.default_rng([concept.id, round(concept.hue * 1e6)])
    return _look_draw(crng, (concept.hue + 0.5) % 1.0)


def _look_draw(rng: np.random.Generator, hue: float) -> np.ndarray:
    """A random background look (the fields of ``_concept_look``) with the given hue."""
    return np.array([rng.uniform(0.08, 0.35), rng.uniform(0, np.pi), hue,
                     rng.uniform(0.1, 0.4), rng.uniform(0.75, 0.95),
                     rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.7)])


def _smooth_field(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """An (h, w) field in [0, 1] that varies smoothly over about ``cells`` cells a side."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    field = Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(field, np.float32) / 255


def _scene_layer(texture: str, look: np.ndarray, spread: float, w: int, h: int,
                 rng: np.random.Generator) -> Image.Image:
    """A (w, h) RGB textured background whose period, angle and colours move from ``look``
    towards a fresh random draw: 30 % of the way at spread 0 (so no two are alike), all the
    way at spread 1."""
    period, angle, hue, sat1, val1, sat2, val2 = look + (0.3 + 0.7 * spread) * (
        _look_draw(rng, rng.random()) - look)
    period, angle = float(period * min(w, h)), float(angle)
    y, x = np.ogrid[0:h, 0:w]
    y, x = y.astype(np.float32), x.astype(np.float32)
    u = np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y
    if texture == "plain":
        t = 0.3 * _smooth_field(rng, w, h, 3)
    elif texture == "gradient":
        t = (u - u.min()) / (np.ptp(u) + 1e-6)
    elif texture == "stripes":
        t = np.sin(2 * np.pi * u / period) > 0
    elif texture == "checker":
        v = np.float32(np.cos(angle)) * y - np.float32(np.sin(angle)) * x
        t = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period) > 0
    else:
        t = _smooth_field(rng, w, h, max(3, int(3 / (period / min(w, h)))))
    levels = np.broadcast_to(np.asarray(t, np.float32) * 255, (h, w)).astype(np.uint8)
    c1, c2 = 255 * _rgb(hue, sat1, val1), 255 * _rgb(hue + 0.08, sat2, val2)
    palette = (c1 + (c2 - c1) * np.linspace(0, 1, 256)[:, None]).astype(np.uint8)
    img = Image.fromarray(levels, "P")
    img.putpalette(palette.tobytes())
    return img.convert("RGB")


def render_scene(concept: Concept, rng: np.random.Generator, min_size: int = 128,
                 max_size: int = 192) -> Image.Image:
    """One richer picture of the concept, for the demo: a textured background (sometimes split
    in two), a dozen small unrelated objects, and one or more of the concept's shape.

    Many small independent parts keep any two pictures of a concept apart in an image model's
    features, so semantic deduplication need not take look-alikes for copies; ``spread``
    decides how far the big parts (texture kind and look, colours, number and hue of the
    concept's shapes, clutter, brightness, saturation, focus) stray from the concept's own.
    Drawn at twice the size and reduced, so edges are smooth and a resized copy stays close
    to its source.
    """
    s = concept.spread
    w, h = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    big_w, big_h, m = 2 * w, 2 * h, 2 * min(w, h)
    look = _concept_look(concept)
    texture = concept.texture
    if rng.random() < 0.8 * s:
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    img = _scene_layer(texture, look, s, big_w, big_h, rng)
    if rng.random() < 0.6 * s:  # a second texture on one side of a random line
        other = _scene_layer(TEXTURES[int(rng.integers(len(TEXTURES)))], look, 1.0,
                             big_w, big_h, rng)
        y, x = np.ogrid[0:big_h, 0:big_w]
        a = rng.uniform(0, 2 * np.pi)
        side = np.cos(a) * (x - rng.uniform(0, big_w)) + np.sin(a) * (y - rng.uniform(0, big_h))
        img = Image.composite(other, img, Image.fromarray((side > 0).astype(np.uint8) * 255))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.poisson(12 + 6 * s))):
        fill = tuple(int(v) for v in 255 * _rgb(rng.random(), rng.uniform(0.2, 0.9),
                                               rng.uniform(0.2, 0.95)))
        if rng.random() < 0.3:
            draw.line(tuple(rng.uniform(0, 1, 4) * [big_w, big_h, big_w, big_h]), fill=fill,
                      width=int(rng.integers(2, max(3, m // 20))))
        else:
            _draw_shape(draw, SHAPES[int(rng.integers(len(SHAPES)))], rng.uniform(0, big_w),
                        rng.uniform(0, big_h), m * rng.uniform(0.02, 0.07),
                        rng.uniform(0, 2 * np.pi), fill)
    for _ in range(1 + int(rng.poisson(2.5 * s))):
        fill = tuple(int(v) for v in 255 * _rgb(concept.hue + rng.normal(0, 0.02 + 0.15 * s),
                                               0.85, rng.uniform(0.6, 0.95)))
        _draw_shape(draw, concept.shape, rng.uniform(0.15, 0.85) * big_w,
                    rng.uniform(0.15, 0.85) * big_h, m * rng.uniform(0.1, 0.3),
                    rng.uniform(0, 2 * np.pi), fill)
    img = img.resize((w, h), Image.Resampling.BOX)
    img = ImageEnhance.Brightness(img).enhance(float(np.exp(rng.normal(0, 0.3 * s))))
    img = ImageEnhance.Color(img).enhance(rng.uniform(1 - 0.9 * s, 1 + 0.45 * s))
    blur = rng.uniform(0, 0.03 * min(w, h) * s)  # out of focus, up to 3 % of the side
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur >= 0.3 else img


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


def near_copy_scene(data: bytes, ext: str, quality: int, rng: np.random.Generator) -> bytes:
    """A near duplicate as sites make them, one change of: re-encoded, cropped by up to a
    pixel a side, resized by 1.5-3 %, or shifted a little in colour; written again in the
    source's format, a JPEG at the source's quality or up to 3 above."""
    with Image.open(io.BytesIO(data)) as src:
        img = src.convert("RGB")
    w, h = img.size
    change = int(rng.integers(4))
    if change == 1:
        left, top, right, bottom = (int(v) for v in rng.integers(0, 2, size=4))
        img = img.crop((left, top, w - right, h - bottom))
    elif change == 2:
        scale = 1 + rng.choice([-1, 1]) * rng.uniform(0.015, 0.03)
        img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    elif change == 3:
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.94, 1.06))
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.96, 1.04))
    return encode(img, ext, quality=min(95, quality + int(rng.integers(0, 4))))


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
                 max_size: int = 128, style: str = "shapes") -> Path:
    """Write the shards, their sidecars and ``ground_truth.parquet`` to ``out_dir``.

    ``style``: "shapes", one shape on a background (``render``, ``near_copy``), or "scenes",
    richer pictures whose look-alikes stay apart from near copies in an image model's
    features (``render_scene``, ``near_copy_scene``), as the demo needs.
    """
    if samples < 1 or concepts < 1:
        raise ValueError(f"samples and concepts must be positive, got {samples}, {concepts}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: use one of {', '.join(STYLES)}")
    paint = render_scene if style == "scenes" else render
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
    images: dict[int, tuple[str, bytes, int]] = {}
    captions: list[str] = []
    with ShardWriter(out, max_count=samples_per_shard, max_bytes=1 << 62) as writer:
        for i in range(samples):
            if kind[i] == 0:
                concept = catalog[int(concept_of[i])]
                ext = "png" if rng.random() < png_fraction else "jpg"
                picture = paint(concept, rng, min_size, max_size)
                quality = int(rng.integers(80, 96))
                data = encode(picture, ext, quality=quality)
                caption = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(
                    c=concept.colour, s=concept.shape, t=concept.texture)
                if i in needed:
                    images[i] = (ext, data, quality)
            else:
                j = int(source[i])
                concept_of[i] = concept_of[j]
                concept = catalog[int(concept_of[j])]
                ext, data, quality = images[j]
                caption = captions[j]
                if kind[i] == 2 and style == "scenes":
                    data = near_copy_scene(data, ext, quality, rng)
                elif kind[i] == 2:
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
