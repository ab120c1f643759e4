"""Splits, batch augmentation and batch plans: which images a run trains, validates and tests on, in what order.

What this module owns:
- the fixed stratified validation split, the `--limit` subset and the held-out classes (`make_splits`),
- augmentation of whole uint8 batches with tensor ops (per-sample random crop, horizontal flip, Random Erasing), on
  the device the batch is on (training on CUDA holds the uint8 train split in GPU memory: `Splits.train_on`),
- batch index plans: plain shuffled batches and class-balanced batches with focus over-sampling.

Every random draw comes from a generator the caller passes (a run's checkpoint holds its state), so a resumed run
sees the same splits, batches and augmentations as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from embedfm.data import MEAN, NUM_CLASSES, FashionMNIST
from embedfm.errors import DataError

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
# batches: augmentation, index plans


def augment(
    x: torch.Tensor,
    pad: int,
    flip: bool,
    generator: torch.Generator,
    erase: float = 0.0,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample random crop (zero padding `pad`), horizontal flip and Random Erasing (probability `erase`) of a
    uint8 batch (B, H, W) or (B, C, H, W) (every channel of an image moved alike), on x's device.

    One gather for the whole batch: each sample gets its own offset (dy, dx) and flip bit. The random draws come
    from the CPU `generator` whatever the device (a run draws the same numbers on a GPU as on the CPU, and its
    checkpoint holds that one stream); only these (B,) draws travel to the device, the images stay there. With
    `erase` 0 nothing more is drawn, so runs without Random Erasing see the same stream as before it existed.
    """
    B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    dev = x.device
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, [C,] H+2p, W+2p), zeros
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(dev)
    else:
        xp = x
        dy = dx = torch.zeros(B, dtype=torch.long, device=dev)
    rows = dy[:, None] + torch.arange(H, device=dev)  # (B, H)
    cols = dx[:, None] + torch.arange(W, device=dev)  # (B, W)
    if flip:  # `flips` (B,) bool: given (alternating flips), nothing drawn; else a coin per image
        flipped = (flips if flips is not None else torch.rand(B, generator=generator) < 0.5).to(dev)  # (B,)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    if x.ndim == 3:
        out = xp[torch.arange(B, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    else:  # (B, C, H, W): the same (row, col) gather for every channel
        b, c = (
            torch.arange(B, device=dev)[:, None, None, None],
            torch.arange(x.shape[1], device=dev)[None, :, None, None],
        )
        out = xp[b, c, rows[:, None, :, None], cols[:, None, None, :]]
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
    B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
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
    if x.ndim == 4:  # (B, C, H, W): every channel of the rectangle
        inside = inside[:, None]
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
    # at least Fashion-MNIST's 10 (a set with fewer: the ids it lacks are absent classes, as held-out ones are)
    num_classes = max(NUM_CLASSES, int(labels.max()) + 1 if len(labels) else 0)
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
