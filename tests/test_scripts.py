"""The scripts under scripts/: reproduce.py end to end on tiny fake data (train, eval, summary, skip and resume),
bench.py's partial-run merge of bench.json / bench.md and its threads section; and that every script imports the
installed package only."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_scripts_import_the_installed_package_only():
    for script in (ROOT / "scripts").glob("*.py"):
        text = script.read_text()
        assert "sys.path" not in text, script
        assert text.startswith('"""'), f"{script} opens with a docstring saying what it does"
    assert not [p for p in (ROOT / "scripts").iterdir() if p.is_file() and p.suffix != ".py"]


def test_bench_partial_run_updates_only_its_sections(tmp_path):
    bench = load_script("bench")
    old = {"date": "2026-01-01", "machine": "old cpu", "train_peak_fraction": 0.6, "knn_speedup": 1.5}
    (tmp_path / "bench.json").write_text(json.dumps(old))
    (tmp_path / "bench.md").write_text(
        "| section | measurement | figures |\n|---|---|---|\n"
        "| 2 training step | old step | a |\n| 4 kNN | old knn | b |\n"
        "| 5 eval and viz | old eval | c |\n"
    )
    bench.ROWS[:] = [("4 kNN", "new knn", "x"), ("4 kNN", "new knn 2", "y")]
    results = {"date": "2026-02-02", "machine": "new cpu", "cpu": {"cpu_model": "new"}, "knn_speedup": 2.0}
    bench.write_outputs(tmp_path, results, {"knn"})
    new = json.loads((tmp_path / "bench.json").read_text())
    assert new["knn_speedup"] == 2.0 and new["train_peak_fraction"] == 0.6 and new["date"] == "2026-01-01"
    assert new["section_dates"]["knn"] == "2026-02-02" and new["section_dates"]["step"] == "2026-01-01"
    # each section names the machine it ran on; the top-level machine stays the full run's
    assert new["machine"] == "old cpu" and new["section_cpu"] == {"knn": {"cpu_model": "new"}}
    assert new["section_machines"]["knn"] == "new cpu" and new["section_machines"]["step"] == "old cpu"
    lines = (tmp_path / "bench.md").read_text().splitlines()
    assert [ln.split("|")[2].strip() for ln in lines[2:]] == ["old step", "new knn", "new knn 2", "old eval"]


def test_bench_threads_section_compares_one_two_thread_run_with_two_one_thread_runs(monkeypatch):
    """The section's arithmetic and rows, with embedfm train replaced by a stub that writes its history."""
    bench = load_script("bench")
    started = []

    class Done:
        def wait(self):
            return 0

    def fake_train(out, threads, seed, limit):
        started.append((threads, seed, limit))
        out.mkdir(parents=True)
        (out / "history.json").write_text(json.dumps([{"images_per_s": 400.0 if threads == 2 else 230.0}]))
        return Done()

    monkeypatch.setattr(bench, "_train", fake_train)
    bench.ROWS[:] = []
    results = {}
    bench.threads_section(results, quick=True)
    assert started == [(2, 0, 2000), (1, 0, 2000), (1, 1, 2000)]
    assert results["threads_alone_ips"] == 400.0 and results["threads_pair_ips"] == [230.0, 230.0]
    assert [r[0] for r in bench.ROWS] == ["7 threads", "7 threads"]
    assert bench.ROWS[1][2] == "230 + 230 = 460 img/s (×1.15 of one 2-thread process)"


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


def _history(run: Path, val_knn: float) -> None:
    run.mkdir(parents=True)
    history = [{"epoch": 1, "val_knn_acc": 0.5}, {"epoch": 2, "val_knn_acc": val_knn}]
    (run / "history.json").write_text(json.dumps(history))


def test_loss_study_ranks_metric_losses_on_validation_and_plans_the_holdout_runs(tmp_path):
    study = load_script("loss_study")
    # mean validation kNN accuracy of 3 seeds decides; the CE controls are never ranked
    score = {m: 0.80 + 0.01 * i for i, m in enumerate(study.METHODS)}
    score["ce"] = 0.99
    for m, v in score.items():
        for seed in study.SEEDS:
            _history(tmp_path / "runs" / f"{m}_s{seed}", v + 0.001 * seed)
    plan = study.holdout_plan(tmp_path)
    ranked = sorted((m for m in study.METHODS if m not in study.CONTROLS), key=lambda m: -score[m])
    best, second = ranked[:2]
    shirt = [(m, s) for m, c, s in plan if c == study.SHIRT]
    assert sorted(shirt) == sorted((m, s) for s in study.SEEDS for m in ("ce", best, second))
    others = [(m, c, s) for m, c, s in plan if c != study.SHIRT]
    assert others == [(m, c, 0) for c in study.OTHER_FOCUS for m in ("ce", best)]
    saved = json.loads((tmp_path / "holdout_plan.json").read_text())
    assert saved["ranking"][best] == pytest.approx(score[best] + 0.001)


def test_loss_study_copies_reports_not_checkpoints(tmp_path):
    study = load_script("loss_study")
    for name in ("triplet_s0", "supcon_s0", "triplet-h6_s1", "ce_s0"):
        run = tmp_path / "work" / name
        run.mkdir(parents=True)
        for f in ("report.json", "history.json", "config.json", "checkpoint.safetensors", "diagnostics.png"):
            (run / f).write_text("{}")
    (tmp_path / "work" / "ce_s0" / "report.json").unlink()  # not evaluated: left out
    study.copy_runs(tmp_path / "work", tmp_path / "out")
    copied = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert copied == {
        *(f"{run}/{f}" for run in ("triplet_s0", "supcon_s0", "triplet-h6_s1") for f in study.COPIED),
        "triplet_s0/diagnostics.png",
        "triplet-h6_s1/diagnostics.png",
    }
    assert study.main(["--stages", "tune,nope"]) == 2  # an unknown stage is refused before anything runs


def _recipe_run(run, epochs: int, test: float, seconds_per_epoch: float = 120.0, threads: int | None = None) -> None:
    """A committed run dir as best_study's curve reads it: history (val accuracy per epoch), report, config."""
    run.mkdir(parents=True)
    history = [{"val_acc": 0.9 + 0.001 * e, "train_seconds": seconds_per_epoch * (e + 1)} for e in range(epochs)]
    (run / "history.json").write_text(json.dumps(history))
    report = {"runs": {run.name: {"classifiers": {"softmax": {"accuracy": test}}}}}
    (run / "report.json").write_text(json.dumps(report))
    (run / "config.json").write_text(json.dumps({"threads": threads}))


def test_best_study_curve_reports_measured_points_and_gains_without_a_fit(tmp_path, monkeypatch):
    study = load_script("best_study")
    monkeypatch.setattr(study, "STUDY", tmp_path / "study")
    _recipe_run(tmp_path / "out" / "triplet_s0", 30, 0.946, seconds_per_epoch=250.0, threads=1)  # side by side
    _recipe_run(tmp_path / "study" / "triplet_s0", 30, 0.945, seconds_per_epoch=120.0)
    _recipe_run(tmp_path / "study" / "triplet_s1", 30, 0.947, seconds_per_epoch=130.0)
    _recipe_run(tmp_path / "study" / "triplet_e60_s0", 60, 0.9485, seconds_per_epoch=180.0)
    r = study.curve(tmp_path / "out")
    thirty, sixty = r["lengths"][30], r["lengths"][60]
    assert thirty["runs"] == 3 and thirty["test_acc_mean"] == pytest.approx(0.946)
    assert thirty["test_acc_std"] == pytest.approx(0.001)  # sample std of 94.6, 94.5, 94.7
    assert sixty["runs"] == 1 and sixty["test_acc_mean"] == pytest.approx(0.9485) and sixty["test_acc_std"] is None
    # seconds per epoch from each length's own runs, kept apart by thread setting
    assert thirty["seconds_per_epoch"] == {"1": {"runs": 1, "mean": 250.0}, "default": {"runs": 2, "mean": 125.0}}
    assert sixty["seconds_per_epoch"] == {"default": {"runs": 1, "mean": 180.0}}
    assert [(g["from"], g["to"]) for g in r["gains"]] == [(30, 60)]
    assert r["gains"][0]["gain"] == pytest.approx(0.0025)
    # nothing fitted, nothing carried past the measured lengths
    assert not {"per_doubling", "projection", "target"} & set(r) and "fitted" not in thirty
    assert set(json.loads((tmp_path / "out" / "curve.json").read_text())) == {"series", "lengths", "gains"}
    assert (tmp_path / "out" / "curve.png").stat().st_size > 10_000
    # a CURVE run (out/curve/) is a third length, with a gain to the next one
    _recipe_run(tmp_path / "out" / "curve" / "triplet_e15_s0", 15, 0.9435, threads=1)
    r = study.curve(tmp_path / "out")
    assert list(r["lengths"]) == [15, 30, 60]
    assert [round(g["gain"], 6) for g in r["gains"]] == [0.0025, 0.0025]


def test_best_study_copies_evaluated_runs_without_checkpoints_and_refuses_unknown_names(tmp_path):
    study = load_script("best_study")
    for name in ("triplet_s0", "ce-balanced_s0", "ce-balanced_s1"):
        run = tmp_path / "work" / "runs" / name
        run.mkdir(parents=True)
        for f in ("report.json", "history.json", "config.json", "checkpoint.safetensors", "embeddings.npz"):
            (run / f).write_text("{}")
    (tmp_path / "work" / "runs" / "ce-balanced_s1" / "report.json").unlink()  # still training: left out
    curve_run = tmp_path / "work" / "curve" / "triplet_e15_s0"
    curve_run.mkdir(parents=True)
    for f in study.COPIED:
        (curve_run / f).write_text("{}")
    study.copy_runs(tmp_path / "work", tmp_path / "out")
    copied = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    runs = ("triplet_s0", "ce-balanced_s0", "curve/triplet_e15_s0")  # the curve's runs out of the summaries' reach
    assert copied == {f"{run}/{f}" for run in runs for f in study.COPIED}
    assert study.run_dir(tmp_path, "triplet_e15", 1) == tmp_path / "curve" / "triplet_e15_s1"
    assert study.main(["--stages", "runs,nope"]) == 2  # refused before anything runs
    assert study.main(["--stages", "runs", "--methods", "arcface"]) == 2
    assert study.main(["--stages", "runs", "--seeds", "0,7"]) == 2
