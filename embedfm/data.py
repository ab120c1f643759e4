"""Fashion-MNIST on disk → validated uint8 tensors in memory, splits, batch augmentation, batching;
image files from outside the data set → (28, 28) uint8.

What this module owns:
- finding the four IDX files (`--data-dir`, `$EMBEDFM_DATA`, the Debian location, a download cache), each
  gzipped (as published) or raw (after `gunzip`), in the dir itself or in torchvision's `FashionMNIST/raw/`,
- reading and validating them (gzip integrity, magic number, dimensions, counts, label range), with the
  sizes a header declares checked against the file before anything is allocated,
- the fixed stratified validation split and the `--limit` subset,
- augmentation of whole uint8 batches with tensor ops (per-sample random crop + horizontal flip), on the device
  the batch is on (training on CUDA holds the uint8 train split in GPU memory: `Splits.train_on`),
- batch index plans: plain shuffled batches and class-balanced batches with focus over-sampling,
- reading query and catalogue images (PNG, JPEG, BMP, GIF, WebP, TIFF) with a pixel limit.

Every file read here may come from a stranger: a bad one is one `DataError` line, never a traceback, a hang
or a huge allocation. The whole data set is ~55 MB as uint8, so it lives in memory; batches are float only
on the way in.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedfm.errors import DataError

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


def _one_line(e: BaseException) -> str:
    """An exception from a library as a short single line, for inside a DataError message."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


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


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file, gzipped or raw (told apart by the gzip magic bytes), into a uint8 array.

    Validates everything it can and raises one DataError line naming the file for: missing, not a
    regular file, neither gzip nor IDX, truncated or corrupt gzip, wrong magic number, images that are
    not 28×28, header/payload size mismatch. The header's declared size is checked against what the
    file can hold before the payload is read, so a lying header costs no memory.
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
                    return _parse_idx(path, gz, DEFLATE_MAX_RATIO * size + READ_CHUNK, gzipped=True)
            return _parse_idx(path, fh, size, gzipped=False)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if gzipped:
            raise DataError(f"{path}: truncated or corrupt gzip stream ({_one_line(e)})") from None
        raise DataError(f"{path}: cannot read ({_one_line(e)})") from None


def _parse_idx(path: Path, f, limit: int, gzipped: bool) -> np.ndarray:
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
    if ndim == 3 and shape[1:] != (28, 28):
        raise DataError(f"{path}: images are {shape[1]}x{shape[2]}, expected 28x28")
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
        """Identifies the data a run was trained on, so eval can refuse to compare unlike runs.

        It hashes the decoded arrays, not the files, so gzipped and raw copies of the same data agree."""
        h = hashlib.sha1()
        for t in (self.train_labels, self.test_labels, self.test_images[:256]):
            h.update(t.numpy().tobytes())
        return {"n_train": len(self.train_labels), "n_test": len(self.test_labels), "sha1": h.hexdigest()}


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


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> FashionMNIST:
    """Find, read and validate the four files; return them as uint8 tensors."""
    root = find_data_dir(data_dir)
    paths = data_files(root)
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        _check_pair(
            arrays[f"{split}_images"], arrays[f"{split}_labels"], paths[f"{split}_images"], paths[f"{split}_labels"]
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

    def train_on(self, device: torch.device) -> Splits:
        """These splits with the train images and labels held on `device`, where the training steps gather and
        augment their batches (uint8: 55 k images are 43 MB, nothing beside a GPU's memory). On the CPU: self."""
        if device.type == "cpu":
            return self
        return dataclasses.replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device))


def make_splits(
    data: FashionMNIST, val_size: int, limit: int | None = None, split_seed: int = 0, holdout: tuple[int, ...] = ()
) -> Splits:
    """Fixed stratified validation split from train (seed independent of the training seed), then
    an optional stratified `limit` subset of the remaining train images. `holdout` classes are then removed from
    train and validation (the unseen-class test; the test split keeps every class)."""
    train_idx, val_idx = stratified_split(data.train_labels, val_size, split_seed)
    if limit is not None and limit < len(train_idx):
        sub, _ = stratified_split(data.train_labels[train_idx], len(train_idx) - limit, split_seed + 1)
        train_idx = train_idx[sub]
    if holdout:
        held = torch.tensor(list(holdout), dtype=data.train_labels.dtype)
        train_idx = train_idx[~torch.isin(data.train_labels[train_idx], held)]
        val_idx = val_idx[~torch.isin(data.train_labels[val_idx], held)]
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


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator, erase: float = 0.0) -> torch.Tensor:
    """Per-sample random crop (zero padding `pad`), horizontal flip and Random Erasing (probability `erase`) of a
    uint8 batch (B, H, W), on x's device.

    One gather for the whole batch: each sample gets its own offset (dy, dx) and flip bit. The random draws come
    from the CPU `generator` whatever the device (a run draws the same numbers on a GPU as on the CPU, and its
    checkpoint holds that one stream); only these (B,) draws travel to the device, the images stay there. With
    `erase` 0 nothing more is drawn, so runs without Random Erasing see the same stream as before it existed.
    """
    B, H, W = x.shape
    dev = x.device
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, H+2p, W+2p), zeros
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(dev)
    else:
        xp = x
        dy = dx = torch.zeros(B, dtype=torch.long, device=dev)
    rows = dy[:, None] + torch.arange(H, device=dev)  # (B, H)
    cols = dx[:, None] + torch.arange(W, device=dev)  # (B, W)
    if flip:
        flipped = (torch.rand(B, generator=generator) < 0.5).to(dev)  # (B,)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    out = xp[torch.arange(B, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return random_erase(out, erase, generator) if erase > 0 else out


# Random Erasing (Zhong et al. 2017), their defaults: area 2-40 % of the image, aspect ratio 0.3-3.3 (log-uniform)
ERASE_AREA = (0.02, 0.4)
ERASE_RATIO = (0.3, 1 / 0.3)
ERASE_FILL = round(MEAN * 255)  # the dataset's mean pixel: the erased patch carries no edge of its own


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """With probability p per image, set one random rectangle of a uint8 batch (B, H, W) to ERASE_FILL.

    The rectangle's area share and log aspect ratio are uniform in ERASE_AREA / ERASE_RATIO; where its side would
    exceed the image it is clipped to it (Zhong et al. redraw instead, up to 100 times: the clipped rectangle is a
    little smaller on average, and the batch needs no loop). Five (B,) draws from the CPU generator; one masked
    select on the device."""
    B, H, W = x.shape
    dev = x.device
    on = torch.rand(B, generator=generator) < p
    area = H * W * torch.empty(B).uniform_(*ERASE_AREA, generator=generator)
    log_r = torch.empty(B).uniform_(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), generator=generator)
    h = (area * log_r.exp()).sqrt().round().clamp(1, H).long()  # (B,)
    w = (area / log_r.exp()).sqrt().round().clamp(1, W).long()
    top = (torch.rand(B, generator=generator) * (H - h + 1)).long()  # (B,), in [0, H - h]
    left = (torch.rand(B, generator=generator) * (W - w + 1)).long()
    on, h, w, top, left = (t.to(dev) for t in (on, h, w, top, left))
    r = torch.arange(H, device=dev)[None, :, None]  # (1, H, 1)
    c = torch.arange(W, device=dev)[None, None, :]  # (1, 1, W)
    inside = (r >= top[:, None, None]) & (r < (top + h)[:, None, None])
    inside = inside & (c >= left[:, None, None]) & (c < (left + w)[:, None, None]) & on[:, None, None]  # (B, H, W)
    return torch.where(inside, torch.tensor(ERASE_FILL, dtype=x.dtype, device=dev), x)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(n // batch_size, batch_size) indices: one random permutation, last partial batch dropped."""
    nb = n // batch_size
    return torch.randperm(n, generator=generator)[: nb * batch_size].view(nb, batch_size)


def class_counts_per_batch(
    batch_size: int,
    focus_classes: tuple[int, ...],
    focus_oversample: float,
    num_classes: int = NUM_CLASSES,
    absent: tuple[int, ...] = (),
) -> torch.Tensor:
    """How many samples of each class a balanced batch holds: (num_classes,) summing to batch_size.

    Each class gets a share proportional to its weight (focus classes `focus_oversample`, others 1),
    rounded by largest remainder so the batch size is exact.
    """
    from embedfm.config import class_counts

    counts = class_counts(batch_size, focus_classes, focus_oversample, num_classes, absent)
    return torch.tensor(counts, dtype=torch.long)


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
    num_classes = NUM_CLASSES
    # a class the split lacks (--holdout-classes) gets no share of the batch
    absent = tuple(sorted(set(range(num_classes)) - set(torch.unique(labels).tolist())))
    counts = class_counts_per_batch(batch_size, focus_classes, focus_oversample, num_classes, absent)
    nb = len(labels) // batch_size
    cols = []
    for c in range(num_classes):
        if c in absent:
            continue
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
        raise DataError(f"{p}: not a readable image ({type(e).__name__}: {_one_line(e)})") from None
    if empty:
        raise DataError(f"{p}: empty file, not an image")
    return decode_image(p, str(p), max_pixels)


def decode_image(source, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file's path, or its bytes (an upload), → (28, 28) uint8, or one DataError line naming `name`.

    The one decoder of outside images (`load_image`, `embedfm serve`): only IMAGE_FORMATS, the declared size
    checked against `max_pixels` before any pixel is decoded."""
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
                img.load()
                grey = _grey(img)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image embedfm reads ({', '.join(IMAGE_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{name}: image too large ({_one_line(e)})") from None
    except Exception as e:  # a corrupt file raises whatever PIL's decoder hits (OSError, SyntaxError,
        # ValueError, struct.error, ...); only decoding and mode conversion are in this block, not our geometry
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {_one_line(e)})") from None
    return _fit(grey)
