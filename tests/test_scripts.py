"""The scripts under scripts/: reproduce.py end to end on tiny fake data (train, eval, summary, skip and resume),
bench.py's partial-run merge of bench.json / bench.md; and that every script imports the installed package only."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scripts_import_the_installed_package_only():
    for script in (ROOT / "scripts").glob("*.py"):
        text = script.read_text()
        assert "sys.path" not in text, script
        assert text.startswith('"""'), f"{script} opens with a docstring saying what it does"
    assert not [p for p in (ROOT / "scripts").iterdir() if p.is_file() and p.suffix != ".py"]


def test_bench_partial_run_updates_only_its_sections(tmp_path):
    bench = _load_script("bench")
    old = {"date": "2026-01-01", "train_peak_fraction": 0.6, "knn_speedup": 1.5, "eval_seconds": 20.0}
    (tmp_path / "bench.json").write_text(json.dumps(old))
    (tmp_path / "bench.md").write_text(
        "| section | measurement | figures |\n|---|---|---|\n"
        "| 2 training step | old step | a |\n| 4 kNN | old knn | b |\n"
        "| 5 eval and viz | old eval | c |\n"
    )
    bench.ROWS[:] = [("4 kNN", "new knn", "x"), ("4 kNN", "new knn 2", "y")]
    bench.write_outputs(tmp_path, {"date": "2026-02-02", "knn_speedup": 2.0}, {"knn"})
    new = json.loads((tmp_path / "bench.json").read_text())
    assert new["knn_speedup"] == 2.0 and new["train_peak_fraction"] == 0.6 and new["date"] == "2026-01-01"
    assert new["section_dates"]["knn"] == "2026-02-02" and new["section_dates"]["step"] == "2026-01-01"
    lines = (tmp_path / "bench.md").read_text().splitlines()
    assert [ln.split("|")[2].strip() for ln in lines[2:]] == ["old step", "new knn", "new knn 2", "old eval"]


def _reproduce(out: Path, data: Path) -> str:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "reproduce.py"),
        "--backbone",
        "linear",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--losses",
        "ce",
        "--out",
        str(out),
        "--",
        "--data-dir",
        str(data),
        "--limit",
        "200",
        "--val-size",
        "50",
        "--batch-size",
        "100",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_reproduce_trains_evaluates_summarises_and_resumes(tmp_path, fake_data_dir):
    """One CE seed end to end (the loop over seeds and losses is the same for the rest); a rerun skips the
    finished run; a run interrupted after its last checkpoint (no DONE, no report) is resumed, not retrained,
    and evaluated."""
    out = tmp_path / "study"
    _reproduce(out, fake_data_dir)
    d = out / "linear"
    assert (d / "ce_s0" / "DONE").is_file() and (d / "ce_s0" / "report.json").is_file()
    with open(d / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["seeds"] == "1"

    log = _reproduce(out, fake_data_dir)
    assert "skip" in log and "ce_s0 (finished)" in log and "embedfm train" not in log

    (d / "ce_s0" / "DONE").unlink()
    (d / "ce_s0" / "report.json").unlink()
    log = _reproduce(out, fake_data_dir)
    assert "(finished)" not in log
    assert f"resuming {d / 'ce_s0'} after epoch 1/1" in log
    assert (d / "ce_s0" / "DONE").is_file() and (d / "ce_s0" / "report.json").is_file()
