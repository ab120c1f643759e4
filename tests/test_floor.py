"""embedfm floor: shared errors and kNN leave-one-out votes against hand-computed cases and brute-force loops,
cleanlab finding planted label errors, and the command end to end on two small real runs."""

import json

import numpy as np
import pytest

from embedfm.cli import main
from embedfm.floor import errors_on_issues, knn_loo_probs, label_issues, shared_errors


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
    # one run, or a run whose embeddings.npz is gone: one line, exit 2
    assert main(["floor", str(ce), "--out", str(tmp_path)]) == 2
    assert main(["floor", str(ce), str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _arrays(run, probs, train_emb, test_emb, labels, train_labels):
    from embedfm.evaluate import save_embeddings

    run.mkdir()
    (run / "config.json").write_text(json.dumps({"focus_classes": [0, 2, 4, 6]}))
    save_embeddings(
        run,
        {"test_probs": probs, "train_embeddings": train_emb, "test_embeddings": test_emb, "test_labels": labels,
         "train_labels": train_labels, "pred_softmax": probs.argmax(1)},
    )  # fmt: skip


def test_ensemble_averages_probabilities_and_concatenates_unit_embeddings(tmp_path):
    from embedfm.ensemble import ensemble

    labels = np.array([0, 2, 4, 6, 1])
    train_labels = np.array([0, 2, 4, 6, 1])
    eye = np.eye(10)
    # run a predicts [0, 2, 4, 0, 3] (3 of 5 right), run b [2, 4, 4, 6, 2] (2 of 5). Averaged, a's confident 0 beats
    # b's hesitant 2 on image 0, b's confident 6 beats a's hesitant 0 on image 3, and image 4 stays wrong (3 or 2)
    pa = 0.04 + np.array([0.9, 0.1, 0.3, 0.1, 0.6])[:, None] * eye[[0, 2, 4, 0, 3]]
    pb = 0.04 + np.array([0.2, 0.6, 0.3, 0.9, 0.5])[:, None] * eye[[2, 4, 4, 6, 2]]
    rng = np.random.default_rng(0)
    train_a, test_a = 7.0 * rng.normal(size=(5, 4)), rng.normal(size=(5, 4))  # scale must not matter
    train_b, test_b = rng.normal(size=(5, 3)), 0.1 * rng.normal(size=(5, 3))
    _arrays(tmp_path / "a", pa, train_a, test_a, labels, train_labels)
    _arrays(tmp_path / "b", pb, train_b, test_b, labels, train_labels)
    r = ensemble([str(tmp_path / "a"), str(tmp_path / "b")], out=tmp_path, k=1, log=lambda _: None)
    # averaged: [0, 4, 4, 6, 3]: right on images 0, 2, 3; a different set than either run's
    assert (pa + pb).argmax(1).tolist() == [0, 4, 4, 6, 3]
    conf = np.array(r["softmax_average"]["confusion"])
    assert conf[0, 0] == 1 and conf[2, 4] == 1 and conf[4, 4] == 1 and conf[6, 6] == 1 and conf[1, 3] == 1
    assert r["single_runs_mean"]["accuracy"] == pytest.approx((3 / 5 + 2 / 5) / 2)
    # brute force: cosine 1-NN over [unit(a), unit(b)] side by side
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    cat = lambda x, y: np.hstack([norm(x), norm(y)])
    train, test = cat(train_a, train_b), cat(test_a, test_b)
    expected = train_labels[np.argmax(test @ train.T, axis=1)]
    assert r["knn_concatenated"]["accuracy"] == pytest.approx((expected == labels).mean())
    assert "Ensemble of 2 runs" in (tmp_path / "ensemble.md").read_text()
    assert main(["ensemble", str(tmp_path / "a")]) == 2  # one run: one line, exit 2


def test_a_run_evaluated_before_the_probabilities_were_saved_is_one_line_naming_them(tmp_path):
    from embedfm.errors import EmbedfmError
    from embedfm.evaluate import save_embeddings
    from embedfm.floor import read_run

    labels = np.arange(10)
    save_embeddings(tmp_path, {"test_labels": labels, "train_labels": labels, "pred_softmax": labels,
                               "train_embeddings": np.eye(10), "test_embeddings": np.eye(10)})  # fmt: skip
    with pytest.raises(EmbedfmError, match=r"lacks test_probs; rerun `embedfm eval .*` \(eval saves the test prob"):
        read_run(tmp_path)
