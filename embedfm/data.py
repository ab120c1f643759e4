"""Fashion-MNIST on disk → validated uint8 tensors in memory, splits, batch augmentation, batching.

What this module owns:
- finding the four IDX files (`--data-dir`, `$EMBEDFM_DATA`, the Debian location, a download cache),
- reading and validating them (gzip integrity, magic number, dimensions, counts, label range),
- the fixed stratified validation split and the `--limit` subset,
- augmentation of whole uint8 batches with tensor ops (per-sample random crop + horizontal flip),
- batch index plans: plain shuffled batches and class-balanced batches with focus over-sampling.

The whole data set is ~55 MB as uint8, so it lives in memory; batches are float only on the way in.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedfm.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedfm" / "fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # pixel mean / std of the Fashion-MNIST train set, in [0, 1] units
NUM_CLASSES = 10
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # IDX: 0x0803 = uint8 3-d, 0x0801 = uint8 1-d


# ----------------------------------------------------------------------------------------------
# reading and validating IDX files


def read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file into a uint8 array, validating everything it can.

    Raises DataError naming the file for: missing, not a file, not gzip, truncated gzip, wrong
    magic number, header/payload size mismatch.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except gzip.BadGzipFile:
        raise DataError(f"{path}: not a gzip file") from None
    except (EOFError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip stream ({e})") from None
    if len(raw) < 8:
        raise DataError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic, n = struct.unpack(">II", raw[:8])
    if magic == IMAGE_MAGIC:
        if len(raw) < 16:
            raise DataError(f"{path}: image header truncated")
        rows, cols = struct.unpack(">II", raw[8:16])
        shape, offset = (n, rows, cols), 16
    elif magic == LABEL_MAGIC:
        shape, offset = (n,), 8
    else:
        raise DataError(f"{path}: wrong IDX magic number {magic:#x} (expected 0x803 images or 0x801 labels)")
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise DataError(f"{path}: header says {shape} = {expected} bytes, file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _check_pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lbl_path: Path) -> None:
    if images.ndim != 3:
        raise DataError(f"{img_path}: expected an image file (3-d IDX), got {images.ndim}-d")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected a label file (1-d IDX), got {labels.ndim}-d")
    if len(images) != len(labels):
        raise DataError(f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{lbl_path}: label {labels[bad]} at index {bad} is outside 0-9")


@dataclass(frozen=True)
class FashionMNIST:
    """The whole data set as uint8 tensors: images (N, 28, 28), labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str

    def fingerprint(self) -> dict:
        """Identifies the data a run was trained on, so eval can refuse to compare unlike runs."""
        h = hashlib.sha1()
        for t in (self.train_labels, self.test_labels, self.test_images[:256]):
            h.update(t.numpy().tobytes())
        return {"n_train": len(self.train_labels), "n_test": len(self.test_labels), "sha1": h.hexdigest()}


def find_data_dir(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Where the IDX files are: `data_dir`, then $EMBEDFM_DATA, the Debian location, the cache.

    An explicitly given dir is used as is (and validated by the reader). Failing all, the files are
    downloaded through torchvision's mirrors into the cache dir (needs internet).
    """
    for candidate in (data_dir, os.environ.get("EMBEDFM_DATA")):
        if candidate:
            p = Path(candidate)
            if p.exists() and not p.is_dir():
                raise DataError(f"{p}: data dir is a file, not a directory")
            if not p.exists():
                raise DataError(f"{p}: data dir does not exist")
            return p
    for p in (SYSTEM_DIR, CACHE_DIR):
        if all((p / f).is_file() for f in FILES.values()):
            return p
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


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> FashionMNIST:
    """Find, read and validate the four files; return them as uint8 tensors."""
    root = find_data_dir(data_dir)
    arrays = {k: read_idx(root / f) for k, f in FILES.items()}
    for split in ("train", "test"):
        _check_pair(
            arrays[f"{split}_images"],
            arrays[f"{split}_labels"],
            root / FILES[f"{split}_images"],
            root / FILES[f"{split}_labels"],
        )
    # np.frombuffer gives read-only views; copy once into torch-owned memory
    tensors = {k: torch.from_numpy(a.copy()) for k, a in arrays.items()}
    return FashionMNIST(**tensors, source=str(root))


# ----------------------------------------------------------------------------------------------
# splits


def stratified_split(labels: torch.Tensor, n_holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, holdout) with `n_holdout` items drawn per class in proportion to its size."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    if not 0 <= n_holdout < n:
        raise DataError(f"cannot hold out {n_holdout} of {n} images")
    classes, counts = torch.unique(labels, return_counts=True)
    # largest-remainder allocation, so the per-class shares sum to exactly n_holdout
    share = counts.double() * n_holdout / n
    take = share.floor().long()
    rest = n_holdout - int(take.sum())
    take[torch.argsort(share - take, descending=True)[:rest]] += 1
    keep, hold = [], []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(labels == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        hold.append(idx[:k])
        keep.append(idx[k:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(hold)).values


@dataclass(frozen=True)
class Splits:
    """Train/val/test views of the data. Test is carried only so eval can reach it."""

    train_x: torch.Tensor  # (N, 28, 28) uint8
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def make_splits(data: FashionMNIST, val_size: int, limit: int | None = None, split_seed: int = 0) -> Splits:
    """Fixed stratified validation split from train (seed independent of the training seed), then
    an optional stratified `limit` subset of the remaining train images."""
    train_idx, val_idx = stratified_split(data.train_labels, val_size, split_seed)
    if limit is not None and limit < len(train_idx):
        sub, _ = stratified_split(data.train_labels[train_idx], len(train_idx) - limit, split_seed + 1)
        train_idx = train_idx[sub]
    ty = data.train_labels.long()
    return Splits(
        data.train_images[train_idx],
        ty[train_idx],
        data.train_images[val_idx],
        ty[val_idx],
        data.test_images,
        data.test_labels.long(),
    )


# ----------------------------------------------------------------------------------------------
# batches: normalisation, augmentation, index plans


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) → normalised float (B, 1, 28, 28)."""
    return ((x.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (zero padding `pad`) and horizontal flip of a uint8 batch (B, H, W).

    One gather for the whole batch: each sample gets its own offset (dy, dx) and flip bit.
    """
    B, H, W = x.shape
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, H+2p, W+2p), zeros
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    else:
        xp, dy, dx = x, torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    rows = dy[:, None] + torch.arange(H)  # (B, H)
    cols = dx[:, None] + torch.arange(W)  # (B, W)
    if flip:
        flipped = torch.rand(B, generator=generator) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    return xp[torch.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]]


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(n // batch_size, batch_size) indices: one random permutation, last partial batch dropped."""
    nb = n // batch_size
    return torch.randperm(n, generator=generator)[: nb * batch_size].view(nb, batch_size)


def class_counts_per_batch(
    batch_size: int, focus_classes: tuple[int, ...], focus_oversample: float, num_classes: int = NUM_CLASSES
) -> torch.Tensor:
    """How many samples of each class a balanced batch holds: (num_classes,) summing to batch_size.

    Each class gets a share proportional to its weight (focus classes `focus_oversample`, others 1),
    rounded by largest remainder so the batch size is exact.
    """
    from embedfm.config import class_counts

    return torch.tensor(class_counts(batch_size, focus_classes, focus_oversample, num_classes), dtype=torch.long)


def balanced_batches(
    labels: torch.Tensor,
    batch_size: int,
    focus_classes: tuple[int, ...],
    focus_oversample: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(len(labels) // batch_size, batch_size) indices where every batch holds every class, with
    `class_counts_per_batch` samples each (so the triplet miner always finds positives).

    Per class we walk through fresh random permutations of that class's indices, so within an epoch
    a sample repeats only once its whole class has been seen (focus classes are seen more often).
    Each permutation is cut to a multiple of the per-batch count, so no batch straddles two
    permutations and no image appears twice in one batch (the cut tail, < count images, is random).
    """
    num_classes = int(labels.max()) + 1
    counts = class_counts_per_batch(batch_size, focus_classes, focus_oversample, num_classes)
    nb = len(labels) // batch_size
    cols = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).squeeze(1)
        per_batch = int(counts[c])
        if len(idx) < per_batch:
            raise DataError(
                f"class {c} has {len(idx)} training images, fewer than the {per_batch} a balanced "
                "batch needs; lower --batch-size or raise --limit"
            )
        usable = len(idx) // per_batch * per_batch
        reps = -(-nb * per_batch // usable)  # ceil
        stream = torch.cat([idx[torch.randperm(len(idx), generator=generator)[:usable]] for _ in range(reps)])
        cols.append(stream[: nb * per_batch].view(nb, per_batch))
    batches = torch.cat(cols, dim=1)  # (nb, B), grouped by class within each batch
    return batches


# ----------------------------------------------------------------------------------------------
# images from outside the data set (catalogues, search queries)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def to_fashion_mnist(img) -> np.ndarray:
    """A PIL image of any size and mode → (28, 28) uint8 the way Fashion-MNIST's were made: grey,
    light garment on a black background (photos on a light background are inverted), trimmed to
    the garment, longest side resized to 28, centred."""
    from PIL import Image, ImageOps

    g = ImageOps.exif_transpose(img).convert("L")
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


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file → (28, 28) uint8, or one DataError line."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: image file not found")
    try:
        with Image.open(p) as img:
            return to_fashion_mnist(img)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{p}: not a readable image ({e})") from None
