"""Shared fixtures: tiny hand-made IDX files, and the real Fashion-MNIST (skipped where absent)."""

import gzip
import importlib.util
import os
import struct
from pathlib import Path

# One OpenMP thread per process: this one and the embedfm processes the tests start (they inherit it). On two
# cores that other work also uses, a process's two threads wait for each other at every op (a test of 2 s took 20
# under load). Every test passes at any count; `OMP_NUM_THREADS=2 make test` runs the suite at two.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

from embedfm.data import FILES, SYSTEM_DIR

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before this file

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    magic = 2051 if arr.ndim == 3 else 2049
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    path.write_bytes(gzip.compress(idx_bytes(arr)))
    return path


def make_fake_dataset(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """A Fashion-MNIST-shaped data dir with random images and balanced labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        write_idx(root / FILES[f"{split}_images"], rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / FILES[f"{split}_labels"], np.arange(n) % 10)
    return root


def labelled_batch(n_per_class=4, classes=10):
    """A seeded batch of random images, n_per_class of each class: (images (N, 1, 28, 28), labels)."""
    torch.manual_seed(0)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return torch.randn(len(y), 1, 28, 28), y


# the smallest budget a real run accepts: seconds on fake data
TINY = ["--limit", "200", "--val-size", "50", "--batch-size", "50", "--no-progress"]


@pytest.fixture
def fake_data_dir(tmp_path) -> Path:
    return make_fake_dataset(tmp_path / "fmnist")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not all((SYSTEM_DIR / f).is_file() for f in FILES.values()):
        pytest.skip(f"real Fashion-MNIST not in {SYSTEM_DIR} (make test installs it)")
    return SYSTEM_DIR


# the real subset: enough for 2,000-image runs with a 500-image validation split, and a test split small enough
# that evaluating a run takes a second or two rather than the full 10,000 images' dozen
SUBSET = {"train": 6000, "test": 2000}


@pytest.fixture(scope="session")
def real_subset_dir(tmp_path_factory, real_data_dir) -> Path:
    """The first SUBSET images of each real split, as IDX files (the first images of Fashion-MNIST's files are
    close to class-balanced)."""
    from embedfm.data import load_fashion_mnist

    data = load_fashion_mnist(real_data_dir)
    root = tmp_path_factory.mktemp("fmnist-subset")
    for split, n in SUBSET.items():
        write_idx(root / FILES[f"{split}_images"], getattr(data, f"{split}_images")[:n].numpy())
        write_idx(root / FILES[f"{split}_labels"], getattr(data, f"{split}_labels")[:n].numpy())
    return root


@pytest.fixture(scope="session")
def real_data(real_data_dir):
    from embedfm.data import load_fashion_mnist

    return load_fashion_mnist(real_data_dir)


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    """A finished 1-epoch run on tiny fake data (seconds). Tests must not modify it."""
    from embedfm.cli import main

    root = tmp_path_factory.mktemp("run")
    data = make_fake_dataset(root / "data", n_train=300, n_test=50)
    out = root / "run"
    assert main(["train", "--out", str(out), "--data-dir", str(data), "--epochs", "1", *TINY]) == 0
    return out, data


# two small real runs: 2,000 training images, 1 epoch (20 steps)
REAL_SMALL = ["--limit", "2000", "--val-size", "500", "--epochs", "1", "--batch-size", "100", "--no-progress"]


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory, real_subset_dir):
    """(ce run, triplet run, report dir): small real runs evaluated together on the real subset's 2,000 test
    images (seconds), shared by the CLI, explore and floor tests. Tests must not modify them."""
    real_data_dir = real_subset_dir
    from embedfm.cli import main

    root = tmp_path_factory.mktemp("real")
    ce, trip = root / "ce", root / "triplet"
    for loss, run in (("ce", ce), ("triplet", trip)):
        assert main(["train", "--loss", loss, "--out", str(run), "--data-dir", str(real_data_dir), *REAL_SMALL]) == 0
    assert (
        main(["eval", str(ce), str(trip), "--out", str(root), "--data-dir", str(real_data_dir), "--no-progress"]) == 0
    )
    return ce, trip, root
