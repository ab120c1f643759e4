"""embedfm.data: IDX files (gzipped or raw, flat or in torchvision's layout) and the data set they make; every defect, a
lying header, a gzip bomb, a file that is no file, gives one DataError line (hand-made cases, then seeded fuzzing)."""

import gzip
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from conftest import idx_bytes, make_fake_dataset, write_idx
from fuzzing import N_MUTATIONS, mutate
from fuzzing import one_line_data_error as one_line_error

from embedfm.data import FILES, find_data_dir, load_fashion_mnist, read_idx
from embedfm.errors import DataError


def test_read_idx_roundtrip(tmp_path):
    imgs = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    assert np.array_equal(read_idx(write_idx(tmp_path / "x.gz", imgs)), imgs)
    labels = np.array([3, 1, 4])
    assert np.array_equal(read_idx(write_idx(tmp_path / "y.gz", labels)), labels)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        (b"plain bytes, not gzip at all", "not a gzip file"),
        ("truncated", "truncated or corrupt gzip"),
        (gzip.compress(b"\x00\x00\x09\x99" + b"\x00" * 20), "wrong IDX magic"),
        (gzip.compress(idx_bytes(np.zeros((3, 28, 28)))[:-5]), "header says"),
        (gzip.compress(b"\x00\x00"), "too short"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, content, message):
    p = tmp_path / "bad.gz"
    if content == "truncated":
        full = gzip.compress(idx_bytes(np.zeros((50, 28, 28))))
        content = full[: len(full) // 2]
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        read_idx(p)
    assert str(p) in str(e.value)  # the message names the file


def test_load_fake_dataset(fake_data_dir):
    d = load_fashion_mnist(fake_data_dir)
    assert d.train_images.shape == (200, 28, 28) and d.train_images.dtype == torch.uint8
    assert d.test_labels.shape == (50,)


@pytest.mark.parametrize(
    "defect, message",
    [
        ("dims", "are 27x28, expected 28x28"),
        ("length", "holds 200 images but"),
        ("label", "label 12 at index 5 is outside 0-9"),
        ("swapped", "expected an image file"),
    ],
)
def test_load_rejects_inconsistent_files(fake_data_dir, defect, message):
    img, lbl = fake_data_dir / FILES["train_images"], fake_data_dir / FILES["train_labels"]
    if defect == "dims":
        write_idx(img, np.zeros((200, 27, 28)))
    elif defect == "length":
        write_idx(lbl, np.zeros(199))
    elif defect == "label":
        labels = np.arange(200) % 10
        labels[5] = 12
        write_idx(lbl, labels)
    elif defect == "swapped":
        write_idx(img, np.zeros(200))
    with pytest.raises(DataError, match=message):
        load_fashion_mnist(fake_data_dir)


def test_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        find_data_dir(f)


@pytest.mark.slow
def test_real_data_loads(real_data):
    assert real_data.train_images.shape == (60000, 28, 28)
    assert real_data.test_images.shape == (10000, 28, 28)
    assert torch.bincount(real_data.test_labels.long()).tolist() == [1000] * 10


def raw_dir(root, n_train=20, n_test=10, seed=0, gz_keys=()):
    """make_fake_dataset, then every file not in gz_keys un-gzipped (named without .gz, as gunzip leaves it)."""
    d = make_fake_dataset(root, n_train=n_train, n_test=n_test, seed=seed)
    for key, name in FILES.items():
        if key not in gz_keys:
            (d / name.removesuffix(".gz")).write_bytes(gzip.decompress((d / name).read_bytes()))
            (d / name).unlink()
    return d


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
