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
