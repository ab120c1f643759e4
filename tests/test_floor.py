"""embedfm floor: shared errors, the cross-fit and kNN leave-one-out votes against hand-computed cases and
brute-force loops, cleanlab finding planted label errors, and the command end to end (hand-made arrays, report.json
files, two small real runs)."""

import json

import numpy as np
import pytest
from conftest import evaluated_dir as _arrays
from conftest import make_fake_dataset

from embedfm.cli import main
from embedfm.floor import crossfit, errors_on_issues, halves, knn_loo_probs, label_issues, shared_errors


def test_shared_errors_by_hand():
    labels = np.array([0, 2, 4, 6, 1, 6])
    preds = np.array(
        [
            [0, 4, 2, 0, 3, 0],  # wrong on images 1, 2, 3, 4 (4 is not a focus class), 5
            [0, 4, 6, 0, 3, 2],  # wrong on 1, 2, 3, 4, 5
            [2, 4, 2, 0, 1, 0],  # wrong on 0, 1, 2, 3, 5
        ]
    )
    s = shared_errors(labels, preds, (0, 2, 4, 6))
    assert s["focus_images"] == 5
    assert s["all_wrong"] == 4  # images 1, 2, 3, 5
    assert s["all_wrong_same_way_indices"] == [1, 3]  # 2 and 5 are wrong in different ways
    # focus images wrong in exactly k runs: k=1: image 0; k=3: images 1, 2, 3, 5
    assert s["wrong_in_k_runs"] == [0, 1, 0, 4]


def test_errors_on_suspected_issues_by_hand():
    labels = np.array([0, 2, 4, 6, 6, 1, 0])
    pred = np.array([2, 2, 6, 1, 0, 3, 6])  # focus-group errors: 0, 2, 4, 6; image 3 leaves the group, 5 is not in it
    suspect = np.array([True, False, False, False, True, False, False])
    e = errors_on_issues(labels, pred, (0, 2, 4, 6), suspect)
    assert e["focus_errors"] == 4 and e["focus_error"] == pytest.approx(4 / 6)
    assert e["errors_on_suspected_issues"] == 2 and e["share_on_suspected_issues"] == pytest.approx(2 / 4)
    # the other focus images: 1, 2, 3, 6, of which 2 and 6 are focus-group errors
    assert e["focus_error_on_the_rest"] == pytest.approx(2 / 4)


def test_knn_loo_votes_match_a_loop():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 60)
    k = 5
    probs = knn_loo_probs(emb, labels, k=k)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for i in range(len(emb)):
        sims = unit @ unit[i]
        sims[i] = -np.inf  # leave the image itself out
        nearest = np.argsort(-sims, kind="stable")[:k]
        votes = np.bincount(labels[nearest], minlength=10)
        np.testing.assert_allclose(probs[i], (votes + 0.1) / (k + 1.0), rtol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    # exact duplicates tie with the image itself: it is still the one left out, and k others vote
    dup = np.repeat(emb[:4], 3, axis=0)  # 12 rows, 4 distinct
    dup_labels = np.array([0, 0, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5])
    p = knn_loo_probs(dup, dup_labels, k=2)
    for i in range(12):  # its 2 copies are its 2 nearest others
        copies = [j for j in range(3 * (i // 3), 3 * (i // 3) + 3) if j != i]
        np.testing.assert_allclose(p[i], (np.bincount(dup_labels[copies], minlength=10) + 0.1) / 3.0)


def test_cleanlab_finds_planted_label_errors_in_the_focus_classes():
    rng = np.random.default_rng(1)
    true = np.repeat(np.arange(10), 50)
    probs = np.full((500, 10), 0.02)
    probs[np.arange(500), true] = 0.82
    labels = true.copy()
    planted = [3, 105, 210, 320]  # true classes 0, 2, 4, 6 given the wrong label
    labels[planted] = [6, 4, 2, 0]
    labels[60] = 9  # a planted error outside the focus classes: not listed
    probs += rng.uniform(0, 0.01, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    probs[320] = np.full(10, 0.005) + 0.945 * np.eye(10)[6]  # the most confident of the four: listed first
    found = label_issues(labels, probs, (0, 2, 4, 6))
    assert sorted(found.tolist()) == planted and found[0] == 320


# A cross-fit to count on paper: 7 test images, 4 runs. Sorted by name, a and c form half A, b and d half B.
CF_LABELS = [0, 2, 4, 6, 6, 1, 4]


CF_PREDS = {
    "a": [2, 2, 4, 0, 6, 1, 8],  # focus-group errors: 0, 3 (6 leaves the group, 5 is not in it)
    "b": [2, 4, 4, 0, 4, 1, 8],  # 0, 1, 3, 4
    "c": [2, 2, 6, 0, 6, 3, 8],  # 0, 2, 3
    "d": [2, 4, 4, 2, 6, 3, 8],  # 0, 1, 3
}


# suspects (a focus-class image every run of the half calls one and the same other class):
#   half A (a, c): 0 (both 2), 3 (both 0), 6 (both 8); 2 is not (4 → 6 in c only); half B (b, d): 0, 1 (both 4), 6
# (run: cross-fitted share on suspects, error on the rest; in-sample share, error on the rest), rest = focus minus
# the suspects: A's runs are scored on B's suspects (rest 2, 3, 4) and, in-sample, on A's (rest 1, 2, 4); B's runs
# the other way round
CF_EXPECTED = {
    "a": (1 / 2, 1 / 3, 2 / 2, 0 / 3),  # errors 0, 3: on B's suspects 0; on the rest 3
    "b": (2 / 4, 2 / 3, 2 / 4, 2 / 3),  # errors 0, 1, 3, 4: on A's 0, 3, rest 1, 4; on B's 0, 1, rest 3, 4
    "c": (1 / 3, 2 / 3, 2 / 3, 1 / 3),  # errors 0, 2, 3: on B's 0, rest 2, 3; on A's 0, 3, rest 2
    "d": (2 / 3, 1 / 3, 2 / 3, 1 / 3),  # errors 0, 1, 3: on A's 0, 3, rest 1; on B's 0, 1, rest 3
}


def _check_crossfit_by_hand(rule):
    assert rule["halves"] == {"A": ["a", "c"], "B": ["b", "d"]}
    assert rule["suspect_indices"] == {"A": [0, 3, 6], "B": [0, 1, 6]}
    assert rule["suspects"] == {"A": 3, "B": 3, "both": 2}
    for name, (share, rest, share_in, rest_in) in CF_EXPECTED.items():
        run = rule["per_run"][name]
        assert run["half"] == ("A" if name in "ac" else "B")
        assert run["cross_fitted"]["share_on_suspected_issues"] == pytest.approx(share)
        assert run["cross_fitted"]["focus_error_on_the_rest"] == pytest.approx(rest)
        assert run["in_sample"]["share_on_suspected_issues"] == pytest.approx(share_in)
        assert run["in_sample"]["focus_error_on_the_rest"] == pytest.approx(rest_in)
        assert run["cross_fitted"]["focus_error"] == pytest.approx(run["cross_fitted"]["focus_errors"] / 6)  # 6 focus


def test_crossfit_by_hand():
    names = ["d", "b", "a", "c"]  # any order: the halves come from the sorted names
    preds = np.array([CF_PREDS[n] for n in names])
    r = crossfit(np.array(CF_LABELS), preds, names, (0, 2, 4, 6), [0.90, 0.95, 0.95, 0.80])
    assert list(r["rules"]) == ["unanimous"]  # no probabilities: no cleanlab
    assert r["best_run"] == {"name": "b", "val_acc": 0.95}  # the first of the tied best, in the order given
    _check_crossfit_by_hand(r["rules"]["unanimous"])
    assert [r["rules"]["unanimous"]["per_run"][n]["cross_fitted"]["focus_errors"] for n in "abcd"] == [2, 4, 3, 3]
    assert halves(["x_s2", "y_s0", "x_s0", "y_s1", "x_s1"]) == ([2, 0, 3], [4, 1])  # x_s0, x_s2, y_s1 | x_s1, y_s0
    from embedfm.errors import EmbedfmError

    with pytest.raises(EmbedfmError, match="names must differ"):
        crossfit(np.array(CF_LABELS), preds[:2], ["a", "a"], (0, 2, 4, 6), [0.9, 0.9])


def test_crossfit_only_reads_the_reports_hard_predictions(tmp_path, capsys):
    digits = lambda xs: "".join(map(str, xs))
    runs = []
    for name, pred in CF_PREDS.items():
        run = tmp_path / name
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"focus_classes": [0, 2, 4, 6]}))
        (run / "history.json").write_text(json.dumps([{"val_acc": 0.5}, {"val_acc": 0.9 if name == "c" else 0.8}]))
        per_image = {"labels": digits(CF_LABELS), "softmax": digits(pred), "ap_at_r": [1.0] * len(pred)}
        (run / "report.json").write_text(json.dumps({"runs": {name: {"per_image": per_image}}}))
        runs.append(str(run))
    out = tmp_path / "out"
    assert main(["floor", "--crossfit-only", *runs, "--out", str(out)]) == 0
    r = json.loads((out / "crossfit.json").read_text())
    assert r["best_run"]["name"] == "c" and list(r["rules"]) == ["unanimous"]
    _check_crossfit_by_hand(r["rules"]["unanimous"])
    md = (out / "crossfit.md").read_text()
    assert "| suspects of both halves | 2 |" in md and "33.3 %" in md  # c's cross-fitted share, 1 of its 3 errors
    # a report without per-image predictions: one line, exit 2
    (tmp_path / "a" / "report.json").write_text(json.dumps({"runs": {"a": {}}}))
    assert main(["floor", "--crossfit-only", *runs, "--out", str(out)]) == 2
    assert "no per-image predictions" in capsys.readouterr().err


def test_crossfit_with_probabilities_runs_cleanlab_on_each_half_alone():
    rng = np.random.default_rng(2)
    true = np.repeat(np.arange(10), 50)
    labels = true.copy()
    labels[[3, 105, 210, 320]] = [6, 4, 2, 0]  # planted label errors in the focus classes
    probs = np.full((4, 500, 10), 0.02)
    probs[:, np.arange(500), true] = 0.82
    probs[[0, 2], 110] = 0.02 + 0.80 * np.eye(10)[4]  # runs 0 and 2 (half A) also doubt image 110 (a Pullover)
    probs += rng.uniform(0, 0.01, probs.shape)
    probs /= probs.sum(2, keepdims=True)
    names = ["a", "b", "c", "d"]
    r = crossfit(labels, probs.argmax(2), names, (0, 2, 4, 6), [0.9] * 4, probs)
    cl = r["rules"]["cleanlab"]
    assert cl["halves"] == {"A": ["a", "c"], "B": ["b", "d"]}
    for half, idx in (("A", [0, 2]), ("B", [1, 3])):
        assert cl["suspect_indices"][half] == sorted(label_issues(labels, probs[idx].mean(0), (0, 2, 4, 6)).tolist())
    assert cl["suspect_indices"]["A"] == [3, 105, 110, 210, 320] and cl["suspect_indices"]["B"] == [3, 105, 210, 320]
    # image 110 is a focus-group error of runs a and c only: in-sample a suspect of theirs, cross-fitted not
    assert cl["per_run"]["a"]["in_sample"]["share_on_suspected_issues"] == pytest.approx(5 / 5)
    assert cl["per_run"]["a"]["cross_fitted"]["share_on_suspected_issues"] == pytest.approx(4 / 5)
    assert cl["per_run"]["b"]["cross_fitted"]["share_on_suspected_issues"] == pytest.approx(4 / 4)


@pytest.mark.slow
def test_floor_end_to_end_on_two_real_runs(real_runs, tmp_path, capsys):
    ce, trip, _ = real_runs
    assert main(["floor", str(ce), str(trip), "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "floor.json").read_text())
    focus = int(np.isin(np.load(ce / "embeddings.npz")["test_labels"], (0, 2, 4, 6)).sum())
    assert r["shared"]["focus_images"] == focus and sum(r["shared"]["wrong_in_k_runs"]) == focus
    assert r["shared"]["all_wrong_same_way"] <= r["shared"]["all_wrong"] <= focus
    assert r["best_run"]["name"] in ("ce", "triplet") and 0 <= r["best_run"]["share_on_suspected_issues"] <= 1
    reported = {
        name: entry["classifiers"]["softmax"]["focus_group_error"]
        for name, entry in json.loads((real_runs[2] / "report.json").read_text())["runs"].items()
    }
    assert r["best_run"]["focus_error"] == pytest.approx(reported[r["best_run"]["name"]])
    assert sorted(r["per_run"]) == ["ce", "triplet"]
    for name, figures in r["per_run"].items():
        assert figures["focus_error"] == pytest.approx(reported[name])
    assert (tmp_path / "label_issues.png").stat().st_size > 10_000
    assert "wrong in every run" in (tmp_path / "floor.md").read_text()
    cross = json.loads((tmp_path / "crossfit.json").read_text())
    assert list(cross["rules"]) == ["cleanlab", "unanimous"] and cross["best_run"]["name"] == r["best_run"]["name"]
    assert cross["rules"]["unanimous"]["halves"] == {"A": ["ce"], "B": ["triplet"]}
    # one run, or a run whose embeddings.npz is gone: one line, exit 2
    assert main(["floor", str(ce), "--out", str(tmp_path)]) == 2
    assert main(["floor", str(ce), str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_run_evaluated_before_the_probabilities_were_saved_is_one_line_naming_them(tmp_path):
    from embedfm.errors import EmbedfmError
    from embedfm.evaluate import save_embeddings
    from embedfm.floor import read_run

    labels = np.arange(10)
    save_embeddings(tmp_path, {"test_labels": labels, "train_labels": labels, "pred_softmax": labels,
                               "train_embeddings": np.eye(10), "test_embeddings": np.eye(10)})  # fmt: skip
    with pytest.raises(EmbedfmError, match=r"lacks test_probs; rerun `embedfm eval .*` \(eval saves the test prob"):
        read_run(tmp_path)


def test_floor_writes_the_cross_fit_beside_the_in_sample_figures(tmp_path):
    """The whole command on hand-made arrays and a fake data dir: floor.json as before, crossfit.json with both
    rules on the halves of the runs' names."""

    from embedfm.floor import floor

    data = make_fake_dataset(tmp_path / "fmnist", n_train=20, n_test=100)
    labels = np.arange(100) % 10
    rng = np.random.default_rng(3)
    runs = []
    for name in ("r2", "r0", "r1"):
        probs = 0.3 * np.eye(10)[labels] + rng.uniform(0, 1, (100, 10))
        probs /= probs.sum(1, keepdims=True)
        _arrays(tmp_path / name, probs, rng.normal(size=(20, 4)), rng.normal(size=(100, 4)), labels, np.arange(20) % 10)
        (tmp_path / name / "history.json").write_text(json.dumps([{"val_acc": 0.9 if name == "r1" else 0.5}]))
        runs.append(str(tmp_path / name))
    r = floor(runs, out=tmp_path, k=3, data_dir=str(data), log=lambda _: None)
    cross = json.loads((tmp_path / "crossfit.json").read_text())
    assert cross["runs"] == ["r2", "r0", "r1"] and cross["best_run"]["name"] == r["best_run"]["name"] == "r1"
    for rule in ("cleanlab", "unanimous"):
        assert cross["rules"][rule]["halves"] == {"A": ["r0", "r2"], "B": ["r1"]}
    # the unanimous rule's half B is run r1 alone: its suspects are r1's own focus-class errors that leave the class
    pred1 = np.load(tmp_path / "r1" / "embeddings.npz")["pred_softmax"]
    own = np.flatnonzero(np.isin(labels, (0, 2, 4, 6)) & (pred1 != labels)).tolist()
    assert cross["rules"]["unanimous"]["suspect_indices"]["B"] == own
    assert cross["rules"]["unanimous"]["per_run"]["r1"]["in_sample"]["focus_error_on_the_rest"] == 0.0
    assert "(in-sample)" in (tmp_path / "floor.md").read_text()
    assert "| figure | cleanlab | unanimous |" in (tmp_path / "crossfit.md").read_text()
