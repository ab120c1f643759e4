"""Run dirs shared between people and processes: old-format checkpoints are converted, never silently unpickled;
one writer per run / report / index dir (with real processes); a failed write is one line and keeps the previous
file; a checkpoint that loads but does not fit is one line in `train --resume` too; Ctrl-C says the truth."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY

from embedfm import checkpoint, rundir
from embedfm.cli import main
from embedfm.errors import BusyError


def _embedfm(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "embedfm", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **kw,
    )  # fmt: skip


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _old_format_copy(src: Path, dst: Path) -> Path:
    """What an older embedfm wrote: the same checkpoint, pickled by torch.save into last.pt."""
    shutil.copytree(src, dst)
    ckpt = checkpoint.load_checkpoint(dst)
    (dst / rundir.CHECKPOINT).unlink()
    torch.save({**ckpt, "format_version": 1}, dst / rundir.LEGACY_CHECKPOINT)
    return dst


def test_old_format_is_refused_with_how_to_convert_then_converts_safely(tmp_path, fake_run, capsys):
    src, data = fake_run
    old = _old_format_copy(src, tmp_path / "old")
    assert main(["eval", str(old), "--data-dir", str(data), "--no-progress"]) == 2
    assert f"embedfm convert {old}" in _one_line_error(capsys)
    assert main(["convert", str(old)]) == 0  # numpy RNG arrays pass the weights-only unpickler
    assert "weights-only unpickler" in capsys.readouterr().out
    a, b = checkpoint.load_checkpoint(src), checkpoint.load_checkpoint(old)
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["rng"]["python"] == b["rng"]["python"] and torch.equal(a["rng"]["data"], b["rng"]["data"])
    assert main(["eval", str(old), "--data-dir", str(data), "--no-progress"]) == 0


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


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, fake_data_dir, monkeypatch, capsys
):
    import embedfm.fileio as fileio

    real, saves = fileio._atomic_write, []

    def full_on_second_checkpoint(path, data):
        if path.name == rundir.CHECKPOINT:
            saves.append(path)
            if len(saves) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(fileio, "_atomic_write", full_on_second_checkpoint)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data-dir", str(fake_data_dir), "--epochs", "2", *TINY]) == 2
    err = _one_line_error(capsys)
    assert f"cannot write {out / rundir.CHECKPOINT}: No space left on device; the previous" in err
    assert checkpoint.load_checkpoint(out)["epoch"] == 0  # epoch 1's checkpoint, whole
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]  # no temp file left behind
    monkeypatch.setattr(fileio, "_atomic_write", real)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0 and rundir.is_done(out)


def test_failed_report_write_keeps_the_previous_report(tmp_path, fake_run, monkeypatch, capsys):
    src, data = fake_run
    rep = tmp_path / "rep"
    assert main(["eval", str(src), "--out", str(rep), "--data-dir", str(data), "--no-progress"]) == 0
    before = (rep / "report.json").read_bytes()

    def denied(*a, **k):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr("embedfm.fileio._atomic_write", denied)
    capsys.readouterr()
    assert main(["eval", str(src), "--out", str(rep), "--data-dir", str(data), "--no-progress"]) == 2
    assert "Permission denied" in _one_line_error(capsys)
    assert (rep / "report.json").read_bytes() == before


def test_resume_of_a_checkpoint_that_does_not_fit_is_one_line(tmp_path, fake_run, capsys):
    src, _ = fake_run
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    (bad / rundir.DONE).unlink()
    ckpt = checkpoint.load_checkpoint(bad)
    ckpt["optimizer"]["param_groups"] = "not a list"  # loads, but is no optimizer state
    checkpoint.save_checkpoint(bad, ckpt)
    assert main(["train", "--resume", str(bad), "--no-progress"]) == 2
    assert "does not fit" in _one_line_error(capsys)


def test_resume_of_a_moved_run_writes_where_the_run_is(tmp_path, fake_data_dir):
    from embedfm.config import TrainConfig
    from embedfm.train import Hooks, train

    def stop(row):
        raise KeyboardInterrupt

    src, moved = tmp_path / "src", tmp_path / "moved"
    cfg = TrainConfig(out=str(src), data_dir=str(fake_data_dir), epochs=2, limit=200, val_size=50, batch_size=50)
    with pytest.raises(KeyboardInterrupt):  # stopped after epoch 1's checkpoint
        train(cfg, progress=False, log=lambda *a: None, hooks=Hooks(on_epoch=stop))
    shutil.copytree(src, moved)
    assert main(["train", "--resume", str(moved), "--no-progress"]) == 0
    assert rundir.is_done(moved) and json.loads((moved / rundir.CONFIG).read_text())["out"] == str(moved)
    assert not rundir.is_done(src)  # the original run dir is untouched


def test_ctrl_c_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path, fake_data_dir, monkeypatch, capsys):
    import embedfm.train as train_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "run_epoch", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data-dir", str(fake_data_dir), "--epochs", "1", *TINY]) == 130
    err = capsys.readouterr().err
    assert "no epoch had finished, nothing was saved" in err and "--resume" not in err
