import numpy as np
import pytest

from embedfm.errors import EmbedfmError
from embedfm.knn import KNNClassifier, vote


def brute_knn_predict(ref, ref_labels, queries, k, metric, ties="nearest"):
    """Reference: full distance matrix, stable sort, the same vote rule written as a loop."""
    preds = []
    for q in queries:
        d = -(ref @ q) if metric == "cosine" else ((ref - q) ** 2).sum(1)
        nn = np.argsort(d, kind="stable")[:k]
        labs = ref_labels[nn]
        counts = np.bincount(labs, minlength=10)
        best = counts.max()
        tied = [c for c in labs if counts[c] == best]  # nearest first
        preds.append(tied[0] if ties == "nearest" else min(tied))
    return np.array(preds)


@pytest.mark.parametrize("ties", ["nearest", "smallest"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_faiss_knn_matches_brute_force(metric, k, ties):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 8)).astype(np.float32)
    q = rng.normal(size=(50, 8)).astype(np.float32)
    if metric == "cosine":
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    labels = rng.integers(0, 10, 300)
    got = KNNClassifier(k=k, metric=metric, ties=ties).fit(ref, labels).predict(q)
    assert np.array_equal(got, brute_knn_predict(ref, labels, q, k, metric, ties))


def test_vote_by_hand():
    # nearest first. row 0: 2 votes for 3 → 3. row 1: tie 1 vs 2 (2 each), 2 is nearer → 2.
    # row 2: all different → the nearest (5).
    nl = np.array([[3, 1, 3, 0], [2, 1, 1, 2], [5, 6, 7, 8]])
    assert vote(nl, 10).tolist() == [3, 2, 5]
    # scikit-learn's rule: row 1's tie → class 1 (smaller id); row 2's four-way tie → 5
    assert vote(nl, 10, ties="smallest").tolist() == [3, 1, 5]


def test_smallest_tie_rule_matches_scikit_learn():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(400, 6)).astype(np.float32)
    q = rng.normal(size=(200, 6)).astype(np.float32)
    labels = rng.integers(0, 10, 400)
    ours = KNNClassifier(k=6, metric="l2", ties="smallest").fit(ref, labels).predict(q)
    theirs = KNeighborsClassifier(6, algorithm="brute").fit(ref, labels).predict(q)
    assert np.array_equal(ours, theirs)


def test_unknown_tie_rule():
    with pytest.raises(EmbedfmError, match="unknown kNN tie rule"):
        KNNClassifier(ties="random")


def test_k_larger_than_reference():
    with pytest.raises(EmbedfmError, match="larger than the number of reference"):
        KNNClassifier(k=5).fit(np.zeros((3, 4), np.float32), np.zeros(3))
