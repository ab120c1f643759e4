"""embedfm.images: query images are converted the way Fashion-MNIST's were; bombs, truncated, empty, 16-bit
files, files that are no image or no file give one DataError line (hand-made cases, then seeded fuzzing)."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from fuzzing import N_MUTATIONS, mutate
from fuzzing import one_line_data_error as one_line_error
from PIL import Image

from embedfm.errors import DataError
from embedfm.images import MAX_IMAGE_PIXELS, load_image, to_fashion_mnist


def png_bytes(width, height, bit_depth=1, colour_type=0, idat=None) -> bytes:
    """A PNG built chunk by chunk, so its header can claim any size."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    if idat is None:  # all-black rows: each a filter byte and ceil(width * bits / 8) zero bytes
        idat = zlib.compress(b"\0" * (1 + -(-width * bit_depth // 8)) * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def garment(h=40, w=32) -> np.ndarray:
    """A light, shaded blob on black: something load_image keeps (it trims to the object)."""
    y, x = np.mgrid[:h, :w]
    a = np.clip(255 - 6 * np.hypot(y - h / 2, (x - w / 2) * 1.4), 0, 255)
    return (a * (0.6 + 0.4 * x / w)).astype(np.uint8)


def encode(arr, fmt, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, fmt, **kw)
    return b.getvalue()


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    # 8000² = 64 M pixels (over our limit, under PIL's), 10000² = 100 M (PIL only warns), 14000² (PIL refuses);
    # 1-bit all-black rows make each a few KB
    for side in (8000, 10000, 14000):
        p = tmp_path / f"bomb{side}.png"
        p.write_bytes(png_bytes(side, side))
        assert p.stat().st_size < 100_000
        msg = one_line_error(load_image, p)
        assert "pixel limit" in msg or "too large" in msg, msg
    assert MAX_IMAGE_PIXELS < 8000**2


def test_a_header_claiming_100000_squared_pixels(tmp_path):
    p = tmp_path / "huge.png"
    p.write_bytes(png_bytes(100_000, 100_000, bit_depth=8, idat=zlib.compress(b"\0" * 1000)))
    msg = one_line_error(load_image, p)
    assert "too large" in msg or "pixel limit" in msg, msg


def test_broken_and_odd_image_files(tmp_path):
    jpeg = encode(np.stack([garment()] * 3, -1), "JPEG", quality=90)
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("just some words, not an image\n")
    (tmp_path / "doc.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "fifo.png")
    expected = {
        "cut.jpg": "not a readable image",
        "empty.png": "empty file",
        "text.png": "not an image embedfm reads",
        "doc.eps": "not an image embedfm reads",  # Pillow would hand EPS to Ghostscript: never opened
        "dir.png": "is a directory",
        "loop.png": "broken or looping symlink",
        "dangling.png": "broken or looping symlink",
        "fifo.png": "not a regular file",
        "absent.png": "image file not found",
    }
    for name, message in expected.items():
        msg = one_line_error(load_image, tmp_path / name)
        assert message in msg and str(tmp_path / name) in msg, msg


@pytest.mark.parametrize("fmt", ["TIFF", "PNG"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, fmt):
    a8 = garment()
    (tmp_path / "8.png").write_bytes(encode(a8, "PNG"))
    (tmp_path / "16").write_bytes(encode(a8.astype(np.uint16) * 257, fmt))  # the same picture in 16 bits
    assert Image.open(tmp_path / "16").mode == "I;16"
    out8, out16 = load_image(tmp_path / "8.png"), load_image(tmp_path / "16")
    assert np.array_equal(out16, out8)
    assert len(np.unique(out16)) > 20 and (out16 == 255).mean() < 0.1  # shades, not a clipped white square


def mutate_image_header(data: bytes, fmt: str, rng) -> tuple[bytes, str]:
    """PNG: an IHDR field with its CRC fixed (else the CRC check alone would catch it); JPEG: a SOF0 field."""
    b = bytearray(data)
    if fmt == "PNG":
        field = int(rng.integers(0, 7))  # width, height, bit depth, colour type, compression, filter, interlace
        at, size = [(16, 4), (20, 4), (24, 1), (25, 1), (26, 1), (27, 1), (28, 1)][field]
        value = int(rng.choice([0, 1, 2, 3, 4, 6, 8, 16, 255, 2**31 - 1, int(rng.integers(0, 256**size))])) % 256**size
        b[at : at + size] = value.to_bytes(size, "big")
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    else:
        sof = data.index(b"\xff\xc0")
        field = int(rng.integers(0, 4))  # precision, height, width, components
        at, size = [(sof + 4, 1), (sof + 5, 2), (sof + 7, 2), (sof + 9, 1)][field]
        value = int(rng.choice([0, 1, 3, 4, 8, 12, 16, 255, 65535, int(rng.integers(0, 256**size))])) % 256**size
        b[at : at + size] = value.to_bytes(size, "big")
    return bytes(b), f"header{field}={value}"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fuzz_load_image(tmp_path, fmt):
    rng = np.random.default_rng(7 if fmt == "PNG" else 8)
    g = garment()
    kw = {"quality": 85} if fmt == "JPEG" else {}
    originals = [encode(g, fmt, **kw), encode(np.stack([g, g // 2, 255 - g], -1), fmt, **kw)]
    if fmt == "PNG":
        originals.append(encode(g.astype(np.uint16) * 257, fmt))  # 16-bit grey
    failures, valid = [], 0
    p = tmp_path / f"query.{fmt.lower()}"
    for i in range(N_MUTATIONS):
        original = originals[i % len(originals)]
        data, what = mutate_image_header(original, fmt, rng) if rng.random() < 0.2 else mutate(original, rng)
        what = f"#{i} {what}"
        p.write_bytes(data)
        try:
            out = load_image(p)
        except DataError as e:
            if "\n" in str(e):
                failures.append(f"{what}: multi-line {e!r}")
        except Exception as e:
            failures.append(f"{what}: {type(e).__name__}: {e}")
        else:
            valid += 1
            if out.shape != (28, 28) or out.dtype != np.uint8:
                failures.append(f"{what}: returned {out.shape} {out.dtype}")
    assert not failures, "\n".join(failures[:20])
    assert 0 < valid < N_MUTATIONS


def test_photo_on_white_becomes_a_centred_bright_garment():
    photo = np.full((300, 200), 255, dtype=np.uint8)  # white background, portrait
    photo[50:250, 60:140] = 40  # a dark garment, 200 tall × 80 wide
    a = to_fashion_mnist(Image.fromarray(photo).convert("RGB"))
    assert a.shape == (28, 28) and a.dtype == np.uint8
    assert a[:, 0].max() == 0 and a.max() >= 200  # black background, bright garment (inverted)
    rows, cols = np.nonzero(a > 128)
    assert rows.min() == 0 and rows.max() == 27  # longest side fills 28 pixels
    assert abs((cols.min() + cols.max()) / 2 - 13.5) <= 1  # centred horizontally
    assert 9 <= cols.max() - cols.min() + 1 <= 13  # aspect kept: 80/200 × 28 ≈ 11
