"""What `embedfm train` and `embedfm tune` do with their parsed options, between the CLI and the library.

Resolves the config (defaults < `--config FILE` < flags, or the run's own config for `--resume`), runs the
library function, and turns Ctrl-C into a `KeyboardInterrupt` that says how to continue (the CLI prints it and
exits with 130). The other commands (`eval`, `viz`, `index`, `search`, `summarize`) call their module's function
directly.
"""

from __future__ import annotations

import os
from dataclasses import replace

from embedfm import confusions
from embedfm.errors import EmbedfmError


def train(
    config_file: str | None, flags: dict, resume: bool | str = False, overwrite: bool = False, progress: bool = True
) -> dict:
    from embedfm.config import TrainConfig, resolve
    from embedfm.train import train as train_run

    if resume:
        run = resume if isinstance(resume, str) else flags.get("out")
        if not run:
            raise EmbedfmError("--resume needs a run dir: --resume RUN_DIR")
        cfg = TrainConfig(out=run)  # train() reads the run's own config from its checkpoint
    else:
        cfg = resolve(config_file, flags)
        k = confusions.parse_auto(cfg.focus)
        if k is not None:  # --focus auto:K: a quick CE run on the same set picks the K most-confused classes
            cfg = confusions.auto_focus(cfg, k, progress=progress)
    if resume:  # as many processes as the run was trained in, unless --procs says otherwise
        cfg = replace(cfg, procs=flags.get("procs") or _run_procs(cfg.out))
    if cfg.procs > 1 and "WORLD_SIZE" not in os.environ:  # not yet under a launcher: start the processes
        from embedfm import distributed

        distributed.launch(cfg, overwrite=overwrite, resume=bool(resume))
        return {"run_dir": cfg.out}
    try:
        return train_run(cfg, overwrite=overwrite, resume=bool(resume), progress=progress)
    except KeyboardInterrupt:
        from embedfm import rundir

        saved = rundir.has_checkpoint(cfg.out)
        raise KeyboardInterrupt(
            f"the last finished epoch is saved. Continue with: embedfm train --resume {cfg.out}"
            if saved
            else f"no epoch had finished, nothing was saved; start again with the same command "
            f"(the run dir {cfg.out} holds only its config)"
        ) from None


def _run_procs(run: str) -> int:
    from embedfm import rundir
    from embedfm.run import Run

    return Run.open(run).config.procs if rundir.has_checkpoint(run) else 1


def ensure_evaluated(run: str, config_file: str | None, flags: dict, log=print, evaluate: bool = True) -> str:
    """Bring one run dir of a study to "evaluated" from whatever state it is in (`embedfm.rundir.state`): an
    evaluated run is left alone, a finished one is evaluated, a started one resumes from its last checkpoint, a new
    one is trained from `config_file` and `flags` (train's config keys). A killed study script rerun with the same
    arguments therefore carries on where it stopped. With `evaluate=False` a finished run is where it stops (runs
    that only record their training). Returns the state the run was found in."""
    import time

    from embedfm import rundir
    from embedfm.evaluate import evaluate as evaluate_runs

    found = rundir.state(run)
    if found == "evaluated" or (found == "finished" and not evaluate):
        log(f"skip {run} (finished)")
        return found
    start = time.perf_counter()
    if found == "started":
        train(None, {"out": run}, resume=run, progress=False)
    elif found == "new":
        train(config_file, {**flags, "out": run}, overwrite=True, progress=False)
    if evaluate:
        evaluate_runs([run], progress=False, log=log)
    log(f"{run}: {time.perf_counter() - start:.0f} s wall" + (" (train + eval)" if evaluate else ""))
    return found


def tune(config_file: str | None, base_flags: dict, study_flags: dict) -> dict:
    from embedfm.tune import TuneConfig, resolve_base
    from embedfm.tune import tune as run_study

    tc = TuneConfig(
        base=resolve_base(config_file, base_flags), **{k: v for k, v in study_flags.items() if v is not None}
    )
    try:
        return run_study(tc)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"finished trials are in the study. Continue by rerunning the same command (study dir {tc.out})"
        ) from None
