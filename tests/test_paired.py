"""Paired statistics (embedfm.paired, summarize --paired) and per-query AP@R, against hand-computed values."""

import json

import numpy as np
import pytest

from embedfm.errors import EmbedfmError
from embedfm.metrics import ap_at_r, retrieval_metrics
from embedfm.paired import compare, decode, mcnemar_p, score
from embedfm.summarize import summarize_paired

FOCUS = (0, 2, 4, 6)


def test_ap_at_r_matches_a_loop_and_pytorch_metric_learning():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 6)
    e = rng.normal(size=(24, 5)) + y[:, None]
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    got = ap_at_r(e, y, chunk=7)
    for i in range(len(y)):  # the definition, one query at a time
        d = np.linalg.norm(e - e[i], axis=1)
        d[i] = np.inf
        order = np.argsort(d)
        r = (y == y[i]).sum() - 1
        rel = y[order[:r]] == y[i]
        expected = sum(rel[: j + 1].mean() for j in range(r) if rel[j]) / r
        assert got[i] == pytest.approx(expected)
    assert got.mean() == pytest.approx(retrieval_metrics(e, y)["map_at_r"])


def test_mcnemar_exact_p_by_hand():
    # b=10, c=2: 2 · (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 · 79 / 4096
    assert mcnemar_p(10, 2) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_p(2, 10) == mcnemar_p(10, 2)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0


def record(y: np.ndarray, pred: np.ndarray, ap: np.ndarray, seed: int, loss: str = "ce") -> dict:
    digits = lambda a: "".join(map(str, a.tolist()))
    return {
        "seed": seed,
        "config": {"loss": loss},
        "per_image": {"labels": digits(y), "softmax": digits(pred), "ap_at_r": ap.tolist()},
    }


def test_score_figures_by_hand():
    y = np.array([6, 6, 0, 2, 1, 4])
    pred = np.array([6, 0, 0, 2, 3, 6])  # shirt 1/2 right; focus errors within the group: 6→0, 4→6
    s = score(record(y, pred, np.full(6, 0.5), 0), "softmax", FOCUS, "test")
    figs = s.num.sum(0) / s.den.sum(0)
    assert figs.tolist() == pytest.approx([3 / 6, 2 / 5, 1 / 2, 0.5])


def test_identical_methods_give_an_interval_around_zero_and_a_better_one_helps():
    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 10, n)
    ap = rng.uniform(0, 1, n)

    def noisy(p_wrong, seed):
        r = np.random.default_rng(seed)
        return np.where(r.uniform(size=n) < p_wrong, (y + 1) % 10, y)

    ctrl = [score(record(y, noisy(0.2, s), ap, s), "softmax", FOCUS, "c") for s in range(3)]
    same = [score(record(y, noisy(0.2, 10 + s), ap, s), "softmax", FOCUS, "m") for s in range(3)]
    better = [score(record(y, noisy(0.1, 20 + s), ap, s), "softmax", FOCUS, "m") for s in range(3)]
    res = compare(same, ctrl, draws=400)
    lo, hi = res["accuracy"]["interval"]
    assert lo < 0 < hi and not res["accuracy"]["helps"]
    res = compare(better, ctrl, draws=400)
    assert res["accuracy"]["helps"] and res["accuracy"]["interval"][0] > 0.05
    assert len(res["accuracy"]["per_seed"]) == 3 and all(d > 0.05 for d in res["accuracy"]["per_seed"])
    assert res["map_at_r"]["difference"] == pytest.approx(0) and not res["map_at_r"]["helps"]
    assert all(t["b"] > t["c"] and t["p"] < 1e-6 for t in res["mcnemar_focus"])


def test_records_that_are_not_digit_strings_are_one_line():
    with pytest.raises(EmbedfmError, match="not a string of class digits"):
        decode("12a", "run 'x'")
    with pytest.raises(EmbedfmError, match="no per-image predictions"):
        score({"config": {}}, "softmax", FOCUS, "run 'x'")
    bad = record(np.array([1, 2]), np.array([1, 2, 3]), np.zeros(2), 0)
    with pytest.raises(EmbedfmError, match="different lengths"):
        score(bad, "softmax", FOCUS, "run 'x'")


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
    assert cmp["accuracy"]["difference"] == 0 and cmp["accuracy"]["interval"] == [0, 0]
    assert "McNemar" in (out / "paired.md").read_text()
    assert json.loads((out / "paired.json").read_text())["draws"] == 50


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
