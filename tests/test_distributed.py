"""Distributed training: shards cover the global batch; 2 gloo processes train a run that eval loads."""

import json
import os
import subprocess
import sys

import pytest
import torch

from embedfm.cli import main
from embedfm.distributed import Dist, init
from embedfm.errors import EmbedfmError

pytestmark = pytest.mark.slow  # trains, or starts embedfm processes (seconds each)


def test_shards_partition_the_global_batch():
    batch = torch.arange(10)
    shards = [Dist(rank, 3).shard(batch) for rank in range(3)]
    assert sorted(torch.cat(shards).tolist()) == batch.tolist()
    assert Dist().shard(batch).tolist() == batch.tolist() and not Dist().enabled


def test_batch_must_divide_among_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(EmbedfmError, match="must divide evenly among 2 processes"):
        init(torch.device("cpu"), 101)


def test_two_gloo_processes_train_a_run_that_eval_loads(tmp_path, real_subset_dir):
    real_data_dir = real_subset_dir  # its 2,000 test images keep the evaluation short
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "embedfm",
            "train",
            "--loss",
            "triplet",
            "--data-dir",
            str(real_data_dir),
            "--limit",
            "1000",
            "--val-size",
            "500",
            "--epochs",
            "2",
            "--batch-size",
            "100",
            "--out",
            str(run),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("embedfm train →") == 1 and "2 processes" in r.stdout  # only rank 0 logs
    hist = json.loads((run / "history.json").read_text())
    assert len(hist) == 2 and hist[-1]["triplets"] > 0 and (run / "DONE").is_file()
    assert hist[-1]["val_acc"] > 0.5  # it learned (10 classes: chance is 0.1)
    assert main(["eval", str(run), "--no-progress"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["runs"]["ddp"]["classifiers"]["knn"]["accuracy"] > 0.5
