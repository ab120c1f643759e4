"""The unseen-class test: how a run trained without some classes (`--holdout-classes`) handles them.

A softmax head cannot predict a class it was never trained on; an embedding plus a few labelled examples can.
For each held-out class c, on the test split (which keeps every class), `eval` measures:

- retrieval: MAP@R and R-precision of c's test images as queries among all other test images (R = the number of
  other test images of c), the way the metric-learning benchmarks evaluate unseen classes;
- few-shot kNN: n = 1, 5, 20 labelled images of c (drawn from the train split's images of c, none of which the
  run trained on) are added to the kNN reference set (the run's train split), and the test set is classified
  by the same k-nearest-neighbour vote eval uses; recall of c and overall accuracy, mean and std over `draws`
  draws. The vote over k neighbours is the point: with n < k a class needs its few examples to be the nearest.

The train split's neighbours of every test image are searched once; each draw only scores the test images against
its n added references and merges them into the k nearest (the same result as refitting the index with them).
"""

from __future__ import annotations

import numpy as np

from embedfm.knn import KNNClassifier, vote
from embedfm.metrics import retrieval_per_query

SHOTS = (1, 5, 20)
DRAWS = 20


def _scores(queries: np.ndarray, refs: np.ndarray, metric: str) -> np.ndarray:
    """(Q, n) what the faiss index would return for these pairs: inner products (cosine: the embeddings are unit
    norm) or squared L2 distances."""
    if metric == "cosine":
        return queries @ refs.T
    return (queries**2).sum(1)[:, None] - 2 * queries @ refs.T + (refs**2).sum(1)[None, :]


def few_shot(
    knn: KNNClassifier,
    test_emb: np.ndarray,
    y_test: np.ndarray,
    pool: np.ndarray,
    cls: int,
    shots=SHOTS,
    draws: int = DRAWS,
    seed: int = 0,
) -> dict:
    """{n: {recall, recall_std, accuracy, accuracy_std}} for n examples of `cls` (rows of `pool`) added to `knn`."""
    k = knn.k
    base_s, base_i = knn.kneighbors(test_emb)  # (Q, k) nearest first
    base_y = knn.labels[base_i]  # (Q, k)
    higher_better = knn.metric == "cosine"
    rng = np.random.default_rng(seed)
    out = {}
    for n in shots:
        recalls, accs = [], []
        for _ in range(draws):
            added = pool[rng.choice(len(pool), size=min(n, len(pool)), replace=False)]  # (n, D)
            s = np.concatenate([base_s, _scores(test_emb, added, knn.metric)], axis=1)  # (Q, k + n)
            y = np.concatenate([base_y, np.full((len(test_emb), len(added)), cls)], axis=1)
            order = np.argsort(-s if higher_better else s, axis=1, kind="stable")[:, :k]  # nearest first
            pred = vote(np.take_along_axis(y, order, axis=1), knn.num_classes, knn.ties)
            recalls.append(float((pred[y_test == cls] == cls).mean()))
            accs.append(float((pred == y_test).mean()))
        out[str(n)] = {
            "recall": float(np.mean(recalls)),
            "recall_std": float(np.std(recalls)),
            "accuracy": float(np.mean(accs)),
            "accuracy_std": float(np.std(accs)),
        }
    return out


def unseen_figures(
    knn: KNNClassifier, test_emb: np.ndarray, y_test: np.ndarray, pools: dict[int, np.ndarray], seed: int = 0
) -> dict:
    """{class id: {map_at_r, r_precision, few_shot}} for each held-out class (`pools`: its unseen train images'
    embeddings)."""
    ap, rp = retrieval_per_query(test_emb, y_test)
    out = {}
    for cls, pool in pools.items():
        q = y_test == cls
        out[str(cls)] = {
            "test_images": int(q.sum()),
            "map_at_r": float(ap[q].mean()),
            "r_precision": float(rp[q].mean()),
            "few_shot": few_shot(knn, test_emb, y_test, pool, cls, seed=seed),
        }
    return out
