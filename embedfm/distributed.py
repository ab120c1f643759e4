"""Multi-process training with PyTorch's own engine: `torchrun --nproc_per_node N -m embedfm train ...`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; `init()` joins the process group (gloo on
CPU, NCCL on CUDA). Without torchrun everything here is a no-op and training is single-process.

How a run is split (so N processes train the same model a single process would, batch for batch):
- every rank draws the same batch plan and the same augmentation from the same seeded generator,
  then keeps its shard `batch[rank::world]`: the global batch is `--batch-size`, class balance
  and focus over-sampling hold for the global batch (a distributed class-balanced sampler);
- DistributedDataParallel averages gradients; the triplet miner and loss see the embeddings of all
  ranks (gathered with pytorch-metric-learning's distributed utilities), see objectives.py;
- only rank 0 validates, logs and writes the run dir; the others wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from embedfm.errors import EmbedfmError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch (B,) → (B / world,)."""
        return batch[self.rank :: self.world]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float], device) -> list[float]:
        """Element-wise sum over ranks of a few floats."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


def from_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device, batch_size: int) -> Dist:
    """Join the process group torchrun describes (if any); returns this process's place in it."""
    d = from_env()
    if not d.enabled:
        return d
    if batch_size % d.world:
        raise EmbedfmError(f"--batch-size {batch_size} must divide evenly among {d.world} processes")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (barrier, all_reduce) run on this process's GPU
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return d


def close(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def launch(cfg, overwrite: bool = False, resume: bool = False, log=print) -> None:
    """`embedfm train --procs N` on one machine: N processes of `cfg.threads` threads each (default: the cores
    shared out, at least one), started with PyTorch's own launcher (`python -m torch.distributed.run --standalone`,
    gloo on the CPU) and trained exactly as under torchrun. The resolved config travels in a JSON file beside the run
    dir. Rank 0's epoch lines come through; the launcher's own messages go to `OUT.procs.log`. A process that dies
    (killed, out of memory) stops the others: one line, the last checkpoint intact, and the command that resumes."""
    import json
    import subprocess
    import sys
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    n = cfg.procs
    threads = cfg.threads or max(1, (os.cpu_count() or n) // n)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logfile = out.parent / f"{out.name}.procs.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="embedfm-procs-") as tmp:
        args = ["--resume", str(out)] if resume else ["--config", str(Path(tmp) / "config.json")]
        if not resume:
            (Path(tmp) / "config.json").write_text(json.dumps(replace(cfg, threads=threads).to_dict()))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
               "-m", "embedfm", "train", *args, "--no-progress", *(["--overwrite"] if overwrite else [])]  # fmt: skip
        log(f"embedfm train: {n} processes × {threads} threads (gloo); launcher log {logfile}")
        with open(logfile, "w") as f:
            rc = subprocess.run(cmd, env=env, stderr=f, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        from embedfm import rundir

        last = lines_of(logfile)
        if any(line.startswith("embedfm train: error:") or ": error: " in line for line in last):
            raise EmbedfmError(next(ln for ln in reversed(last) if ": error: " in ln).split(": error: ", 1)[1])
        saved = rundir.has_checkpoint(out)
        raise EmbedfmError(
            f"a training process of {out} stopped (exit {rc}; {logfile}); "
            + (
                f"the last finished epoch is saved: embedfm train --resume {out} --procs {n}"
                if saved
                else "no epoch had finished"
            )
        )


def lines_of(path) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n") for line in f]
    except OSError:
        return []


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
