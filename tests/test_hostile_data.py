"""Hostile data files: every file of data embedfm reads gives one DataError line or a correct result.

Hand-made cases (IDX files gzipped or raw, in the dir or torchvision's layout, with lying headers; query
images that are bombs, truncated, empty, not images, 16-bit, or not files at all), then seeded fuzzing:
truncations, bit flips, inserted / deleted / appended bytes and header field changes of small real-format
files, each checked against an independent reference reader. Fast: tiny files, no model, a few seconds.
"""

import gzip
import io
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from conftest import idx_bytes, make_fake_dataset, write_idx
from PIL import Image

from embedfm.data import FILES, find_data_dir, load_fashion_mnist, read_idx
from embedfm.errors import DataError
from embedfm.images import MAX_IMAGE_PIXELS, load_image

N_MUTATIONS = 220  # per format through the single-file reader; the data-set loader adds more per IDX format


def one_line_error(fn, *args) -> str:
    """fn(*args) must raise DataError with a one-line message; returns it."""
    with pytest.raises(DataError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def raw_dir(root, n_train=20, n_test=10, seed=0, gz_keys=()):
    """make_fake_dataset, then every file not in gz_keys un-gzipped (named without .gz, as gunzip leaves it)."""
    d = make_fake_dataset(root, n_train=n_train, n_test=n_test, seed=seed)
    for key, name in FILES.items():
        if key not in gz_keys:
            (d / name.removesuffix(".gz")).write_bytes(gzip.decompress((d / name).read_bytes()))
            (d / name).unlink()
    return d


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


# ----------------------------------------------------------------------------------------------
# IDX files: gzipped or raw, found in either layout


def test_raw_idx_reads_like_gzipped(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    for name, arr in (("imgs", imgs), ("labels", labels)):
        (tmp_path / name).write_bytes(idx_bytes(arr))
        assert np.array_equal(read_idx(tmp_path / name), arr)
        assert np.array_equal(read_idx(write_idx(tmp_path / f"{name}.gz", arr)), arr)
    # told apart by content, not by name
    (tmp_path / "raw.gz").write_bytes(idx_bytes(labels))
    (tmp_path / "gz").write_bytes(gzip.compress(idx_bytes(labels)))
    assert np.array_equal(read_idx(tmp_path / "raw.gz"), labels)
    assert np.array_equal(read_idx(tmp_path / "gz"), labels)


def test_raw_gzipped_mixed_and_torchvision_layouts_load_the_same(tmp_path):
    gz = load_fashion_mnist(make_fake_dataset(tmp_path / "gz", n_train=20, n_test=10))
    raw = load_fashion_mnist(raw_dir(tmp_path / "raw"))
    mixed = load_fashion_mnist(raw_dir(tmp_path / "mixed", gz_keys=("train_labels", "test_images")))
    tv_root = tmp_path / "tv"
    raw_dir(tv_root / "FashionMNIST" / "raw")
    tv = load_fashion_mnist(tv_root)
    assert tv.source == str(tv_root / "FashionMNIST" / "raw")
    assert find_data_dir(tv_root) == tv_root / "FashionMNIST" / "raw"
    for d in (raw, mixed, tv):
        for key in FILES:
            assert np.array_equal(getattr(d, key).numpy(), getattr(gz, key).numpy())
        assert d.fingerprint() == gz.fingerprint()  # a run trained on .gz files evaluates on gunzipped ones


@pytest.mark.parametrize("missing", list(FILES))
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_an_unpaired_file_set_names_what_is_missing(tmp_path, missing, layout):
    root = tmp_path / "d"
    d = raw_dir(root / "FashionMNIST" / "raw" if layout == "torchvision" else root, gz_keys=("test_images",))
    for p in d.iterdir():
        if p.name.startswith(FILES[missing].removesuffix(".gz")):
            p.unlink()
    msg = one_line_error(load_fashion_mnist, root)
    assert f"file not found: {FILES[missing].removesuffix('.gz')}[.gz]" in msg
    assert str(d) in msg


def test_an_empty_data_dir_says_what_it_expected(tmp_path):
    msg = one_line_error(load_fashion_mnist, tmp_path)
    assert "no Fashion-MNIST files" in msg and "train-images-idx3-ubyte[.gz]" in msg


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_lying_header_allocates_nothing(tmp_path, gzipped):
    """Headers claiming 2^32 - 1 images (3.4 TB), or 1.3 M images (1 GB) from a few KB: refused from the header."""
    payload = np.zeros(100 * 28 * 28, dtype=np.uint8).tobytes()
    for n in (2**32 - 1, 1_300_000):
        content = struct.pack(">IIII", 2051, n, 28, 28) + payload
        p = tmp_path / f"lie{n}"
        p.write_bytes(gzip.compress(content) if gzipped else content)
        tracemalloc.start()
        try:
            msg = one_line_error(read_idx, p)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert "header says" in msg and peak < 10_000_000, (msg, peak)


def test_a_gzip_bomb_with_a_plausible_header_stops_at_the_declared_size(tmp_path):
    """Header: 1000 images; stream: 20 MB of zeros in 20 KB. Decompression stops one byte past 1000 images."""
    body = struct.pack(">IIII", 2051, 1000, 28, 28)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    parts = [z.compress(body)] + [z.compress(bytes(1 << 20)) for _ in range(20)] + [z.flush()]
    (tmp_path / "bomb").write_bytes(b"".join(parts))
    tracemalloc.start()
    try:
        msg = one_line_error(read_idx, tmp_path / "bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "file holds more" in msg and peak < 10_000_000, (msg, peak)


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("rows, cols", [(28, 27), (1, 784), (0, 0), (2**32 - 1, 28)])
def test_images_other_than_28x28_are_refused_from_the_header(tmp_path, gzipped, rows, cols):
    content = struct.pack(">IIII", 2051, 2, rows, cols) + bytes(2 * 784)
    p = tmp_path / "x"
    p.write_bytes(gzip.compress(content) if gzipped else content)
    assert f"images are {rows}x{cols}, expected 28x28" in one_line_error(read_idx, p)


def test_idx_paths_that_are_not_regular_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it to read would block forever
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dir").mkdir()
    (tmp_path / "empty").write_bytes(b"")
    assert "not a regular file" in one_line_error(read_idx, tmp_path / "fifo")
    assert "not a regular file" in one_line_error(read_idx, tmp_path / "dir")
    assert "file not found" in one_line_error(read_idx, tmp_path / "loop")
    assert "too short" in one_line_error(read_idx, tmp_path / "empty")


# ----------------------------------------------------------------------------------------------
# query images


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


# ----------------------------------------------------------------------------------------------
# seeded fuzzing


def mutate(data: bytes, rng) -> tuple[bytes, str]:
    """One random byte-level defect: truncation, bit flips, a byte set, bytes inserted, deleted or appended."""
    n = len(data)
    kind = str(rng.choice(["truncate", "flip", "set", "insert", "delete", "append"]))
    b = bytearray(data)
    if kind == "truncate":
        i = int(rng.integers(0, n))
        b = b[:i]
    elif kind == "flip":
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, n))
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "set":
        i = int(rng.integers(0, n))
        b[i] = int(rng.integers(0, 256))
    elif kind == "insert":
        i = int(rng.integers(0, n + 1))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 17))).astype(np.uint8).tobytes()
    elif kind == "delete":
        i = int(rng.integers(0, n))
        del b[i : i + int(rng.integers(1, 17))]
    else:
        i = n
        b += rng.integers(0, 256, int(rng.integers(1, 65))).astype(np.uint8).tobytes()
    return bytes(b), f"{kind}@{i}"


IDX_FIELD_VALUES = [0, 1, 2, 27, 28, 29, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1]


def mutate_idx_header(content: bytes, rng) -> tuple[bytes, str]:
    """One IDX header field (magic, count, rows, cols) set to a boundary or random value."""
    n_fields = 4 if content[3] == 3 else 2
    field = int(rng.integers(0, n_fields))
    if field == 0:
        value = int(rng.choice([0x801, 0x802, 0x803, 0x804, 0xD03, 0x0803_0000, int(rng.integers(0, 2**32))]))
    else:
        old = struct.unpack(">I", content[4 * field : 4 * field + 4])[0]
        value = int(rng.choice([*IDX_FIELD_VALUES, old - 1, old + 1, int(rng.integers(0, 2**32))])) % 2**32
    return content[: 4 * field] + struct.pack(">I", value) + content[4 * field + 4 :], f"field{field}={value}"


def reference_idx(data: bytes):
    """An independent reading of IDX bytes (gzipped or raw): the array they hold, or None if invalid."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except Exception:
            return None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 8 or data[3] not in (1, 3):
        return None
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    if ndim == 3 and shape[1:] != (28, 28):
        return None
    payload = data[4 + 4 * ndim :]
    if len(payload) != int(np.prod(shape, dtype=np.int64)):
        return None
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def idx_variant(rng, gzipped: bool, content: bytes) -> tuple[bytes, str]:
    """A mutated file: a byte-level defect of the file as stored, or a header field change of its content."""
    if rng.random() < 0.25:
        content, what = mutate_idx_header(content, rng)
        return (gzip.compress(content, mtime=0) if gzipped else content), what
    return mutate(gzip.compress(content, mtime=0) if gzipped else content, rng)


def check_idx_result(path, data: bytes, what: str, failures: list) -> bool:
    """read_idx on one mutated file agrees with the reference: same array, or a one-line DataError."""
    path.write_bytes(data)
    expected = reference_idx(data)
    try:
        got = read_idx(path)
    except DataError as e:
        if "\n" in str(e) or expected is not None:
            failures.append(f"{what}: DataError {e!r}, reference reads {None if expected is None else expected.shape}")
        return False
    except Exception as e:  # the one thing that must never happen
        failures.append(f"{what}: {type(e).__name__}: {e}")
        return False
    if expected is None or got.shape != expected.shape or not np.array_equal(got, expected):
        failures.append(f"{what}: read {got.shape}, reference {None if expected is None else expected.shape}")
    return True


@pytest.mark.parametrize("gzipped", [True, False], ids=["gz", "raw"])
def test_fuzz_read_idx(tmp_path, gzipped):
    rng = np.random.default_rng(1234 + gzipped)
    originals = [
        idx_bytes(rng.integers(0, 256, (4, 28, 28))),
        idx_bytes(np.zeros((3, 28, 28))),  # compresses well: gzip defects land in few bytes
        idx_bytes(np.arange(40) % 10),
    ]
    failures, valid = [], 0
    for i in range(N_MUTATIONS):
        data, what = idx_variant(rng, gzipped, originals[i % len(originals)])
        valid += check_idx_result(tmp_path / f"m{i}", data, f"#{i} {what}", failures)
    assert not failures, "\n".join(failures[:20])
    assert 0 < valid < N_MUTATIONS  # both outcomes were exercised


@pytest.mark.parametrize("gzipped", [True, False], ids=["gz", "raw"])
def test_fuzz_load_fashion_mnist(tmp_path, gzipped):
    rng = np.random.default_rng(99 + gzipped)
    d = make_fake_dataset(tmp_path / "d", n_train=20, n_test=10) if gzipped else raw_dir(tmp_path / "d")
    paths = {k: next(p for p in d.iterdir() if p.name.startswith(FILES[k].removesuffix(".gz"))) for k in FILES}
    pristine = {k: p.read_bytes() for k, p in paths.items()}
    contents = {k: gzip.decompress(b) if gzipped else b for k, b in pristine.items()}
    failures, valid, n = [], 0, 80
    for i in range(n):
        key = list(FILES)[i % 4]
        data, what = idx_variant(rng, gzipped, contents[key])
        what = f"#{i} {key} {what}"
        paths[key].write_bytes(data)
        try:
            ds = load_fashion_mnist(d)
        except DataError as e:
            if "\n" in str(e):
                failures.append(f"{what}: multi-line {e!r}")
        except Exception as e:
            failures.append(f"{what}: {type(e).__name__}: {e}")
        else:  # accepted: then it is what the bytes say, and a consistent data set
            valid += 1
            ref = reference_idx(data)
            if ref is None or not np.array_equal(getattr(ds, key).numpy(), ref):
                failures.append(f"{what}: loaded although the reference reads {ref}")
            for split in ("train", "test"):
                x, y = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
                if x.shape[1:] != (28, 28) or len(x) != len(y) or (len(y) and int(y.max()) > 9):
                    failures.append(f"{what}: inconsistent {split} split {tuple(x.shape)} {tuple(y.shape)}")
        paths[key].write_bytes(pristine[key])
    assert not failures, "\n".join(failures[:20])
    assert 0 < valid < n


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
