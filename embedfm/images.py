"""Image files → uint8 pixels: outside images framed like Fashion-MNIST's, and a data set's own images as they are.

What this module owns: reading and decoding PNG, JPEG, BMP, GIF, WebP and TIFF (only those decoders are let near a
file), with a pixel limit checked before any pixel is decoded; converting a search query or catalogue image to
Fashion-MNIST's format (grey, light garment on black, trimmed, longest side 28, centred); and a data set's own
images (`sources.py`) to grey or RGB pixels, resized to one size by crop or pad.

Every image read here may come from a stranger: a bad one is one `DataError` line, never a traceback, a hang or a
decompression bomb.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from embedfm.errors import DataError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Only these decoders are let near a stranger's file: Pillow knows dozens more formats, some with little-used
# parsers and EPS handing the file to Ghostscript, and a query image has no business being one of them.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# 40 M pixels is more than any photo a user would search with; a decompression bomb (a few KB that decode
# to gigabytes) declares far more. Checked on the declared size, before any pixel is decoded.
MAX_IMAGE_PIXELS = 40_000_000


def _grey(img):
    """A PIL image, upright per its EXIF orientation, as 8-bit grey ("L").

    16-bit grey (mode I;16, e.g. from TIFF or PNG) is scaled to 8 bits: PIL's own convert clips it at
    255, which would turn almost every pixel white."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16"):
        a = np.asarray(img).astype(np.uint32)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))  # round(v / 257)
    return img.convert("L")


def _fit(g) -> np.ndarray:
    """A grey PIL image → (28, 28) uint8 framed the way Fashion-MNIST's images are."""
    from PIL import Image, ImageOps

    a = np.asarray(g, dtype=np.uint8)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 127:  # product photo on white: Fashion-MNIST is negated
        g = ImageOps.invert(g)
        a = 255 - a
    ys, xs = np.nonzero(a > 32)
    if len(ys):  # trim to the object (the originals were trimmed before resizing)
        g = g.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    w, h = g.size
    s = 28 / max(w, h)
    g = g.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    canvas = Image.new("L", (28, 28), 0)
    canvas.paste(g, ((28 - g.size[0]) // 2, (28 - g.size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8).copy()


def to_fashion_mnist(img) -> np.ndarray:
    """A PIL image of any size and mode → (28, 28) uint8 the way Fashion-MNIST's were made: grey,
    light garment on a black background (photos on a light background are inverted), trimmed to
    the garment, longest side resized to 28, centred."""
    return _fit(_grey(img))


class ImageTooLarge(DataError):
    """An image declares more pixels than the limit it is read under."""


def load_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image file → (28, 28) uint8, or one DataError line (never a traceback, a hang or a bomb)."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a directory, not an image file")
    if not p.exists():  # also a dangling or looping symlink: exists() follows links and says False
        what = "broken or looping symlink" if p.is_symlink() else "image file not found"
        raise DataError(f"{p}: {what}")
    if not p.is_file():  # a FIFO or device would block or never end
        raise DataError(f"{p}: not a regular file")
    try:
        empty = p.stat().st_size == 0
    except OSError as e:
        raise DataError(f"{p}: not a readable image ({type(e).__name__}: {one_line(e)})") from None
    if empty:
        raise DataError(f"{p}: empty file, not an image")
    return decode_image(p, str(p), max_pixels)


def decode_image(source, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file's path, or its bytes (an upload), → (28, 28) uint8, or one DataError line naming `name`.

    The one decoder of outside images (`load_image`, `embedfm serve`): only IMAGE_FORMATS, the declared size
    checked against `max_pixels` before any pixel is decoded."""
    return _fit(open_checked(source, name, max_pixels, _grey))


def open_checked(source, name: str, max_pixels: int, convert, load: bool = True):
    """`convert(img)` of the image at `source` (a path, or bytes: an upload), decoded under the same guards as
    every image embedfm reads: only IMAGE_FORMATS, the declared size checked against `max_pixels` before any pixel
    is decoded, a corrupt file one DataError line naming `name`. `convert` (a PIL image → anything) runs inside
    the guard: decoding is lazy, so a truncated file fails there. `load` False: the header alone is read (the
    size and mode are known, no pixel is decoded)."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DataError(f"{name}: empty file, not an image")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # PIL's notes on odd files (corrupt EXIF, unknown TIFF tags) would print source lines around
            # a usable result; its bomb warning (between its own limit and twice that) is no stop, so make it one
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=IMAGE_FORMATS) as img:
                w, h = img.size
                if w * h == 0:
                    raise DataError(f"{name}: image of {w}x{h} pixels has no pixels")
                if w * h > max_pixels:
                    raise ImageTooLarge(f"{name}: image of {w}x{h} pixels is over the {max_pixels:,}-pixel limit")
                if load:
                    img.load()
                return convert(img)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image embedfm reads ({', '.join(IMAGE_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{name}: image too large ({one_line(e)})") from None
    except Exception as e:  # a corrupt file raises whatever PIL's decoder hits (OSError, SyntaxError,
        # ValueError, struct.error, ...); only decoding and mode conversion are in this block, not our geometry
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {one_line(e)})") from None


# ----------------------------------------------------------------------------------------------
# a data set's own images: pixels kept as they are (no Fashion-MNIST framing), grey or RGB

GREY_MODES = ("1", "L", "LA", "I", "F")  # and I;16 in its variants


def pixels(img) -> np.ndarray:
    """A PIL image, upright per its EXIF orientation, → uint8 (H, W) if it is grey or (H, W, 3) if colour.

    16-bit grey is scaled to 8 bits (PIL's convert would clip it); CMYK, YCbCr and the rest are converted to RGB;
    transparent pixels are composited over white (as an image viewer on a white page shows them); a palette
    image is grey when its colours are. An RGB image whose three channels are equal everywhere is grey."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode in GREY_MODES:
        if img.mode == "LA":
            img = Image.alpha_composite(Image.new("LA", img.size, (255, 255)), img)
        return np.asarray(_grey(img), dtype=np.uint8).copy()
    if img.mode in ("RGBA", "PA", "P") or "transparency" in img.info:
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    a = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
        return a[..., 0].copy()
    return a.copy()


def resize(a: np.ndarray, size: int, mode: str) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) → (size, size[, 3]). `crop`: the shorter side resized to `size`, the longer
    centre-cropped (torchvision's Resize + CenterCrop); `pad`: the longer side resized to `size`, centred on black."""
    from PIL import Image

    h, w = a.shape[:2]
    if (h, w) == (size, size):
        return a
    s = size / (min(h, w) if mode == "crop" else max(h, w))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    r = np.asarray(Image.fromarray(a).resize((nw, nh), Image.BILINEAR, reducing_gap=None), dtype=np.uint8)
    if mode == "crop":
        top, left = (nh - size) // 2, (nw - size) // 2
        return r[top : top + size, left : left + size].copy()
    out = np.zeros((size, size, *a.shape[2:]), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = r
    return out


# ----------------------------------------------------------------------------------------------
# an outside image (a search query, a catalogue file) in a run's format


def run_format(run) -> tuple[int, int, int] | None:
    """The image format a run's model takes, (channels, height, width), or None for a Fashion-MNIST run (whose
    outside images are framed the Fashion-MNIST way, `to_fashion_mnist`)."""
    if run.config.data == "fashion-mnist":
        return None
    args = run.model_args
    size = args.get("image_size", (28, 28))
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(args.get("in_channels", 1)), int(h), int(w)


def to_run_format(a: np.ndarray, fmt: tuple[int, int, int], resize_mode: str = "crop") -> np.ndarray:
    """uint8 (H, W) grey or (H, W, 3) colour pixels (`pixels`) → a run's format `fmt` (channels, height, width):
    resized as the run's set was (`resize`, its --resize mode; a non-square format: stretched to it), colour made
    grey (ITU-R 601 luma, as PIL's) or grey repeated into three channels. (H, W) for one channel, else (3, H, W)."""
    from PIL import Image

    c, h, w = fmt
    if a.shape[:2] != (h, w):
        if h == w:
            a = resize(a, h, resize_mode)
        else:
            a = np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR), dtype=np.uint8)
    if c == 1 and a.ndim == 3:
        a = np.asarray(Image.fromarray(a, "RGB").convert("L"), dtype=np.uint8)
    elif c == 3 and a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(np.moveaxis(a, -1, 0)) if c == 3 else np.ascontiguousarray(a)


def load_image_as(
    path: str | os.PathLike,
    fmt: tuple[int, int, int] | None,
    resize_mode: str = "crop",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Read an image file in a run's format (`run_format`): None → `load_image` (Fashion-MNIST's framing, (28,
    28)); else `pixels` through `to_run_format`. One DataError line for a bad file, as `load_image`."""
    if fmt is None:
        return load_image(path, max_pixels)
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:  # a dir, a missing file, a FIFO, an empty file: load_image's line
        return load_image(p, max_pixels)
    return to_run_format(open_checked(p, str(p), max_pixels, pixels), fmt, resize_mode)
