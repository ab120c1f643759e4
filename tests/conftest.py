"""Shared fixtures: tiny hand-made IDX files, the fake and tiny runs built from them, the real Fashion-MNIST and
runs on it (skipped where absent), the hostile-file fixtures (helpers: fuzzing.py), the device under test (the
shadow device: shadow.py); and the suite's settings: one OpenMP thread, temporary files on tmpfs, no diagnostics
plot where no test looks at it."""

import faulthandler
import gzip
import importlib.util
import json
import os
import shutil
import signal
import struct
import tempfile
from pathlib import Path

# One OpenMP thread per process: this one and the embedfm processes the tests start (they inherit it). On two
# cores that other work also uses, a process's two threads wait for each other at every op (a test of 2 s took 20
# under load). Every test passes at any count; `OMP_NUM_THREADS=2 make test` runs the suite at two.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from fuzzing import CKPT, TINY_RUN, _hang, _header, _steady
from safetensors.torch import load, save
from shadow import DEVICES, SHADOW, ShadowDevice

from embedfm import checkpoint, diagnostics, index, rundir, summarize
from embedfm.cli import main
from embedfm.data import FILES, SYSTEM_DIR

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before this file


def _tmpfs(path: str = "/dev/shm", room: int = 2**30) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return os.access(path, os.W_OK) and st.f_bavail * st.f_frsize >= room


# Temporary files (tmp_path, and those of the processes the tests start) on tmpfs where there is one with a GiB to
# spare: the fuzzers write thousands of small files, and a write on this machine's disk takes 0.2 ms, on tmpfs 0.03.
# A TMPDIR set by the caller is kept.
if "TMPDIR" not in os.environ and _tmpfs():
    os.environ["TMPDIR"] = "/dev/shm"
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again

ROOT = Path(__file__).resolve().parents[1]
DRAW_DIAGNOSTICS = diagnostics.plot  # the real one: no_diagnostics_plot stands in for it


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


def one_line_stderr(capsys) -> str:
    """What a command run in this process wrote to stderr: one line, no traceback; returns it."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def evaluated_dir(run, probs, train_emb, test_emb, labels, train_labels):
    """A run dir holding only what eval writes for floor and ensemble: its config's focus classes and the arrays."""
    from embedfm.evaluate import save_embeddings

    run.mkdir()
    (run / "config.json").write_text(json.dumps({"focus_classes": [0, 2, 4, 6]}))
    save_embeddings(
        run,
        {"test_probs": probs, "train_embeddings": train_emb, "test_embeddings": test_emb, "test_labels": labels,
         "train_labels": train_labels, "pred_softmax": probs.argmax(1)},
    )  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def no_diagnostics_plot():
    """A run drawing RUN/diagnostics.png when training ends is 0.4 s of matplotlib, a third of a tiny run, and a
    drawing that fails never fails the run (train logs it): the runs of tests that do not look at the drawing skip
    it. Tests that do (test_diagnostics.py) ask for `diagnostics_plot`; runs the tests start as processes draw it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diagnostics, "plot", lambda run_dir: None)
        yield


@pytest.fixture
def diagnostics_plot(monkeypatch):
    """Training draws RUN/diagnostics.png, as it does outside the tests (see no_diagnostics_plot)."""
    monkeypatch.setattr(diagnostics, "plot", DRAW_DIAGNOSTICS)


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


DEMO_RUN = "artifacts/demo/triplet"  # the run the docs' examples load, relative to the dir they run in


@pytest.fixture(scope="session")
def demo_dir(fake_run, tmp_path_factory):
    """A dir laid out like the docs assume: the tiny fake run copied to artifacts/demo/triplet, evaluated
    (embeddings.npz), indexed (RUN/index) and exported to ONNX (RUN/export/model.onnx)."""
    from embedfm.evaluate import evaluate
    from embedfm.export import export
    from embedfm.index import build

    src, data = fake_run
    root = tmp_path_factory.mktemp("api")
    run = root / DEMO_RUN
    shutil.copytree(src, run)
    quiet = lambda *a, **k: None
    evaluate([str(run)], progress=False, log=quiet)
    build(str(run), catalogue="train", data_dir=str(data), progress=False, log=quiet)
    export(str(run), "onnx", log=quiet)
    return root


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


# ---------------------------------------------------------------------------------------------- hostile files
# (the helpers are in fuzzing.py)


@pytest.fixture
def no_hang():
    """A test that hangs fails with its traceback after 90 s; one stuck in native code is killed after 150 s
    with every thread's traceback. The fuzzing and hostile-file tests use it."""
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(90)
    faulthandler.dump_traceback_later(150, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(run dir, data dir): a finished, evaluated 1-epoch run of a linear model with an index (RUN/index).
    Tests copy it (`run_copy`), never modify it."""
    root = tmp_path_factory.mktemp("hostile")
    data = make_fake_dataset(root / "data", n_train=150, n_test=30)
    run = root / "run"
    assert main(["train", "--out", str(run), "--data-dir", str(data), *TINY_RUN]) == 0
    assert main(["eval", str(run), "--data-dir", str(data), "--no-progress"]) == 0
    assert main(["index", str(run), "--data-dir", str(data), "--no-progress"]) == 0
    # the same bytes in every session (the fuzzers' mutations hit the same places): timings and the session's
    # temporary path replaced by constants. Training is deterministic; the tensors are already the same.
    for name in (rundir.CONFIG, rundir.HISTORY, rundir.REPORT, f"index/{index.META_FILE}"):
        (run / name).write_text(json.dumps(_steady(json.loads((run / name).read_text()), root), indent=2) + "\n")
    raw = (run / CKPT).read_bytes()
    meta = _steady(json.loads(_header(raw)[0]["__metadata__"][checkpoint.META_KEY]), root)
    (run / CKPT).write_bytes(save(load(raw), metadata={checkpoint.META_KEY: json.dumps(meta)}))
    return run, data


PIXELS = {"acc_knn": 0.85, "focus_err_knn": 0.2255, "recall_0_knn": 0.8, "recall_2_knn": 0.8, "recall_4_knn": 0.8,
          "recall_6_knn": 0.59, "k": 10, "metric": "l2"}  # fmt: skip


@pytest.fixture
def no_fsync(monkeypatch):
    """Every write is atomic and fsynced (fileio); hundreds of fsyncs are what would make these fuzzers slow."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture
def study(tmp_path, tiny, no_fsync):
    """A study dir: one evaluated run (report.json, history.json) and a saved pixel baseline."""
    s = tmp_path / "study"
    (s / "run").mkdir(parents=True)
    for name in (rundir.REPORT, rundir.HISTORY, "confusion.png"):
        shutil.copy(tiny[0] / name, s / "run" / name)
    (s / summarize.PIXELS).write_text(json.dumps(PIXELS))
    rows = summarize.summarize([str(s)], log=lambda *a: None)
    assert len(rows) == 2
    return s


# ---------------------------------------------------------------------------------------------- devices
# (the shadow device is in shadow.py)


@pytest.fixture(params=DEVICES)
def device(request):
    """The device under test: the shadow device everywhere, and cuda:0 where CUDA is present."""
    if request.param == "cuda":
        yield torch.device("cuda", 0)
        return
    with ShadowDevice():
        yield SHADOW


@pytest.fixture
def index_dir(tmp_path, fake_run):
    """A Flat index of the fake run's training images (`embedfm index`), for the live-index and serve tests."""
    run, data = fake_run
    idx = tmp_path / "idx"
    assert main(["index", str(run), "--data-dir", str(data), "--out", str(idx), "--no-progress"]) == 0
    return idx
