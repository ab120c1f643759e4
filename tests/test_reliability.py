"""Nothing lost, nothing half-written: resume after SIGKILL, non-finite loss, unusable checkpoints."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, make_fake_dataset

from embedfm import checkpoint as ckpt_io
from embedfm import rundir
from embedfm.cli import main
from embedfm.errors import CheckpointError, EmbedfmError, StorageError
from embedfm.fileio import atomic_write_bytes

pytestmark = pytest.mark.slow  # trains, or starts embedfm processes (seconds each)

RUN = [
    "--limit",
    "800",
    "--val-size",
    "300",
    "--epochs",
    "2",
    "--batch-size",
    "100",
    "--loss",
    "triplet",
    "--threads",
    "1",
    "--no-progress",
]


def _train_cmd(out, data):
    return [sys.executable, "-m", "embedfm", "train", "--out", str(out), "--data-dir", str(data), *RUN]


def _history(run):
    p = run / "history.json"
    return json.loads(p.read_text()) if p.exists() else []


def _strip_times(history):
    return [{k: v for k, v in row.items() if k not in ("train_seconds", "images_per_s")} for row in history]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, real_subset_dir):
    real_data_dir = real_subset_dir  # real images; its 2,000 test images keep the evaluation short
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # the uninterrupted run trains beside the one that is killed (one thread each: --threads 1)
    whole = subprocess.Popen(
        _train_cmd(straight, real_data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )

    proc = subprocess.Popen(_train_cmd(killed, real_data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(_history(killed)) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # well into epoch 2, before its checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_history(killed)) == 1, "the kill should land between the first and the last checkpoint"
    assert not rundir.is_done(killed)
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-2000:]

    r = subprocess.run(
        [sys.executable, "-m", "embedfm", "train", "--resume", str(killed), "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert rundir.is_done(killed)
    assert _strip_times(_history(killed)) == _strip_times(_history(straight))
    a, b = ckpt_io.load_checkpoint(straight)["model"], ckpt_io.load_checkpoint(killed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical weights

    report = tmp_path / "report"  # both runs in one evaluation
    assert main(["eval", str(straight), str(killed), "--out", str(report), "--data-dir", str(real_data_dir),
                 "--no-progress"]) == 0  # fmt: skip
    runs = json.loads((report / "report.json").read_text())["runs"]
    ra, rb = runs["straight"], runs["killed"]
    for clf in ("softmax", "knn"):
        assert ra["classifiers"][clf]["accuracy"] == rb["classifiers"][clf]["accuracy"]
        assert ra["classifiers"][clf]["confusion"] == rb["classifiers"][clf]["confusion"]
    assert ra["retrieval"] == rb["retrieval"]


def test_non_finite_loss_stops_with_one_line_and_keeps_checkpoint(tmp_path, fake_run, monkeypatch):
    from embedfm import train as train_mod
    from embedfm.config import TrainConfig

    _, data = fake_run
    real_build = train_mod.build_objective
    calls = {"n": 0}

    def poisoned_from_epoch_2(cfg):  # 200 images / batch 50 = 4 steps per epoch
        obj = real_build(cfg)

        def f(logits, emb, y):
            calls["n"] += 1
            loss, stats = obj(logits, emb, y)
            return (loss * float("nan") if calls["n"] == 6 else loss), stats

        return f

    monkeypatch.setattr(train_mod, "build_objective", poisoned_from_epoch_2)
    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), data_dir=str(data), limit=200, val_size=50, epochs=3, batch_size=50)
    with pytest.raises(EmbedfmError, match=r"non-finite loss \(nan\) at epoch 2, step 2"):
        train_mod.train(cfg, progress=False, log=lambda *a: None)
    assert ckpt_io.load_checkpoint(run)["epoch"] == 0  # epoch 1's checkpoint is kept
    assert len(_history(run)) == 1 and not rundir.is_done(run)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    p.write_text("old")

    def boom(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(StorageError, match=r"cannot write .*f\.json: No space left on device; the previous f\.json"):
        atomic_write_bytes(p, b"new")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def _rewritten(src, dst, change):
    """A copy of src's checkpoint with `change(meta)` applied to its JSON metadata, saved the way embedfm saves."""
    from safetensors.torch import load, save

    raw = (src / rundir.CHECKPOINT).read_bytes()
    meta = json.loads(ckpt_io._metadata(raw)[ckpt_io.META_KEY])
    change(meta)
    dst.mkdir()
    (dst / rundir.CHECKPOINT).write_bytes(save(load(raw), metadata={ckpt_io.META_KEY: json.dumps(meta)}))
    return dst


def test_newer_checkpoint_format_is_refused(tmp_path, fake_run):
    src, _ = fake_run
    new = _rewritten(src, tmp_path / "new", lambda m: m.update(format_version=ckpt_io.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer than this embedfm reads"):
        ckpt_io.load_checkpoint(new)


# the one-line errors below are checked through `main` in this process (no interpreter importing torch each time);
# the exit status of `python -m embedfm` itself is checked by the process tests above and below


def test_checkpoint_with_incompatible_config(tmp_path, fake_run, capsys):
    src, data = fake_run
    _rewritten(src, tmp_path / "bad", lambda m: m["model_args"].update(embedding_dim=32))  # weights are 64-d
    assert main(["eval", str(tmp_path / "bad"), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "does not match its model config" in err and len(err.strip().splitlines()) == 1, err


def test_runs_on_different_data_are_not_compared(tmp_path, fake_run, capsys):
    src, _ = fake_run
    other_data = make_fake_dataset(tmp_path / "other", n_train=300, n_test=50, seed=7)
    other = tmp_path / "other_run"
    assert main(["train", "--out", str(other), "--data-dir", str(other_data), "--epochs", "1", *TINY]) == 0
    capsys.readouterr()
    assert main(["eval", str(src), str(other), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "trained on different data" in err, err


def test_resume_needs_a_run(tmp_path, capsys):
    assert main(["train", "--resume", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "no such run dir" in err, err


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, fake_run):
    _, data = fake_run
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "embedfm",
        "train",
        "--out",
        str(out),
        "--data-dir",
        str(data),
        "--limit",
        "200",
        "--val-size",
        "50",
        "--epochs",
        "5000",
        "--batch-size",
        "50",
        "--no-progress",
    ]
    # A shell that runs the suite in the background (`make test &`, nohup) starts it with SIGINT ignored,
    # children inherit that, and Python then never raises KeyboardInterrupt: give the child Ctrl-C back.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while len(_history(out)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert f"embedfm train --resume {out}" in err and "Traceback" not in err
    ckpt = ckpt_io.load_checkpoint(out)  # the checkpoint on disk is whole
    assert ckpt["epoch"] + 1 == len(ckpt["history"]) >= 2
