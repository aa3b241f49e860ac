"""A generated corpus of hostile inputs, each with the outcome a user should get: a counted
ledger failure with a reason that names the problem, a sample read as usual, or a clear error
that names the problem and the fix. One image run reads every sample-level and shard-level
case at once, beside a shard of ordinary pictures; its ledger must account for every sample
the corpus holds (none lost, none invented). Run-level cases (embeddings, metadata, config,
file system) each get their own run.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_error_messages import _restore_logging, cli, make_data, one_line, write_config
from test_resume_images import assert_same_result
from test_shards import png_header_only

from pipeline.config import validate_config
from pipeline.runner import run
from pipeline.synth.images import synth_images

__all__ = ["_restore_logging"]

OK = "ok"  # read, decoded and pruned as usual: kept or removed, never failed


@dataclass(frozen=True)
class Case:
    """One hostile sample: its members and what the ledger must say of it."""

    key: str
    members: list[tuple[str, bytes]]
    stage: str  # OK, or the stage its failure is recorded at
    reason: str = ""  # a part of the failure's reason


def image(mode: str = "RGB", size: tuple[int, int] = (40, 30), fmt: str = "PNG",
          **params: object) -> bytes:
    colour = {"RGB": (200, 30, 30), "RGBA": (30, 200, 30, 128), "CMYK": (0, 200, 200, 0),
              "I;16": 40000, "L": 90}[mode]
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt, **params)
    return buf.getvalue()


def sample(key: str, img: bytes | None = None, caption: bytes | None = b"a caption",
           meta: dict | bytes | None = None, ext: str = "png") -> list[tuple[str, bytes]]:
    members = [] if img is None else [(f"{key}.{ext}", img)]
    if caption is not None:
        members.append((f"{key}.txt", caption))
    data = meta if isinstance(meta, bytes) else json.dumps(meta or {}).encode()
    members.append((f"{key}.json", data))
    return members


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def sideways() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return image(exif=exif)


TAKEN_UID = "f" * 32  # the first ordinary picture's uid, given again below

CASES = [
    Case("../../etc/evil", sample("../../etc/evil", image()), "read", "climbs out of the tar"),
    Case("/abs/evil", sample("/abs/evil", image()), "read", "is absolute or climbs out"),
    Case("twice", [("twice.png", image()), ("twice.png", image()), ("twice.txt", b"c")],
         "read", "duplicate member twice.png"),
    Case("nocaption", sample("nocaption", image(), caption=None), "read", "missing caption"),
    Case("noimage", sample("noimage"), "read", "missing image"),
    Case("tiffonly", sample("tiffonly", image(fmt="TIFF"), ext="tiff"), "read",
         "missing image"),  # not an image extension webdataset shards carry
    Case("latin1", sample("latin1", image(), caption="café".encode("latin-1")), "read",
         "undecodable caption"),
    Case("badjson", sample("badjson", image(), meta=b"{not json"), "read", "undecodable json"),
    Case("jsonlist", sample("jsonlist", image(), meta=b"[1, 2]"), "read", "is not an object"),
    Case("shortuid", sample("shortuid", image(), meta={"uid": "abc"}), "read", "invalid uid"),
    Case("intuid", sample("intuid", image(), meta={"uid": 7}), "read", "invalid uid 7"),
    Case("takenuid", sample("takenuid", image(), meta={"uid": TAKEN_UID}), "read",
         f"duplicate uid {TAKEN_UID}"),
    Case("garbage", sample("garbage", b"\x00garbage" * 20), "embed", "cannot decode image"),
    Case("emptyimg", sample("emptyimg", b""), "embed", "cannot decode image"),
    Case("cutjpeg", sample("cutjpeg", image(size=(300, 200), fmt="JPEG")[:400], ext="jpg"),
         "embed", "cannot decode image"),
    Case("huge", sample("huge", png_header_only(12000, 12000)), "embed",
         "more than embed.max_pixels=40000000"),
    Case("bomb", sample("bomb", png_header_only(20000, 20000)), "embed",
         "more than embed.max_pixels=40000000"),
    Case("pngasjpg", sample("pngasjpg", image(), ext="jpg"), OK),
    Case("emptycap", sample("emptycap", image(), caption=b""), OK),
    Case("script", sample("script", image(), caption=b"<script>alert(1)</script>"), OK),
    Case("longcap", sample("longcap", image(), caption=b"x" * 200_000), OK),
    Case("upperuid", sample("upperuid", image(), meta={"uid": "ABCDEF" + "0" * 26}), OK),
    Case("nulluid", sample("nulluid", image(), meta={"uid": None}), OK),
    Case("alpha", sample("alpha", image("RGBA")), OK),
    Case("cmyk", sample("cmyk", image("CMYK", fmt="JPEG"), ext="jpg"), OK),
    Case("deep16", sample("deep16", image("I;16")), OK),
    Case("grey", sample("grey", image("L")), OK),
    Case("animated", sample("animated", animated_webp(), ext="webp"), OK),
    Case("animgif", sample("animgif", animated_gif(), ext="gif"), OK),
    Case("sideways", sample("sideways", sideways()), OK),
    Case("ключ", sample("ключ", image()), OK),
    Case("with space", sample("with space", image()), OK),
    Case("dir/in/key", sample("dir/in/key", image()), OK),
    # webdataset reads __index__.json as a sample too (its skip_meta wants __x__ or __x__/)
    Case("__index__", [("__index__.json", b"{}")], "read", "missing image"),
]
NOT_SAMPLES = [("README", b"no extension: a member of no sample"),
               ("__meta__/notes.txt", b"webdataset's meta folder")]


def tar_of(members: list[tuple[str, bytes]]) -> tuple[bytes, list[int]]:
    """The tar's bytes and each member's data offset."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return raw, [m.offset_data for m in tar.getmembers()]


def plain(n: int, prefix: str) -> list[tuple[str, bytes]]:
    return [m for i in range(n) for m in sample(f"{prefix}{i}", image(size=(40 + i, 30)))]


@dataclass(frozen=True)
class ShardCase:
    """A whole shard damaged some way: how many of its samples read well, and whether the
    sample being read when it broke off gets a failed row."""

    name: str
    make: Callable[[], bytes]
    good: int
    broken: int
    damaged: bool


def cut_inside_third_sample() -> bytes:
    raw, offsets = tar_of(plain(4, "cut"))
    return raw[: offsets[6] + 10]  # inside the third sample's image: the second is pending


def bad_checksum() -> bytes:
    raw, offsets = tar_of(plain(4, "sum"))
    header = offsets[6] - 512  # the third sample's first header
    return raw[:header + 148] + b"9999999\x00" + raw[header + 156:]


def no_end_marker() -> bytes:
    raw, offsets = tar_of(plain(3, "noend"))
    last = len(plain(1, "x")[-1][1])  # the last json's size
    return raw[: offsets[-1] + -(-last // 512) * 512]  # every member whole, no marker


def gzip_cut() -> bytes:
    raw, _ = tar_of(plain(8, "gz"))
    packed = gzip.compress(raw, mtime=0)
    return packed[: len(packed) * 3 // 4]


SHARD_CASES = [
    ShardCase("truncated.tar", cut_inside_third_sample, 1, 1, True),
    ShardCase("checksum.tar", bad_checksum, 1, 1, True),
    ShardCase("noend.tar", no_end_marker, 2, 1, True),
    ShardCase("zero.tar", lambda: b"", 0, 0, True),
    ShardCase("noise.tar", lambda: bytes(np.random.default_rng(1).integers(0, 256, 3000,
                                                                           np.uint8)), 0, 0, True),
    ShardCase("notgzip.tar.gz", lambda: tar_of(plain(2, "ng"))[0], 0, 0, True),
    ShardCase("fine.tar.xz", lambda: lzma.compress(tar_of(plain(3, "xz"))[0]), 3, 0, False),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile") / "in"
    synth_images(root / "ordinary", 40, seed=2, samples_per_shard=40, concepts=3)
    members = [m for case in CASES for m in case.members]
    cut = len(CASES[0].members)  # between two samples
    members[cut:cut] = NOT_SAMPLES
    (root / "hostile").mkdir()
    (root / "hostile" / "00000.tar").write_bytes(tar_of(members)[0])
    # the ordinary shard's first sample gets TAKEN_UID, so the hostile copy comes later
    tar = root / "ordinary" / "00000.tar"
    with tarfile.open(tar) as t:
        ordinary = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    for i, (name, data) in enumerate(ordinary):
        if name.endswith(".json"):
            ordinary[i] = (name, json.dumps({**json.loads(data), "uid": TAKEN_UID}).encode())
            break
    tar.write_bytes(tar_of(ordinary)[0])
    for case in SHARD_CASES:
        (root / "damaged").mkdir(exist_ok=True)
        (root / "damaged" / case.name).write_bytes(case.make())
    return root


def corpus_config(corpus: Path, out: Path) -> object:
    shards = [str(corpus / "ordinary" / "00000.tar"), str(corpus / "hostile" / "00000.tar"),
              *(str(corpus / "damaged" / c.name) for c in SHARD_CASES)]
    return validate_config({
        "input": {"shards": shards}, "output": str(out), "seed": 0, "progress": False,
        "embed": {"model": "conceptprune-tiny-vit", "pretrained": None, "batch_size": 16,
                  "workers": 0},
        "semdedup": {"k": 2, "eps": 0.0001}, "dbp": {"k": 2, "keep_fraction": 0.5},
        "kmeans": {"niter": 2}})


@pytest.fixture(scope="module")
def local_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("hostile-local") / "out"
    return out, run(corpus_config(corpus, out)).input_samples


def test_every_hostile_input_gets_its_outcome_and_every_sample_is_accounted_for(
        local_run: tuple[Path, int]) -> None:
    assert len(CASES) + len(NOT_SAMPLES) + len(SHARD_CASES) >= 30
    out, input_samples = local_run
    rows = pq.read_table(out / "ledger").to_pylist()
    by_shard: dict[str, list[dict]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], []).append(row)

    hostile = {r["key"]: r for r in by_shard["hostile/00000.tar"]}
    assert set(hostile) == {c.key for c in CASES}, "one row per sample, none invented"
    for case in CASES:
        row = hostile[case.key]
        if case.stage == OK:
            assert row["status"] in ("kept", "removed"), (case.key, row["reason"])
        else:
            assert (row["status"], row["stage"]) == ("failed", case.stage), case.key
            assert case.reason in row["reason"], (case.key, row["reason"])
            assert " at 0x" not in row["reason"] and "BytesIO" not in row["reason"]
    assert hostile["upperuid"]["uid"] == "ABCDEF" + "0" * 26
    assert hostile["script"]["status"] != "failed"

    report = json.loads((out / "report" / "report.json").read_text())
    damaged = {Path(d["shard"]).name: d for d in report["embed"]["damaged_shards"]}
    for case in SHARD_CASES:
        got = by_shard.get(f"damaged/{case.name}", [])
        fine = [r for r in got if r["status"] != "failed"]
        broke = [r for r in got if "breaks off while this sample is read" in (r["reason"] or "")]
        assert (len(fine), len(broke), len(got)) == (case.good, case.broken,
                                                     case.good + case.broken), case.name
        assert (case.name in damaged) == case.damaged, case.name

    corpus_samples = 40 + len(CASES) + sum(c.good + c.broken for c in SHARD_CASES)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("kept", "removed", "failed")}
    assert len(rows) == input_samples == report["input_samples"] == corpus_samples
    assert sum(counts.values()) == corpus_samples, "a sample unaccounted for"
    assert counts["failed"] == report["failed"]
    written = sum(1 for _ in (out / "shards").glob("*.tar"))
    assert written and report["output_shards"]["samples"] == counts["kept"]


def test_the_corpus_gives_the_same_bytes_on_ray(corpus: Path, local_run: tuple[Path, int],
                                                tmp_path: Path) -> None:
    """Every outcome above holds on Ray: its ledger, subset and shards are the local run's."""
    pytest.importorskip("ray")
    import tempfile

    from pipeline.engines.ray_engine import RayEngine

    temp = tempfile.mkdtemp(prefix="cp-ray-", dir="/tmp")  # Ray's socket paths stay short
    engine = RayEngine(num_cpus=2, object_store_gb=0.25, temp_dir=temp, progress=False)
    try:
        run(corpus_config(corpus, tmp_path / "ray"), engine=engine)
    finally:
        engine.close()
        shutil.rmtree(temp, ignore_errors=True)
    local, _ = local_run
    assert_same_result(tmp_path / "ray", local)  # ledger, shards and subset


def write_embeddings_case(tmp_path: Path, case: str) -> Path:
    """An embeddings input broken one way; the config of a run over it."""
    data = make_data(tmp_path, files=2)
    img = sorted((data / "img_emb").glob("*.npy"))
    meta = sorted((data / "metadata").glob("*.parquet"))
    if case == "nan-rows":
        arr = np.load(img[0])
        arr[:3] = np.nan
        np.save(img[0], arr)
    elif case == "zero-rows":
        arr = np.load(img[0])
        arr[:2] = 0
        np.save(img[0], arr)
    elif case == "short-metadata":
        pq.write_table(pq.read_table(meta[0]).slice(1), meta[0])
    elif case == "no-key-column":
        pq.write_table(pq.read_table(meta[0]).drop(["image_path"]), meta[0])
    elif case == "other-dim":
        np.save(img[1], np.ones((np.load(img[1]).shape[0], 5), np.float16))
    elif case == "string-array":
        np.save(img[0], np.array(["a", "b"]))
    return data


EMBEDDING_CASES = [  # (case, exit code, what the output must say)
    ("nan-rows", 0, None),
    ("zero-rows", 0, None),
    ("short-metadata", 1, "metadata_0.parquet"),
    ("no-key-column", 1, "image_path"),
    ("other-dim", 1, "img_emb_1.npy"),
    ("string-array", 1, "img_emb_0.npy"),
]


@pytest.mark.parametrize(("case", "code", "says"), EMBEDDING_CASES,
                         ids=[c[0] for c in EMBEDDING_CASES])
def test_hostile_embeddings(tmp_path: Path, case: str, code: int, says: str | None) -> None:
    data = write_embeddings_case(tmp_path, case)
    res = cli(str(write_config(tmp_path, data)))
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    if code == 0:  # counted failures with their reason, every sample in the ledger
        rows = pq.read_table(tmp_path / "out" / "ledger").to_pylist()
        failed = [r for r in rows if r["status"] == "failed"]
        assert len(failed) == (3 if case == "nan-rows" else 2)
        assert all("embedding" in r["reason"] for r in failed)
    else:
        assert says in one_line(res.output)


RUN_CASES = [  # (case, settings, what the error must say)
    ("keep more than all", {"dbp.keep_fraction": 1.5}, "dbp.keep_fraction"),
    ("unknown setting", {"dbp.keeep": 3}, "keeep"),
    ("impossible budget", {"dbp.balance": 1.0, "dbp.k": 40, "dbp.keep_fraction": 0.01},
     "lower bounds"),
    ("negative eps", {"semdedup.eps": -1}, "semdedup.eps"),
    ("not a colour", {"embed.background": "mauve-ish"}, "mauve-ish"),
]


@pytest.mark.parametrize(("case", "settings", "says"), RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_hostile_settings(tmp_path: Path, case: str, settings: dict, says: str) -> None:
    data = make_data(tmp_path)
    res = cli(str(write_config(tmp_path, data, **settings)))
    assert res.exit_code != 0 and "Traceback" not in res.output, case
    assert says in one_line(res.output), res.output


def test_hostile_file_system(tmp_path: Path) -> None:
    """An output path that is a file, an input pattern matching nothing, an input shard that
    is a folder named like a tar: each a clear error naming the path."""
    data = make_data(tmp_path)
    (tmp_path / "afile").write_text("x")
    res = cli(str(write_config(tmp_path, data, output=str(tmp_path / "afile"))))
    assert res.exit_code == 1 and "afile" in one_line(res.output)
    res = cli(str(write_config(tmp_path, None, **{"input.embeddings": None,
                                                  "input.shards": str(tmp_path / "no*.tar")})))
    assert res.exit_code == 1 and "no shards match" in one_line(res.output)
    (tmp_path / "dir.tar").mkdir()
    res = cli(str(write_config(tmp_path, None, **{"input.embeddings": None,
                                                  "input.shards": str(tmp_path / "dir.tar")})))
    assert res.exit_code == 1 and "dir.tar" in one_line(res.output)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_img2dataset_parquet_or_arrow_output_is_named(tmp_path: Path, fmt: str) -> None:
    """img2dataset's output_format parquet / arrow: the error names the format found and
    the ones read."""
    folder = tmp_path / "img2dataset_out"
    folder.mkdir()
    (folder / f"00000.{fmt}").write_bytes(b"not read")
    (folder / "00000_stats.json").write_text("{}")
    res = cli(str(write_config(tmp_path, None, **{"input.embeddings": None,
                                                  "input.shards": str(folder)})))
    text = one_line(res.output)
    assert res.exit_code == 1 and f"holds {fmt} files but no .tar shards" in text
    assert "--output_format webdataset" in text and "input.embeddings" in text
