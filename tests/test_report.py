"""Report rendering: the summary table lists every classifier a run was evaluated with, old reports included."""

import json

import numpy as np
import pytest
from fuzzing import SEED, _json_mutations, crafted_pickle, fuzz, one_line_error, run_copy

from embedfm import report, rundir
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


@pytest.mark.parametrize("name", [rundir.REPORT, "umap.json"])
@pytest.mark.usefixtures("no_hang")
def test_a_crafted_report_or_umap_json_is_refused_by_the_markdown_rerender(tmp_path, tiny, name):
    """viz re-renders report.md from report.json and umap.json after drawing: both are read without pickle."""
    run = run_copy(tiny, tmp_path / "run")
    marker = tmp_path / "PWNED"
    if name == "umap.json":
        (run / "umap.png").write_bytes(b"")
    (run / name).write_bytes(crafted_pickle(marker))
    msg = one_line_error(report.rerender_markdown, run)
    assert name in msg and not marker.exists()


@pytest.mark.parametrize("name", [rundir.REPORT, "umap.json"])
@pytest.mark.usefixtures("no_hang")
def test_fuzzed_report_rerenders_or_fails_in_one_line(study, name):
    """220 mutations each of report.json and umap.json through the report.md rerender viz and eval use."""
    run = study / "run"
    (run / "umap.png").write_bytes(b"")
    (run / "umap.json").write_text(json.dumps({"seed": 0, "focus_silhouette": {"run": 0.25, "other": float("nan")}}))
    path = run / name
    text = path.read_bytes()

    def attempt(data):
        path.write_bytes(data)
        report.rerender_markdown(run)
        assert (run / "report.md").read_text().startswith("# embedfm evaluation report")

    mutate = _json_mutations(json.loads(text), 7, text)
    fuzz(220, np.random.default_rng(SEED), mutate, attempt)
