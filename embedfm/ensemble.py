"""Ensembles of evaluated runs, reported as ensembles: `embedfm ensemble RUN...`.

Two ways to combine N runs (typically the seeds of one recipe), both from the arrays `embedfm eval` saved in each
run's embeddings.npz, so nothing is embedded again:

- **softmax**: the runs' test probabilities averaged, then argmax;
- **kNN over concatenated embeddings**: each run's train and test embeddings normalised to unit length and put
  side by side (N·D dimensions, every run weighted equally), then the usual cosine kNN (k = 10) against the
  train split. Its MAP@R is the retrieval of the concatenated test embeddings.

The figures are those of `embedfm eval` (accuracy, focus-group error, per-class recall), written to
ensemble.json / ensemble.md beside the single runs' mean, so the ensemble row is never mistaken for a single
model's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedfm import rundir
from embedfm.config import SHIRT
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_write_json, atomic_write_text
from embedfm.markdown import md_table
from embedfm.run import EvaluatedRuns

KEYS = ("test_probs", "train_embeddings", "test_embeddings")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def concatenated(runs: list[dict], split: str) -> np.ndarray:
    """(N_images, sum of D): each run's unit-norm embeddings side by side, so each run weighs the same."""
    return np.ascontiguousarray(np.concatenate([unit(r[f"{split}_embeddings"]) for r in runs], axis=1))


def ensemble(run_dirs: list[str], out: str | Path | None = None, k: int = 10, log=print) -> dict:
    from embedfm.floor import focus_of
    from embedfm.knn import KNNClassifier
    from embedfm.metrics import classifier_metrics, retrieval_metrics

    if len(run_dirs) < 2:
        raise EmbedfmError("an ensemble needs at least 2 evaluated runs")
    runs = EvaluatedRuns.open(run_dirs, KEYS, references=True).arrays  # the same data, test and train images
    labels, train_labels = runs[0]["test_labels"], runs[0]["train_labels"]
    from embedfm import CLASS_NAMES
    from embedfm.floor import open_run

    run = open_run(run_dirs[0])
    names = run.class_names if run is not None else CLASS_NAMES
    k_classes = len(names)
    focus = focus_of(run_dirs[0], k_classes)
    fm = names == CLASS_NAMES  # shirt recall: Fashion-MNIST's figure, no other set's
    scores = lambda pred: classifier_metrics(labels, pred, focus, num_classes=k_classes)

    softmax = np.mean([r["test_probs"] for r in runs], axis=0).argmax(1)
    train_cat, test_cat = concatenated(runs, "train"), concatenated(runs, "test")
    knn = KNNClassifier(k=k, metric="cosine", num_classes=k_classes).fit(train_cat, train_labels).predict(test_cat)
    singles = [scores(r["test_probs"].argmax(1)) for r in runs]
    result = {
        "runs": [str(r) for r in run_dirs],
        "focus_classes": list(focus),
        "softmax_average": scores(softmax),
        "knn_concatenated": {**scores(knn), "k": k},
        "retrieval_concatenated": retrieval_metrics(test_cat, labels),
        "single_runs_mean": {
            **{key: float(np.mean([s[key] for s in singles])) for key in ("accuracy", "focus_group_error")},
            **({"shirt_recall": float(np.mean([s["per_class"][str(SHIRT)]["recall"] for s in singles]))} if fm else {}),
        },
    }
    if not fm:
        result["class_names"] = list(names)
    out = Path(out) if out else rundir.default_out(run_dirs)
    atomic_write_json(out / "ensemble.json", result)
    text = markdown(result)
    atomic_write_text(out / "ensemble.md", text)
    log(text)
    return result


def markdown(r: dict) -> str:
    fm = "class_names" not in r  # another set's ensemble: no shirt recall

    def row(name: str, figures: dict) -> tuple:
        shirt = figures["per_class"][str(SHIRT)]["recall"] if "per_class" in figures else figures.get("shirt_recall")
        shirt = shirt if fm else None
        return name, figures["accuracy"], figures["focus_group_error"], shirt

    rows = [
        row("mean of the single runs (softmax)", r["single_runs_mean"]),
        row("ensemble: softmax probabilities averaged", r["softmax_average"]),
        row("ensemble: kNN over concatenated embeddings", r["knn_concatenated"]),
    ]
    lines = [
        f"# Ensemble of {len(r['runs'])} runs",
        "",
        md_table(
            ["classifier", "test accuracy %", "focus-group error %", "shirt recall"],
            [[n, f"{100 * a:.2f}", f"{100 * f:.2f}", "–" if s is None else f"{s:.3f}"] for n, a, f, s in rows],
        ),
        "",
        f"MAP@R of the concatenated embeddings: {r['retrieval_concatenated']['map_at_r']:.4f}. Runs: "
        + ", ".join(f"`{x}`" for x in r["runs"]),
        "",
    ]
    return "\n".join(lines)
