"""embedfm.sampling: splits, augmentation (flips, crops, random erasing) and the batch samplers."""

import torch
from conftest import make_fake_dataset

from embedfm.data import load_fashion_mnist
from embedfm.sampling import (
    augment,
    balanced_batches,
    class_counts_per_batch,
    make_splits,
    shuffled_batches,
    stratified_split,
)


def test_stratified_split_is_proportional_and_disjoint():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    keep, hold = stratified_split(labels, 10, seed=0)
    assert len(hold) == 10 and len(keep) == 90
    assert torch.bincount(labels[hold]).tolist() == [6, 3, 1]
    assert not set(keep.tolist()) & set(hold.tolist())
    assert torch.equal(hold, stratified_split(labels, 10, seed=0)[1])  # fixed by its seed


def test_make_splits_limit(tmp_path):
    d = load_fashion_mnist(make_fake_dataset(tmp_path / "d", n_train=500))
    s = make_splits(d, val_size=100, limit=200)
    assert len(s.val_y) == 100 and len(s.train_y) == 200
    assert torch.bincount(s.train_y).tolist() == [20] * 10


def test_augment_identity_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    assert torch.equal(augment(x, pad=0, flip=False, generator=g), x)
    out = augment(x, pad=0, flip=True, generator=g)
    for a, b in zip(out, x):  # every sample is itself or its mirror
        assert torch.equal(a, b) or torch.equal(a, b.flip(1))


def test_random_erasing_sets_one_rectangle_per_chosen_image():
    from embedfm.sampling import ERASE_AREA, ERASE_FILL, random_erase

    x = torch.full((2000, 28, 28), 255, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(augment(x, pad=0, flip=False, generator=g, erase=0.0), x)
    assert torch.equal(g.get_state(), state)  # erase 0 draws nothing: older runs keep their random stream
    out = random_erase(x, 1.0, torch.Generator().manual_seed(1))
    for img in out[:200]:  # brute force: the erased pixels are exactly one axis-aligned rectangle
        ys, xs = torch.nonzero(img == ERASE_FILL, as_tuple=True)
        h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert len(ys) == h * w and (img != ERASE_FILL).sum() == 784 - h * w
    share = (out == ERASE_FILL).float().mean((1, 2))  # (B,) erased share of each image
    assert share.min() > 0 and share.max() <= ERASE_AREA[1] + 0.05  # rounding and clipping keep it in range
    assert 0.12 < share.mean() < 0.24  # uniform in 2-40 %: 21 % on average, a little less after clipping
    half = random_erase(x, 0.5, torch.Generator().manual_seed(2))
    assert 0.45 < (half == ERASE_FILL).any(2).any(1).float().mean() < 0.55
    again = random_erase(x, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(half, again)  # the generator alone decides


def test_augment_crop_is_a_shifted_window():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 256, (64, 28, 28), dtype=torch.uint8)
    out = augment(x, pad=2, flip=False, generator=g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for a, p in zip(out, padded):  # brute force: some offset of the padded image matches
        assert any(torch.equal(a, p[dy : dy + 28, dx : dx + 28]) for dy in range(5) for dx in range(5))


def test_shuffled_batches_cover_once():
    b = shuffled_batches(100, 32, torch.Generator().manual_seed(0))
    assert b.shape == (3, 32) and len(set(b.flatten().tolist())) == 96


def test_class_counts_per_batch():
    # weights: 4 focus classes × 1.5 + 6 others × 1 = 12 → 24 per unit
    assert class_counts_per_batch(288, (0, 2, 4, 6), 1.5).tolist() == [36, 24, 36, 24, 36, 24, 36, 24, 24, 24]
    c = class_counts_per_batch(256, (0, 2, 4, 6), 1.5)
    assert int(c.sum()) == 256 and int(c.min()) >= 21


def test_balanced_batches_hold_every_class():
    labels = torch.arange(1000) % 10
    b = balanced_batches(labels, 100, (6,), 2.0, torch.Generator().manual_seed(0))
    assert b.shape == (10, 100)
    expected = class_counts_per_batch(100, (6,), 2.0)
    for batch in b:
        assert torch.equal(torch.bincount(labels[batch], minlength=10), expected)
        assert len(set(batch.tolist())) == 100  # no repeats inside a batch


def test_given_flips_mirror_exactly_those_images_and_draw_nothing():
    x = torch.arange(3 * 4 * 5, dtype=torch.uint8).view(3, 4, 5)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = augment(x, 0, True, g, flips=torch.tensor([True, False, True]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(-1))
    assert torch.equal(g.get_state(), state)  # the data generator's stream is untouched
