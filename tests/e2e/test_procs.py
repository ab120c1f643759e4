"""`embedfm train --procs 2`: two one-thread processes on one machine, no torchrun command; a killed worker stops the
run in one line with the last checkpoint intact, and --resume finishes it in as many processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_fake_dataset

from embedfm.run import Run

pytestmark = pytest.mark.slow

EMBEDFM = str(Path(sys.executable).parent / "embedfm")
ARGS = ["--epochs", "2", "--limit", "400", "--val-size", "50", "--batch-size", "20", "--threads", "1"]


def children(pid: int) -> list[int]:
    """Every descendant of pid, from /proc."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def is_worker(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"embedfm" in cmd and b"torch.distributed.run" not in cmd and b"--config" in cmd


def test_two_processes_train_and_a_killed_worker_is_one_line_then_resumes(tmp_path):
    data = make_fake_dataset(tmp_path / "data", n_train=500)
    out = tmp_path / "run"
    cmd = [EMBEDFM, "train", "--data-dir", str(data), *ARGS, "--procs", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = [p for p in children(proc.pid) if is_worker(p)]
    assert proc.poll() is None and len(workers) == 2, (proc.poll(), workers)
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "stopped" in err and f"--resume {out}" in err, err
    assert Run.open(out).epoch is not None  # the last checkpoint loads
    r = subprocess.run([EMBEDFM, "train", "--resume", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    run = Run.open(out)
    assert run.config.procs == 2 and len(run.history) == 2 and (out / "DONE").exists()
