"""Several `embedfm tune` workers on one study, the documented ways (docs/tuning.md): real processes on one
SQLite file, a worker SIGKILLed mid-trial (its trial is retried once), and a PostgreSQL server.

`--trials N` is the number of finished (complete + pruned) trials the study should hold; each worker stops
when it sees N, so a worker whose trial was already running when the N-th finished adds it: a study of W
workers ends with N to N + W - 1 finished trials (Optuna's MaxTrialsCallback). None is lost, none is
duplicated, and each has its own run dir.
"""

import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from conftest import make_fake_dataset
from optuna.trial import TrialState

from embedfm.tune import defaults_point

pytestmark = pytest.mark.slow  # starts embedfm processes

TINY = ["--epochs", "1", "--limit", "200", "--val-size", "50", "--batch-size", "50", "--threads", "1"]
STUDY = "ce-fastcnn-val_acc"  # the default name for --loss ce
HEARTBEAT = 2  # s, for the killed worker's test; a trial is stale after 3 heartbeats (open_study)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def tune_args(data: Path, out: Path, trials: int, seed: int, storage: str | None) -> list[str]:
    args = ["tune", "--loss", "ce", "--data-dir", str(data), "--out", str(out), "--trials", str(trials)]
    return [*args, "--sampler-seed", str(seed), *TINY, *(["--storage", storage] if storage else [])]


def start_worker(args: list[str], log: Path, heartbeat: int = 60) -> subprocess.Popen:
    env = {**os.environ, "EMBEDFM_TUNE_HEARTBEAT": str(heartbeat), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as f:
        return subprocess.Popen([sys.executable, "-m", "embedfm", *args], stdout=f, stderr=subprocess.STDOUT, env=env)


def run_workers(data: Path, out: Path, trials: int, seeds, storage: str | None = None, **kw) -> list[set[int]]:
    """Start one worker per seed at once, wait for all; the trial numbers each one ran (its progress lines)."""
    logs = [out.parent / f"{out.name}-worker{seed}.log" for seed in seeds]
    procs = [start_worker(tune_args(data, out, trials, s, storage), log, **kw) for s, log in zip(seeds, logs)]
    try:
        for p, log in zip(procs, logs):
            assert p.wait(timeout=300) == 0, log.read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [{int(n) for n in re.findall(r"^trial (\d+) \[", log.read_text(), re.M)} for log in logs]


def check_study(storage: str, out: Path, trials: int, workers: int, ran: list[set[int]]) -> list:
    """The study holds `trials` finished trials (up to workers - 1 more), numbered 0.. without gaps or
    repeats, none left running or waiting, each run by one worker into its own run dir."""
    study = optuna.load_study(study_name=STUDY, storage=storage)
    ts = study.get_trials(deepcopy=False)
    assert [t.number for t in ts] == list(range(len(ts)))
    finished = [t for t in ts if t.state in FINISHED]
    assert trials <= len(finished) <= trials + workers - 1, [(t.number, t.state.name) for t in ts]
    assert all(t.state in (*FINISHED, TrialState.FAIL) for t in ts), [(t.number, t.state.name) for t in ts]
    # every finished trial was run by exactly one worker
    assert sum(len(r) for r in ran) == len(set().union(*ran)) == len(finished)
    assert set().union(*ran) == {t.number for t in finished}
    # the built-in defaults are measured once, whatever the number of workers that opened the new study
    assert sum(bool(t.user_attrs.get("defaults")) for t in finished) == 1
    # one run dir per trial, named by its number
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{t.number:04d}" for t in ts]
    for t in finished:
        assert Path(t.user_attrs["run_dir"]) == out / "trials" / f"{t.number:04d}"
        assert t.state == TrialState.PRUNED or (out / "trials" / f"{t.number:04d}" / "history.json").is_file()
    return ts


def test_two_workers_share_one_sqlite_study(tmp_path):
    data = make_fake_dataset(tmp_path / "data", n_train=250)
    out = tmp_path / "study"
    ran = run_workers(data, out, 4, seeds=(1, 2))
    ts = check_study(f"sqlite:///{out / 'study.db'}", out, 4, 2, ran)
    assert ts[0].params == defaults_point("ce") and ts[0].state == TrialState.COMPLETE


def test_killed_worker_trial_is_retried_once(tmp_path):
    data = make_fake_dataset(tmp_path / "data", n_train=250)
    out = tmp_path / "study"
    db = out / "study.db"
    # a worker with a long trial budget takes trial 0 (the defaults) ...
    args = tune_args(data, out, 4, 9, None)
    args[args.index("--epochs") + 1] = "500"
    victim = start_worker(args, tmp_path / "victim.log", HEARTBEAT)
    try:
        # ... is in the middle of it (its run dir exists, its heartbeat is recorded) when it is SIGKILLed
        deadline = time.monotonic() + 120
        while not (
            (out / "trials" / "0000").is_dir()
            and db.is_file()
            and sqlite3.connect(db).execute("select count(*) from trial_heartbeats").fetchone()[0]
        ):
            assert victim.poll() is None and time.monotonic() < deadline, (tmp_path / "victim.log").read_text()
            time.sleep(0.1)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    time.sleep(3 * HEARTBEAT + 1)  # past the grace period: the next worker to start a trial finds it stale

    ran = run_workers(data, out, 4, seeds=(1, 2), heartbeat=HEARTBEAT)
    ts = check_study(f"sqlite:///{db}", out, 4, 2, ran)
    assert ts[0].state == TrialState.FAIL
    retries = [t for t in ts if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == ts[0].params == defaults_point("ce") and retries[0].user_attrs["defaults"]


# ----------------------------------------------------------------------------------------------
# PostgreSQL: a throw-away server in a temporary dir (apt-get install postgresql; pip install psycopg2-binary)


@pytest.fixture
def postgres_url():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    if initdb is None or importlib.util.find_spec("psycopg2") is None:
        pytest.skip("no PostgreSQL server (apt-get install postgresql) or psycopg2 (pip install psycopg2-binary)")
    bindir = Path(initdb).parent
    as_db_user = []
    root = Path(tempfile.mkdtemp(prefix="embedfm-pg-"))  # not under pytest's tmp dir: the server user must reach it
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and no postgres user to run the PostgreSQL server as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_db_user = ["runuser", "-u", "postgres", "--"]
    data, sock = root / "data", root
    run = lambda *cmd: subprocess.run([*as_db_user, *cmd], check=True, capture_output=True, text=True, timeout=120)
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "embedfm", "--auth=trust", "-E", "UTF8")
        opts = f"-k {sock} -c listen_addresses='' -p 5432 -c fsync=off"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "start")
        try:
            run(str(bindir / "createdb"), "-h", str(sock), "-U", "embedfm", "optuna")
            yield f"postgresql+psycopg2://embedfm@/optuna?host={sock}&port=5432"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    data = make_fake_dataset(tmp_path / "data", n_train=250)
    out = tmp_path / "study"
    ran = run_workers(data, out, 4, seeds=(1, 2), storage=postgres_url)
    ts = check_study(postgres_url, out, 4, 2, ran)
    assert ts[0].params == defaults_point("ce") and ts[0].state == TrialState.COMPLETE
    assert not (out / "study.db").exists()
