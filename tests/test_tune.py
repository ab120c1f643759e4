"""embedfm tune: a study on tiny fake data resumes in its SQLite file, and its best config trains."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from conftest import make_fake_dataset
from shadow import IGNORE_META_COPY

from embedfm.cli import main
from embedfm.config import TrainConfig
from embedfm.errors import EmbedfmError
from embedfm.tune import PARAMS, SPACE, TuneConfig, defaults_point, resolve_base, searched

pytestmark = pytest.mark.slow  # trains, or starts embedfm processes (seconds each)

TINY = ["--epochs", "2", "--limit", "150", "--val-size", "50", "--batch-size", "32"]


def test_space_holds_the_defaults_and_the_triplet_space_extends_ce():
    assert set(PARAMS["ce"]) < set(PARAMS["triplet"]) == set(SPACE)
    for name, value in defaults_point("triplet").items():
        kind, *args = SPACE[name]
        assert value in args[0] if kind == "choice" else args[0] <= value <= args[1], name
    TrainConfig(loss="triplet", **defaults_point("triplet"))  # a valid config


def test_ce_over_balanced_batches_is_its_own_method_with_the_samplers_knobs():
    ce = TuneConfig(base=resolve_base(None, {"loss": "ce"}))
    balanced = TuneConfig(base=resolve_base(None, {"loss": "ce", "sampler": "balanced"}))
    assert (ce.method, balanced.method) == ("ce", "ce-balanced")
    assert searched(ce.base) == PARAMS["ce"]
    assert searched(balanced.base) == (*PARAMS["ce"], "m_per_class", "focus_oversample")
    assert balanced.out == "artifacts/tune/ce-balanced" and balanced.name == "ce-balanced-fastcnn-val_acc"
    TrainConfig(loss="ce", sampler="balanced", **defaults_point("ce-balanced"))  # the defaults are a valid point


def test_tune_resumes_the_same_study_and_best_config_trains(tmp_path, capsys):
    data = make_fake_dataset(tmp_path / "data", n_train=200)
    study_dir = tmp_path / "study"
    args = ["tune", "--loss", "ce", "--data-dir", str(data), "--out", str(study_dir), *TINY]
    assert main([*args, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "trial 0 [1/2]" in out and "trial 1 [2/2]" in out and "best trial #" in out

    # rerunning the same command with a larger target adds trials to the same SQLite study
    assert main([*args, "--trials", "3"]) == 0
    study = optuna.load_study(study_name="ce-fastcnn-val_acc", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert len(study.trials) == 3 and study.trials[0].params == defaults_point("ce")
    rows = list(csv.DictReader((study_dir / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2"] and rows[0]["defaults"] == "True"
    for r in rows:  # every trial is an ordinary run dir
        assert (Path(r["run_dir"]) / "checkpoint.safetensors").is_file()
    assert (study_dir / "trials.md").read_text().count("\n| ") == 4  # header + 3 trials
    assert (study_dir / "history.png").is_file()

    # the target already reached: nothing is trained, the outputs are rewritten
    assert main([*args, "--trials", "3"]) == 0
    assert "already holds 3 finished trials" in capsys.readouterr().out

    best = json.loads((study_dir / "best_config.json").read_text())
    assert best["loss"] == "ce" and set(PARAMS["ce"]) <= set(best) and "epochs" not in best
    run = tmp_path / "best_run"
    assert (
        main(
            [
                "train",
                "--config",
                str(study_dir / "best_config.json"),
                "--data-dir",
                str(data),
                "--out",
                str(run),
                "--epochs",
                "1",
                "--val-size",
                "50",
                "--batch-size",
                "32",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((run / "config.json").read_text())["lr"] == pytest.approx(best["lr"])


def test_tune_triplet_trial_and_bad_flags(tmp_path, capsys):
    data = make_fake_dataset(tmp_path / "data", n_train=700)
    study_dir = tmp_path / "study"
    assert (
        main(
            [
                "tune",
                "--loss",
                "triplet",
                "--trials",
                "1",
                "--data-dir",
                str(data),
                "--out",
                str(study_dir),
                "--epochs",
                "1",
                "--limit",
                "650",
                "--val-size",
                "50",
                "--batch-size",
                "128",
                "--pruner",
                "none",
            ]
        )
        == 0
    )
    trial = json.loads((study_dir / "summary.json").read_text())["best"]
    assert trial["number"] == 0 and set(trial["params"]) == set(SPACE)
    assert json.loads((study_dir / "trials" / "0000" / "history.json").read_text())[0]["triplets"] > 0

    assert main(["tune", "--trials", "0", "--data-dir", str(data), "--out", str(tmp_path / "x")]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err


@pytest.mark.device
@pytest.mark.filterwarnings(IGNORE_META_COPY)
def test_tune_refuses_torchrun_in_one_line(tmp_path, monkeypatch):
    """Defect 5: under torchrun only rank 0 pruned a trial and the others hung in a collective; tune refuses."""
    from embedfm.tune import TuneConfig, tune

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(EmbedfmError, match=r"not run under torchrun \(WORLD_SIZE=2\)") as e:
        tune(TuneConfig(out=str(tmp_path / "study")), log=lambda *a: None)
    assert "\n" not in str(e.value) and not (tmp_path / "study").exists()
