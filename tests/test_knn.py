from __future__ import annotations

import numpy as np
import pytest
from shadow import IGNORE_META_COPY

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


class FakeGpuIndex:
    """faiss's GPU index as far as the kNN uses it: remembers its GPU, refuses k above GPU_MAX_K."""

    def __init__(self, device: int, index):
        self.device, self.index = device, index

    def search(self, q, k):
        if k > 2048:
            raise RuntimeError("Error: 'k > 0 && k <= GPU_MAX_SELECTION_K' failed")
        return self.index.search(q, k)


@pytest.mark.device
@pytest.mark.filterwarnings(IGNORE_META_COPY)
def test_knn_goes_to_this_process_gpu_and_large_k_searches_on_the_cpu(monkeypatch):
    """Defect 6: the index went to GPU 0 whatever the process's GPU, and k > 2048 failed on the GPU. faiss's GPU
    API is faked here (this faiss may be a CPU build)."""
    import faiss

    from embedfm import knn

    made = []
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, d, index: made.append(d) or FakeGpuIndex(d, index),
                        raising=False)  # fmt: skip
    monkeypatch.setattr(knn, "_gpu_resources", {})
    monkeypatch.setenv("LOCAL_RANK", "1")
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3000, 8)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    labels, queries = rng.integers(0, 10, 3000), ref[:20] + 0.01

    clf = knn.KNNClassifier(k=10).fit(ref, labels)
    assert made == [1] and clf.index.device == 1  # torchrun's LOCAL_RANK 1: GPU 1
    cpu_clf = knn.KNNClassifier(k=10)
    cpu_clf.index = cpu_clf.cpu_index = knn.build_index(ref, use_gpu=False)
    cpu_clf.labels = labels
    np.testing.assert_array_equal(clf.kneighbors(queries)[1], cpu_clf.kneighbors(queries)[1])
    np.testing.assert_array_equal(clf.kneighbors(queries, k=2500)[1], cpu_clf.kneighbors(queries, k=2500)[1])

    monkeypatch.setenv("LOCAL_RANK", "5")  # a GPU faiss does not see: the CPU index
    assert not isinstance(knn.build_index(ref), FakeGpuIndex)


@pytest.mark.device
@pytest.mark.filterwarnings(IGNORE_META_COPY)
def test_gpu_status_never_raises(monkeypatch):
    import faiss

    from embedfm import knn

    ok, why = knn.gpu_status()
    assert isinstance(ok, bool) and why
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)

    def broken():
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(faiss, "get_num_gpus", broken)
    ok, why = knn.gpu_status()
    assert not ok and "insufficient" in why and not knn.gpu_available()
