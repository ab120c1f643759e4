import numpy as np
import pytest

from embedfm.errors import EmbedfmError
from embedfm.knn import KNNClassifier, vote


def brute_knn_predict(ref, ref_labels, queries, k, metric):
    """Reference: full distance matrix, stable sort, the same vote rule written as a loop."""
    preds = []
    for q in queries:
        d = -(ref @ q) if metric == "cosine" else ((ref - q) ** 2).sum(1)
        nn = np.argsort(d, kind="stable")[:k]
        labs = ref_labels[nn]
        counts = np.bincount(labs, minlength=10)
        best = counts.max()
        preds.append(next(l for l in labs if counts[l] == best))  # nearest among the tied classes
    return np.array(preds)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_faiss_knn_matches_brute_force(metric, k):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 8)).astype(np.float32)
    q = rng.normal(size=(50, 8)).astype(np.float32)
    if metric == "cosine":
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    labels = rng.integers(0, 10, 300)
    got = KNNClassifier(k=k, metric=metric).fit(ref, labels).predict(q)
    assert np.array_equal(got, brute_knn_predict(ref, labels, q, k, metric))


def test_vote_by_hand():
    # nearest first. row 0: 2 votes for 3 → 3. row 1: tie 1 vs 2 (2 each), 2 is nearer → 2.
    # row 2: all different → the nearest (5).
    nl = np.array([[3, 1, 3, 0], [2, 1, 1, 2], [5, 6, 7, 8]])
    assert vote(nl, 10).tolist() == [3, 2, 5]


def test_k_larger_than_reference():
    with pytest.raises(EmbedfmError, match="larger than the number of reference"):
        KNNClassifier(k=5).fit(np.zeros((3, 4), np.float32), np.zeros(3))
