"""Metrics as pure functions on label / embedding arrays (pinned by hand-computed tests).

Shared by training (per-epoch validation figures) and evaluation (test-set report).
"""

from __future__ import annotations

import numpy as np
import torch


def focus_group_error(y_true: np.ndarray, y_pred: np.ndarray, focus: tuple[int, ...]) -> float:
    """Among items whose true label is in `focus`, the fraction predicted as a different focus class."""
    in_focus = np.isin(y_true, focus)
    if not in_focus.any():
        return 0.0
    wrong_within = np.isin(y_pred, focus) & (y_pred != y_true)
    return float((wrong_within & in_focus).sum() / in_focus.sum())


def classifier_metrics(y_true: np.ndarray, y_pred: np.ndarray, focus: tuple[int, ...], num_classes: int = 10) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(num_classes))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "focus_group_error": focus_group_error(y_true, y_pred, focus),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {str(c): {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c])} for c in labels},
    }


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray) -> dict:
    """P@1, R-precision, MAP@R of each test item against the other test items (PML)."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    acc = calc.get_accuracy(torch.from_numpy(embeddings), torch.from_numpy(labels))
    return {
        "precision_at_1": float(acc["precision_at_1"]),
        "r_precision": float(acc["r_precision"]),
        "map_at_r": float(acc["mean_average_precision_at_r"]),
    }


def ap_at_r(embeddings: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per-query AP@R, (N,) float64 (see `retrieval_per_query`)."""
    return retrieval_per_query(embeddings, labels, chunk)[0]


def retrieval_per_query(embeddings: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-query (AP@R, R-precision) (Musgrave et al. 2020), each (N,) float64: each item queries all the others by
    Euclidean distance (on unit-norm embeddings the cosine order), R = the number of other items of its class,
    AP@R = (1/R) Σ_{i ≤ R} P@i · rel(i) and R-precision = P@R. Their means are `retrieval_metrics`' MAP@R and
    R-precision; kept per image so that runs can be compared with a paired bootstrap over test images, and a
    held-out class's queries can be scored alone. Queries go in chunks of `chunk` (memory: chunk × N floats)."""
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))  # (N, D)
    y = torch.from_numpy(np.asarray(labels).astype(np.int64))  # (N,)
    counts = torch.bincount(y)
    r = counts[y] - 1  # (N,) relevant items per query
    k = int(r.max())
    out, rprec = np.zeros(len(y)), np.zeros(len(y))
    sq = (x * x).sum(1)  # (N,)
    for lo in range(0, len(y), chunk):
        q = slice(lo, min(lo + chunk, len(y)))
        d2 = sq[q, None] - 2 * x[q] @ x.T + sq[None, :]  # (c, N) squared distances
        d2[torch.arange(d2.shape[0]), torch.arange(q.start, q.stop)] = float("inf")  # not itself
        idx = d2.topk(k, dim=1, largest=False).indices  # (c, k), nearest first
        rel = (y[idx] == y[q, None]).double()  # (c, k)
        ranks = torch.arange(1, k + 1, dtype=torch.float64)
        within = ranks[None, :] <= r[q, None]  # (c, k): only the first R ranks count
        prec = rel.cumsum(1) / ranks  # (c, k) P@i
        ap = (prec * rel * within).sum(1) / r[q].clamp(min=1)
        rp = (rel * within).sum(1) / r[q].clamp(min=1)
        out[q] = torch.where(r[q] > 0, ap, torch.zeros_like(ap)).numpy()
        rprec[q] = torch.where(r[q] > 0, rp, torch.zeros_like(rp)).numpy()
    return out, rprec
