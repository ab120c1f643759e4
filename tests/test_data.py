import gzip

import numpy as np
import pytest
import torch
from conftest import idx_bytes, make_fake_dataset, write_idx

from embedfm.data import FILES, find_data_dir, load_fashion_mnist, read_idx
from embedfm.errors import DataError
from embedfm.sampling import (
    augment,
    balanced_batches,
    class_counts_per_batch,
    make_splits,
    shuffled_batches,
    stratified_split,
)


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


@pytest.mark.slow
def test_real_data_loads(real_data):
    assert real_data.train_images.shape == (60000, 28, 28)
    assert real_data.test_images.shape == (10000, 28, 28)
    assert torch.bincount(real_data.test_labels.long()).tolist() == [1000] * 10
