"""FAISS kNN classifier over embeddings.

Exact search by default (`IndexFlatIP` on unit-norm embeddings = cosine similarity, `IndexFlatL2`
for the "l2" metric); any faiss factory string can be given instead. When the faiss build has GPU
support and a GPU is visible, the index moves there automatically.

Voting: majority of the k nearest labels. A tie goes, by default, to the tied class whose nearest
member ranks highest (so k=1 and "no tie" behave as expected, and the result is deterministic);
`ties="smallest"` gives it to the smallest class id instead, scikit-learn's rule, for like-for-like
comparisons. The smallest-id rule always favours T-shirt/top over Shirt, whatever the distances say;
`scripts/bench --only knn` measures how often each rule is right on the tied queries.
"""

from __future__ import annotations

import faiss
import numpy as np

from embedfm.errors import EmbedfmError

METRICS = ("cosine", "l2")
TIE_RULES = ("nearest", "smallest")


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(reference: np.ndarray, metric: str = "cosine", factory: str = "Flat", use_gpu: bool | None = None):
    """A faiss index holding `reference` (N, D) float32. Cosine expects unit-norm rows."""
    if metric not in METRICS:
        raise EmbedfmError(f"unknown kNN metric {metric!r}; choose from {', '.join(METRICS)}")
    x = np.ascontiguousarray(reference, dtype=np.float32)
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    index = faiss.index_factory(x.shape[1], factory, faiss_metric)
    if use_gpu if use_gpu is not None else gpu_available():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    return index


def _check_tie_rule(ties: str) -> None:
    if ties not in TIE_RULES:
        raise EmbedfmError(f"unknown kNN tie rule {ties!r}; choose from {', '.join(TIE_RULES)}")


def vote(neighbor_labels: np.ndarray, num_classes: int, ties: str = "nearest") -> np.ndarray:
    """Majority vote over (Q, k) labels ordered nearest first; ties → nearest tied class, or the
    smallest tied class id with ties="smallest"."""
    _check_tie_rule(ties)
    Q, k = neighbor_labels.shape
    counts = np.zeros((Q, num_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(Q), k), neighbor_labels.ravel()), 1)
    if ties == "smallest":
        return counts.argmax(axis=1)  # argmax returns the first (smallest) of equal maxima
    # first rank at which each class appears (k if absent): the tie-breaker
    first = np.full((Q, num_classes), k, dtype=np.int64)
    ranks = np.broadcast_to(np.arange(k), (Q, k))
    np.minimum.at(first, (np.repeat(np.arange(Q), k), neighbor_labels.ravel()), ranks.ravel())
    score = counts * (k + 1) - first  # more votes wins; among equal votes, smaller first rank wins
    return score.argmax(axis=1)


class KNNClassifier:
    """fit(reference, labels) then predict(queries) — a FAISS index plus a vote."""

    def __init__(
        self, k: int = 10, metric: str = "cosine", factory: str = "Flat", num_classes: int = 10, ties: str = "nearest"
    ):
        if k < 1:
            raise EmbedfmError(f"k must be at least 1, got {k}")
        _check_tie_rule(ties)
        self.k, self.metric, self.factory, self.num_classes, self.ties = k, metric, factory, num_classes, ties

    def fit(self, reference: np.ndarray, labels: np.ndarray) -> KNNClassifier:
        if self.k > len(reference):
            raise EmbedfmError(f"k={self.k} is larger than the number of reference embeddings ({len(reference)})")
        self.index = build_index(reference, self.metric, self.factory)
        self.labels = np.asarray(labels, dtype=np.int64)
        return self

    def kneighbors(self, queries: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), indices (Q, k)), nearest first; scores are similarities for cosine.
        One faiss call for all queries: splitting them into 1024-row calls measured 2.6× slower
        (`scripts/bench --only knn`, 2026-11-24), so faiss's own blocking is left to do its job."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(q, k or self.k)

    def predict(self, queries: np.ndarray) -> np.ndarray:
        _, idx = self.kneighbors(queries)
        return vote(self.labels[idx], self.num_classes, self.ties)
