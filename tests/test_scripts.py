"""The scripts under scripts/ (benchmarks and probes; the studies are studies/*.py, tested in test_study.py):
bench.py's partial-run merge of bench.json / bench.md and its threads section; and that every script imports the
installed package only."""

import json
from pathlib import Path

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
