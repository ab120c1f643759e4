"""embedfm summarize on hand-written run dirs: grouping by config, mean ± sample std, validation columns, labels."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fuzzing import SEED, _json_mutations, fuzz

from embedfm import rundir, summarize
from embedfm.cli import main
from embedfm.summarize import summarize_paired


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


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
    assert main(["summarize", str(tmp_path)]) == 0
    rows = {r["method"].split(" ")[0]: r for r in _rows(tmp_path / "summary.csv")}
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


def test_summarize_labels_a_key_older_reports_lack(tmp_path):
    """A setting that varies between methods but is missing from an older report's config is labelled
    with its default there (not a KeyError)."""
    _fake_run(tmp_path / "ce_s0", 0, "ce", 0.90, 0.91)  # no crop_pad in its config: predates the key
    _fake_run(tmp_path / "triplet_s0", 0, "triplet", 0.95, 0.96)
    report = json.loads((tmp_path / "triplet_s0" / "report.json").read_text())
    report["runs"]["triplet_s0"]["config"]["crop_pad"] = 2
    (tmp_path / "triplet_s0" / "report.json").write_text(json.dumps(report))
    assert main(["summarize", str(tmp_path)]) == 0
    methods = [r["method"] for r in _rows(tmp_path / "summary.csv")]
    assert methods == ["ce / fastcnn / 3 ep (crop_pad=0)", "triplet / fastcnn / 3 ep (crop_pad=2)"]


def test_summarize_shows_a_saved_pixel_baseline_and_needs_reports(tmp_path, capsys):
    _fake_run(tmp_path / "ce_s0", 0, "ce", 0.90, 0.91)
    pixels = {"acc_knn": 0.85, "focus_err_knn": 0.2255, "recall_0_knn": 0.8, "recall_2_knn": 0.8,
              "recall_4_knn": 0.8, "recall_6_knn": 0.59, "k": 10, "metric": "l2"}  # fmt: skip
    (tmp_path / "pixels.json").write_text(json.dumps(pixels))
    assert main(["summarize", str(tmp_path)]) == 0
    last = _rows(tmp_path / "summary.csv")[-1]
    assert last["method"].startswith("kNN on raw pixels") and last["test acc kNN %"] == "85.00"
    assert last["shirt recall kNN"] == "0.590" and last["seeds"] == "–"
    assert main(["summarize", str(tmp_path / "nothing")]) == 2
    assert "no report.json" in capsys.readouterr().err


def test_summarize_names_labels_methods_by_their_run_dirs(tmp_path):
    _fake_run(tmp_path / "ce-balanced_s0", 0, "ce", 0.90, 0.91)
    _fake_run(tmp_path / "ce-balanced_s1", 1, "ce", 0.92, 0.93)
    _fake_run(tmp_path / "supcon_s0", 0, "triplet", 0.95, 0.96)
    assert main(["summarize", "--names", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "summary.csv")
    assert [(r["method"], r["seeds"]) for r in rows] == [("ce-balanced", "2"), ("supcon", "1")]
    # runs of one method under different names cannot be labelled by name: one line, exit 2
    _fake_run(tmp_path / "other_s2", 2, "ce", 0.91, 0.92)
    assert main(["summarize", "--names", str(tmp_path)]) == 2


def _summarized(s: Path) -> None:
    rows = summarize.summarize([str(s)], log=lambda *a: None)
    assert rows and all(len(r) == len(summarize.HEADER) and all(isinstance(c, str) for c in r) for r in rows)


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value", "ignore:Degrees of freedom")
@pytest.mark.parametrize("name, n_json", [(rundir.REPORT, 7), (rundir.HISTORY, 7), (summarize.PIXELS, 7)])
@pytest.mark.usefixtures("no_hang")
def test_fuzzed_study_files_summarize_or_fail_in_one_line(study, name, n_json):
    """220 mutations each of report.json, history.json and pixels.json (7 in 10 structural, the rest bytes)."""
    path = (study / "run" / name) if name != summarize.PIXELS else study / name
    text = path.read_bytes()

    def attempt(data):
        path.write_bytes(data)
        _summarized(study)

    mutate = _json_mutations(json.loads(text), n_json, text)
    fuzz(220, np.random.default_rng(SEED), mutate, attempt)


@pytest.mark.usefixtures("no_hang")
def test_summarize_labels_a_config_key_only_one_method_has(tmp_path, tiny):
    """A report whose config holds a key the other method's lacks (an older or newer embedfm) is labelled."""
    for name, extra in (("a", {"future_key": 3}), ("b", {})):
        (tmp_path / name).mkdir()
        rep = json.loads((tiny[0] / rundir.REPORT).read_text())
        rep["runs"] = {name: {**rep["runs"]["run"], "config": {**rep["runs"]["run"]["config"], **extra}}}
        (tmp_path / name / rundir.REPORT).write_text(json.dumps(rep))
    rows = summarize.summarize([str(tmp_path)], log=lambda *a: None)
    assert [r[0] for r in rows] == ["ce / linear / 1 ep (future_key=3)", "ce / linear / 1 ep (future_key=None)"]


def fake_study(fake_run, tmp_path, variants: dict[str, dict]) -> tuple:
    """The fake run evaluated once, its report entry copied under each name of `variants` with those config
    values: methods scored on the very same images. Returns (study dir, the evaluated entry)."""
    from embedfm.cli import main

    run, data = fake_run
    out = tmp_path / "study"
    assert main(["eval", str(run), "--out", str(out), "--data-dir", str(data), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    (entry,) = report["runs"].values()
    report["runs"] = {}
    for name, config in variants.items():
        copy = json.loads(json.dumps(entry))
        copy["config"].update(config)
        report["runs"][name] = copy
    (out / "report.json").write_text(json.dumps(report))
    return out, entry


def test_summarize_paired_writes_a_table(fake_run, tmp_path):
    # the same fake run under two method names: CE control and a "triplet" copy of it
    out, entry = fake_study(fake_run, tmp_path, {"ce": {}, "copy": {"loss": "triplet"}})
    assert set(entry["per_image"]) >= {"labels", "softmax", "knn", "ap_at_r"}
    assert len(entry["per_image"]["labels"]) == len(entry["per_image"]["ap_at_r"])
    res = summarize_paired([str(out)], draws=50, log=lambda _t: None)
    (cmp,) = res["comparisons"]
    assert cmp["accuracy"]["difference"] == 0 and cmp["accuracy"]["interval_images"] == [0, 0]
    assert cmp["pairs"] == 1 and cmp["accuracy"]["interval"] is None  # one seed: no seed-level interval
    text = (out / "paired.md").read_text()
    assert "two-level bootstrap" in text and "Given these trained models" in text
    assert json.loads((out / "paired.json").read_text())["draws"] == 50


@pytest.mark.slow  # the fast suite keeps test_summarize_paired_writes_a_table (the same summarize_paired)
def test_two_ce_controls_are_compared_once_random_batches_as_the_control(fake_run, tmp_path):
    # the balanced-batch CE control is found first (as "ce-balanced_s0" sorts before "ce_s0"), the random one last
    variants = {
        "balanced": {"loss": "ce", "sampler": "balanced"},
        "triplet": {"loss": "triplet", "sampler": "auto"},
        "random": {"loss": "ce", "sampler": "auto"},
    }
    out, _entry = fake_study(fake_run, tmp_path, variants)
    res = summarize_paired([str(out)], draws=20, log=lambda _t: None)
    pairs = [(c["method"], c["control"]) for c in res["comparisons"]]
    ce_random, ce_balanced, triplet = (f"{loss} / fastcnn / 1 ep (sampler={s})" for loss, s in
                                       (("ce", "random"), ("ce", "balanced"), ("triplet", "balanced")))  # fmt: skip
    assert pairs == [(ce_balanced, ce_random), (triplet, ce_random), (triplet, ce_balanced)]
