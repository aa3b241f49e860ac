"""Pictures for the tensor path's checks (tests/test_tensor_decode.py, and the GPU check's
``embed`` step, bench/gpu_check.py): JPEGs it must decode as PIL does (``TAKEN``), members
it must leave to the CPU path with the reason it gives (``REFUSED``), a shard holding all of
them. Everything is generated here, except the photographs this machine has installed.
No pytest here: the GPU check imports it without.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

BIG = 10**8  # a pixel limit no picture here reaches
SMALL_LIMIT = 100_000  # pixels: "big" (400 x 300) is over it, every other picture here under


def jpeg(img: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **params)
    return buf.getvalue()


def encoded(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photograph-like picture: smooth gradients, a few shapes, blurred noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width] / max(width, height)
    base = np.stack([200 * xx + 30, 180 * yy + 40, 120 * (1 - xx) + 60], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1, 3) * (height, width, max(width, height) / 3)
        base[(yy * max(width, height) - cy) ** 2 + (xx * max(width, height) - cx) ** 2
             < r ** 2] = rng.integers(0, 255, 3)
    base += rng.normal(0, 12, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(0.7))


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(img, quality=90, exif=exif)


def patched(data: bytes, marker: bytes, offset: int, value: int) -> bytes:
    """``data`` with the byte ``offset`` after the first ``marker`` set to ``value``."""
    out = bytearray(data)
    out[data.index(marker) + offset] = value
    return bytes(out)


def no_component(seed: int) -> bytes:
    """A JPEG whose scan names a component the frame lacks: libjpeg reads none of it (PIL:
    "broken data stream"), nvJPEG decoded it on an H200. The router refuses it (to the CPU
    path, which fails it), so it fails on both paths."""
    return patched(jpeg(photo(90, 70, seed)), b"\xff\xda", 5, 9)


def app1(body: bytes) -> bytes:
    return b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body


def with_segment(data: bytes, segment: bytes) -> bytes:
    """A marker segment inserted right after SOI."""
    return data[:2] + segment + data[2:]


def exif_entry(kind: int, count: int, value: int) -> bytes:
    """An EXIF block (little-endian TIFF) whose IFD0 holds one orientation entry."""
    entry = ((0x0112).to_bytes(2, "little") + kind.to_bytes(2, "little")
             + count.to_bytes(4, "little") + value.to_bytes(4, "little"))
    return b"Exif\x00\x00II*\x00" + (8).to_bytes(4, "little") + b"\x01\x00" + entry + bytes(4)


# an Adobe APP14 segment saying the three components are RGB, not YCbCr (transform 0)
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def real_photographs() -> list[tuple[str, bytes]]:
    """Photographs installed on this machine: matplotlib's sample (a declared dependency),
    Debian's wallpapers when those packages are there, and the JPEGs of the folder
    ``$JPEG_CORPUS_PHOTOS`` (photographs carried to a machine that has none)."""
    try:
        import matplotlib
    except ImportError:  # a GPU machine without it
        found = []
    else:
        found = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    for folder in (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers")):
        if folder.is_dir():
            found += sorted(p for p in folder.rglob("*")
                            if p.suffix.lower() in (".jpg", ".jpeg"))[:3]
    carried = os.environ.get("JPEG_CORPUS_PHOTOS")
    if carried and Path(carried).is_dir():
        found += sorted(p for p in Path(carried).rglob("*")
                        if p.suffix.lower() in (".jpg", ".jpeg"))
    return [(p.name, p.read_bytes()) for p in found if p.is_file()]


TAKEN = {
    "rgb": lambda: jpeg(photo(301, 227, 1), quality=90),
    "grey": lambda: jpeg(photo(200, 150, 2).convert("L"), quality=85),
    "progressive": lambda: jpeg(photo(257, 193, 3), quality=88, progressive=True),
    "444": lambda: jpeg(photo(120, 90, 4), quality=92, subsampling=0),
    "422": lambda: jpeg(photo(120, 90, 5), quality=92, subsampling=1),
    "tiny": lambda: jpeg(photo(9, 13, 6), quality=90),
    "thin": lambda: jpeg(photo(700, 41, 7), quality=90),
    "large": lambda: jpeg(photo(1600, 1201, 8), quality=80),
    **{f"exif{k}": (lambda k=k: with_orientation(photo(160, 96, 10 + k), k)) for k in range(1, 9)},
}

REFUSED = {
    "png": (lambda: encoded(photo(64, 48, 20), "PNG"), "not a JPEG"),
    "webp": (lambda: encoded(photo(64, 48, 21), "WEBP"), "not a JPEG"),
    "gif": (lambda: encoded(photo(64, 48, 22).convert("P"), "GIF"), "not a JPEG"),
    "cmyk": (lambda: jpeg(photo(64, 48, 23).convert("CMYK")), "4 colour components"),
    "12bit": (lambda: patched(jpeg(photo(64, 48, 24)), b"\xff\xc0", 4, 12), "12-bit"),
    "garbled": (lambda: b"\xff\xd8\xff" + bytes(range(256)) * 4, "garbled"),
    "strip": (lambda: jpeg(photo(400, 12, 25)), "longer than MAX_ASPECT"),  # the CPU crops it
    "truncated": (lambda: jpeg(photo(300, 200, 25))[:3000], "truncated"),
    "adobe_rgb": (lambda: with_segment(jpeg(photo(64, 48, 26)), ADOBE_RGB), "RGB-coded"),
    "big": (lambda: jpeg(photo(400, 300, 27)), "max_pixels"),
    "bad_exif": (lambda: with_segment(jpeg(photo(64, 48, 28)), app1(b"Exif\x00\x00XX")),
                 "unreadable EXIF"),
    "exif_long": (lambda: with_segment(jpeg(photo(64, 48, 29)), app1(exif_entry(4, 1, 6))),
                  "unusual type"),
    "two_exif": (lambda: with_segment(with_segment(jpeg(photo(64, 48, 30)), app1(
        exif_entry(3, 1, 6))), app1(exif_entry(3, 1, 3))), "more than one EXIF"),
    "mpo": (lambda: encoded(photo(64, 48, 32), "MPO", save_all=True,
                            append_images=[photo(64, 48, 33)]), "multi-picture"),
    "no_component": (lambda: no_component(34), "names a component the frame lacks"),
    "no_quant_table": (lambda: patched(jpeg(photo(64, 48, 35)), b"\xff\xc0", 12, 3),
                       "quantisation table is not defined"),
    "bad_huffman": (lambda: patched(jpeg(photo(64, 48, 36)), b"\xff\xc4", 5, 255),
                    "bad Huffman table"),
    "xmp": (lambda: with_segment(jpeg(photo(64, 48, 31)), app1(
        b"http://ns.adobe.com/xap/1.0/\x00<x tiff:Orientation=\"6\"/>")), "XMP"),
}


def write_shard(path: Path) -> list[str]:
    """A shard of every kind of member above (but the large JPEG; the refused kinds include
    three that no decoder reads), a transparent PNG, blank captions and a sample without
    its picture; the keys in order. With ``SMALL_LIMIT`` as embed.max_pixels, "big" is over
    the limit."""
    members: list[tuple[str, bytes]] = []
    keys = []
    pictures = [(n, "jpg", make()) for n, make in TAKEN.items() if n != "large"]
    pictures += [(n, {"png": "png", "webp": "webp", "gif": "gif"}.get(n, "jpg"), make())
                 for n, (make, _) in REFUSED.items()]
    pictures.append(("transparent", "png", encoded(Image.new("RGBA", (40, 30), (9, 9, 9, 0)),
                                                   "PNG")))
    for i, (name, ext, data) in enumerate(pictures):
        key = f"{i:04d}_{name}"
        keys.append(key)
        members.append((f"{key}.{ext}", data))
        caption = "  " if i % 5 == 3 else f"picture {name}"  # blank: no text embedding
        members.append((f"{key}.txt", caption.encode()))
    keys.append("9999_no_image")
    members.append(("9999_no_image.txt", b"a caption without its picture"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return keys
