"""The speed recipe's ablation: each row adds one change to the row above, every row trained over several seeds,
validated every quarter epoch (validation split only: the test split is never read here).

    .venv/bin/python scripts/speedrun.py [--seeds 0,1,2] [--rows NAME,...]
        [--out artifacts/reference/speedrun/ablation.jsonl] [--runs artifacts/speedrun/ablation]

One JSON line per (row, seed) is appended to --out as soon as that run ends, so an interrupted ablation resumes
where it stopped (rows and seeds already in the file are skipped). Each run's final checkpoint is kept under
--runs; a row that only changes test-time augmentation (TEST_TIME settings) trains nothing: it re-scores the
checkpoints of the row above on the validation split (its training seconds are theirs; time-to-target is not
re-measured for it). A line holds the row's resolved settings, the
training seconds (the loop's clock, validations excluded), the final validation accuracy and the first quarter
epoch at which 92 / 93 / 94 % validation accuracy was reached (`embedfm.trajectory`). `make docs` renders the
table in docs/speedrun.md from this file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from embedfm import machine
from embedfm.checkpoint import load_model
from embedfm.config import from_dict, with_recipe
from embedfm.data import load_fashion_mnist, make_splits
from embedfm.trajectory import accuracy, run

TARGETS = (0.92, 0.93, 0.94)
SHORT = {"epochs": 4}  # `--recipe fast` at the 4-minute budget: what RECIPE_ROW is
RECIPE_ROW = "epochs4"
TEST_TIME = {"tta_flip", "tta_shift"}  # settings that change predictions, not training

# (row name, what it changes, the row it builds on, the settings it adds). A row is the row it names plus its own
# settings; an alternative that lost is a row nothing builds on. RECIPE_ROW is `--recipe fast` at the 4-minute
# budget (a test checks that it adds up to the preset).
ROWS: list[tuple[str, str, str | None, dict]] = [
    ("demo", "the demo recipe: fastcnn (24, 48, 96), AdamW, one-cycle, flips, 3 epochs", None, {}),
    ("epochs4", "4 epochs: fills the 4-minute budget", "demo", {"epochs": 4}),
    ("wide", "instead: widths 32, 64, 128 at 3 epochs (the same budget)", "demo", {"widths": [32, 64, 128]}),
    ("crop", "random crops with 1-pixel padding", "epochs4", {"crop_pad": 1}),
    ("shift_tta", "test-time views shifted 1 pixel up, down, left, right", "epochs4", {"tta_shift": 1}),
]


def row_configs() -> list[tuple[str, str, dict]]:
    """(name, change, cumulative settings) of every row."""
    settings: dict[str, dict] = {}
    for name, _, on, adds in ROWS:
        settings[name] = {**(settings[on] if on else {}), **adds}
    return [(name, what, settings[name]) for name, what, _, _ in ROWS]


def rescored(cfg, data, run_dir: Path, out: Path, trained: str, seed: int) -> dict:
    """The final validation accuracy of a kept checkpoint under `cfg`'s test-time augmentation."""
    model, _ = load_model(run_dir)
    splits = make_splits(data, cfg.val_size, cfg.limit, holdout=cfg.holdout_classes)
    before = [r for r in map(json.loads, out.read_text().splitlines()) if r.get("row") == trained and r["seed"] == seed]
    return {
        "train_s": before[-1]["train_s"],
        "val_acc": accuracy(model, splits.val_x, splits.val_y, cfg),
        "rescored_from": trained,
        "time_to": {},
        "points": [],
    }


def done(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["row"], r["seed"]) for r in rows if "row" in r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of every row")
    p.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    p.add_argument("--out", default="artifacts/reference/speedrun/ablation.jsonl")
    p.add_argument("--runs", default="artifacts/speedrun/ablation", help="where each run's checkpoint is kept")
    a = p.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    wanted = set(a.rows.split(",")) if a.rows else None
    data = load_fashion_mnist()
    have = done(out)
    if not out.exists():
        out.write_text(json.dumps({"machine": machine.describe()}) + "\n")
    for (name, what, settings), (_, _, on, adds) in zip(row_configs(), ROWS):
        rescore = on is not None and set(adds) <= TEST_TIME  # re-score `on`'s checkpoints
        if wanted is not None and name not in wanted:
            continue
        for seed in seeds:
            if (name, seed) in have:
                continue
            cfg = from_dict(with_recipe({**settings, "seed": seed}))
            if rescore:
                line = rescored(cfg, data, Path(a.runs) / f"{on}_s{seed}", out, on, seed)
            else:
                log = lambda p, n=name, s=seed: print(n, s, json.dumps(p), flush=True)
                traj = run(cfg, data, checks=4, log=log, keep=str(Path(a.runs) / f"{name}_s{seed}"))
                line = traj.to_dict(TARGETS)
            line = {"row": name, "change": what, "on": on, "seed": seed, "settings": settings, **line}
            with out.open("a") as f:
                f.write(json.dumps(line) + "\n")
            print(json.dumps({k: v for k, v in line.items() if k != "points"}), flush=True)


if __name__ == "__main__":
    main()
