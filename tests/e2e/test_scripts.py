"""The scripts under scripts/ (benchmarks and probes; the studies are studies/*.py, tested in test_study.py):
bench.py's partial-run merge of bench.json / bench.md, its threads section and its speed race (with
studies/speedrun.py's ablation rows); and that every script imports the installed package only."""

from __future__ import annotations

import json
import runpy

import pytest
import torch
from conftest import ROOT, load_script

from embedfm.config import from_dict, with_recipe


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


def test_ablation_rows_add_up_to_the_recipe_and_the_race_runs_it():
    speedrun, bench = runpy.run_path(str(ROOT / "studies" / "speedrun.py")), load_script("bench")
    rows = [(name, what, speedrun["SETTINGS"][name]) for name, what, _, _ in speedrun["ROWS"]]
    assert rows[0][0] == "demo" and rows[0][2] == {}
    without_name = lambda d: {k: v for k, v in from_dict(with_recipe(d)).to_dict().items() if k != "recipe"}
    recipe_row = next(settings for name, _, settings in rows if name == speedrun["RECIPE_ROW"])
    assert without_name(recipe_row) == without_name({"recipe": "fast", **speedrun["SHORT"]})
    race = {name: settings for name, _, settings, _, _ in bench.RACE}
    assert race["fast"] == {"recipe": "fast"} and race["fast_short"] == {"recipe": "fast", **speedrun["SHORT"]}
    assert race["demo"] == {}


@pytest.mark.slow  # three trajectories; the fast suite keeps test_trajectory.py's run and the partial-run merge above
def test_race_writes_its_json_and_plot_and_resumes(fake_data_dir, tmp_path):
    bench = load_script("bench")
    tiny = {"epochs": 1, "limit": 200, "val_size": 50, "batch_size": 50}
    plan = [("a", "tiny", {**tiny}, (0, 1), None), ("b", "tiny, stopped", {**tiny, "epochs": 2}, (0,), 0.0)]
    results = {"date": "2026-01-01", "cpu": {"cpu_model": "test", "cores": 2, "speed_flags": []}}
    out = tmp_path / "ref"
    out.mkdir()
    done = {"name": "a", "seed": 1, "trajectory": {"train_s": 1.0, "val_acc": 0.5, "test_acc": 0.4, "stopped": False,
            "time_to": {"0.92": None, "0.93": None, "0.94": None}, "points": [{"epoch": 1.0, "train_s": 1.0,
            "val_acc": 0.5}]}}  # fmt: skip
    (out / "speedrun.partial.jsonl").write_text(json.dumps(done) + "\n")  # seed 1 of "a" finished before
    bench.speedrun_section(results, out, quick=False, data_dir=str(fake_data_dir), race_plan=plan)
    race = json.loads((out / "speedrun.json").read_text())
    a, b = race["entries"]
    assert set(a["seeds"]) == {"0", "1"} and a["seeds"]["1"] == done["trajectory"]
    assert a["seeds"]["0"]["test_acc"] is not None and b["seeds"]["0"]["stopped"]
    assert (out / "speedrun.png").stat().st_size > 0 and not (out / "speedrun.partial.jsonl").exists()


@pytest.mark.slow
def test_gpu_check_without_cuda_runs_its_cpu_equivalents(tmp_path, monkeypatch, capsys):
    """scripts/gpu_check.py's CPU mode: one line saying there is no CUDA, each recipe for an epoch on a small
    subset, the kNN check, the JSON (the device tests run in the suite, so they are not run twice here)."""
    from conftest import load_script, make_fake_dataset

    if torch.cuda.is_available():
        pytest.skip("with CUDA the script runs the real GPU check (minutes)")
    data = make_fake_dataset(tmp_path / "data", n_train=400, n_test=100)
    out = tmp_path / "gpu.json"
    gpu_check = load_script("gpu_check")  # in this process: no second interpreter importing torch
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # the script sets it: restored afterwards
    code = gpu_check.main(["--out", str(out), "--data-dir", str(data), "--no-device-tests"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-3000:]
    assert stdout.splitlines()[0].startswith("gpu_check: no CUDA device")
    report = json.loads(out.read_text())
    assert report["cuda"] is False and report["ok"] is True and "cpu_model" in report["machine"]
    assert {r["recipe"] for r in report["recipes"]} == {"default", "best"}
    assert all(r["images_per_s"] > 0 and r["precision"] == "fp32" for r in report["recipes"])
    assert report["knn"]["same_predictions"] is True and report["torchrun"] == {"skipped": "no CUDA"}
