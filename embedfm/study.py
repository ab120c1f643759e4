"""Studies as data: a `Study` is a base recipe, methods as config overrides, seeds, held-out classes and the extras
(ensembles, floor, curve) computed from its runs; this module owns running one and publishing its results.

    embedfm study run|extras|publish|check studies/NAME.py [--methods A,B] [--seeds 0,1] [--threads N]

A definition file under studies/ builds one `Study` named STUDY (`python -m embedfm.study ...` is the same
command). Its stages, each resumable:

- run: every run of the study (`Study.runs`), seed-major, brought to "evaluated" by `commands.ensure_evaluated`
  under `work` (a run found evaluated is skipped, a started one resumes); a study with a `tune` budget first tunes
  each method on the validation split and trains from its best_config.json; a study with its own `train` function
  (the speed run's trajectories) calls that instead.
- extras: `embedfm ensemble` of the named methods' seeds and `embedfm floor` over every run, into `out` (they read
  the runs' embeddings, which only `work` has).
- publish: the evaluated runs copied into `out` (report, history, config: no checkpoints), manifest.json written,
  then the results rebuilt from the copied run reports alone (`rebuild`): summary.csv/md, runs.csv, last_epoch.json,
  contrasts.json, unseen.json, paired.json/md, the cross-fitted floor, curve.json, and the study's `sections`
  (embedfm.sections: the Markdown fragments of the results pages that take code).
- check: `rebuild` into a temp dir from the committed runs, compared byte for byte with the committed results.

manifest.json names every run with its method, seed, held-out classes, run dir and resolved config: the results
are grouped and labelled from it, never from run-dir names. docs/results/README.md documents the result files.
"""

from __future__ import annotations

import csv
import filecmp
import itertools
import math
import runpy
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_save_figure, atomic_write_json, atomic_write_text, read_json

MANIFEST = "manifest.json"
COPIED = ("report.json", "history.json", "config.json")
STAGES = ("run", "extras", "publish", "check")
# the files `rebuild` writes, per result (a check compares exactly these)
RESULTS = {
    "summary": ("summary.csv", "summary.md"),
    "paired": ("paired.json", "paired.md"),
    "crossfit": ("floor/crossfit.json", "floor/crossfit.md"),
    "curve": ("curve.json",),
    "runs": ("runs.csv",),
    "contrasts": ("contrasts.json",),
    "unseen": ("unseen.json",),
    "last_epoch": ("last_epoch.json",),
}
# runs.csv: one row per evaluated table run, in run-dir name order (RUN_COLUMNS; empty: not recorded / not apt)
RUN_COLUMNS = ("run", "method", "label", "seed", "loss", "epochs", "crop_pad", "sampler", "mining", "metric_loss",
               "val_acc", "val_focus_err", "val_knn_acc", "test_acc", "test_focus_err", "shirt_recall", "map_at_r",
               "train_seconds", "eval_seconds")  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One run of a study: what it is (method, seed, held-out classes) and where it lives under out / work."""

    method: str
    seed: int
    holdout: tuple[int, ...] = ()
    dir: str = ""  # relative to the study's out and work dirs

    @property
    def label(self) -> str:
        """The method's name in the tables: the method, and its held-out classes where it has some."""
        return self.method + "".join(f"-h{c}" for c in self.holdout)


@dataclass
class Study:
    """A study, declared. `methods`: method → train config overrides on top of `base`; `seeds`: of every method
    unless `only` gives a method its own; `holdout`: (method, held-out classes, seeds) runs instead of
    methods × seeds; `curve_methods`: methods run like the others but kept under curve/, out of the tables."""

    name: str
    methods: dict[str, dict]
    base: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    only: dict[str, tuple[int, ...]] = field(default_factory=dict)
    holdout: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None
    curve_methods: dict[str, dict] = field(default_factory=dict)
    out: str = ""  # published results (default artifacts/reference/study/NAME)
    work: str = ""  # run dirs with their checkpoints (default artifacts/NAME)
    labels: str = "names"  # "names": rows are the manifest's methods; "settings": labelled by what differs
    paired: bool = False
    ensembles: tuple[str, ...] = ()  # methods whose seeds `extras` ensembles ("best": ranking()'s first)
    floor: bool = False
    curve: tuple[tuple[str, str], ...] = ()  # (study out dir, method) whose runs the accuracy-vs-epochs curve reads
    tune: dict | None = None  # `embedfm tune` budget per method (TuneConfig fields and trial settings)
    config_file: Callable[[Study, str], str | None] | None = None  # method → the config file its runs start from
    ranking: Callable[[Study], dict[str, float]] | None = None  # metric methods by a validation figure, best first
    train: Callable[[Study, Run, dict], None] | None = None  # a run trained otherwise than train + eval
    after_run: Callable[[Study], None] | None = None  # runs outside the tables (e.g. the loss study's diagnostics)
    resolve: Callable[[Study, Run], dict] | None = None  # a run's resolved config where its dir records none
    copied: tuple[str, ...] = COPIED
    extra_files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # method → further files publish copies
    protocol: dict | Callable[[Study], dict] | None = None  # written as protocol.json by publish
    contrasts: tuple[tuple[str, str, str, str], ...] = ()  # (method A, its name, method B, its name): B against A
    sections: tuple[str, ...] = ()  # embedfm.sections functions whose Markdown fragments `rebuild` writes
    notes: str = ""

    def __post_init__(self):
        self.out = self.out or f"artifacts/reference/study/{self.name}"
        self.work = self.work or f"artifacts/{self.name}"

    def runs(self) -> list[Run]:
        """Every run, seed-major (a study stopped early has every method at its first seeds)."""
        if self.holdout is not None:
            plan = [(m, tuple(h), s) for m, h, seeds in self.holdout for s in seeds]
            plan.sort(key=lambda r: r[2])
        else:
            every = {**self.methods, **self.curve_methods}
            plan = [(m, (), s) for s in sorted({*self.seeds, *itertools.chain(*self.only.values())})
                    for m in every if s in self.only.get(m, self.seeds)]  # fmt: skip
        runs = []
        for m, h, s in plan:
            name = Run(m, s, h).label + f"_s{s}"
            runs.append(Run(m, s, h, f"curve/{name}" if m in self.curve_methods else name))
        return runs

    def settings(self, run: Run) -> dict:
        """The train config values a run is started with (a config file, where the study has one, comes first)."""
        cfg = {**self.base, **{**self.methods, **self.curve_methods}[run.method], "seed": run.seed}
        return {**cfg, "holdout_classes": list(run.holdout)} if run.holdout else cfg


def load(path: str | Path) -> Study:
    """The `STUDY` a definition file builds."""
    if not Path(path).is_file():
        raise EmbedfmError(f"{path}: no such study definition (studies/*.py)")
    study = runpy.run_path(str(path)).get("STUDY")
    if not isinstance(study, Study):
        raise EmbedfmError(f"{path}: defines no STUDY = Study(...)")
    return study


def say(msg: str) -> None:
    print(msg, flush=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ------------------------------------------------------------------------------------------------ manifest


def read_manifest(out: str | Path) -> dict:
    return read_json(Path(out) / MANIFEST, "publish the study (python -m embedfm.study publish studies/NAME.py)")


def write_manifest(study: Study, root: Path, stage: str | None = None, machine: dict | None = None) -> dict:
    """manifest.json in `root`: the study's methods and seeds, every run with its resolved config (its
    config.json, else its report's), the machine and when each stage last ran (kept from the previous manifest)."""
    old = read_json(root / MANIFEST) if (root / MANIFEST).is_file() else {}
    runs = []
    for r in study.runs():
        d = root / r.dir
        if (d / "config.json").is_file():
            config = read_json(d / "config.json")
        elif (d / "report.json").is_file():
            config = next(iter(read_json(d / "report.json")["runs"].values()))["config"]
        else:
            config = study.resolve(study, r) if study.resolve else None
        runs.append({"run": r.dir, "method": r.method, "label": r.label, "seed": r.seed,
                     "holdout_classes": list(r.holdout), "config": config})  # fmt: skip
    if machine is None and stage is not None:
        from embedfm import machine as mach

        machine = mach.describe()
    manifest = {
        "study": study.name,
        "base": study.base,
        "methods": study.methods,
        "curve_methods": study.curve_methods,
        "seeds": list(study.seeds),
        "labels": study.labels,
        "runs": runs,
        "machine": machine if machine is not None else old.get("machine"),
        "stages": {**old.get("stages", {}), **({stage: now()} if stage else {})},
        **({"notes": study.notes} if study.notes else {}),
    }
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


# ------------------------------------------------------------------------------------------------ stages


def validation_ranking(study: Study, controls: tuple[str, ...], key: str = "val_knn_acc") -> dict[str, float]:
    """The study's methods other than `controls` by the mean over their seeds of a final-epoch validation figure,
    best first (from `work` where the runs are there, else from the published runs): how a study picks "the best
    metric losses" without reading the test split."""
    root = Path(study.work) if any(Path(study.work).glob("*_s*/history.json")) else Path(study.out)
    scores = {}
    for m in study.methods:
        if m in controls:
            continue
        vals = []
        for r in (r for r in study.runs() if r.method == m):
            history = read_json(root / r.dir / "history.json", "run the study first")
            last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else {}
            if not isinstance(last.get(key), float):
                raise EmbedfmError(f"{root / r.dir}/history.json: no final {key}; rerun that run")
            vals.append(last[key])
        scores[m] = sum(vals) / len(vals)
    return dict(sorted(scores.items(), key=lambda kv: -kv[1]))


def config_of(study: Study, method: str) -> str | None:
    return study.config_file(study, method) if study.config_file else None


def tune_all(study: Study) -> None:
    from embedfm import sources
    from embedfm.tune import TuneConfig, resolve_base, tune

    loaded: dict = {}  # each set the methods name, read once
    budget = {k: v for k, v in study.tune.items() if k in ("trials", "objective", "pruner", "sampler_seed")}
    trial = {k: v for k, v in study.tune.items() if k not in budget}
    for name, settings in study.methods.items():
        base = resolve_base(None, {**trial, **settings})
        data = loaded.get(base.data) or loaded.setdefault(base.data, sources.for_config(base, progress=False))
        tune(TuneConfig(base=base, out=str(Path(study.work) / "tune" / name), **budget), data=data, log=say)


def run_stage(study: Study, methods: list[str] | None = None, seeds: list[int] | None = None, threads=None) -> None:
    from embedfm import commands

    if study.tune:
        tune_all(study)
    for r in study.runs():
        if (methods and r.method not in methods) or (seeds is not None and r.seed not in seeds):
            continue
        flags = {**study.settings(r), **({"threads": threads} if threads else {})}
        if study.train:
            study.train(study, r, flags)
        else:
            commands.ensure_evaluated(str(Path(study.work) / r.dir), config_of(study, r.method), flags, say)
    if study.after_run:
        study.after_run(study)
    write_manifest(study, Path(study.work), "run")


def evaluated(root: Path, runs: list[Run]) -> list[str]:
    return [str(root / r.dir) for r in runs if (root / r.dir / "report.json").is_file()]


def extras_stage(study: Study) -> None:
    """Ensembles of the named methods' evaluated seeds and the floor over every evaluated run, into out."""
    from embedfm.ensemble import ensemble
    from embedfm.floor import floor

    work, out = Path(study.work), Path(study.out)
    table = [r for r in study.runs() if r.method in study.methods]
    for m in study.ensembles:
        m = next(iter(study.ranking(study))) if m == "best" else m
        if len(runs := evaluated(work, [r for r in table if r.method == m])) >= 2:
            ensemble(runs, out=out / f"ensemble_{m}", log=say)
    if study.floor and len(every := evaluated(work, table)) >= 2:
        floor(every, out=out / "floor", log=say)
    write_manifest(study, out, "extras")


def copy_runs(study: Study, work: Path, out: Path) -> None:
    """Every evaluated run of `work` as a committed run dir under `out`: the study's copied files, no checkpoint."""
    for r in study.runs():
        if (work / r.dir / "report.json").is_file():
            (out / r.dir).mkdir(parents=True, exist_ok=True)
            for f in (*study.copied, *study.extra_files.get(r.method, ())):
                if (work / r.dir / f).is_file():
                    shutil.copy2(work / r.dir / f, out / r.dir / f)


def publish_stage(study: Study) -> None:
    work, out = Path(study.work), Path(study.out)
    if work.is_dir():
        copy_runs(study, work, out)
    if study.protocol is not None:
        protocol = study.protocol(study) if callable(study.protocol) else study.protocol
        atomic_write_json(out / "protocol.json", protocol)
    write_manifest(study, out, "publish")
    rebuild(study, out, out)


# ------------------------------------------------------------------------------------------------ results


def rebuild(study: Study, runs_root: Path, dest: Path, log=say) -> list[str]:
    """Every result of the study from the run reports under `runs_root` (as manifest.json lists them), written into
    `dest`. Returns the result files written, relative to dest."""
    from embedfm.floor import crossfit_reports
    from embedfm.summarize import summarize, summarize_paired

    manifest = read_manifest(runs_root)
    table = [r for r in manifest["runs"] if r["method"] in manifest["methods"]]
    # in name order: the order summaries and paired comparisons list methods that tie
    dirs = sorted(str(runs_root / r["run"]) for r in table if (runs_root / r["run"] / "report.json").is_file())
    if not dirs:
        return write_sections(study, dest, [], log)
    names = labels(dirs, table, runs_root) if study.labels == "names" else False
    quiet = lambda _m: None
    dest.mkdir(parents=True, exist_ok=True)
    if (runs_root / "pixels.json").is_file() and runs_root != dest:  # the saved raw-pixel row summarize shows
        shutil.copy2(runs_root / "pixels.json", dest / "pixels.json")
    summarize(dirs, out=str(dest), names=names, log=quiet)
    write_runs(run_rows(table, runs_root), dest / "runs.csv")
    written = [*RESULTS["summary"], *RESULTS["runs"]]
    if study.contrasts:
        atomic_write_json(dest / "contrasts.json", contrasts(study.contrasts, run_rows(table, runs_root)))
        written += RESULTS["contrasts"]
    atomic_write_json(dest / "last_epoch.json", last_epoch(manifest["methods"], table, runs_root))
    written += RESULTS["last_epoch"]
    if any(r["holdout_classes"] for r in table):
        atomic_write_json(dest / "unseen.json", unseen(table, runs_root))
        written += RESULTS["unseen"]
    if study.paired:
        summarize_paired(dirs, out=str(dest), names=names, log=quiet)
        written += RESULTS["paired"]
    if study.floor and len(dirs) >= 2:
        crossfit_reports(dirs, out=dest / "floor", log=quiet)
        written += RESULTS["crossfit"]
    if study.curve:
        curve([p for root, m in study.curve for p in curve_runs(Path(root), m)], dest)
        written += RESULTS["curve"]
    return write_sections(study, dest, written, log)


def write_sections(study: Study, dest: Path, written: list[str], log=say) -> list[str]:
    """The study's `sections` (embedfm.sections), from the results just written into dest and the committed ones;
    then `written` and the sections' files, as rebuild returns them."""
    from embedfm import sections

    dest.mkdir(parents=True, exist_ok=True)
    for name in study.sections:
        for f, text in getattr(sections, name)(study, dest).items():
            atomic_write_text(dest / f, text + "\n")
            written.append(f)
    if written:
        log(f"{study.name}: wrote {', '.join(written)} into {dest}")
    return written


def run_rows(table: list[dict], root: Path) -> list[dict]:
    """One row per evaluated run of the manifest's `table`, in run-dir name order: what it is (method, label, seed,
    loss, epochs, crop pad, resolved sampler; mining and metric loss for the triplet loss only, as its report's
    config records them), its final epoch's validation figures (history.json) and its test figures (report.json:
    softmax head; MAP@R of the embedding), fractions; seconds of training and evaluation."""
    from embedfm.config import resolved_sampler

    rows = []
    for r in sorted(table, key=lambda r: r["run"]):
        if not (root / r["run"] / "report.json").is_file():
            continue
        (e,) = read_json(root / r["run"] / "report.json")["runs"].values()
        cfg, sm = e["config"], e["classifiers"]["softmax"]
        hist = root / r["run"] / "history.json"
        last = read_json(hist)[-1] if hist.is_file() else {}
        triplet = cfg["loss"] == "triplet"
        rows.append({
            "run": r["run"], "method": r["method"], "label": r["label"], "seed": r["seed"], "loss": cfg["loss"],
            "epochs": e["epochs"], "crop_pad": cfg.get("crop_pad"),
            "sampler": resolved_sampler(cfg["loss"], cfg.get("sampler", "auto")),
            "mining": cfg.get("mining", "all") if triplet else None,
            "metric_loss": cfg.get("metric_loss", "triplet") if triplet else None,
            "val_acc": last.get("val_acc"), "val_focus_err": last.get("val_focus_err"),
            "val_knn_acc": last.get("val_knn_acc"), "test_acc": sm["accuracy"],
            "test_focus_err": sm["focus_group_error"], "shirt_recall": sm["per_class"]["6"]["recall"],
            "map_at_r": e["retrieval"]["map_at_r"],
            "train_seconds": e["train_seconds"], "eval_seconds": e.get("eval_seconds"),
        })  # fmt: skip
    return rows


def contrasts(pairs: tuple[tuple[str, str, str, str], ...], rows: list[dict]) -> dict:
    """Method B against method A, per pair, from run_rows: the runs of each, their mean focus-group error (softmax,
    test), the difference of the means (B − A) with its standard error (of a difference of two independent means,
    sample variances), the relative change in % of A's mean, and the differences of mean test accuracy and MAP@R."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    out = []
    for a, label_a, b, label_b in pairs:
        if a not in by or b not in by:
            raise EmbedfmError(f"contrast {a} → {b}: no evaluated run of {a if a not in by else b!r}")
        mean = lambda m, k: statistics.fmean(r[k] for r in by[m])
        ea, eb = ([r["test_focus_err"] for r in by[m]] for m in (a, b))
        ma, mb = statistics.fmean(ea), statistics.fmean(eb)
        se = math.sqrt(statistics.variance(ea) / len(ea) + statistics.variance(eb) / len(eb))
        out.append({"from": a, "from_label": label_a, "to": b, "to_label": label_b, "runs": [len(ea), len(eb)],
                    "focus_error": [ma, mb], "difference": mb - ma, "se": se, "relative_pct": 100 * (mb - ma) / ma,
                    "accuracy_change": mean(b, "test_acc") - mean(a, "test_acc"),
                    "map_at_r_change": mean(b, "map_at_r") - mean(a, "map_at_r")})  # fmt: skip
    return {"contrasts": out}


def spread(xs: list[float]) -> dict | None:
    """Mean and sample std over seeds (std 0 for one seed); None for none."""
    if not xs:
        return None
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def last_epoch(methods: list[str], table: list[dict], root: Path) -> dict:
    """Per method (in the manifest's order; none without a history.json), the runs with a history and, mean and
    sample std over them, every figure of their last epoch (history.json), over the runs that recorded it."""
    out = []
    for m in methods:
        hists = [root / r["run"] / "history.json" for r in sorted(table, key=lambda r: r["run"]) if r["method"] == m]
        lasts = [read_json(h)[-1] for h in hists if h.is_file()]
        if not lasts:
            continue
        keys = dict.fromkeys(k for last in lasts for k, v in last.items() if isinstance(v, int | float))
        figures = {k: spread([last[k] for last in lasts if last.get(k) is not None]) for k in keys}
        out.append({"method": m, "runs": len(lasts), **{k: v for k, v in figures.items() if v is not None}})
    return {"methods": out}


def unseen(table: list[dict], root: Path) -> dict:
    """The held-out-class runs grouped by (held-out classes, method): held-out classes in the order the manifest
    first names them, methods in name order. Per group the runs and, mean and sample std over them, the held-out
    class's MAP@R and R-precision among all test images, its n-shot kNN recall (n = 1, 5, 20) and the softmax
    head's accuracy on all classes: fractions."""
    from embedfm import CLASS_NAMES

    groups: dict[str, dict[str, list[dict]]] = {}
    for r in sorted(table, key=lambda r: r["run"]):
        if r["holdout_classes"] and (root / r["run"] / "report.json").is_file():
            cls = ",".join(map(str, r["holdout_classes"]))
            groups.setdefault(cls, {}).setdefault(r["method"], []).extend(
                read_json(root / r["run"] / "report.json")["runs"].values()
            )
    order = list(dict.fromkeys(",".join(map(str, r["holdout_classes"])) for r in table if r["holdout_classes"]))
    out = []
    for cls in [c for c in order if c in groups]:
        for method, runs in sorted(groups[cls].items()):
            u = [e["unseen"][cls] for e in runs]
            out.append({"held_out": cls, "class_name": " + ".join(CLASS_NAMES[int(c)] for c in cls.split(",")),
                        "method": method, "runs": len(runs), "map_at_r": spread([x["map_at_r"] for x in u]),
                        "r_precision": spread([x["r_precision"] for x in u]),
                        **{f"shot_{n}": spread([x["few_shot"][n]["recall"] for x in u]) for n in ("1", "5", "20")},
                        "test_acc": spread([e["classifiers"]["softmax"]["accuracy"] for e in runs])})  # fmt: skip
    return {"groups": out}


def write_runs(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, RUN_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)


def labels(dirs: list[str], table: list[dict], root: Path) -> dict[str, str]:
    """report run name → the manifest's method label, for summarize's --names grouping."""
    by_dir = {str(root / r["run"]): r["label"] for r in table}
    out = {}
    for d in dirs:
        for name in read_json(Path(d) / "report.json")["runs"]:
            out[name] = by_dir[d]
    return out


def curve_runs(root: Path, method: str) -> list[Path]:
    """The run dirs of one method of a published study, in its manifest's order (seeds ascending)."""
    runs = [r for r in read_manifest(root)["runs"] if r["method"] == method]
    return [root / r["run"] for r in sorted(runs, key=lambda r: r["seed"])]


def final_test(run: Path) -> float:
    """The final epoch's test accuracy (softmax head, the recipe's flip TTA) from a run's report.json."""
    report = read_json(run / "report.json", "evaluate the run")
    return float(next(iter(report["runs"].values()))["classifiers"]["softmax"]["accuracy"])


def threads_of(run: Path) -> str:
    """A run's thread setting as its config.json records it ("default": torch's own, the machine's cores)."""
    threads = read_json(run / "config.json").get("threads")
    return "default" if threads is None else str(threads)


def curve(runs: list[Path], out: Path) -> dict:
    """The measured points of accuracy against schedule length, nothing fitted: validation accuracy per epoch of
    every run, then per schedule length the number of runs, the final test accuracy (mean, and sample std where there
    are two runs or more), the training seconds per epoch grouped by thread setting, and the gain in mean test
    accuracy from one measured length to the next. Writes curve.json and curve.png into out."""
    series, by_length = [], {}
    for run in runs:
        history = read_json(run / "history.json", "publish the run")
        epochs, seconds = len(history), float(history[-1]["train_seconds"])
        s = {"run": str(run), "epochs": epochs, "val_acc": [float(h["val_acc"]) for h in history],
             "test_acc": final_test(run), "train_seconds": seconds, "seconds_per_epoch": seconds / epochs,
             "threads": threads_of(run)}  # fmt: skip
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
    gains = [{"from": a, "to": b, "gain": lengths[b]["test_acc_mean"] - lengths[a]["test_acc_mean"]}
             for a, b in itertools.pairwise(lengths)]  # fmt: skip
    result = {"series": series, "lengths": lengths, "gains": gains}
    out.mkdir(parents=True, exist_ok=True)
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


def check(study: Study, log=say) -> list[str]:
    """Rebuild the study's results from its committed runs into a temp dir; the committed files that differ."""
    out = Path(study.out)
    with tempfile.TemporaryDirectory() as tmp:
        written = rebuild(study, out, Path(tmp), log=lambda _m: None)
        differ = [f for f in written if not (out / f).is_file() or not filecmp.cmp(out / f, Path(tmp) / f, False)]
    for f in written:
        log(f"{'DIFFERS' if f in differ else 'same'}: {out / f}")
    return differ


# ------------------------------------------------------------------------------------------------ verdicts


def first_number(cell: str) -> float:
    """A summary.csv cell, '12.34 ± 0.56' or '12.34', → 12.34."""
    return float(cell.split(" ")[0])


def verdict(paired: dict, summary: list[dict], control: str, metric: list[str], target: float = 0.15) -> dict:
    """The loss comparison's questions, answered from paired.json and summary.csv rows: which of the `metric`
    methods cut the focus-group error by at least `target` relative against `control` *and* earn the paired table's
    ✓ on it (the Holm-adjusted seed-level test); the largest relative cut; which earn a ✓ (helps) or ✗ (hurts) per
    figure; which raise shirt recall without a ✓ on the focus-group error; the best mean MAP@R. The relative change
    is the paired difference (points) over the control's mean focus-group error (%), in %."""
    vs = {c["method"]: c for c in paired["comparisons"] if c["control"] == control}
    rows = {r["method"]: r for r in summary}
    missing = [m for m in [control, *metric] if m not in rows] + [m for m in metric if m not in vs]
    if missing:
        raise EmbedfmError(f"no summary row or paired comparison against {control!r} of {missing[0]!r}")
    base = first_number(rows[control]["focus-group err softmax %"])
    rel = {m: 100 * (100 * vs[m]["focus_group_error"]["difference"]) / base for m in metric}
    helps = {f: [m for m in metric if vs[m][f]["helps"]] for f in paired["figures"]}
    hurts = {f: [m for m in metric if vs[m][f]["hurts"]] for f in paired["figures"]}
    return {
        "control": control,
        "target": target,
        "control_focus_error": base,
        "relative": rel,
        "meets": [m for m in metric if rel[m] <= -100 * target and vs[m]["focus_group_error"]["helps"]],
        "largest_cut": min(metric, key=lambda m: rel[m]),
        "helps": helps,
        "hurts": hurts,
        "shirt_only": [m for m in helps.get("shirt_recall", []) if m not in helps["focus_group_error"]],
        "best_map": max(metric, key=lambda m: first_number(rows[m]["MAP@R"])),
    }


# ------------------------------------------------------------------------------------------------ command line


def run_command(
    stage: str,
    definitions: list[str],
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    threads: int | None = None,
) -> int:
    """`embedfm study STAGE DEFINITION...` (its arguments are declared in embedfm.cli): the stage of each study in
    turn. Returns 0, or 1 where `check` finds result files that differ from their rebuild; a definition that is not
    there or a method the study does not have raises EmbedfmError."""
    differ = []
    for path in definitions:
        study = load(path)
        if stage == "run":
            unknown = set(methods or ()) - {*study.methods, *study.curve_methods}
            if unknown:
                raise EmbedfmError(f"--methods: unknown method {sorted(unknown)[0]!r} of study {study.name}")
            run_stage(study, methods, seeds, threads)
        elif stage == "extras":
            extras_stage(study)
        elif stage == "publish":
            publish_stage(study)
        else:
            differ += [f"{study.out}/{f}" for f in check(study)]
    if differ:
        print(f"{len(differ)} result files differ from their rebuild: " + ", ".join(differ), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m embedfm.study ...`: the same as `embedfm study ...`."""
    from embedfm.cli import main as cli_main

    return cli_main(["study", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # the definitions import embedfm.study, not __main__: run that module's main
    from embedfm.study import main as study_main

    raise SystemExit(study_main())
