"""Decode a sample's image bytes into the 8-bit RGB picture a person would see (SPEC 5b).

``decode_picture`` is the one decoding function of the pipeline, so every model sees pictures
the same way. In SPEC 5b's order it:

1. refuses, from the header and before any pixel is decoded, an image declaring more than
   ``max_pixels`` pixels (a 144-megapixel PNG takes 1.1 GB decoded);
2. keeps the first frame of an animated GIF / WebP / APNG (the frame ``Image.open`` is on);
3. applies the EXIF orientation, as viewers do (phone photos are stored sideways);
4. brings CMYK, 16-bit, float and greyscale modes to 8-bit RGB: 16-bit values are scaled
   (65535 -> 255), where PIL's own ``convert`` clips them to 255;
5. composites any transparency (an alpha band, a palette's transparent index, a PNG
   colour key) over a background colour, white by default as img2dataset does: the RGB
   under transparent pixels is whatever the encoder left (mostly black, sometimes noise),
   which nobody sees. ``background=None`` drops alpha instead, as open_clip's
   ``convert("RGB")`` does;
6. crops a picture longer than ``MAX_ASPECT`` times its short side to its middle
   ``MAX_ASPECT`` x short side: models resize the short side up to theirs and keep only the
   centre, so a 40,000 x 1 strip would become 9M x 224 pixels (8 GB) for a square's worth.

Any failure is an ``ImageDecodeError`` whose text is the same on every run (no addresses).
``DECODE_VERSION`` goes into the embed step's fingerprint: bump it when these rules change, so
embeddings made under the old rules are redone.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import ConceptpruneError

DECODE_VERSION = 2  # 2: an unreadable EXIF block no longer fails the picture
MAX_ASPECT = 20  # longest side / shortest side kept (step 6)
DEFAULT_MAX_PIXELS = 40_000_000  # SPEC §5b; PIL's own limit warns at 89M and stops at 179M
DEFAULT_BACKGROUND = "white"
BACKGROUNDS: dict[str, tuple[int, int, int] | None] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "none": None,
}
BACKGROUND_FORMS = "white, black, none, #rrggbb or r,g,b (each 0-255)"

_ORIENTATION = 0x0112  # EXIF tag; 1 = as stored
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
# object reprs: their addresses differ from run to run, and the stream PIL was handed tells a
# user nothing ("cannot identify image file <_io.BytesIO object at 0x7f...>")
_ADDRESS = re.compile(r" ?<_io\.BytesIO object[^>]*>| at 0x[0-9a-fA-F]+")
_HEX = re.compile(r"#([0-9a-fA-F]{6})")
_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


@dataclass(frozen=True)
class DecodeRules:
    """The decoding settings (``embed.max_pixels``, ``embed.background``) as a worker takes
    them: the pixel limit and the background colour (None: drop alpha)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    background: tuple[int, int, int] | None = (255, 255, 255)


DEFAULT_RULES = DecodeRules()


class ImageDecodeError(ConceptpruneError, ValueError):
    """The image bytes of a sample cannot be decoded."""


def parse_background(value: str) -> tuple[int, int, int] | None:
    """The background colour a setting names; None for ``none`` (drop alpha).

    Accepts a name of ``BACKGROUNDS``, ``#rrggbb`` or ``r,g,b``; case and spaces are ignored.
    """
    text = str(value).strip().lower()
    if text in BACKGROUNDS:
        return BACKGROUNDS[text]
    hex_match = _HEX.fullmatch(text)
    if hex_match:
        digits = hex_match.group(1)
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
        return (int(parts[0]), int(parts[1]), int(parts[2]))
    raise ValueError(f"background {value!r} is not a colour: use {BACKGROUND_FORMS}")


def decode_picture(data: bytes, *, where: str, max_pixels: int,
                   background: tuple[int, int, int] | None) -> Image.Image:
    """``data`` decoded to an 8-bit RGB image as described in the module docstring.

    ``where`` names the image in error messages (key and shard). A plain RGB image without
    EXIF rotation is returned as loaded, without a copy.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_size(img.size, where, max_pixels)
            img.load()
            return _middle(_to_rgb(_upright(img), background))
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(_bomb_message(err, where, max_pixels)) from err
    except Exception as err:  # PIL raises many types for bad bytes
        reason = _ADDRESS.sub("", str(err)) or type(err).__name__
        raise ImageDecodeError(f"cannot decode image {where}: {reason}") from err


def _middle(img: Image.Image) -> Image.Image:
    """The picture, or its middle MAX_ASPECT x short side where it is longer (step 6)."""
    w, h = img.size
    short = max(1, min(w, h))
    if max(w, h) <= MAX_ASPECT * short:
        return img
    if w > h:
        left = (w - MAX_ASPECT * short) // 2
        return img.crop((left, 0, left + MAX_ASPECT * short, h))
    top = (h - MAX_ASPECT * short) // 2
    return img.crop((0, top, w, top + MAX_ASPECT * short))


def _check_size(size: tuple[int, int], where: str, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels."""
    width, height = size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image {where} has {width} x {height} = {width * height} pixels, more than "
            f"embed.max_pixels={max_pixels}: not decoded (raise embed.max_pixels to embed it)")


def _bomb_message(err: Exception, where: str, max_pixels: int) -> str:
    """PIL refused the image at open (its decompression-bomb limit): say so plainly."""
    found = _BOMB_PIXELS.search(str(err))
    pixels = int(found.group(1)) if found else None
    if pixels is not None and pixels > max_pixels:
        return (f"image {where} has {pixels} pixels, more than embed.max_pixels={max_pixels}: "
                "not decoded (raise embed.max_pixels to embed it)")
    return (f"image {where} exceeds PIL's decompression-bomb limit "
            f"(PIL.Image.MAX_IMAGE_PIXELS): not decoded: {_ADDRESS.sub('', str(err))}")


def _upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; itself when no turn is needed or the
    EXIF block cannot be read (a PNG eXIf chunk that is no TIFF): viewers show such a
    picture as stored."""
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - PIL raises SyntaxError, ValueError, struct.error...
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


def _to_rgb(img: Image.Image, background: tuple[int, int, int] | None) -> Image.Image:
    """8-bit RGB: wide modes scaled, transparency composited over ``background`` (or dropped)."""
    if img.mode in _WIDE_MODES:
        img = _narrow(img)
    see_through = _has_transparency(img)
    if img.mode == "RGB" and not see_through:
        return img
    if not see_through:
        return img.convert("RGB")  # L, 1, P, CMYK (Adobe's inverted CMYK too), YCbCr, ...
    if img.mode == "La":
        img = img.convert("LA")  # premultiplied: PIL has no direct La -> RGBA
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # keys and palettes -> alpha
    if background is None:
        return rgba.convert("RGB")
    out = Image.new("RGB", rgba.size, background)
    out.paste(rgba, mask=rgba)  # alpha blend: rgb * a + background * (1 - a), rounded
    return out


def _has_transparency(img: Image.Image) -> bool:
    """Whether some pixels may be see-through: an alpha band, a colour key, an RGBA palette."""
    if img.mode in _ALPHA_MODES or img.info.get("transparency") is not None:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"


def _narrow(img: Image.Image) -> Image.Image:
    """A 16-bit / 32-bit / float image as 8-bit L (LA when a colour key marks transparency).

    "I;16*" and "I" (PIL's mode for 16-bit PNG, PGM, TIFF) are read as 0..65535 and scaled by
    1/257; "F" in 0..1 is scaled by 255, larger floats as 16-bit values.
    """
    values = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0 / 257.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    else:
        wide = np.clip(values.astype(np.int64), 0, 65535)
        grey = ((wide + 128) // 257).astype(np.uint8)  # round(v / 257): 65535 -> 255
    out = Image.fromarray(grey)
    key = img.info.get("transparency")
    if isinstance(key, int | float):
        alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8))
        return Image.merge("LA", (out, alpha))
    return out
