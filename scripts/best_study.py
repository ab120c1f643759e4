"""The best model embedfm trains from scratch on two CPU cores, its controls, its ensemble, and where the four-class
floor is (docs/results/best.md).

    .venv/bin/python scripts/best_study.py [--stages runs,extras,publish,curve] [--methods triplet,ce-balanced]
                                           [--seeds 0,1,2] [--threads N] [--work artifacts/best]
                                           [--out artifacts/reference/study/best]

The recipe is the resnet20 study's (docs/results/study.md), set rather than chosen: no other ResNet-20 settings
were compared on the validation split. ResNet-20, 30 epochs, 2-pixel random crops and flips, AdamW with the one-cycle
schedule, flip test-time augmentation. Stages, each resumable (a killed study rerun with the same arguments carries
on from the last checkpoint):

- runs: each method in METHODS at RECIPE (CE + triplet; CE on the same class-balanced batches; CE on random
  batches), seeds 0..2, interleaved by seed so that a study stopped half way has every method at the same number
  of seeds. `--methods` picks some of them, so that two processes with
  `--threads 1` each can train two methods side by side (small convolutions use a second thread poorly:
  `scripts/bench.py --only threads`), and `--seeds` says where a chain stops. `--methods triplet_e15` trains the
  CURVE runs: CE + triplet at another schedule length, a further point on the curve, never a method of the tables;
- extras: `embedfm ensemble` of each method's seeds, and `embedfm floor` over every run (the label-issue gallery);
- publish: copies every run's report.json, history.json and config.json into --out, writes summary.md and
  paired.md (`embedfm summarize --names --paired`);
- curve: curve.json / curve.png from the committed runs alone (no training): validation accuracy against epochs
  of every CE + triplet run, and per measured schedule length (30 epochs here and in the study, 60 epochs in the
  study, the CURVE runs here under curve/, out of the summary's reach) the runs, their final test accuracy, their
  training seconds per epoch and the gain from the previous length. Measured points only: nothing is fitted or
  extrapolated.

The study's random-batch CE control (artifacts/reference/study/resnet20/ce_s*) has the same settings but was
evaluated before reports kept per-image predictions, so it gives means, not paired intervals; `ce` retrains it
and trains after the other two methods of each seed. `make docs` renders docs/results/best.md's tables from these files.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
from pathlib import Path

from embedfm import commands
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_save_figure, atomic_write_json, read_json

RECIPE = {"backbone": "resnet20", "epochs": 30, "crop_pad": 2}
METHODS: dict[str, dict] = {
    "triplet": {"loss": "triplet"},  # CE + triplet over distance-weighted sampling, class-balanced batches
    "ce-balanced": {"loss": "ce", "sampler": "balanced"},  # the same batches, CE only
    "ce": {"loss": "ce"},  # random batches: the study's control again, now with per-image records for paired intervals
}
# CE + triplet at other schedule lengths (opt-in with --methods): points of the accuracy-against-epochs curve
CURVE: dict[str, dict] = {"triplet_e15": {"loss": "triplet", "epochs": 15}}
SEEDS = (0, 1, 2)
STAGES = ("runs", "extras", "publish", "curve")
COPIED = ("report.json", "history.json", "config.json")
# The resnet20 study's runs of the same recipe (and its one 60-epoch seed): the random-batch CE control's means and
# the curve's other points.
STUDY = Path("artifacts/reference/study/resnet20")


def say(msg: str) -> None:
    print(msg, flush=True)


def run_dir(work: Path, method: str, seed: int) -> Path:
    return work / ("curve" if method in CURVE else "runs") / f"{method}_s{seed}"


def run_all(work: Path, methods: list[str], seeds: list[int], threads: int | None) -> None:
    for seed in seeds:
        for m in methods:
            flags = {**RECIPE, **(METHODS | CURVE)[m], "seed": seed, "threads": threads}
            commands.ensure_evaluated(str(run_dir(work, m, seed)), None, flags, say)


def evaluated(work: Path, method: str) -> list[str]:
    return [str(r) for s in SEEDS if (r := run_dir(work, method, s)).joinpath("report.json").is_file()]


def extras(work: Path, out: Path) -> None:
    """Ensembles of each method's evaluated seeds and the floor over every evaluated run, straight into --out."""
    from embedfm.ensemble import ensemble
    from embedfm.floor import floor

    for m in METHODS:
        if len(runs := evaluated(work, m)) >= 2:
            ensemble(runs, out=out / f"ensemble_{m}", log=say)
    if len(every := [r for m in METHODS for r in evaluated(work, m)]) >= 2:
        floor(every, out=out / "floor", log=say)


def final_test(run: Path) -> float:
    """The final epoch's test accuracy (softmax head, the recipe's flip TTA) from a run's report.json."""
    report = read_json(run / "report.json", "evaluate the run")
    return float(next(iter(report["runs"].values()))["classifiers"]["softmax"]["accuracy"])


def threads_of(run: Path) -> str:
    """A run's thread setting as its config.json records it ("default": torch's own, the machine's cores)."""
    threads = read_json(run / "config.json").get("threads")
    return "default" if threads is None else str(threads)


def curve(out: Path) -> dict:
    """The measured points of accuracy against schedule length, and nothing fitted: validation accuracy per epoch
    of every CE + triplet run of the recipe and of CURVE (this study's and the study's), then per schedule length the
    number of runs, the final test accuracy (mean, and sample std where there are two runs or more), the training
    seconds per epoch of those runs grouped by their thread setting, and the gain in mean test accuracy from one
    measured length to the next. One run at a length is one observation: no slope is fitted and nothing is carried
    beyond the measured lengths."""
    runs = [*sorted(out.glob("triplet_s*")), *sorted(out.glob("curve/triplet_e*_s*"))]
    runs += [*sorted(STUDY.glob("triplet_s*")), *sorted(STUDY.glob("triplet_e*_s*"))]
    series, by_length = [], {}
    for run in runs:
        history = read_json(run / "history.json", "publish the run")
        epochs = len(history)
        seconds = float(history[-1]["train_seconds"])
        s = {
            "run": str(run),
            "epochs": epochs,
            "val_acc": [float(h["val_acc"]) for h in history],
            "test_acc": final_test(run),
            "train_seconds": seconds,
            "seconds_per_epoch": seconds / epochs,
            "threads": threads_of(run),
        }
        series.append(s)
        by_length.setdefault(epochs, []).append(s)
    lengths = {}
    for e, ss in sorted(by_length.items()):
        accs = [s["test_acc"] for s in ss]
        per_epoch: dict[str, list[float]] = {}
        for s in ss:
            per_epoch.setdefault(s["threads"], []).append(s["seconds_per_epoch"])
        lengths[e] = {
            "runs": len(ss),
            "test_acc_mean": statistics.fmean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "seconds_per_epoch": {t: {"runs": len(v), "mean": statistics.fmean(v)} for t, v in per_epoch.items()},
        }
    order = list(lengths)
    gains = [
        {"from": a, "to": b, "gain": lengths[b]["test_acc_mean"] - lengths[a]["test_acc_mean"]}
        for a, b in itertools.pairwise(order)
    ]
    result = {"series": series, "lengths": lengths, "gains": gains}
    plot_curve(result, out / "curve.png")
    atomic_write_json(out / "curve.json", result)
    return result


def plot_curve(r: dict, path: Path) -> None:
    """Left: validation accuracy per epoch of every run; right: final test accuracy of every run against schedule
    length (log scale), each length's mean marked; measured points only, no line through them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    lengths = {int(e): v for e, v in r["lengths"].items()}
    palette = {15: "tab:green", 60: "tab:red", 90: "tab:orange", 120: "tab:purple"}  # the same length, the same colour
    others = {e: palette.get(e, "tab:brown") for e in sorted(lengths) if e != 30}
    for s in r["series"]:
        mine = "study/best" in s["run"]
        colour = others.get(s["epochs"], "tab:blue" if mine else "tab:grey")
        ax.plot(range(1, s["epochs"] + 1), [100 * v for v in s["val_acc"]], color=colour, lw=1, alpha=0.8)
        bx.plot([s["epochs"]], [100 * s["test_acc"]], "o", color=colour, ms=5, alpha=0.7)
    ax.set(xlabel="epoch", ylabel="validation accuracy %", ylim=(88, 96.5))
    key = ", ".join(f"{c.removeprefix('tab:')}: {e}" for e, c in others.items())
    ax.set_title(f"validation accuracy per epoch\n30 epochs: blue (best/), grey (study); {key}", fontsize=9)
    bx.plot(list(lengths), [100 * v["test_acc_mean"] for v in lengths.values()], "k_", ms=18, mew=2, label="mean")
    for e, v in lengths.items():
        bx.annotate(f"{v['runs']} run{'s' if v['runs'] > 1 else ''}", (e, 100 * v["test_acc_mean"]),
                    textcoords="offset points", xytext=(8, -12), fontsize=8)  # fmt: skip
    bx.set_xscale("log", base=2)
    ticks = sorted(lengths)
    bx.set_xticks(ticks, list(map(str, ticks)))
    bx.set(xlabel="epochs in the schedule (log scale)", ylabel="final test accuracy %")
    bx.set_xlim(min(ticks) / 1.4, max(ticks) * 1.4)
    bx.margins(y=0.15)
    bx.set_title("final test accuracy of each run against schedule length\n(measured points only)", fontsize=9)
    for a in (ax, bx):
        a.grid(alpha=0.3)
    bx.legend(fontsize=8, loc="lower right")
    fig.suptitle("ResNet-20, CE + triplet", fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def copy_runs(work: Path, out: Path) -> None:
    """Every evaluated run as a committed run dir under out (CURVE runs under out/curve, where summaries, which
    read out/*/report.json, do not count them): report, history and config (no checkpoint)."""
    for m in (*METHODS, *CURVE):
        for run in map(Path, evaluated(work, m)):
            dest = out / ("curve" if m in CURVE else "") / run.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in COPIED:
                shutil.copy2(run / f, dest / f)


def publish(work: Path, out: Path) -> None:
    from embedfm.summarize import summarize, summarize_paired

    copy_runs(work, out)
    atomic_write_json(
        out / "protocol.json",
        {
            "recipe": RECIPE,
            "methods": METHODS,
            "curve": CURVE,
            "seeds": list(SEEDS),
            "random_batch_control": str(STUDY),
        },
    )
    summarize([str(out)], names=True, log=say)
    summarize_paired([str(out)], names=True, log=say)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in order: {', '.join(STAGES)}")
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"the runs stage's methods: {', '.join(METHODS)}; or the curve's {', '.join(CURVE)}",
    )
    p.add_argument(
        "--seeds", default=",".join(map(str, SEEDS)), help="the runs stage's seeds, so that a chain stops where told"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads of every run (default: torch's own)")
    p.add_argument("--work", default="artifacts/best", help="where the run dirs (checkpoints) go")
    p.add_argument("--out", default="artifacts/reference/study/best", help="where extras and publish write")
    a = p.parse_args(argv)
    stages = [s for s in a.stages.split(",") if s]
    methods = [m for m in a.methods.split(",") if m]
    seeds = [s for s in a.seeds.split(",") if s]
    work, out = Path(a.work), Path(a.out)
    try:
        for s in stages:
            if s not in STAGES:
                raise EmbedfmError(f"--stages: unknown stage {s!r} (one of {', '.join(STAGES)})")
        for m in methods:
            if m not in METHODS and m not in CURVE:
                raise EmbedfmError(f"--methods: unknown method {m!r} (one of {', '.join([*METHODS, *CURVE])})")
        for seed in seeds:
            if seed not in map(str, SEEDS):
                raise EmbedfmError(f"--seeds: unknown seed {seed!r} (one of {', '.join(map(str, SEEDS))})")
        run_stage = {
            "runs": lambda: run_all(work, methods, [int(x) for x in seeds], a.threads),
            "extras": lambda: extras(work, out),
            "publish": lambda: publish(work, out),
            "curve": lambda: curve(out),
        }
        for s in stages:
            say(f"== {s}")
            run_stage[s]()
    except EmbedfmError as e:
        print(f"best_study: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
