"""Distributed training: shards cover the global batch; 2 gloo processes train the weights 1 process trains on the
same global batches (and not without the gradients' all-reduce); 2 processes train a run that eval loads."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_fake_dataset

from embedfm import checkpoint
from embedfm.cli import main
from embedfm.config import TrainConfig
from embedfm.distributed import Dist, init
from embedfm.errors import EmbedfmError
from embedfm.models import build_model

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
            "--standalone",  # a free port: another torchrun on the machine cannot collide with it
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


# The comparison run: 4 steps of 50-image global batches (200 fake images), 25 images a process under torchrun.
# - backbone mlp: no BatchNorm. BatchNorm normalises with each process's own batch statistics (embedfm has no
#   SyncBatchNorm), which legitimately differ from the global batch's, so a BN backbone would not train the same
#   weights in 2 processes as in 1;
# - CE + SupCon: SupCon scores every pair with no miner, so the metric term is a function of the gathered batch
#   (a miner's random draws see the gathered batch in a per-rank order, own shard first, and pick other tuples than
#   one process does); the run checks both DDP's averaging and the world-size factor that undoes it for the
#   gathered metric term (objectives.py);
# - SGD: its update is linear in the gradient, so a rounding-level difference in the gradient stays rounding-level
#   in the weights. AdamW divides each gradient entry by its own running magnitude: an entry near zero turns a
#   rounding difference into a step-sized one (measured with CE alone: up to 1.2e-4 of the distance moved,
#   against 2e-5 with SGD).
DDP_STEPS, DDP_BATCH = 4, 50
DDP_RUN = ["--backbone", "mlp", "--loss", "triplet", "--metric-loss", "supcon", "--m-per-class", "4",
           "--optimizer", "sgd", "--epochs", "1", "--batch-size", str(DDP_BATCH), "--limit", "200",
           "--val-size", "50", "--no-progress"]  # fmt: skip
U = 2.0**-24  # float32's unit roundoff

# what torchrun runs for the negative control: embedfm's command with DDP's wrapper replaced by the plain model, so
# each process steps on its own shard's gradient and no gradient is ever all-reduced
NO_ALLREDUCE = """
import sys
import torch
torch.nn.parallel.DistributedDataParallel = lambda module, *args, **kwargs: module
from embedfm.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _torchrun(entry: list[str], args: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *entry, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]


def _tolerance(w: torch.Tensor, moved: float) -> float:
    """How far a weight tensor of the 2-process run may lie from the 1-process run's, from float32 rounding alone.

    The two runs compute the same sums in another order: a gradient entry is one 50-image sum in one process, two
    25-image sums and the all-reduce's sum of the two in two (and the forward pass runs its kernels on 25 rows
    instead of 50). A sum of n terms in any order is within (n - 1)·u of the sum of their magnitudes, so each
    step's update may differ by about 2·B·u of its own size, taking how far the 1-process run moved the tensor as
    that size; storing w + Δw then rounds to w's ulp, where the two runs may land one ulp apart. Over S steps
    these add up: S·(ulp(max |w|) + 2·B·u·moved). Measured: at most 2 ulps, under 0.2 of this bound; without the
    all-reduce the weights differ by 0.4 to 0.9 of `moved`, over 6 000× the bound."""
    ulp = torch.finfo(torch.float32).eps * 2.0 ** torch.frexp(w.abs().max())[1].item() / 2  # spacing at max |w|
    return DDP_STEPS * (ulp + 2 * DDP_BATCH * U * moved)


@pytest.mark.numeric
def test_two_processes_train_the_weights_one_process_trains_and_not_without_the_all_reduce(tmp_path):
    data = make_fake_dataset(tmp_path / "data", n_train=300)
    run = [*DDP_RUN, "--data-dir", str(data)]
    assert main(["train", *run, "--out", str(tmp_path / "one")]) == 0
    _torchrun(["-m", "embedfm"], ["train", *run, "--out", str(tmp_path / "two")])
    driver = tmp_path / "no_allreduce.py"
    driver.write_text(NO_ALLREDUCE)
    _torchrun([str(driver)], ["train", *run, "--out", str(tmp_path / "apart")])

    one, two, apart = (checkpoint.load_checkpoint(tmp_path / name)["model"] for name in ("one", "two", "apart"))
    assert len(json.loads((tmp_path / "two" / "history.json").read_text())) == 1
    with torch.random.fork_rng():  # the weights every run starts from, without moving this process's RNG
        torch.manual_seed(0)  # as seed_everything(--seed 0) seeds it before building the network
        start = build_model(**TrainConfig(backbone="mlp").model_args).state_dict()
    assert one.keys() == two.keys() == apart.keys() == start.keys()
    for name, w in one.items():
        moved = (w - start[name]).abs().max().item()
        tol = _tolerance(w, moved)
        assert moved > 100 * tol, name  # training moved every tensor far beyond rounding
        assert (two[name] - w).abs().max().item() <= tol, name  # the gradients were averaged over the 2 processes
        assert (apart[name] - w).abs().max().item() > tol, name  # ... which the comparison would see if they were not


def test_only_rank_0_checks_the_run_dir(tmp_path, fake_data_dir, monkeypatch):
    """Under torchrun every rank calls train(); rank 0 may already hold the run dir's lock when rank 1 starts, so a
    check by rank 1 would refuse the run rank 0 is rightly writing. Rank 1 goes straight to the process group
    (here a sentinel) while the dir is locked; rank 0 refuses the locked dir with its one line."""
    from embedfm import distributed, rundir
    from embedfm.config import TrainConfig
    from embedfm.train import train

    run = tmp_path / "run"

    class Joined(Exception):
        pass

    def join(*_a, **_k):
        raise Joined

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "init", join)
    cfg = TrainConfig(out=str(run), data_dir=str(fake_data_dir), epochs=1, limit=200, val_size=50, batch_size=50)
    run.mkdir()
    with rundir.lock(run, "train", lambda *a: None):  # as rank 0 holds it (flock: a second open conflicts)
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(Joined):
            train(cfg, progress=False, log=lambda *a: None)
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(EmbedfmError, match="is being written"):
            train(cfg, progress=False, log=lambda *a: None)
