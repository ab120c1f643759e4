"""Report rendering: the summary table lists every classifier a run was evaluated with, old reports included."""

from embedfm.report import per_class_table, summary_table


def _clf(acc, fge, shirt_recall, **extra):
    per_class = {str(c): {"precision": 1.0, "recall": 1.0, "f1": 1.0} for c in range(10)}
    per_class["6"] = {"precision": 1.0, "recall": shirt_recall, "f1": 1.0}
    return {"accuracy": acc, "focus_group_error": fge, "per_class": per_class, **extra}


def _report():
    retrieval = {"precision_at_1": 0.9, "map_at_r": 0.8}
    new = {
        "loss": "triplet",
        "retrieval": retrieval,
        "classifiers": {
            "softmax": _clf(0.95, 0.08, 0.84),
            "knn": _clf(0.94, 0.09, 0.83, k=10),
            "knn_flip": _clf(0.946, 0.085, 0.835, k=10),
        },
    }
    # a report written before flip-averaged kNN queries existed has only softmax and knn
    old = {
        "loss": "ce",
        "retrieval": retrieval,
        "classifiers": {"softmax": _clf(0.93, 0.10, 0.80), "knn": _clf(0.92, 0.11, 0.79, k=10)},
    }
    return {"focus_classes": [0, 2, 4, 6], "runs": {"new": new, "old": old}}


def test_summary_table_has_one_row_per_run_and_classifier():
    rows = summary_table(_report())[2:]
    assert [r.split(" | ")[0] + " | " + r.split(" | ")[2] for r in rows] == [
        "| new | softmax",
        "| new | kNN (k=10)",
        "| new | kNN (k=10), flip-averaged queries",
        "| old | softmax",
        "| old | kNN (k=10)",
    ]
    assert "| 94.60 % | 8.50 % | 0.835 |" in rows[2]


def test_per_class_table_stays_softmax_and_knn():
    header = per_class_table(_report())[0]
    assert header == "| class | new softmax | new knn | old softmax | old knn |"
