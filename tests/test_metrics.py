import numpy as np
import pytest

from embedfm.metrics import ap_at_r, classifier_metrics, focus_group_error, retrieval_metrics


def test_focus_group_error_by_hand():
    focus = (0, 2, 4, 6)
    y_true = np.array([0, 0, 2, 4, 6, 6, 1, 3])
    # 0→2 is within-group (error); 0→0 fine; 2→3 leaves the group (not a within-group error);
    # 4→6 within; 6→6 fine; 6→0 within; non-focus rows don't count.
    y_pred = np.array([2, 0, 3, 6, 6, 0, 0, 4])
    assert focus_group_error(y_true, y_pred, focus) == pytest.approx(3 / 6)


def test_classifier_metrics_by_hand():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = classifier_metrics(y_true, y_pred, focus=(0, 2), num_classes=3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["0"] == pytest.approx({"precision": 2 / 2, "recall": 2 / 3, "f1": 0.8})
    assert m["per_class"]["1"]["precision"] == pytest.approx(1 / 2)
    assert m["per_class"]["2"]["precision"] == pytest.approx(1 / 2)
    assert m["focus_group_error"] == 0.0  # no 0↔2 confusion


def test_retrieval_metrics_by_hand():
    # points on the unit circle at these angles (cosine distance is monotone in the angle gap):
    # class a at 0, 0.1, 0.95; class b at 1.0, 1.2
    theta = np.array([0.0, 0.1, 0.95, 1.0, 1.2])
    emb = np.stack([np.cos(theta), np.sin(theta)], 1).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    r = retrieval_metrics(emb, labels)
    # nearest other item: a0→a1 ✓, a1→a0 ✓, a2→b0 ✗, b0→a2 ✗, b1→b0 ✓
    assert r["precision_at_1"] == pytest.approx(3 / 5)
    # R = 2 for a's, 1 for b's. a0: [a1 a2] both hits → 1; a1: [a0 a2] → 1; a2: [b0 b1] → 0;
    # b0: [a2] → 0; b1: [b0] → 1.  Both R-precision and MAP@R average to 3/5.
    assert r["r_precision"] == pytest.approx(3 / 5)
    assert r["map_at_r"] == pytest.approx(3 / 5)


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
