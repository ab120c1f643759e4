"""embedfm.sections: the results pages' generated sections, on hand-made results with hand-computed figures, and
every committed fragment as its study's publish writes it."""

import json
from pathlib import Path

import pytest
from conftest import ROOT

from embedfm import sections as X
from embedfm import study as S


def test_helpers_format_figures_as_the_pages_show_them():
    assert X.mean_std([0.9, 0.92], 100) == "91.00 ± 1.41" and X.mean_std([5.0]) == "5.00 ± 0.00"
    assert X.mean_std([None]) == "–" and X.pct(None) == "–" and X.pct(0.12345) == "12.35"
    assert X.span([0.2, 0.2]) == "0.20000" and X.span([0.3, 0.1], 2) == "0.10 – 0.30"
    assert [X.setting(v) for v in (True, (1, 2), 0.5, None, 3)] == ["true", "1,2", "0.5", "unset", "3"]
    assert X.link(Path("artifacts/reference/a/b.json"), Path("docs/results/x.md"), anchor="p") == (
        "[b.json](../../artifacts/reference/a/b.json#p)"
    )
    assert X.describe_method("triplet / resnet20 / 30 ep (epochs=30)") == "`resnet20`, CE + triplet, 30 epochs"
    assert X.ticks([]) == "**none**" and X.ticks(["a", "b"]) == "`a`, `b`"
    with pytest.raises(ValueError, match="expected one summary row"):
        X.find_row([{"method": "ce / x"}, {"method": "ce / y"}], "ce")


def fig(d, lo, hi, helps=False, hurts=False):
    return {"difference": d, "interval": [lo, hi], "helps": helps, "hurts": hurts}


def test_paired_deltas_and_marks_in_words():
    c = {"method": "triplet", "control": "ce", "accuracy": fig(0.001, -0.002, 0.004),
         "focus_group_error": fig(-0.01, -0.02, -0.005, helps=True), "shirt_recall": fig(0.0, -0.01, 0.01),
         "map_at_r": fig(-0.004, -0.006, -0.002, hurts=True)}  # fmt: skip
    assert X.paired_delta(c, "focus_group_error") == "-1.00 [-2.00, -0.50] ✓"
    assert X.paired_delta(c, "map_at_r", 1, 3) == "-0.004 [-0.006, -0.002] ✗"
    assert X.paired_marks([c]) == "`triplet` against `ce`: focus-group error ✓, MAP@R ✗"
    quiet = {**c, "focus_group_error": fig(0, 0, 0), "map_at_r": fig(0, 0, 0)}
    assert X.paired_marks([quiet]) == "none: no difference in the table earns a ✓ or ✗"


def test_time_to_a_target_over_the_seeds_that_reached_it():
    seeds = [{"time_to": {"0.92": {"train_s": 100, "epoch": 1.0}}},
             {"time_to": {"0.92": {"train_s": 50, "epoch": 0.5}}},
             {"time_to": {}}]  # fmt: skip
    assert X.reached(seeds, "0.92") == "75 s (0.75 ep), 2/3 seeds"
    assert X.reached(seeds[:2], "0.92") == "75 s (0.75 ep)" and X.reached(seeds, "0.93") == "never"
    assert X.cpu_line({"cpu_model": "EPYC", "cores": 2, "speed_flags": ["avx2"]}) == "EPYC, 2 cores, avx2"


def test_the_curve_section_adds_up_the_shown_means(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spe = lambda t, runs, mean: {t: {"runs": runs, "mean": mean}}
    curve = {"lengths": {"15": {"runs": 1, "test_acc_mean": 0.94004, "test_acc_std": None,
                                "seconds_per_epoch": spe("1", 1, 260.4)},
                         "30": {"runs": 2, "test_acc_mean": 0.94556, "test_acc_std": 0.0008,
                                "seconds_per_epoch": {**spe("1", 1, 252), **spe("default", 1, 128)}}},
             "gains": [{"from": 15, "to": 30, "gain": 0.00552}]}  # fmt: skip
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "curve.json").write_text(json.dumps(curve))
    (text,) = X.best_curve(S.Study(name="x", methods={}, out="x"), tmp_path / "x").values()
    assert "| 15 | 1 | 94.00 | – | 260 (1 run, 1 thread) |" in text
    # 94.56 − 94.00 as shown, not the unrounded 0.552 points
    assert (
        "| 30 | 2 | 94.56 ± 0.08 | +0.56 (from 15) | 252 (1 run, 1 thread); 128 (1 run, torch's default threads) |"
        in text
    )
    assert "With one run at 15 epochs" in text and "[curve.json](curve.json), plot [curve.png](curve.png)" in text


def test_speed_targets_met_or_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seed = lambda acc, s, vals: {
        "test_acc": acc,
        "train_s": s,
        "points": [{"val_acc": v, "train_s": t} for t, v in vals],
    }
    entries = [{"name": "fast", "seeds": {"0": seed(0.945, 500, [(400, 0.94)]), "1": seed(0.941, 610, [(500, 0.93)])}},
               {"name": "fast_short", "seeds": {"0": seed(0.935, 200, [(100, 0.92), (200, 0.93)])}},
               {"name": "fast_short_triplet", "seeds": {"0": seed(0.936, 230, [(230, 0.931)])}}]  # fmt: skip
    (tmp_path / "artifacts" / "reference").mkdir(parents=True)
    (tmp_path / "artifacts" / "reference" / "speedrun.json").write_text(json.dumps({"entries": entries}))
    (text,) = X.speedrun_targets(S.Study(name="s", methods={}, out="artifacts/reference/speedrun"), tmp_path).values()
    assert "| ≥ 94.0 % test in ≤ 10 min (`fast`, 2 seeds) | 94.30 ± 0.28 % test; slowest seed 610 s | not met |" in text
    assert "(`fast_short`, 1 seeds) | 93.50 ± 0.00 % test; slowest seed 200 s | **met** |" in text
    assert (
        "(93.00 %) within 1.2× CE's time (4-minute budget, 1 seed) | CE 200 s; CE + triplet 230 s = ×1.15 | **met** |"
        in text
    )
    assert "| fastest time to 94 % validation accuracy | 400 s (`fast`) | – |" in text


@pytest.mark.parametrize("name", ["best", "losses", "speedrun"])
def test_every_committed_section_is_what_publish_writes(name, monkeypatch, tmp_path):
    """The fragments from the committed results (the study's own fresh results are the committed ones here)."""
    monkeypatch.chdir(ROOT)
    study = S.load(ROOT / "studies" / f"{name}.py")
    assert study.sections
    for section in study.sections:
        for f, text in getattr(X, section)(study, Path(study.out)).items():
            assert (Path(study.out) / f).read_text() == text + "\n", f
