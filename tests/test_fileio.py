"""embedfm.fileio: atomic writes keep the previous file when a write fails; a JSON document nested too deeply is
one line wherever it is read."""

import errno
import json
import os

import pytest
from fuzzing import DEEP, one_line_error

from embedfm import report, rundir, summarize
from embedfm.config import resolve
from embedfm.errors import StorageError
from embedfm.fileio import atomic_write_bytes


@pytest.mark.parametrize("name", [rundir.REPORT, rundir.HISTORY, summarize.PIXELS, "umap.json", rundir.CONFIG])
@pytest.mark.usefixtures("no_hang")
def test_deeply_nested_json_is_one_line(study, name):
    run = study / "run"
    (run / "umap.json").write_text(json.dumps({"focus_silhouette": {"run": 0.5}}))
    path = study / name if name == summarize.PIXELS else run / name
    path.write_text(DEEP)
    if name == rundir.CONFIG:
        one_line_error(resolve, str(path), {})
    elif name == "umap.json":
        one_line_error(report.rerender_markdown, run)
    else:
        one_line_error(summarize.summarize, [str(study)])
        if name == rundir.REPORT:
            one_line_error(report.rerender_markdown, run)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    p.write_text("old")

    def boom(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(StorageError, match=r"cannot write .*f\.json: No space left on device; the previous f\.json"):
        atomic_write_bytes(p, b"new")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind
