"""Fashion-MNIST on disk → validated uint8 tensors in memory, and the normalisation batches get on the way in.

What this module owns:
- finding the four IDX files (`--data-dir`, `$EMBEDFM_DATA`, the Debian location, a download cache), each
  gzipped (as published) or raw (after `gunzip`), in the dir itself or in torchvision's `FashionMNIST/raw/`,
  and downloading them where none are found,
- reading and validating them (gzip integrity, magic number, dimensions, counts, label range), with the
  sizes a header declares checked against the file before anything is allocated,
- `FashionMNIST`, the whole data set as uint8 tensors, and its fingerprint,
- the data set's pixel statistics and `to_float`, the one uint8 → normalised float conversion.

Splits, augmentation and batch plans are `sampling.py`'s; images from outside the data set are `images.py`'s.
Every file read here may come from a stranger: a bad one is one `DataError` line, never a traceback, a hang
or a huge allocation. The whole data set is ~55 MB as uint8, so it lives in memory; batches are float only
on the way in.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from embedfm import CLASS_NAMES
from embedfm.errors import DataError, one_line

# The names as published. Each may also be un-gzipped: the same name without ".gz".
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
TORCHVISION_SUBDIR = Path("FashionMNIST") / "raw"  # where torchvision's FashionMNIST(root) keeps them
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedfm" / "fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # pixel mean / std of the Fashion-MNIST train set, in [0, 1] units
NUM_CLASSES = 10
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # IDX: 0x0803 = uint8 3-d, 0x0801 = uint8 1-d
GZIP_MAGIC = b"\x1f\x8b"
# deflate cannot expand data more than ~1032:1, so a header claiming more than that is a lie we can
# catch before decompressing anything (plus a chunk of slack: tiny files are judged by decompressing them)
DEFLATE_MAX_RATIO = 1032
# 4 GiB of pixels (5.4 M images of 28×28) is far beyond any data set this in-memory design is for; a header
# declaring more is refused rather than trusted with that much memory
MAX_IDX_BYTES = 1 << 32
READ_CHUNK = 1 << 20  # gzip is decompressed in chunks, so memory follows the data, not the header's claim


# ----------------------------------------------------------------------------------------------
# reading and validating IDX files


def _read_upto(f, n: int) -> bytes:
    """Up to n bytes from f, fewer only at end of file. Chunked: a reader's read(n) may allocate n at once."""
    chunks, got = [], 0
    while got < n:
        chunk = f.read(min(READ_CHUNK, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_idx(path: Path, image_size: tuple[int, int] | None = (28, 28)) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by the gzip magic bytes), into a uint8 array.

    Validates everything it can and raises one DataError line naming the file for: missing, not a
    regular file, neither gzip nor IDX, truncated or corrupt gzip, wrong magic number, images that are
    not 28×28, header/payload size mismatch. The header's declared size is checked against what the
    file can hold before the payload is read, so a lying header costs no memory. `image_size` None: any size
    (another MNIST-format set, `--data idx:DIR`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():  # also keeps FIFOs and devices (which could block or never end) out
        raise DataError(f"{path}: not a regular file")
    gzipped = False
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            gzipped = fh.read(2) == GZIP_MAGIC
            fh.seek(0)
            if gzipped:
                with gzip.GzipFile(fileobj=fh) as gz:
                    return _parse_idx(
                        path, gz, DEFLATE_MAX_RATIO * size + READ_CHUNK, gzipped=True, image_size=image_size
                    )
            return _parse_idx(path, fh, size, gzipped=False, image_size=image_size)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if gzipped:
            raise DataError(f"{path}: truncated or corrupt gzip stream ({one_line(e)})") from None
        raise DataError(f"{path}: cannot read ({one_line(e)})") from None


def _parse_idx(path: Path, f, limit: int, gzipped: bool, image_size: tuple[int, int] | None) -> np.ndarray:
    """The IDX content of stream f. `limit`: the most bytes f can hold (raw: exactly the file size)."""
    head = _read_upto(f, 4)
    if len(head) < 4:
        what = "IDX file" if gzipped else "IDX file, gzipped or raw"
        raise DataError(f"{path}: too short to be an {what} ({len(head)} bytes)")
    (magic,) = struct.unpack(">I", head)
    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
        if not gzipped:  # most likely not IDX at all: say both things it is not
            raise DataError(
                f"{path}: not a gzip file nor a raw IDX file (starts with {head!r}; "
                "IDX magic 0x803 images or 0x801 labels)"
            )
        raise DataError(f"{path}: wrong IDX magic number {magic:#x} (expected 0x803 images or 0x801 labels)")
    ndim = 3 if magic == IMAGE_MAGIC else 1
    offset = 4 + 4 * ndim
    dims = _read_upto(f, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: {'image' if ndim == 3 else 'label'} header truncated")
    shape = struct.unpack(f">{ndim}I", dims)
    if ndim == 3 and image_size is not None and shape[1:] != image_size:
        raise DataError(f"{path}: images are {shape[1]}x{shape[2]}, expected {image_size[0]}x{image_size[1]}")
    expected = math.prod(shape)  # Python ints: 2^32 × 28 × 28 must not wrap around
    if not gzipped and limit - offset != expected:
        raise DataError(f"{path}: header says {shape} = {expected} bytes, file holds {limit - offset}")
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{path}: header says {shape} = {expected} bytes, over the {MAX_IDX_BYTES}-byte limit")
    if expected > limit:
        raise DataError(
            f"{path}: header says {shape} = {expected} bytes, more than a gzip file of this size can hold "
            "(truncated, or a corrupt header)"
        )
    payload = _read_upto(f, expected + 1)  # one byte more tells "too long" from "exact"
    if len(payload) > expected:
        raise DataError(f"{path}: header says {shape} = {expected} bytes, file holds more")
    if len(payload) < expected:
        raise DataError(f"{path}: header says {shape} = {expected} bytes, file holds {len(payload)}")
    # reading past `expected` reached the end of a gzip stream, so its CRC and length were checked too
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def _check_pair(
    images: np.ndarray,
    labels: np.ndarray,
    img_path: Path,
    lbl_path: Path,
    image_size: tuple[int, int] | None = (28, 28),
    num_classes: int = NUM_CLASSES,
) -> None:
    if images.ndim != 3:
        raise DataError(f"{img_path}: expected an image file (3-d IDX), got {images.ndim}-d")
    if image_size is not None and images.shape[1:] != image_size:
        h, w = image_size
        raise DataError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, expected {h}x{w}")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected a label file (1-d IDX), got {labels.ndim}-d")
    if len(images) != len(labels):
        raise DataError(f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(f"{lbl_path}: label {labels[bad]} at index {bad} is outside 0-{num_classes - 1}")


@dataclass(frozen=True)
class ImageSet:
    """A whole labelled image set as uint8 tensors: images (N, H, W) grey or (N, 3, H, W) colour, labels (N,)
    in 0..K-1, with its class names and the per-channel pixel mean / std of its training split (in [0, 1] units:
    what `to_float` normalises with). Fashion-MNIST is one (`load_fashion_mnist`); `sources.py` makes the others.

    `notes` records what reading it found and decided (files skipped, duplicates across train and test, how the
    test split was made), for the run's config and report."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    class_names: tuple[str, ...] = CLASS_NAMES
    mean: tuple[float, ...] = (MEAN,)
    std: tuple[float, ...] = (STD,)
    notes: dict = field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return 1 if self.train_images.ndim == 3 else self.train_images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[-2:])

    def fingerprint(self) -> dict:
        """Identifies the data a run was trained on, so eval can refuse to compare unlike runs.

        It hashes the decoded arrays, not the files, so gzipped and raw copies of the same data agree. A set that
        is not Fashion-MNIST-shaped (other names, size or channels) also records those, so two sets that merely
        share labels and their first test images still differ."""
        h = hashlib.sha1()
        for t in (self.train_labels, self.test_labels, self.test_images[:256]):
            h.update(t.numpy().tobytes())
        out = {"n_train": len(self.train_labels), "n_test": len(self.test_labels), "sha1": h.hexdigest()}
        if self.class_names != CLASS_NAMES or tuple(self.train_images.shape[1:]) != (28, 28):
            out["classes"] = list(self.class_names)
            out["shape"] = list(self.train_images.shape[1:])
        return out


FashionMNIST = ImageSet  # the name the rest of the package knew it by


def _files_in(d: Path) -> dict[str, Path]:
    """Those of the four files that `d` holds, each gzipped or raw (gzipped preferred: as published)."""
    found = {}
    for key, name in FILES.items():
        for p in (d / name, d / name.removesuffix(".gz")):
            if p.is_file():
                found[key] = p
                break
    return found


def data_files(root: Path) -> dict[str, Path]:
    """The four files under `root`: in it, or in torchvision's `root/FashionMNIST/raw/`.

    A dir with only some of them (say train images without train labels) is one DataError line naming
    the missing ones, so a half-copied data set never meets the reader.
    """
    root = Path(root)
    found = [(d, _files_in(d)) for d in (root, root / TORCHVISION_SUBDIR)]
    for _, files in found:
        if len(files) == len(FILES):
            return files
    d, files = max(found, key=lambda df: len(df[1]))  # the fuller of the two; the dir itself on a tie
    if not files:
        names = ", ".join(n.removesuffix(".gz") + "[.gz]" for n in FILES.values())
        raise DataError(f"{root}: no Fashion-MNIST files here or in {TORCHVISION_SUBDIR}/ (expected {names})")
    missing = ", ".join(FILES[k].removesuffix(".gz") + "[.gz]" for k in FILES if k not in files)
    have = ", ".join(p.name for p in files.values())
    raise DataError(f"{d}: Fashion-MNIST file not found: {missing} (the dir holds only {have})")


def find_data_dir(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The dir holding the four IDX files: `data_dir`, then $EMBEDFM_DATA, the Debian location, the cache.

    In each, the files may sit in the dir itself or in torchvision's `FashionMNIST/raw/` inside it (the
    returned path is the one that holds them), each gzipped or raw. An explicitly given dir must hold
    all four (else one line naming the missing ones); they are validated by the reader. Failing all, the
    files are downloaded through torchvision's mirrors into the cache dir (needs internet).
    """
    for candidate in (data_dir, os.environ.get("EMBEDFM_DATA")):
        if candidate:
            p = Path(candidate)
            if p.exists() and not p.is_dir():
                raise DataError(f"{p}: data dir is a file, not a directory")
            if not p.exists():
                raise DataError(f"{p}: data dir does not exist")
            return next(iter(data_files(p).values())).parent
    for p in (SYSTEM_DIR, CACHE_DIR):
        try:
            return next(iter(data_files(p).values())).parent
        except DataError:  # absent or incomplete: try the next place
            continue
    if not download:
        raise DataError(f"Fashion-MNIST not found in {SYSTEM_DIR} or {CACHE_DIR}; pass --data-dir")
    return download_fashion_mnist(CACHE_DIR)


def download_fashion_mnist(dest: Path) -> Path:
    """Fetch the four IDX files with torchvision's downloader (mirrors + MD5 checks) into `dest`."""
    from torchvision.datasets import FashionMNIST as TVFashionMNIST
    from torchvision.datasets.utils import download_url

    dest.mkdir(parents=True, exist_ok=True)
    md5 = {name: m for name, m in TVFashionMNIST.resources}
    try:
        for fname in FILES.values():
            if not (dest / fname).is_file():
                download_url(TVFashionMNIST.mirrors[0] + fname, str(dest), fname, md5[fname])
    except Exception as e:  # network errors come in many types; the user needs one line
        raise DataError(
            f"Fashion-MNIST not found locally and the download failed ({e}); "
            "install Debian's dataset-fashion-mnist or pass --data-dir"
        ) from None
    return dest


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> ImageSet:
    """Find, read and validate the four files; return them as uint8 tensors."""
    return load_idx(find_data_dir(data_dir), (28, 28), CLASS_NAMES, {"mean": (MEAN,), "std": (STD,)})


def load_idx(
    root: Path,
    image_size: tuple[int, int] | None = None,
    class_names: tuple[str, ...] | None = None,
    stats: dict | None = None,
) -> ImageSet:
    """The four IDX files in `root` (Fashion-MNIST's names) as an ImageSet. `class_names` None: "0".."K-1" with K
    one more than the largest label. `stats` None: the pixel mean / std measured on the training images
    (Fashion-MNIST passes its published constants, so its runs stay bit for bit what they were; measured on its
    60,000 training images they round to the same figures)."""
    paths = data_files(root)
    arrays = {k: read_idx(p, image_size) for k, p in paths.items()}
    k = len(class_names) if class_names else 256
    for split in ("train", "test"):
        img, lbl = f"{split}_images", f"{split}_labels"
        _check_pair(arrays[img], arrays[lbl], paths[img], paths[lbl], image_size, k)
    if class_names is None:
        k = int(max(arrays["train_labels"].max(initial=0), arrays["test_labels"].max(initial=0))) + 1
        class_names = tuple(str(c) for c in range(k))
    # np.frombuffer gives read-only views; copy once into torch-owned memory
    tensors = {k: torch.from_numpy(a.copy()) for k, a in arrays.items()}
    stats = stats or pixel_stats(tensors["train_images"])
    return ImageSet(**tensors, source=str(root), class_names=tuple(class_names), **stats)


def pixel_stats(images: torch.Tensor) -> dict:
    """{"mean": (per channel,), "std": (per channel,)} of uint8 images (N, H, W) or (N, C, H, W), in [0, 1] units,
    over every pixel (float64 sums: exact enough at any size this in-memory design holds)."""
    x = images if images.ndim == 4 else images.unsqueeze(1)  # (N, C, H, W)
    x = x.transpose(0, 1).reshape(x.shape[1], -1).double() / 255.0  # (C, N·H·W)
    mean = x.mean(dim=1)
    std = x.std(dim=1, correction=0).clamp_min(1e-3)  # a constant channel must not divide by zero
    return {"mean": tuple(round(v, 4) for v in mean.tolist()), "std": tuple(round(v, 4) for v in std.tolist())}


# ----------------------------------------------------------------------------------------------
# normalisation


def to_float(x: torch.Tensor, mean: tuple[float, ...] = (MEAN,), std: tuple[float, ...] = (STD,)) -> torch.Tensor:
    """uint8 (B, H, W) grey or (B, C, H, W) → normalised float (B, C, H, W), with the set's per-channel mean / std
    (`ImageSet.mean`, `.std`; a model's `norm`). One channel: Python-float arithmetic, as it always was."""
    if x.ndim == 3:
        return ((x.float() / 255.0 - mean[0]) / std[0]).unsqueeze(1)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s
