"""embedfm.study: studies declared as data (runs, manifest, labels from the manifest), the results rebuilt from the
committed run reports byte for byte, the loss-comparison verdict on a hand-made paired.json, the accuracy-vs-epochs
curve, and a tiny study run end to end on fake data (slow)."""

import csv
import json
from pathlib import Path

import pytest
from conftest import ROOT

from embedfm import study as S

STUDIES = sorted((ROOT / "studies").glob("*.py"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_definition_is_short_and_its_manifest_names_every_committed_run(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    study = S.load(path)
    assert len(path.read_text().splitlines()) <= 50
    if not (Path(study.out) / S.MANIFEST).exists():  # declared, not yet published: nothing of it is committed
        assert not Path(study.out).exists() or not any(Path(study.out).iterdir()), study.out
        return
    manifest = json.loads((Path(study.out) / S.MANIFEST).read_text())
    assert [r["run"] for r in manifest["runs"]] == [r.dir for r in study.runs()]
    for r in manifest["runs"]:
        cfg, run = r["config"], S.Run(r["method"], r["seed"], tuple(r["holdout_classes"]))
        assert cfg["seed"] == r["seed"] and list(cfg.get("holdout_classes") or []) == r["holdout_classes"]
        if not study.config_file:  # a tuned study's runs start from their method's best_config.json
            wanted = json.loads(json.dumps(study.settings(run)))
            assert {k: cfg.get(k) for k in wanted} == wanted, r["run"]


def test_runs_are_seed_major_with_held_out_classes_and_own_seeds():
    s = S.Study(name="x", methods={"a": {}, "b": {"loss": "triplet"}}, only={"b": (0,)}, curve_methods={"c": {}})
    assert [r.dir for r in s.runs()] == ["a_s0", "b_s0", "curve/c_s0", "a_s1", "curve/c_s1", "a_s2", "curve/c_s2"]
    h = S.Study(name="y", methods={"a": {}}, holdout=[("a", (6,), (0, 1)), ("a", (0,), (0,))])
    assert [(r.dir, r.label) for r in h.runs()] == [("a-h6_s0", "a-h6"), ("a-h0_s0", "a-h0"), ("a-h6_s1", "a-h6")]
    assert h.settings(h.runs()[1]) == {"seed": 0, "holdout_classes": [0]}


@pytest.mark.parametrize("name", ["mlp", "unseen", "speedrun"])
def test_check_rebuilds_the_committed_summaries_byte_for_byte(name, monkeypatch):
    """The summaries (no bootstrap: fast) rebuilt from the committed reports; `python -m embedfm.study check
    studies/*.py` does every result, paired intervals, cross-fit and curve included."""
    monkeypatch.chdir(ROOT)
    assert S.check(S.load(ROOT / "studies" / f"{name}.py"), log=lambda _m: None) == []


def test_labels_come_from_the_manifest_not_the_run_names(tmp_path, monkeypatch):
    """Run dirs renamed on disk: the summary still labels them by the manifest's methods."""
    monkeypatch.chdir(ROOT)
    study = S.load(ROOT / "studies" / "unseen.py")
    manifest = json.loads((Path(study.out) / S.MANIFEST).read_text())
    root = tmp_path / "unseen"
    for i, r in enumerate(manifest["runs"]):
        (root / f"run{i}").mkdir(parents=True)
        for f in ("report.json", "history.json"):
            (root / f"run{i}" / f).write_bytes((Path(study.out) / r["run"] / f).read_bytes())
        r["run"] = f"run{i}"
    (root / S.MANIFEST).write_text(json.dumps(manifest))
    S.rebuild(study, root, root, log=lambda _m: None)
    with open(root / "summary.csv") as fh:
        got = [row["method"] for row in csv.DictReader(fh)]
    with open(Path(study.out) / "summary.csv") as fh:
        assert got == [row["method"] for row in csv.DictReader(fh)]
    assert "ce-h6" in got


def _comparison(method, control, focus, helps=(), hurts=()):
    figs = {f: {"difference": 0.0, "interval": [-0.01, 0.01], "helps": f in helps, "hurts": f in hurts}
            for f in ("accuracy", "focus_group_error", "shirt_recall", "map_at_r")}  # fmt: skip
    figs["focus_group_error"]["difference"] = focus
    return {"method": method, "control": control, **figs}


def test_verdict_on_a_hand_made_paired_table():
    paired = {"figures": ["accuracy", "focus_group_error", "shirt_recall", "map_at_r"], "comparisons": [
        _comparison("a", "ce-b", -0.02, helps=("focus_group_error",)),  # -2 points of 10 %: -20 %, ✓
        _comparison("b", "ce-b", -0.03),  # -30 % but no ✓: not met
        _comparison("c", "ce-b", +0.01, helps=("shirt_recall",), hurts=("accuracy",)),
        _comparison("a", "ce", -0.05, helps=("focus_group_error",)),  # another control: ignored
    ]}  # fmt: skip
    summary = [{"method": "ce-b", "focus-group err softmax %": "10.00 ± 0.50", "MAP@R": "0.700 ± 0.010"},
               {"method": "a", "focus-group err softmax %": "8.00", "MAP@R": "0.710"},
               {"method": "b", "focus-group err softmax %": "7.00", "MAP@R": "0.750 ± 0.001"},
               {"method": "c", "focus-group err softmax %": "11.00", "MAP@R": "0.690"}]  # fmt: skip
    v = S.verdict(paired, summary, "ce-b", ["a", "b", "c"])
    assert v["relative"] == pytest.approx({"a": -20.0, "b": -30.0, "c": 10.0})
    assert v["meets"] == ["a"] and v["largest_cut"] == "b" and v["best_map"] == "b"
    assert v["helps"]["focus_group_error"] == ["a"] and v["hurts"]["accuracy"] == ["c"]
    assert v["shirt_only"] == ["c"]
    assert S.verdict(paired, summary, "ce-b", ["a", "b", "c"], target=0.25)["meets"] == []
    with pytest.raises(S.EmbedfmError, match="'d'"):
        S.verdict(paired, summary, "ce-b", ["a", "d"])


def _recipe_run(run, epochs, test, seconds_per_epoch=120.0, threads=None):
    run.mkdir(parents=True)
    history = [{"val_acc": 0.9 + 0.001 * e, "train_seconds": seconds_per_epoch * (e + 1)} for e in range(epochs)]
    (run / "history.json").write_text(json.dumps(history))
    (run / "report.json").write_text(json.dumps({"runs": {run.name: {"classifiers": {"softmax": {"accuracy": test}}}}}))
    (run / "config.json").write_text(json.dumps({"threads": threads}))


def test_curve_reports_measured_points_and_gains_without_a_fit(tmp_path):
    runs = [tmp_path / "best" / "triplet_s0", tmp_path / "s" / "triplet_s0", tmp_path / "s" / "triplet_s1",
            tmp_path / "s" / "triplet_e60_s0"]  # fmt: skip
    for run, (e, acc, sec, th) in zip(runs, [(30, 0.946, 250.0, 1), (30, 0.945, 120.0, None), (30, 0.947, 130.0, None),
                                             (60, 0.9485, 180.0, None)]):  # fmt: skip
        _recipe_run(run, e, acc, sec, th)
    r = S.curve(runs, tmp_path / "out")
    thirty, sixty = r["lengths"][30], r["lengths"][60]
    assert thirty["runs"] == 3 and thirty["test_acc_mean"] == pytest.approx(0.946)
    assert thirty["test_acc_std"] == pytest.approx(0.001) and sixty["test_acc_std"] is None
    assert thirty["seconds_per_epoch"] == {"1": {"runs": 1, "mean": 250.0}, "default": {"runs": 2, "mean": 125.0}}
    assert [(g["from"], g["to"]) for g in r["gains"]] == [(30, 60)] and r["gains"][0]["gain"] == pytest.approx(0.0025)
    assert set(json.loads((tmp_path / "out" / "curve.json").read_text())) == {"series", "lengths", "gains"}
    assert (tmp_path / "out" / "curve.png").stat().st_size > 10_000


def test_the_command_refuses_unknown_stages_methods_and_definitions(tmp_path, capsys):
    assert S.main(["run", str(ROOT / "studies" / "mlp.py"), "--methods", "arcface"]) == 2
    assert "unknown method 'arcface'" in capsys.readouterr().err
    assert S.main(["publish", str(tmp_path / "nope.py")]) == 2
    with pytest.raises(SystemExit):
        S.main(["nope", str(ROOT / "studies" / "mlp.py")])


@pytest.mark.slow
def test_a_tiny_study_runs_resumes_and_publishes(tmp_path, fake_data_dir, monkeypatch):
    """Train + eval of each run, a rerun that skips them, publish: runs copied without checkpoints, manifest with
    every run's resolved config, the machine and the stage times, the summary labelled by the manifest."""
    monkeypatch.chdir(tmp_path)
    flags = {"data_dir": str(fake_data_dir), "limit": 200, "val_size": 50, "batch_size": 100, "epochs": 1}
    s = S.Study(name="tiny", base={"backbone": "linear", **flags}, methods={"ce": {"loss": "ce"}}, seeds=(0, 1),
                out="out", work="work")  # fmt: skip
    S.run_stage(s)
    assert (tmp_path / "work" / "ce_s1" / "report.json").is_file()
    S.run_stage(s)  # evaluated runs are skipped
    S.publish_stage(s)
    assert not list((tmp_path / "out").rglob("*.safetensors"))
    m = json.loads((tmp_path / "out" / S.MANIFEST).read_text())
    assert [r["config"]["seed"] for r in m["runs"]] == [0, 1] and m["machine"] and set(m["stages"]) == {"publish"}
    with open(tmp_path / "out" / "summary.csv") as fh:
        assert [(r["method"], r["seeds"]) for r in csv.DictReader(fh)] == [("ce", "2")]


def test_contrasts_are_differences_of_seed_means_with_their_standard_error():
    rows = [{"method": m, "test_focus_err": e, "test_acc": a, "map_at_r": 0.5}
            for m, e, a in (("a", 0.10, 0.9), ("a", 0.12, 0.9), ("b", 0.08, 0.92), ("b", 0.10, 0.92))]  # fmt: skip
    (c,) = S.contrasts((("a", "A", "b", "B"),), rows)["contrasts"]
    assert c["runs"] == [2, 2] and c["focus_error"] == pytest.approx([0.11, 0.09])
    assert c["difference"] == pytest.approx(-0.02) and c["se"] == pytest.approx(0.0002**0.5)
    assert c["relative_pct"] == pytest.approx(-100 * 0.02 / 0.11) and c["accuracy_change"] == pytest.approx(0.02)
    with pytest.raises(S.EmbedfmError):
        S.contrasts((("a", "A", "c", "C"),), rows)


def test_runs_csv_resolves_the_sampler_and_keeps_unrecorded_figures_empty(monkeypatch):
    monkeypatch.chdir(ROOT)
    with open(ROOT / "artifacts" / "reference" / "study" / "fastcnn" / "runs.csv", newline="") as fh:
        rows = {r["run"]: r for r in csv.DictReader(fh)}
    assert rows["ce_s0"]["sampler"] == "random" and rows["triplet_s0"]["sampler"] == "balanced"
    assert rows["ce_s0"]["mining"] == "" and rows["triplet-focusmine_s0"]["mining"] == "focus"
    assert rows["ce_s0"]["val_focus_err"] == "" and float(rows["triplet-focusmine_s0"]["val_focus_err"]) > 0


def test_unseen_groups_follow_the_manifest_order_of_held_out_classes(monkeypatch):
    monkeypatch.chdir(ROOT)
    groups = json.loads((ROOT / "artifacts" / "reference" / "study" / "unseen" / "unseen.json").read_text())["groups"]
    assert [g["held_out"] for g in groups][:3] == ["6", "6", "6"] and groups[3]["held_out"] == "0"
    assert [g["method"] for g in groups[:3]] == sorted(g["method"] for g in groups[:3])
    one = next(g for g in groups if g["runs"] == 1)
    assert one["map_at_r"]["std"] == 0.0 and one["class_name"] in ("T-shirt/top", "Pullover", "Coat")
    assert S.spread([0.1, 0.3]) == pytest.approx({"mean": 0.2, "std": 0.02**0.5})


def test_last_epoch_averages_each_figure_over_the_runs_that_recorded_it(tmp_path):
    table = [{"run": f"a_s{i}", "method": "a"} for i in range(3)] + [{"run": "b_s0", "method": "b"}]
    for i, last in enumerate([{"val_acc": 0.9, "x": 1.0}, {"val_acc": 0.8, "x": None}, {"val_acc": 0.7}]):
        (tmp_path / f"a_s{i}").mkdir()
        (tmp_path / f"a_s{i}" / "history.json").write_text(json.dumps([{"val_acc": 0.1}, last]))
    (a,) = S.last_epoch(["a", "b"], table, tmp_path)["methods"]  # b has no history: no row
    assert a["method"] == "a" and a["runs"] == 3 and a["val_acc"]["mean"] == pytest.approx(0.8)
    assert a["x"] == {"mean": 1.0, "std": 0.0}
