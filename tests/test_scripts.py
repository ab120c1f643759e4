"""scripts/summarize on hand-written run dirs: grouping by config, mean ± sample std, validation columns;
scripts/reproduce end to end on tiny fake data (train, eval, summary, skip and resume);
scripts/bench's partial-run merge of bench.json / bench.md."""

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(d: Path, seed: int, loss: str, acc: float, val_acc: float, val_focus_err=None) -> None:
    d.mkdir(parents=True)
    per_class = {str(c): {"recall": acc} for c in range(10)}
    clf = {"accuracy": acc, "focus_group_error": 1 - acc, "per_class": per_class}
    cfg = {"loss": loss, "backbone": "fastcnn", "epochs": 3, "sampler": "auto", "seed": seed, "out": str(d)}
    run = {
        "config": cfg,
        "classifiers": {"softmax": clf, "knn": clf},
        "retrieval": {"precision_at_1": acc, "map_at_r": acc / 2},
        "train_seconds": 10.0 * (seed + 1),
    }
    (d / "report.json").write_text(json.dumps({"runs": {d.name: run}}))
    last = {"epoch": 3, "val_acc": val_acc}
    if val_focus_err is not None:
        last["val_focus_err"] = val_focus_err
    (d / "history.json").write_text(json.dumps([last]))


def test_summarize_groups_seeds_and_reports_validation(tmp_path):
    _fake_run(tmp_path / "ce_s0", 0, "ce", 0.90, 0.91, 0.20)
    _fake_run(tmp_path / "ce_s1", 1, "ce", 0.92, 0.93)  # an older history without val_focus_err
    # a config written after a key was added (at its default) still groups with one written before
    report = json.loads((tmp_path / "ce_s1" / "report.json").read_text())
    report["runs"]["ce_s1"]["config"].update(crop_pad=0, compile=True)
    (tmp_path / "ce_s1" / "report.json").write_text(json.dumps(report))
    _fake_run(tmp_path / "triplet_s0", 0, "triplet", 0.95, 0.96, 0.10)
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "summarize"), str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    rows = {r["method"].split(" ")[0]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    ce, tr = rows["ce"], rows["triplet"]
    assert ce["seeds"] == "2" and tr["seeds"] == "1"
    # mean of 90 and 92 = 91, sample std = sqrt(2) = 1.41
    assert ce["test acc softmax %"] == "91.00 ± 1.41"
    assert ce["val acc %"] == "92.00 ± 1.41"
    assert ce["val focus err %"] == "20.00"  # one finite value: no spread to report, so no "± 0.00"
    assert tr["test acc softmax %"] == "95.00"
    assert tr["MAP@R"] == "0.475"
    assert ce["train s/run"] == "15"
    assert ce["test acc kNN flip-avg %"] == "–"  # these reports predate the flip-averaged kNN
    assert ce["method"] == "ce / fastcnn / 3 ep"  # only the loss differs, and it leads the label
    assert (tmp_path / "summary.md").read_text().startswith("| method | seeds | val acc %")


def _load_script(name: str):
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader(name, str(ROOT / "scripts" / name))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


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


def test_summarize_labels_a_key_older_reports_lack(tmp_path):
    """A setting that varies between methods but is missing from an older report's config is labelled
    with its default there (not a KeyError)."""
    _fake_run(tmp_path / "ce_s0", 0, "ce", 0.90, 0.91)  # no crop_pad in its config: predates the key
    _fake_run(tmp_path / "triplet_s0", 0, "triplet", 0.95, 0.96)
    report = json.loads((tmp_path / "triplet_s0" / "report.json").read_text())
    report["runs"]["triplet_s0"]["config"]["crop_pad"] = 2
    (tmp_path / "triplet_s0" / "report.json").write_text(json.dumps(report))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "summarize"), str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    methods = [r["method"] for r in csv.DictReader(open(tmp_path / "summary.csv"))]
    assert methods == ["ce / fastcnn / 3 ep (crop_pad=0)", "triplet / fastcnn / 3 ep (crop_pad=2)"]


def _reproduce(out: Path, data: Path) -> str:
    cmd = [
        "bash",
        str(ROOT / "scripts/reproduce"),
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
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PY": sys.executable})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_reproduce_trains_evaluates_summarises_and_resumes(tmp_path, fake_data_dir):
    """One CE seed end to end (the loop over seeds and losses is the same for the rest); a rerun skips the
    finished run; a run interrupted after its last checkpoint (no DONE, no report) is resumed, not retrained, and evaluated."""
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
