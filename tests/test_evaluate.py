"""embedfm.evaluate: a report that cannot be written is one line and keeps the previous one."""

import errno
import os
import shutil

from conftest import one_line_stderr as _one_line_error

from embedfm.cli import main


def test_failed_report_write_keeps_the_previous_report(tmp_path, fake_run, monkeypatch, capsys):
    src, data = fake_run
    src = shutil.copytree(src, tmp_path / "run")  # eval writes the run's embeddings.npz: the shared run stays as it is
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
