"""decode_picture (SPEC 5b): every picture decoded to the 8-bit RGB a person sees.

All images are generated here; the whole file runs in about a second.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.io.decode import (
    DECODE_VERSION,
    ImageDecodeError,
    decode_picture,
    parse_background,
)

WHITE = (255, 255, 255)
BIG = 10**8  # a pixel limit no test image reaches


def encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """The bytes of ``img`` saved as ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes, background: tuple[int, int, int] | None = WHITE,
           max_pixels: int = BIG) -> np.ndarray:
    """decode_picture's pixels as an array; checks they are 8-bit RGB."""
    img = decode_picture(data, where="k.png in shard s", max_pixels=max_pixels,
                         background=background)
    assert img.mode == "RGB"
    return np.asarray(img)


def flatten(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """``rgba`` composited over ``background`` in floating point, rounded to 8 bits."""
    alpha = rgba[..., 3:4] / 255.0
    out = rgba[..., :3] * alpha + np.array(background, float) * (1.0 - alpha)
    return np.rint(out).astype(np.uint8)


@pytest.fixture(scope="module")
def clipart() -> np.ndarray:
    """A 64x64 RGBA drawing: a red disc with a soft edge and a blue bar on a see-through
    background whose RGB is random junk, as encoders leave it."""
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    dist = np.hypot(yy - 30, xx - 28)
    rgba[..., 3] = np.clip((20.0 - dist) * 60, 0, 255).astype(np.uint8)  # soft disc edge
    rgba[dist < 20, :3] = (220, 30, 40)
    rgba[50:58, 8:56] = (20, 40, 200, 255)
    return rgba


def test_transparent_png_looks_like_its_white_flattened_copies(clipart: np.ndarray) -> None:
    on_white = flatten(clipart, WHITE)
    got = decode(encode(Image.fromarray(clipart)))
    assert np.array_equal(got, decode(encode(Image.fromarray(on_white))))
    soft = (clipart[..., 3] > 0) & (clipart[..., 3] < 255)
    assert soft.sum() > 20  # the edge is blended, not thresholded
    assert np.array_equal(got[soft], on_white[soft])
    jpeg = decode(encode(Image.fromarray(on_white), "JPEG", quality=95))
    assert np.abs(got.astype(int) - jpeg.astype(int)).mean() < 3


@pytest.mark.parametrize("background", [(0, 0, 0), (16, 32, 48)])
def test_other_backgrounds(clipart: np.ndarray, background: tuple[int, int, int]) -> None:
    got = decode(encode(Image.fromarray(clipart)), background)
    assert np.array_equal(got, flatten(clipart, background))
    assert tuple(got[0, 63]) == background  # a fully transparent corner


def test_background_none_drops_alpha_and_shows_the_junk(clipart: np.ndarray) -> None:
    assert np.array_equal(decode(encode(Image.fromarray(clipart)), None), clipart[..., :3])


def upright_test_image() -> Image.Image:
    """40 wide, 20 high, with no symmetry: any turn or flip changes it."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, 20, dtype=np.uint8)[:, None]
    arr[:5, :8, 2] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    img = upright_test_image()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: show rotated 90 degrees clockwise
    params = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    got = decode(encode(img, fmt, exif=exif.tobytes(), **params))
    want = np.asarray(img.transpose(Image.Transpose.ROTATE_270))
    assert got.shape == (40, 20, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 4


# How a viewer shows the stored pixels ``s`` (rows, columns, bands) for each EXIF orientation,
# from the tag's definition (where the stored 0th row and 0th column go), not from PIL:
SHOWN = {
    1: lambda s: s,  # 0th row at the top, 0th column on the left: as stored
    2: lambda s: s[:, ::-1],  # top, right: mirrored left-right
    3: lambda s: s[::-1, ::-1],  # bottom, right: turned half a turn
    4: lambda s: s[::-1],  # bottom, left: mirrored top-bottom
    5: lambda s: s.transpose(1, 0, 2),  # left, top: mirrored over the main diagonal
    6: lambda s: np.rot90(s, -1),  # right, top: turned a quarter clockwise
    7: lambda s: np.rot90(s, 2).transpose(1, 0, 2),  # right, bottom: the other diagonal
    8: lambda s: np.rot90(s, 1),  # left, bottom: turned a quarter counter-clockwise
}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_every_exif_orientation_shows_the_picture_as_a_viewer_does(
        orientation: int, fmt: str) -> None:
    stored = upright_test_image()
    exif = Image.Exif()
    exif[0x0112] = orientation
    params = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    got = decode(encode(stored, fmt, exif=exif.tobytes(), **params))
    want = SHOWN[orientation](np.asarray(stored))
    assert got.shape == want.shape
    if fmt == "PNG":
        assert np.array_equal(got, want)  # lossless: every pixel in its place
    else:
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 4
    # no other arrangement of the 8 would pass: the test image has no symmetry
    others = [o for o, shown in SHOWN.items() if shown(np.asarray(stored)).shape == want.shape
              and np.abs(shown(np.asarray(stored)).astype(int) - got.astype(int)).max() <= 4]
    assert others == [orientation]


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    cmyk.paste((255, 0, 255, 0), (8, 0, 16, 16))  # green
    got = decode(encode(cmyk, "JPEG", quality=100))
    assert np.abs(got[:, :6].astype(int) - (255, 0, 0)).max() <= 6
    assert np.abs(got[:, 10:].astype(int) - (0, 255, 0)).max() <= 6


SIXTEEN = np.array([[0, 257, 1000, 32896, 65535, 65535]], np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "PPM", "TIFF"])
def test_sixteen_bit_is_scaled_not_clipped(fmt: str) -> None:
    data = encode(Image.fromarray(SIXTEEN), fmt)
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I;16B", "I")  # the wide path
    got = decode(data)
    want = np.rint(SIXTEEN / 257).astype(np.uint8)  # 0, 1, 4, 128, 255, 255
    assert np.array_equal(got, np.repeat(want[..., None], 3, axis=2))


def test_sixteen_bit_colour_key_is_transparent() -> None:
    data = encode(Image.fromarray(SIXTEEN), "PNG", transparency=1000)
    assert np.array_equal(decode(data, (0, 0, 9))[0, :3], [[0, 0, 0], [1, 1, 1], [0, 0, 9]])


def test_float_image_in_unit_range() -> None:
    arr = np.array([[0.0, 0.5, 1.0]], np.float32)
    got = decode(encode(Image.fromarray(arr, "F"), "TIFF"))
    assert got[0, :, 0].tolist() == [0, 128, 255]


def test_grey_with_alpha() -> None:
    data = encode(Image.new("LA", (4, 4), (100, 128)))
    assert decode(data)[0, 0].tolist() == [177] * 3  # 100 * 128/255 + 255 * 127/255


def test_palette_with_transparent_index() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    img.paste(1, (0, 0, 2, 4))
    got = decode(encode(img, transparency=0))
    assert got[0, 0].tolist() == [200, 10, 10] and got[0, 3].tolist() == [255, 255, 255]
    assert decode(encode(img, transparency=0), None)[0, 3].tolist() == [0, 0, 0]


def test_rgb_colour_key() -> None:
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    img.paste((50, 60, 70), (0, 0, 2, 4))
    got = decode(encode(img, transparency=(1, 2, 3)), (9, 9, 9))
    assert got[0, 0].tolist() == [50, 60, 70] and got[0, 3].tolist() == [9, 9, 9]


def test_greyscale_and_bilevel() -> None:
    assert decode(encode(Image.new("L", (3, 3), 77)))[1, 1].tolist() == [77] * 3
    assert decode(encode(Image.new("1", (3, 3), 1)))[1, 1].tolist() == [255] * 3
    assert decode(encode(Image.new("L", (3, 3), 77), "JPEG"))[1, 1].tolist() == [77] * 3


@pytest.mark.parametrize("fmt, params", [("GIF", {}), ("WEBP", {"lossless": True}),
                                         ("PNG", {})])
def test_animation_gives_its_first_frame(fmt: str, params: dict[str, object]) -> None:
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100,
                  loop=0, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert decode(data)[4, 4].tolist() == [255, 0, 0]


def test_plain_rgb_jpeg_stays_usable() -> None:
    data = encode(upright_test_image(), "JPEG", quality=100)
    img = decode_picture(data, where="k.jpg in shard s", max_pixels=BIG, background=WHITE)
    assert img.size == (40, 20) and img.mode == "RGB"
    assert img.convert("RGB").resize((4, 2)).size == (4, 2)  # the file is closed: no matter


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB pixels and holds almost none."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 9))


def test_too_many_pixels_is_refused_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    data = png_header_only(3000, 3000)
    with pytest.raises(ImageDecodeError, match="cannot decode"):  # the pixels are not there
        decode(data)

    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageDecodeError) as caught:
        decode(data, max_pixels=1_000_000)
    message = str(caught.value)
    assert "3000 x 3000 = 9000000 pixels" in message and "k.png in shard s" in message
    assert "raise embed.max_pixels" in message


def test_a_decompression_bomb_gets_the_same_message() -> None:
    with pytest.raises(ImageDecodeError, match=r"400000000 pixels.*raise embed\.max_pixels"):
        decode(png_header_only(20000, 20000), max_pixels=40_000_000)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_a_bomb_warning_raised_as_an_error_gets_the_same_message() -> None:
    with pytest.raises(ImageDecodeError, match=r"100000000 pixels.*raise embed\.max_pixels"):
        decode(png_header_only(10000, 10000), max_pixels=40_000_000)


@pytest.mark.parametrize("data", [b"not an image at all", b"", encode(Image.new("RGB", (64, 64)),
                                                                    "JPEG")[:300]])
def test_bad_bytes_give_the_same_plain_text_every_time(data: bytes) -> None:
    messages = set()
    for _ in range(2):
        with pytest.raises(ImageDecodeError) as caught:
            decode(data)
        messages.add(str(caught.value))
    (message,) = messages
    assert message.startswith("cannot decode image k.png in shard s: ")
    assert "0x" not in message


@pytest.mark.parametrize("text, colour", [
    ("white", (255, 255, 255)), ("black", (0, 0, 0)), ("none", None), (" White ", WHITE),
    ("#102030", (16, 32, 48)), ("#FFfF00", (255, 255, 0)), ("16,32,48", (16, 32, 48)),
    ("0, 0, 255", (0, 0, 255)),
])
def test_parse_background_accepts(text: str, colour: tuple[int, int, int] | None) -> None:
    assert parse_background(text) == colour


@pytest.mark.parametrize("text", ["grey", "#12345", "#1234567", "#gggggg", "1,2", "1,2,256",
                                  "-1,2,3", "1,2,3,4", ""])
def test_parse_background_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"#rrggbb or r,g,b") as caught:
        parse_background(text)
    assert repr(text) in str(caught.value)


def test_decode_version_is_an_int() -> None:
    assert isinstance(DECODE_VERSION, int) and DECODE_VERSION >= 1


@pytest.mark.parametrize("size", [(40_000, 2), (3, 9_000), (200, 10), (2, 40)])
def test_a_strip_is_cut_to_its_middle_not_blown_up_by_the_models(size: tuple[int, int]
                                                                 ) -> None:
    """A model resizes the short side up and keeps the centre: a 40,000 x 2 strip would
    become millions of pixels long. Longer than MAX_ASPECT x its short side, a picture keeps
    its middle; up to it, the picture is untouched."""
    from pipeline.io.decode import MAX_ASPECT

    w, h = size
    ramp = (np.arange(max(w, h)) % 251).astype(np.uint8)
    pixels = np.repeat((ramp[None, :] if w > h else ramp[:, None])[..., None], 3, axis=2)
    pixels = np.broadcast_to(pixels, (h, w, 3)).copy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    got = np.asarray(decode_picture(buf.getvalue(), where="x", max_pixels=10**9,
                                    background=(255, 255, 255)))
    short, long = min(w, h), max(w, h)
    kept = min(long, MAX_ASPECT * short)
    assert got.shape[:2] == ((h, kept) if w > h else (kept, w))
    start = (long - kept) // 2
    want = pixels[:, start:start + kept] if w > h else pixels[start:start + kept]
    assert np.array_equal(got, want)
