"""Checkpoint formats side by side: embedfm's safetensors + JSON checkpoint against the pickled `last.pt` of older
versions (torch.save of the same state), for size, save time and load time, per backbone.

    .venv/bin/python scripts/bench_checkpoint.py [--reps 20] [--reference]

The state is what `embedfm train` checkpoints after an epoch (weights, AdamW state after real steps, one-cycle
scheduler, RNG states, a 30-epoch history, config), built here without data: random batches, a few steps. Load
times are best of `--reps`: the full load `embedfm train --resume` does, and the weights-only load `eval` does
(`load_model`, which rebuilds the network). The old format is loaded with `weights_only=False`, as older embedfm
did. Writes checkpoint_format.json into artifacts/bench/ (or artifacts/reference/ with --reference).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from embedfm import checkpoint, machine, rundir
from embedfm.config import TrainConfig
from embedfm.fileio import atomic_write_json
from embedfm.models import build_model
from embedfm.objectives import build_objective
from embedfm.train import make_optimizer, rng_state, seed_everything, train_step

CPU = torch.device("cpu")


def training_state(backbone: str) -> dict:
    cfg = TrainConfig(backbone=backbone, epochs=30)
    gen = seed_everything(0)
    args = {"backbone": backbone, "embedding_dim": cfg.embedding_dim, "num_classes": 10}
    net = build_model(**args).to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(net, cfg, 100)
    objective = build_objective(cfg)
    for _ in range(3):
        x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        train_step(net, objective, opt, sched, x, torch.arange(64) % 10, CPU)
    row = {"epoch": 1, "train_loss": 0.5, "val_acc": 0.9, "val_focus_err": 0.1, "train_seconds": 100.0}
    return {"model_args": args, "model": net.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": 29, "history": [dict(row, epoch=i + 1) for i in range(30)],
            "config": cfg.to_dict(), "rng": rng_state(gen), "data": {"sha1": "0" * 40},
            "splits": {"n_train": 55000, "n_val": 5000}}  # fmt: skip


def best(f, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(backbone: str, reps: int) -> dict:
    state = training_state(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        new, old = Path(tmp) / "new", Path(tmp) / "old"
        new.mkdir()
        old.mkdir()
        save_new = best(lambda: checkpoint.save_checkpoint(new, state), reps)
        save_old = best(lambda: torch.save({"format_version": 1, **state}, old / rundir.LEGACY_CHECKPOINT), reps)
        return {
            "backbone": backbone,
            "parameters": sum(p.numel() for p in build_model(backbone).parameters()),
            "bytes": {
                "safetensors": (new / rundir.CHECKPOINT).stat().st_size,
                "pickle": (old / rundir.LEGACY_CHECKPOINT).stat().st_size,
            },
            "save_s": {"safetensors": save_new, "pickle": save_old},
            "load_full_s": {
                "safetensors": best(lambda: checkpoint.load_checkpoint(new), reps),
                "pickle": best(lambda: torch.load(old / rundir.LEGACY_CHECKPOINT, weights_only=False), reps),
            },
            "load_model_s": {
                "safetensors": best(lambda: checkpoint.load_model(new), reps),
                "pickle": best(lambda: _old_load_model(old / rundir.LEGACY_CHECKPOINT), reps),
            },
        }


def _old_load_model(path: Path):
    ckpt = torch.load(path, weights_only=False)
    model = build_model(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=20, help="repetitions per timing (best of)")
    p.add_argument("--reference", action="store_true", help="write into artifacts/reference/")
    a = p.parse_args()
    cpu = machine.describe()
    rows = [measure(b, a.reps) for b in ("fastcnn", "resnet20")]
    out = Path("artifacts/reference" if a.reference else "artifacts/bench") / "checkpoint_format.json"
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine.summary(cpu), "cpu": cpu, "reps": a.reps,
              "rows": rows}  # fmt: skip
    atomic_write_json(out, result)
    for r in rows:
        keys = ("load_full_s", "load_model_s")
        ms = {k: f"{r[k]['safetensors'] * 1e3:.1f} vs {r[k]['pickle'] * 1e3:.1f} ms" for k in keys}
        print(f"{r['backbone']}: {r['bytes']['safetensors']:,} vs {r['bytes']['pickle']:,} bytes; full load "
              f"{ms['load_full_s']}; model {ms['load_model_s']}")  # fmt: skip
    print(f"→ {out}")


if __name__ == "__main__":
    main()
