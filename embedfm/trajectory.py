"""Validation trajectories: one training run, validated every fraction of an epoch, timed without the validations.

`run(cfg)` drives `train.train` (the one training loop, so a measured recipe is the shipped recipe) with an
`on_step` hook that, `checks` times an epoch, scores the current weights on the validation split (softmax head,
flip test-time augmentation where the config has it). Each point records the training seconds so far: the loop's
own clock, which leaves the hook's time out. The final weights are then scored with the config's whole test-time
augmentation (`--tta-shift` too, 5× the views: too slow to pay at every point) on the validation split and, only
when asked, once on the test split: the final epoch, never a chosen one.

`studies/speedrun.py` and `studies/speedrun2.py` (the speed recipe's ablations, one `ablation_line` per run; the
second reads its times in E, `unit_line`), `scripts/bench.py --only
speedrun` (time to accuracy of three recipes side by side) and `scripts/probe_recipe.py trajectory` (its `on_check`
hook scores EMA copies of the weights at the same points) are built on it. `budget_s` stops a run after that many
training seconds (a long recipe's first minutes, for the time-to-accuracy plot); such a run is marked `stopped` and
has no test figure.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from embedfm import sources
from embedfm.config import TrainConfig
from embedfm.data import FashionMNIST
from embedfm.inference import embed
from embedfm.sampling import make_splits
from embedfm.train import Hooks, Step, train

CPU = torch.device("cpu")


class _Budget(Exception):
    """Raised by the hook to end a run at its training-time budget."""


@dataclass
class Trajectory:
    points: list[dict] = field(default_factory=list)  # {"epoch", "train_s", "val_acc"} every 1/checks epoch
    train_seconds: float = 0.0  # the loop's training time (validation excluded)
    val_acc: float | None = None  # the final weights, with the config's whole test-time augmentation
    test_acc: float | None = None  # the final weights on the test split (only with test=True, unstopped)
    stopped: bool = False  # ended by budget_s before its last epoch

    def time_to(self, target: float) -> dict | None:
        """The first point at or above `target` validation accuracy: {"epoch", "train_s"}, or None."""
        for p in self.points:
            if p["val_acc"] >= target:
                return {"epoch": p["epoch"], "train_s": p["train_s"]}
        return None

    def to_dict(self, targets: tuple[float, ...] = ()) -> dict:
        return {
            "train_s": round(self.train_seconds, 1),
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
            "stopped": self.stopped,
            "time_to": {f"{t:.2f}": self.time_to(t) for t in targets},
            "points": self.points,
        }


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> float:
    """Softmax accuracy with the config's test-time augmentation, as `embedfm train` validates and eval tests."""
    logits = embed(model, images, CPU, tta_flip=cfg.tta_flip, tta_shift=cfg.tta_shift).logits  # (N, 10)
    return round((logits.argmax(1) == labels).float().mean().item(), 5)


def run(
    cfg: TrainConfig,
    data: FashionMNIST | None = None,
    checks: int = 4,
    budget_s: float | None = None,
    test: bool = False,
    log=lambda *a, **k: None,
    keep: str | None = None,
    every_step: Callable[[Step], None] | None = None,
    on_check: Callable[[Step, object], dict] | None = None,
) -> Trajectory:
    """Train `cfg` and return its trajectory. The run goes to a temporary dir, or with `keep` into that run dir
    (replaced if there), where its final checkpoint stays for re-scoring. `every_step(step)` runs after every step
    (e.g. an EMA update), `on_check(step, splits)` at each check, its figures added to the point; both are left out
    of the training seconds like the validations."""
    data = data or sources.for_config(cfg, progress=False)  # the set the config names
    splits = make_splits(data, cfg.val_size, cfg.limit, holdout=cfg.holdout_classes)
    traj = Trajectory()
    last: dict = {}
    point_cfg = replace(cfg, tta_shift=0)

    def on_step(s: Step) -> None:
        last["net"], last["epoch"], last["seconds"] = s.net, s.epoch, s.train_seconds
        if every_step:
            every_step(s)
        at = {round(s.steps * (i + 1) / checks) - 1 for i in range(checks)}
        if s.step in at:
            point = {
                "epoch": round(s.epoch + (s.step + 1) / s.steps, 3),
                "train_s": round(s.train_seconds, 2),
                "val_acc": accuracy(s.net, splits.val_x, splits.val_y, point_cfg),
                **(on_check(s, splits) if on_check else {}),
            }
            traj.points.append(point)
            log(point)
        if budget_s is not None and s.train_seconds >= budget_s and s.step in at:
            raise _Budget

    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = train(replace(cfg, out=keep or tmp), data=data, overwrite=keep is not None, progress=False,
                        log=lambda *a, **k: None, hooks=Hooks(on_step=on_step))  # fmt: skip
            traj.train_seconds = out["seconds"]
        except _Budget:
            traj.stopped = True
            traj.train_seconds = last["seconds"]
    if cfg.tta_shift and "net" in last:
        traj.val_acc = accuracy(last["net"], splits.val_x, splits.val_y, cfg)
    else:
        traj.val_acc = traj.points[-1]["val_acc"] if traj.points else None
    if test and not traj.stopped:
        traj.test_acc = accuracy(last["net"], splits.test_x, splits.test_y, cfg)
    return traj


def ablation_done(path: Path) -> set[tuple[str, int]]:
    """(row, seed) of every line of an ablation file: what a resumed ablation skips."""
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["row"], r["seed"]) for r in rows if "row" in r}


def process_key(pid: int) -> str:
    """A process told apart from a later one that reuses its id: the id and when it started (from /proc)."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{pid}:{start}"


def unit_line(
    path: Path, pid: int, data: FashionMNIST | None = None, cfg: TrainConfig | None = None, log=print
) -> dict:
    """E, the unit an ablation's times are read in: one epoch of the demo recipe (fastcnn, fp32, the default
    threads) timed on the training split, once per process (`pid`) before its first row, appended to `path` as a
    "unit" line with the machine. The rows after a unit line were timed in the same process, on the same machine."""
    from embedfm import machine

    key = process_key(pid)
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    last = next((r for r in reversed(lines) if "unit" in r), None)
    if last is not None and last.get("process") == key:
        return last
    traj = run(cfg or TrainConfig(epochs=1), data, checks=1)
    line = {"unit": "E", "E_s": round(traj.train_seconds, 2), "process": key, "machine": machine.describe()}
    log(f"E = {line['E_s']} s (one epoch of the demo recipe) on {machine.summary(line['machine'])}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    return line


def ablation_line(path: Path, row: dict, seed: int, cfg: TrainConfig, runs: Path, rescore: str | None = None,
                  targets: tuple[float, ...] = (), data: FashionMNIST | None = None, log=print) -> dict:  # fmt: skip
    """One (row, seed) of an ablation (`row`: its "row" name, "change", "on" and "settings"), appended to the
    JSON-lines file `path` as soon as it ends (the first line records the machine). The run's final checkpoint is
    kept under runs/<row>_s<seed>. A row that only changes test-time augmentation (`rescore` names the row it
    re-scores) trains nothing: the final validation accuracy of that row's checkpoint under `cfg`'s test-time
    augmentation, with its training seconds (time-to-target is not re-measured)."""
    from embedfm import machine
    from embedfm.checkpoint import load_model

    data = data or sources.for_config(cfg, progress=False)  # the set the config names
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"machine": machine.describe()}) + "\n")
    name = row["row"]
    if rescore:
        model, _ = load_model(runs / f"{rescore}_s{seed}")
        splits = make_splits(data, cfg.val_size, cfg.limit, holdout=cfg.holdout_classes)
        before = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("row") == rescore
                  and r["seed"] == seed]  # fmt: skip
        line = {"train_s": before[-1]["train_s"], "val_acc": accuracy(model, splits.val_x, splits.val_y, cfg),
                "rescored_from": rescore, "time_to": {}, "points": []}  # fmt: skip
    else:
        keep = str(runs / f"{name}_s{seed}")
        traj = run(cfg, data, checks=4, log=lambda p: log(name, seed, json.dumps(p)), keep=keep)
        line = traj.to_dict(targets)
    with path.open("a") as f:
        line = {"row": name, "change": row["change"], "on": row["on"], "seed": seed, "settings": row["settings"],
                **line}  # fmt: skip
        f.write(json.dumps(line) + "\n")
    return line
