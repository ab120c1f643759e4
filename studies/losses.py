"""The 2-epoch screen of metric losses (docs/results/losses.md): every method on the same backbone, head,
augmentation and epochs, each tuned with the same `embedfm tune` budget on the validation split (trial 0 = the
defaults, then TPE; median pruning), trained from its best_config.json over three seeds, evaluated; ensembles of
the balanced CE control and of the best metric loss on validation; the floor; the diagnostics runs (triplet + DWS
and balanced CE probed at each of 11 epochs on a subset). Its unequal terms: docs/results/losses.md."""

from pathlib import Path

from embedfm.losstable import HINGE_LOSSES, study_methods
from embedfm.study import Study, validation_ranking

CONTROLS = {"ce": {"loss": "ce", "sampler": "random"}, "ce-balanced": {"loss": "ce", "sampler": "balanced"}}
METHODS = {**CONTROLS, **study_methods()}  # the two CE controls, then every metric loss of embedfm.losstable
TUNE = {"trials": 5, "objective": "val_acc", "pruner": "median", "sampler_seed": 0,
        "backbone": "fastcnn", "epochs": 2, "limit": 10_000, "seed": 0}  # fmt: skip
DIAG = {"methods": ["triplet", "ce-balanced"], "epochs": 11, "limit": 10_000, "seed": 0}


def best_config(study, method):
    return str(Path(study.work) / "tune" / method / "best_config.json")


def diagnostics(study):
    """The probe's runs, trained without a test evaluation and published as history, config and plot only."""
    import shutil

    from embedfm.commands import ensure_evaluated

    for m in DIAG["methods"]:
        run, dest = Path(study.work) / "diagnostics" / f"{m}_s0", Path(study.out) / "diagnostics" / f"{m}_s0"
        flags = {k: v for k, v in DIAG.items() if k != "methods"}
        ensure_evaluated(str(run), best_config(study, m), flags, print, evaluate=False)
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("history.json", "config.json", "diagnostics.png"):
            shutil.copy2(run / f, dest / f)


def protocol(study):
    return {"methods": METHODS, "tune": TUNE, "final_epochs": 2, "seeds": list(study.seeds),
            "diagnostics": DIAG, "ranking": validation_ranking(study, ("ce", "ce-balanced"))}  # fmt: skip


STUDY = Study(
    name="losses", methods=METHODS, base={"epochs": 2}, tune=TUNE, config_file=best_config,
    ranking=lambda s: validation_ranking(s, ("ce", "ce-balanced")), paired=True, floor=True,
    ensembles=("ce-balanced", "best"), after_run=diagnostics, protocol=protocol,
    extra_files={m: ("diagnostics.png",) for m in HINGE_LOSSES},
    sections=("paired_table", "floor_table", "loss_verdict", "loss_caveats", "loss_tuning", "loss_diagnostics",
              "triplet_histories"),
)  # fmt: skip
