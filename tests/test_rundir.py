"""embedfm.rundir: one writer per run, report or index dir (locks across processes); a crafted lock file is text."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY
from conftest import one_line_stderr as _one_line_error
from fuzzing import crafted_pickle, run_copy

from embedfm import rundir
from embedfm.cli import main
from embedfm.errors import BusyError


@pytest.mark.usefixtures("no_hang")
def test_a_crafted_lock_file_is_taken_over_and_never_run(tmp_path, tiny, capsys):
    """Every writing command reads the previous holder from DIR/.lock: a crafted one is only text to it."""
    run, data = run_copy(tiny, tmp_path / "run"), tiny[1]
    marker = tmp_path / "PWNED"
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / rundir.LOCK).write_bytes(crafted_pickle(marker))
    assert main(["index", str(run), "--data-dir", str(data), "--out", str(tmp_path / "idx"), "--no-progress"]) == 0
    assert not marker.exists()


def _embedfm(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "embedfm", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **kw,
    )  # fmt: skip


@pytest.mark.slow
def test_second_train_into_one_out_refuses_naming_the_holder_and_a_killed_holders_lock_is_taken_over(
    tmp_path, fake_data_dir, capsys
):
    out = tmp_path / "run"
    # the holder is another process; the second and third trains run in this one (another PID all the same)
    first = _embedfm("train", "--out", out, "--data-dir", fake_data_dir, "--epochs", "400", *TINY)
    try:
        deadline = time.time() + 120
        while not (out / rundir.CHECKPOINT).exists():  # holding the lock and past its first epoch
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        capsys.readouterr()
        assert main(["train", "--out", str(out), "--data-dir", str(fake_data_dir), "--epochs", "1", "--seed", "1",
                     *TINY]) == 2  # fmt: skip
        assert f"is being written by PID {first.pid} (embedfm train" in _one_line_error(capsys)
        assert json.loads((out / rundir.CONFIG).read_text())["seed"] == 0  # the first run's files are untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    args = ["train", "--out", str(out), "--data-dir", str(fake_data_dir), "--epochs", "1", "--overwrite", *TINY]
    assert main(args) == 0, capsys.readouterr().err
    assert f"took over the lock left by PID {first.pid}" in capsys.readouterr().out
    assert rundir.is_done(out)


def test_eval_into_a_report_dir_another_process_writes_refuses(tmp_path, fake_run, capsys):
    src, data = fake_run
    code = (
        "import sys, time; from embedfm import rundir\n"
        "with rundir.lock(sys.argv[1], 'eval'):\n    print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "rep")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["eval", str(src), "--out", str(tmp_path / "rep"), "--data-dir", str(data), "--no-progress"]) == 2
        assert f"is being written by PID {holder.pid} (embedfm eval" in _one_line_error(capsys)
    finally:
        holder.kill()
        holder.wait()


def test_lock_in_one_process_is_exclusive_and_released(tmp_path):
    quiet = lambda *a: None
    busy = pytest.raises(BusyError, match=f"PID {os.getpid()} \\(embedfm index")
    with rundir.lock(tmp_path, "index", log=quiet), busy, rundir.lock(tmp_path, "index", log=quiet):
        pass
    with rundir.lock(tmp_path, "index", log=lambda *a: None):  # released: free again
        pass
