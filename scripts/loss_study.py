"""The fair loss comparison (docs/results/losses.md), in the protocol of "A Metric Learning Reality Check": every
method on the same backbone, embedding head, augmentation and epochs, each tuned with the same `embedfm tune` budget
on the validation split, then trained over 3 seeds and evaluated on the test set; then the unseen-class test.

    .venv/bin/python scripts/loss_study.py [--stages tune,runs,holdout,publish] [--work artifacts/losses]
                                           [--out artifacts/reference/study/losses]

Stages, each resumable (a killed study rerun with the same arguments carries on where it stopped):

- tune: one study per method in METHODS, TUNE_BUDGET each (same trials, pruner, objective and trial budget);
- runs: each method's best_config.json trained for FINAL_EPOCHS on the whole train split, seeds 0..2, evaluated;
- extras: `embedfm ensemble` of the seeds of the balanced CE control and of the best metric loss (validation kNN
  accuracy), and `embedfm floor` over every run, into --out;
- holdout: the unseen-class test (`--holdout-classes`): Shirt held out for CE and the two metric losses with the
  best mean validation kNN accuracy over their 3 seeds (validation only), 3 seeds each; then T-shirt/top, Pullover
  and Coat held out once each (seed 0) for CE and the best metric loss;
- diagnostics: the triplet + DWS method and the balanced CE control (tuned settings) for DIAG_RUN, a longer
  schedule on a subset, so that the diagnostics probe (`embedfm.diagnostics`) has a point at each of 11 epochs;
- publish: copies every run's report.json, history.json and config.json (and the hinge losses' diagnostics.png)
  into --out (holdout runs into --unseen), every study's best_config.json, trials.csv/md and summary.json into
  --out/tune, then writes summary.md and paired.md (`embedfm summarize --names --paired`). `make docs` renders the
  tables of docs/results/losses.md from them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from embedfm import commands
from embedfm.config import SHIRT
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_write_json, read_json
from embedfm.losstable import HINGE_LOSSES, study_methods

# method: the settings that make it (everything else is the shared default recipe, then the tuned parameters)
METHODS: dict[str, dict] = {
    "ce": {"loss": "ce", "sampler": "random"},
    "ce-balanced": {"loss": "ce", "sampler": "balanced"},
    **study_methods(),  # every metric loss of embedfm.losstable
}
CONTROLS = ("ce", "ce-balanced")
# the same search for every method: trial 0 = the defaults, then TPE; median pruning; validation accuracy
TUNE_BUDGET = {"trials": 5, "objective": "val_acc", "pruner": "median", "sampler_seed": 0}
TRIAL = {"backbone": "fastcnn", "epochs": 2, "limit": 10_000, "seed": 0}  # one trial: ~25 s on 2 CPU cores
FINAL_EPOCHS = 2  # every final run: fastcnn, the whole train split (55,000 images), 2 epochs
SEEDS = (0, 1, 2)
OTHER_FOCUS = (0, 2, 4)
# the diagnostics runs: the triplet + DWS method and the balanced CE control, each with its tuned settings, probed at
# every epoch of a longer schedule on a subset (as many image passes as 2 epochs of the whole train split)
DIAG_METHODS = ("triplet", "ce-balanced")
DIAG_RUN = {"epochs": 11, "limit": 10_000, "seed": 0}
STAGES = ("tune", "runs", "extras", "holdout", "diagnostics", "publish")
COPIED = ("report.json", "history.json", "config.json")
HINGE = HINGE_LOSSES
STUDY_FILES = ("best_config.json", "trials.csv", "trials.md", "summary.json")


def say(msg: str) -> None:
    print(msg, flush=True)


def tune_all(work: Path) -> None:
    from embedfm.data import load_fashion_mnist
    from embedfm.tune import TuneConfig, resolve_base, tune

    data = load_fashion_mnist(None)
    for name, settings in METHODS.items():
        base = resolve_base(None, {**TRIAL, **settings})
        tune(TuneConfig(base=base, out=str(work / "tune" / name), **TUNE_BUDGET), data=data, log=say)


def best_config(work: Path, name: str) -> str:
    path = work / "tune" / name / "best_config.json"
    if not path.is_file():
        raise EmbedfmError(f"{path} is missing: run the tune stage first")
    return str(path)


def run_all(work: Path) -> None:
    for seed in SEEDS:  # seed-major: a study stopped early still has every method at its first seeds
        for name in METHODS:
            run = work / "runs" / f"{name}_s{seed}"
            commands.ensure_evaluated(str(run), best_config(work, name), {"epochs": FINAL_EPOCHS, "seed": seed}, say)


def val_knn(work: Path, name: str) -> float:
    """Mean final validation kNN accuracy of a method's 3 seeds: how the holdout stage ranks the metric losses."""
    vals = []
    for seed in SEEDS:
        path = work / "runs" / f"{name}_s{seed}" / "history.json"
        history = read_json(path, "run the runs stage first")
        last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else {}
        if not isinstance(last.get("val_knn_acc"), float):
            raise EmbedfmError(f"{path}: no final val_knn_acc; rerun that run")
        vals.append(last["val_knn_acc"])
    return sum(vals) / len(vals)


def ranking(work: Path) -> dict[str, float]:
    """The metric losses by mean final validation kNN accuracy over their seeds, best first: how the holdout and
    extras stages (and the docs' headline) pick "the best metric losses" without reading the test split."""
    scores = {m: val_knn(work, m) for m in METHODS if m not in CONTROLS}
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))


def holdout_plan(work: Path) -> list[tuple[str, int, int]]:
    """(method, held-out class, seed) of every holdout run, the best metric losses chosen on validation."""
    ranked = ranking(work)
    metric = list(ranked)
    say("metric losses by mean validation kNN accuracy: " + ", ".join(f"{m} {v:.4f}" for m, v in ranked.items()))
    plan = [(m, SHIRT, s) for s in SEEDS for m in ("ce", *metric[:2])]
    plan += [(m, c, 0) for c in OTHER_FOCUS for m in ("ce", metric[0])]
    atomic_write_json(work / "holdout_plan.json", {"ranking": ranked, "plan": plan})
    return plan


def holdout_all(work: Path) -> None:
    for name, cls, seed in holdout_plan(work):
        run = work / "holdout" / f"{name}-h{cls}_s{seed}"
        flags = {"epochs": FINAL_EPOCHS, "seed": seed, "holdout_classes": [cls]}
        commands.ensure_evaluated(str(run), best_config(work, name), flags, say)


def copy_runs(src: Path, dest: Path) -> None:
    """The evaluated runs under src as committed run dirs under dest: report, history and config (no checkpoint);
    the diagnostics plot of the runs of the hinge losses (what docs/results/losses.md discusses)."""
    for run in sorted(src.glob("*_s*")):
        if not (run / "report.json").is_file():
            continue
        (dest / run.name).mkdir(parents=True, exist_ok=True)
        for f in (*COPIED, *(("diagnostics.png",) if run.name.split("-h")[0].split("_s")[0] in HINGE else ())):
            if (run / f).is_file():
                shutil.copy2(run / f, dest / run.name / f)


def extras(work: Path, out: Path) -> None:
    """`embedfm ensemble` of the balanced CE control's and the best metric loss's seeds, and `embedfm floor` over
    every run of the comparison, written straight into --out (they read the run dirs' embeddings.npz)."""
    from embedfm.ensemble import ensemble
    from embedfm.floor import floor

    best = next(iter(ranking(work)))
    for name in ("ce-balanced", best):
        runs = [str(work / "runs" / f"{name}_s{seed}") for seed in SEEDS]
        ensemble(runs, out=out / f"ensemble_{name}", log=say)
    floor([str(work / "runs" / f"{m}_s{seed}") for m in METHODS for seed in SEEDS], out=out / "floor", log=say)


def diagnostics_all(work: Path) -> None:
    for name in DIAG_METHODS:
        run = str(work / "diagnostics" / f"{name}_s0")
        commands.ensure_evaluated(run, best_config(work, name), DIAG_RUN, say, evaluate=False)


def publish(work: Path, out: Path, unseen: Path) -> None:
    from embedfm.summarize import summarize, summarize_paired

    copy_runs(work / "runs", out)
    copy_runs(work / "holdout", unseen)
    for name in DIAG_METHODS:  # the probe's history and plot only: these runs are not part of the comparison
        run = work / "diagnostics" / f"{name}_s0"
        for f in ("history.json", "config.json", "diagnostics.png"):
            if (run / f).is_file():
                (out / "diagnostics" / run.name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / f, out / "diagnostics" / run.name / f)
    for name in METHODS:
        for f in STUDY_FILES:
            src = work / "tune" / name / f
            if src.is_file():
                (out / "tune" / name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out / "tune" / name / f)

    atomic_write_json(
        out / "protocol.json",
        {
            "methods": METHODS,
            "tune": {**TUNE_BUDGET, **TRIAL},
            "final_epochs": FINAL_EPOCHS,
            "seeds": list(SEEDS),
            "diagnostics": {"methods": list(DIAG_METHODS), **DIAG_RUN},
            "ranking": ranking(work),
        },
    )
    summarize([str(out)], names=True, log=say)
    summarize_paired([str(out)], names=True, log=say)
    if list(unseen.glob("*_s*/report.json")):  # the holdout stage has evaluated runs
        shutil.copy2(work / "holdout_plan.json", unseen / "holdout_plan.json")
        summarize([str(unseen)], names=True, log=say)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in order: {', '.join(STAGES)}")
    p.add_argument("--work", default="artifacts/losses", help="where the studies and run dirs (checkpoints) go")
    p.add_argument("--out", default="artifacts/reference/study/losses", help="where publish copies the study's runs")
    p.add_argument("--unseen", default="artifacts/reference/study/unseen", help="where publish copies holdout runs")
    a = p.parse_args(argv)
    stages = [s for s in a.stages.split(",") if s]
    work, out, unseen = Path(a.work), Path(a.out), Path(a.unseen)
    try:
        for s in stages:
            if s not in STAGES:
                raise EmbedfmError(f"--stages: unknown stage {s!r} (one of {', '.join(STAGES)})")
        run_stage = {
            "tune": tune_all,
            "runs": run_all,
            "extras": lambda w: extras(w, out),
            "holdout": holdout_all,
            "diagnostics": diagnostics_all,
            "publish": lambda w: publish(w, out, unseen),
        }
        for s in stages:
            say(f"== {s}")
            run_stage[s](work)
    except EmbedfmError as e:
        print(f"loss_study: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
