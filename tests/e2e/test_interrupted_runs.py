"""A run interrupted in another process: killed with SIGKILL mid-epoch, then resumed, it ends as the uninterrupted
run did (weights, history, evaluation); stopped with Ctrl-C, it says how to resume and leaves a whole checkpoint."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from embedfm import checkpoint as ckpt_io
from embedfm import rundir
from embedfm.cli import main

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


@pytest.mark.slow
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


@pytest.mark.slow
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
