"""Hyper-parameter search on the validation split with Optuna: `embedfm tune`.

One study = one SQLite file (by default) in the study dir, so a crashed study resumes by rerunning
the same command, and several workers can share it. Each trial is an ordinary embedfm run dir under
`<study dir>/trials/`, so `eval` / `viz` work on any trial unchanged; the test set is never read.

- search space: `SPACE` below, one table for CE and CE + triplet (the CE side is a subset of the triplet side);
  the other metric losses search the shared part, their own settings over the ranges their loss declares
  (`embedfm.losstable`) and their miner's (`LOSS_SPACE`, `PARAMS`);
- sampler: TPE, seeded; the built-in defaults are always trial 0, so the study measures how far the
  search moved validation figures over them at the same budget;
- pruning: median (or successive halving) on the per-epoch validation figure, so bad trials stop early;
- output: `best_config.json` (accepted by `embedfm train --config`), `trials.csv` / `trials.md`,
  Optuna's matplotlib plots as PNG.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from embedfm.config import TrainConfig, flag, setting
from embedfm.errors import ConfigError, EmbedfmError
from embedfm.fileio import atomic_save_figure, atomic_write_csv, atomic_write_json, atomic_write_text
from embedfm.losstable import SETTINGS, SPECS, LossSpec
from embedfm.markdown import md_table

# name: (kind, low, high) for floats ("log" = log-uniform) or ("choice", [values]). A metric loss's own settings are
# searched over the range its loss declares (embedfm.losstable), a miner's over MINER_SPACE.
MINER_SPACE = {
    "distance": {"miner_cutoff": ("float", 0.2, 0.8), "miner_nonzero_loss_cutoff": ("float", 1.0, 1.6)},
    "multisimilarity": {"ms_epsilon": ("float", 0.01, 0.3)},
}
MINER_PARAMS = {miner: tuple(space) for miner, space in MINER_SPACE.items()}
# the space of CE and CE + triplet (the CE side is a subset of the triplet side), in the triplet study's draw order
SPACE = {
    "lr": ("log", 1e-3, 2e-2),
    "weight_decay": ("log", 1e-3, 0.3),
    "label_smoothing": ("float", 0.0, 0.2),
    # metric-learning side (loss = triplet only)
    "triplet_weight": ("log", 0.1, 4.0),
    "margin": SETTINGS["margin"].search,
    "embedding_dim": ("choice", [32, 64, 128]),
    "m_per_class": ("choice", [4, 8, 12]),
    **MINER_SPACE["distance"],
    "focus_oversample": ("float", 1.0, 2.5),
}
# the settings of the other metric losses (--metric-loss; docs/losses.md) and miners, searched only with their loss
LOSS_SPACE = {
    **{name: s.search for name, s in SETTINGS.items() if name not in SPACE},
    **{name: r for space in MINER_SPACE.values() for name, r in space.items() if name not in SPACE},
}
_CE = ("lr", "weight_decay", "label_smoothing")
_METRIC = (*_CE, "triplet_weight", "embedding_dim", "m_per_class", "focus_oversample")


def loss_params(spec: LossSpec) -> tuple[str, ...]:
    """What a study of a metric loss with its --miner auto searches, in draw order: the shared settings, the loss's
    own, its miner's."""
    return (*_METRIC, *spec.settings, *MINER_PARAMS.get(spec.auto_miner, ()))


# The losses whose studies predate loss_params keep the order they were drawn in (TPE draws the parameters one after
# another from one random stream, so the order is part of what makes a study reproducible); the same parameters.
_DRAW_ORDER = {
    "triplet": tuple(SPACE),
    "margin": (*SPACE, "beta"),
    "contrastive": (*_METRIC, *MINER_PARAMS["distance"], "pos_margin", "neg_margin"),
}
# searched parameters by method: "ce", or the --metric-loss of --loss triplet with its --miner auto
PARAMS = {
    "ce": _CE,
    # CE over class-balanced batches also searches the sampler's own knobs, as the metric losses do
    "ce-balanced": (*_CE, "m_per_class", "focus_oversample"),
    **{name: _DRAW_ORDER.get(name, loss_params(spec)) for name, spec in SPECS.items()},
}
OBJECTIVES = {  # flag value: (history key, direction)
    "val_acc": ("val_acc", "maximize"),
    "focus_error": ("val_focus_err", "minimize"),
}
PRUNERS = ("median", "halving", "none")
# a trial's budget unless --config / flags say otherwise: ~1 min per trial on 2 CPU cores
TRIAL_DEFAULTS = {"loss": "triplet", "epochs": 3, "limit": 20_000}


# The settings of the base config that `embedfm tune` exposes as flags (the searched ones are in SPACE).
BASE_FLAGS = (
    "loss",
    "sampler",
    "metric_loss",
    "miner",
    "ce_weight",
    "backbone",
    "epochs",
    "limit",
    "batch_size",
    "val_size",
    "data_dir",
    "data",
    "image_size",
    "resize",
    "channels",
    "test_frac",
    "class_names",
    "skip_bad",
    "focus",
    "weights",
    "seed",
    "device",
    "threads",
)


@dataclass(frozen=True)
class TuneConfig:
    base: TrainConfig = field(default_factory=lambda: TrainConfig(**TRIAL_DEFAULTS))
    trials: int = setting(20, "finished (complete + pruned) trials the study should hold", "study")
    timeout: float | None = setting(None, "seconds after which no new trial starts", "study")
    out: str | None = setting(None, "study dir (default: artifacts/tune/<method>)", "study", metavar="DIR")
    storage: str | None = setting(
        None, "Optuna storage URL (default: sqlite:///<study dir>/study.db)", "study", metavar="URL"
    )
    study_name: str | None = setting(
        None, "study name (default: <method>-<backbone>-<objective>)", "study", metavar="NAME"
    )
    objective: str = setting(
        "val_acc",
        "val_acc: validation accuracy (maximise); focus_error: validation focus-group error (minimise)",
        "study",
        tuple(OBJECTIVES),
    )
    pruner: str = setting("median", "early stopping of trials whose per-epoch figure falls behind", "study", PRUNERS)
    sampler_seed: int = setting(0, "TPE seed; give each worker of a shared study its own", "study")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            _check(
                choices is None or getattr(self, f.name) in choices,
                f"--{flag(f.name)} {getattr(self, f.name)!r} is not one of {', '.join(choices or ())}",
            )
        _check(self.trials >= 1, f"--trials must be at least 1, got {self.trials}")
        _check(self.timeout is None or self.timeout > 0, f"--timeout must be positive, got {self.timeout}")
        if self.out is None:  # the one default study dir, per method
            object.__setattr__(self, "out", f"artifacts/tune/{self.method}")

    @property
    def method(self) -> str:
        """ce (random batches), ce-balanced, triplet (the default metric loss), or the other --metric-loss; "-alone"
        with --ce-weight 0."""
        b = self.base
        if b.loss == "ce":
            return "ce-balanced" if b.resolved_sampler == "balanced" else "ce"
        name = b.loss if b.metric_loss == "triplet" else b.metric_loss
        return name + ("-alone" if b.loss != "ce" and b.ce_weight == 0 else "")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"

    @property
    def name(self) -> str:
        return self.study_name or f"{self.method}-{self.base.backbone}-{self.objective}"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def resolve_base(config_file: str | None, overrides: dict) -> TrainConfig:
    """A trial's base config: defaults < TRIAL_DEFAULTS (small budget) < the recipe preset < --config FILE < flags."""
    from embedfm.config import from_dict, load_config_file, with_recipe

    d = load_config_file(config_file) if config_file else {}
    d.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict({**TRIAL_DEFAULTS, **with_recipe(d)}, source=config_file or "flags")


def searched(cfg: TrainConfig) -> tuple[str, ...]:
    """The parameters a study of this base config searches: its method's (PARAMS), with the miner parameters of the
    miner it actually uses (a --miner other than auto swaps them)."""
    if cfg.loss == "ce":
        return PARAMS["ce-balanced" if cfg.resolved_sampler == "balanced" else "ce"]
    mined = {n for names in MINER_PARAMS.values() for n in names}
    names = [n for n in PARAMS[cfg.metric_loss] if n not in mined or n in MINER_PARAMS.get(cfg.resolved_miner, ())]
    return tuple(dict.fromkeys([*names, *MINER_PARAMS.get(cfg.resolved_miner, ())]))


def suggest(trial, loss: str | tuple[str, ...]) -> dict:
    """Draw one point of the search space of `loss` (a PARAMS key) or of the named parameters."""
    params = {}
    for name in PARAMS[loss] if isinstance(loss, str) else loss:
        kind, *args = {**SPACE, **LOSS_SPACE}[name]
        if kind == "choice":
            params[name] = trial.suggest_categorical(name, args[0])
        else:
            params[name] = trial.suggest_float(name, args[0], args[1], log=kind == "log")
    return params


def defaults_point(loss: str | tuple[str, ...]) -> dict:
    """The built-in defaults as a point of the space (of `loss`, a PARAMS key, or of the named parameters):
    enqueued as trial 0 of every new study."""
    d = TrainConfig().to_dict()
    return {name: d[name] for name in (PARAMS[loss] if isinstance(loss, str) else loss)}


# ----------------------------------------------------------------------------------------------


def open_study(tc: TuneConfig):
    """Create or load the study. On an SQL storage each running trial records a heartbeat every
    EMBEDFM_TUNE_HEARTBEAT seconds (default 60; tests set 1-2); a RUNNING trial without one for 3
    intervals (its worker was killed, the machine lost power) is marked failed by the next worker that
    starts a trial and is retried once."""
    import optuna

    Path(tc.out).mkdir(parents=True, exist_ok=True)
    storage = tc.storage_url
    if storage.split(":", 1)[0].split("+")[0] in ("sqlite", "postgresql", "mysql"):
        heartbeat = os.environ.get("EMBEDFM_TUNE_HEARTBEAT", "60")
        _check(heartbeat.isdigit() and int(heartbeat) >= 1, f"EMBEDFM_TUNE_HEARTBEAT={heartbeat!r}: whole seconds >= 1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = _rdb_storage(
                storage,
                heartbeat_interval=int(heartbeat),
                grace_period=3 * int(heartbeat),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        "halving": optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        "none": optuna.pruners.NopPruner(),
    }[tc.pruner]
    kwargs = dict(
        study_name=tc.name,
        storage=storage,
        direction=OBJECTIVES[tc.objective][1],
        sampler=optuna.samplers.TPESampler(seed=tc.sampler_seed),
        pruner=pruner,
    )
    try:
        try:
            study, created = optuna.create_study(**kwargs), True
        except optuna.exceptions.DuplicatedStudyError:
            study, created = optuna.create_study(**kwargs, load_if_exists=True), False
    except ValueError as e:  # e.g. the stored study was created with the other direction
        raise EmbedfmError(f"study {tc.name!r} in {tc.storage_url}: {e}") from None
    # The worker that created the study enqueues the defaults as trial 0; one that loaded it an instant
    # later waits for them, so workers started together neither repeat the defaults nor run ahead of them.
    for _ in range(0 if created else 50):
        if study.get_trials(deepcopy=False):
            break
        time.sleep(0.1)
    if not study.get_trials(deepcopy=False):  # a new study, or its creator died before enqueueing
        study.enqueue_trial(defaults_point(searched(tc.base)), user_attrs={"defaults": True})
    # a resumed study continues from new random points: the same seed would redraw the first run's start-up points
    done = len(study.get_trials(deepcopy=False)) - 1  # the defaults trial is enqueued, not drawn
    if done > 0:
        study.sampler = optuna.samplers.TPESampler(seed=tc.sampler_seed + 1000 * done)
    study.set_user_attr("loss", tc.base.loss)
    study.set_user_attr("params", list(searched(tc.base)))
    study.set_user_attr("objective", tc.objective)
    return study


def _rdb_storage(url: str, **kwargs):
    """optuna.storages.RDBStorage(url, **kwargs), retried while another worker creates the tables of a new
    storage: Optuna creates them check-then-create, so workers started at once on a new database race
    ("table studies already exists", a duplicate key) and the losers would crash."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError as e:
            racing = isinstance(e, sqlalchemy.exc.IntegrityError) or any(
                m in str(e) for m in ("already exists", "database is locked")
            )
            if not racing or attempt == 9:
                raise
            time.sleep(0.2 * (attempt + 1))


def finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def make_objective(tc: TuneConfig, data, log):
    import optuna

    from embedfm.train import Hooks, train

    key = OBJECTIVES[tc.objective][0]

    def objective(trial) -> float:
        params = suggest(trial, searched(tc.base))
        run_dir = Path(tc.out) / "trials" / f"{trial.number:04d}"
        try:
            cfg = dataclasses.replace(tc.base, **params, out=str(run_dir))
        except ConfigError as e:  # a point the space allows but this base config does not (e.g. small batch)
            raise optuna.TrialPruned(f"invalid combination: {e}") from None
        trial.set_user_attr("run_dir", str(run_dir))

        def on_epoch(row: dict) -> None:
            trial.set_user_attr("epochs", row["epoch"])
            for k in ("val_acc", "val_focus_err", "val_knn_acc", "train_seconds"):
                trial.set_user_attr(k, row[k])
            trial.report(row[key], step=row["epoch"])
            if row["epoch"] < cfg.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

        try:
            quiet = lambda *a, **k: None
            result = train(cfg, data=data, overwrite=True, progress=False, log=quiet, hooks=Hooks(on_epoch=on_epoch))
        except EmbedfmError as e:  # e.g. a non-finite loss at a high learning rate: a bad point, not a crash
            trial.set_user_attr("error", str(e))
            raise optuna.TrialPruned(str(e)) from None
        return float(result["history"][-1][key])

    return objective


def progress_line(study, trial, target: int, key: str) -> str:
    from optuna.trial import TrialState

    a = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        what = f"{key} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        what = f"error: {a['error']}" if "error" in a else f"pruned after epoch {a.get('epochs', 0)}"
    else:
        what = trial.state.name.lower()
    try:
        best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
    except ValueError:
        best = "no best yet"
    params = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    dur = trial.duration.total_seconds() if trial.duration else 0.0
    return f"trial {trial.number} [{finished(study)}/{target}]: {what} | {best} | {dur:.0f} s | {params}"


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def tune(tc: TuneConfig, data=None, log=print) -> dict:
    """Run (or continue) a study until it holds `tc.trials` finished trials or `tc.timeout` passes;
    then write best_config.json, trials.csv/md and the plots. Returns a summary dict."""
    import optuna

    from embedfm import sources

    world = os.environ.get("WORLD_SIZE", "1")
    if world != "1":
        # Each trial would be trained by every rank, but only rank 0 reports to Optuna and prunes: a pruned trial
        # leaves the other ranks waiting in a collective until NCCL's timeout, and every rank would draw its own
        # trial. A trial of a 28×28 model fits one GPU, so the GPUs are used by trials side by side instead.
        raise EmbedfmError(
            f"embedfm tune does not run under torchrun (WORLD_SIZE={world}): start one `embedfm tune` per GPU "
            "(CUDA_VISIBLE_DEVICES=i) sharing one --storage, each with its own --sampler-seed"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = data or sources.for_config(tc.base)  # the set the base config names
    study = open_study(tc)
    done = finished(study)
    key = OBJECTIVES[tc.objective][0]
    log(
        f"embedfm tune → {tc.out}  study {tc.name!r} in {tc.storage_url}: {done} finished trial(s), "
        f"target {tc.trials}; {tc.objective} ({OBJECTIVES[tc.objective][1]}), {tc.pruner} pruning, "
        f"{tc.base.epochs} epochs × {tc.base.limit or 'all'} images per trial"
    )
    t0 = time.perf_counter()
    if done < tc.trials:
        stop = optuna.study.MaxTrialsCallback(
            tc.trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
        report = lambda s, t: log(progress_line(s, t, tc.trials, key))
        study.optimize(make_objective(tc, data, log), timeout=tc.timeout, callbacks=[report, stop])
    else:
        log(f"the study already holds {done} finished trials; raise --trials to add more")
    summary = write_outputs(study, tc)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    log(summary_text(summary))
    return summary


# ----------------------------------------------------------------------------------------------
# outputs


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.trials:
        a = t.user_attrs
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "defaults": bool(a.get("defaults", False)),
                "epochs": a.get("epochs"),
                "val_acc": a.get("val_acc"),
                "val_focus_err": a.get("val_focus_err"),
                "val_knn_acc": a.get("val_knn_acc"),
                "train_seconds": a.get("train_seconds"),
                **{k: t.params.get(k) for k in _study_params(study)},
                "run_dir": a.get("run_dir"),
            }
        )
    return rows


def best_config(study, tc: TuneConfig) -> dict:
    """The searched parameters of the best trial plus what they were tuned for (loss, backbone, the
    base's non-budget settings). Budget and run keys (epochs, limit, out, seed, ...) are left to the
    command line, so `embedfm train --config best_config.json` trains the full default budget."""
    skip = {"out", "epochs", "limit", "seed", "data_dir", "device", "threads"}
    d = {k: v for k, v in tc.base.to_dict().items() if k not in skip}
    d.update(study.best_trial.params)
    return d


def write_outputs(study, tc: TuneConfig) -> dict:
    out = Path(tc.out)
    rows = trial_rows(study)
    if rows:
        atomic_write_csv(out / "trials.csv", rows)
        atomic_write_text(out / "trials.md", trials_markdown(rows, tc))
    summary = {
        "study": tc.name,
        "storage": tc.storage_url,
        "objective": tc.objective,
        "trials": len(rows),
        "finished": finished(study),
        "best": None,
        "defaults": None,
        "plots": {},
    }
    completed = [r for r in rows if r["state"] == "complete"]
    if completed:
        best = study.best_trial
        summary["best"] = {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            **{k: best.user_attrs.get(k) for k in ("val_acc", "val_focus_err", "run_dir")},
        }
        atomic_write_json(out / "best_config.json", best_config(study, tc))
        summary["best_config"] = str(out / "best_config.json")
    default_rows = [r for r in completed if r["defaults"]]
    if default_rows:
        summary["defaults"] = {k: default_rows[0][k] for k in ("number", "value", "val_acc", "val_focus_err")}
    summary["plots"] = write_plots(study, out)
    atomic_write_json(out / "summary.json", summary)
    return summary


def write_plots(study, out: Path) -> dict:
    """Optuna's matplotlib plots as PNG; a plot that needs more finished trials is skipped, not fatal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    plots = {
        "history.png": ovm.plot_optimization_history,
        "importances.png": ovm.plot_param_importances,
        "parallel.png": ovm.plot_parallel_coordinate,
    }
    done = {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            atomic_save_figure(fig, out / name)
            plt.close(fig)
            done[name] = "written"
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            done[name] = f"skipped ({e})"
    return done


def _study_params(study) -> tuple[str, ...]:
    """The parameters a study searches (recorded since --metric-loss had more than two losses; else by its loss)."""
    names = study.user_attrs.get("params")
    return tuple(names) if isinstance(names, list) else PARAMS[study.user_attrs.get("loss", "triplet")]


def trials_markdown(rows: list[dict], tc: TuneConfig) -> str:
    params = searched(tc.base)
    head = ["#", "state", "val acc", "val focus err", "epochs", "s", *params]
    lines = [
        f"# Study {tc.name}: {tc.objective}, {tc.base.epochs} epochs × {tc.base.limit or 'all'} images per trial",
        "",
    ]
    body = []
    for r in rows:
        body.append(
            [
                f"{r['number']}{' (defaults)' if r['defaults'] else ''}",
                r["state"],
                _cell(r["val_acc"], 4),
                _cell(r["val_focus_err"], 4),
                _cell(r["epochs"]),
                _cell(r["train_seconds"], 0),
                *(_cell(r[p], 3) for p in params),
            ]
        )
    return "\n".join([*lines, md_table(head, body)]) + "\n"


def _cell(v, digits: int | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return (
            f"{v:.{digits}f}"
            if digits is not None and digits >= 1 and abs(v) >= 0.01
            else f"{v:.{max(digits or 3, 3)}g}"
        )
    return str(v)


def summary_text(s: dict) -> str:
    if not s["best"]:
        return f"no finished trial yet in {s['study']}; rerun the same command to continue"
    b, d = s["best"], s["defaults"]
    lines = [
        f"best trial #{b['number']}: val acc {b['val_acc']:.4f}, val focus err {b['val_focus_err']:.4f} "
        f"({s['objective']}) → {s['best_config']}"
    ]
    if d:
        lines.append(
            f"defaults (trial #{d['number']}): val acc {d['val_acc']:.4f}, val focus err "
            f"{d['val_focus_err']:.4f}; change {b['val_acc'] - d['val_acc']:+.4f} acc, "
            f"{b['val_focus_err'] - d['val_focus_err']:+.4f} focus err"
        )
    lines.append("best params: " + ", ".join(f"{k}={_fmt(v)}" for k, v in b["params"].items()))
    return "\n".join(lines)
