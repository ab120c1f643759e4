"""Run dirs: their layout, their state (started, finished, evaluated), their names, and guarding them.

A run dir holds:
    config.json      the resolved TrainConfig, written at start
    checkpoint.safetensors  checkpoint after the latest finished epoch (`checkpoint.py`; never a pickle)
    history.json     per-epoch figures; summary.csv the same as a table
    diagnostics.png  the per-epoch embedding diagnostics (`diagnostics.py`), drawn when training ends
    DONE             written last, when training finished: marks the run complete
    embeddings.npz   train/test embeddings and predictions, written by `embedfm eval`
    report.json      the run's evaluation report, when `embedfm eval RUN` wrote it into the run dir
    .lock            held (flock) by the one process writing the dir: `lock()` below

Torch-free: scripts and `--help` use it without paying for torch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embedfm.errors import BusyError, EmbedfmError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "last.pt"  # the pickled format of older embedfm versions: read only by `embedfm convert`
HISTORY = "history.json"
SUMMARY = "summary.csv"
DONE = "DONE"
EMBEDDINGS = "embeddings.npz"
REPORT = "report.json"
LOCK = ".lock"


def has_checkpoint(run_dir: str | Path) -> bool:
    """A checkpoint of either format is there (an old one is refused with a line on how to convert it)."""
    return (Path(run_dir) / CHECKPOINT).is_file() or (Path(run_dir) / LEGACY_CHECKPOINT).is_file()


def is_done(run_dir: str | Path) -> bool:
    """Training finished (every epoch ran)."""
    return (Path(run_dir) / DONE).is_file()


def is_evaluated(run_dir: str | Path) -> bool:
    """Training finished and the run's own test report is in the run dir (what a study needs of a run)."""
    return is_done(run_dir) and (Path(run_dir) / REPORT).is_file()


def state(run_dir: str | Path) -> str:
    """'new', 'started' (checkpoint, not finished), 'finished' or 'evaluated'."""
    if is_evaluated(run_dir):
        return "evaluated"
    if is_done(run_dir):
        return "finished"
    return "started" if has_checkpoint(run_dir) else "new"


def check_writable(run_dir: str | Path, overwrite: bool, resume: bool) -> bool:
    """Refuse a run dir `train` must not write into; returns whether it holds a run. Changes nothing."""
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise EmbedfmError(f"--out {run} is a file, not a directory")
    has_run = has_checkpoint(run) or is_done(run)
    if has_run and not (overwrite or resume):
        what = "a finished run" if is_done(run) else "an unfinished run"
        raise EmbedfmError(
            f"--out {run} already holds {what}; use --resume to continue it, --overwrite to replace it, "
            "or another --out"
        )
    return has_run


def prepare(run_dir: str | Path, overwrite: bool, resume: bool) -> Path:
    """Make the run dir; with `overwrite`, remove the previous run's training files first."""
    run = Path(run_dir)
    if check_writable(run, overwrite, resume) and overwrite:
        for name in (CHECKPOINT, LEGACY_CHECKPOINT, DONE, HISTORY, SUMMARY, CONFIG):
            (run / name).unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    return run


def run_names(run_dirs: list[str]) -> list[str]:
    """Short unique names for runs: the dir name, or parent/dir when names collide."""
    names = [Path(r).resolve().name for r in run_dirs]
    if len(set(names)) < len(names):
        names = ["/".join(Path(r).resolve().parts[-2:]) for r in run_dirs]
    if len(set(names)) < len(names):
        raise EmbedfmError("the same run dir is given twice")
    return names


def default_out(run_dirs: list[str]) -> Path:
    """Where a report or figure of these runs goes: one run's own dir, or several runs' common parent
    (e.g. artifacts/demo for demo/ce + demo/triplet)."""
    paths = [str(Path(r).resolve()) for r in run_dirs]
    return Path(paths[0]) if len(paths) == 1 else Path(os.path.commonpath(paths))


@contextmanager
def lock(directory: str | Path, command: str, log=print) -> Iterator[None]:
    """Hold `directory`'s write lock for the block: one writer per run dir, report dir or index dir.

    An advisory `flock` on DIR/.lock, which the kernel releases when its holder exits in any way, SIGKILL
    included: a lock left by a dead process is taken over, not waited on. A second process asking for a held
    lock fails at once with one line naming the holder's PID and command. The file itself stays (removing it
    would let two processes lock two different files of one name); it records the last holder.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / LOCK
    fd = _acquire(path)
    previous = _holder(path)
    if previous.get("pid") and previous.get("state") == "held":
        log(f"{d}: took over the lock left by PID {previous['pid']} (embedfm {previous.get('command')}), "
            "which is no longer running")  # fmt: skip
    _record(fd, {"pid": os.getpid(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S"), "state": "held"})
    try:
        yield
    finally:
        _record(fd, {"pid": os.getpid(), "command": command, "state": "released"})
        _release(fd)


def check_not_busy(directory: str | Path) -> None:
    """Fail at once, naming the holder, when another process holds `directory`'s lock; changes nothing."""
    path = Path(directory) / LOCK
    if path.is_file():
        _release(_acquire(path))


def _acquire(path: Path) -> int:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by another process
        os.close(fd)
        holder = _holder(path)
        raise BusyError(
            f"{path.parent} is being written by PID {holder.get('pid', '?')} (embedfm {holder.get('command', '?')}, "
            f"since {holder.get('since', '?')}); wait for it to finish or stop it"
        ) from None
    return fd


def _release(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _holder(path: Path) -> dict:
    try:
        d = json.loads(path.read_text() or "{}")
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _record(fd: int, info: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
