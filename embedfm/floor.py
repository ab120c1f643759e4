"""Where the four-class floor is: `embedfm floor RUN...`.

Given several evaluated runs (seeds, losses), this module asks how much of the remaining focus-group error is in
the labels rather than in the models:

- **shared errors**: the focus-class test images that every run gets wrong (softmax head), and those every run
  gets wrong with the same predicted class;
- **suspected label issues** among the test images, with cleanlab's `find_label_issues` (confident learning,
  Northcutt et al. 2021) on out-of-sample predicted probabilities: the runs' test softmax probabilities averaged
  (no run trained on a test image), ranked by self-confidence;
- **suspected label issues in the train split**, from a run's kNN leave-one-out votes: each train image's k
  nearest other train images in its embedding vote, (votes + 0.1) / (k + 1) as its probabilities (cosine, the
  embedding of the run named first). These votes are in-sample: the embedding was trained on those very labels,
  which pulls a mislabelled image towards its given class, so the train count is a lower bound;
- for the **best run** (the highest final validation accuracy: the test split chooses nothing), the share of its
  focus-group errors (a focus-class image called another focus class) that fall on suspected test label issues,
  and its focus-group error on the other images; the same two figures for every run, so the floor does not rest on
  which run validation picked.

Writes floor.json, floor.md and label_issues.png (the 64 most confident suspected issues among the focus classes:
image, given label, the runs' averaged prediction and the share of runs that predict it). Reads each run's
embeddings.npz (`embedfm eval` writes it, with the test probabilities, since 2026-11-27) and history.json.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from embedfm import CLASS_NAMES, rundir
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_save_figure, atomic_write_json, atomic_write_text, read_json
from embedfm.report import is_number

GALLERY = 64
KEYS = ("test_labels", "test_probs", "pred_softmax", "train_embeddings", "train_labels")


def read_run(run_dir: str | Path) -> dict:
    """A run's arrays (KEYS, checked by `evaluate.read_embeddings`) and its final validation accuracy."""
    from embedfm.evaluate import read_embeddings

    try:
        a = read_embeddings(run_dir, KEYS)
    except EmbedfmError as e:
        if "lacks test_probs" in str(e):
            raise EmbedfmError(f"{e} (eval saves the test probabilities since 2026-11-27)") from None
        raise
    history = read_json(Path(run_dir) / rundir.HISTORY, "retrain the run")
    val = (
        history[-1].get("val_acc") if isinstance(history, list) and history and isinstance(history[-1], dict) else None
    )
    if not is_number(val) or not math.isfinite(val):
        raise EmbedfmError(f"{run_dir}/{rundir.HISTORY}: no final validation accuracy; retrain the run")
    return {**a, "val_acc": float(val), "name": Path(run_dir).name}


def focus_of(run_dir: str | Path) -> tuple[int, ...]:
    """The focus classes of a run (its config.json), checked: one line if they are not class ids."""
    cfg = read_json(Path(run_dir) / rundir.CONFIG, "retrain the run")
    focus = cfg.get("focus_classes") if isinstance(cfg, dict) else None
    if not (isinstance(focus, list) and focus and all(type(c) is int and 0 <= c < len(CLASS_NAMES) for c in focus)):
        raise EmbedfmError(f"{run_dir}/{rundir.CONFIG}: focus_classes is not a list of class ids; retrain the run")
    return tuple(focus)


def shared_errors(labels: np.ndarray, preds: np.ndarray, focus: tuple[int, ...]) -> dict:
    """preds (R, N): each run's predicted class. Among the focus-class images: how many each number of runs gets
    wrong, how many all runs get wrong, and how many all get wrong with one and the same predicted class."""
    in_focus = np.isin(labels, focus)
    wrong = preds != labels  # (R, N)
    all_wrong = wrong.all(0) & in_focus
    same_way = all_wrong & (preds == preds[0]).all(0)
    counts = np.bincount(wrong[:, in_focus].sum(0), minlength=len(preds) + 1)
    return {
        "focus_images": int(in_focus.sum()),
        "wrong_in_k_runs": counts.tolist(),  # index k: images that exactly k runs get wrong
        "all_wrong": int(all_wrong.sum()),
        "all_wrong_same_way": int(same_way.sum()),
        "all_wrong_same_way_indices": np.flatnonzero(same_way).tolist(),
    }


def knn_loo_probs(emb: np.ndarray, labels: np.ndarray, k: int = 10, num_classes: int = 10) -> np.ndarray:
    """Leave-one-out kNN vote shares (N, C) on the unit-normalised embeddings: each image's k nearest *other*
    images vote; (votes + 0.1) / (k + 1) keeps every probability positive, as confident learning needs."""
    from embedfm.knn import KNNClassifier

    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # the index scores inner products
    knn = KNNClassifier(k=k + 1, metric="cosine").fit(unit, labels)
    _, idx = knn.kneighbors(unit)  # (N, k + 1), nearest first
    # drop the image itself (rank 0 unless an exact duplicate ties with it); where it is not among the k + 1
    # (duplicates filled them), drop the farthest instead
    keep = idx != np.arange(len(emb))[:, None]
    keep[keep.all(1), -1] = False
    others = idx[keep].reshape(len(emb), k)
    votes = np.zeros((len(emb), num_classes))
    np.add.at(votes, (np.repeat(np.arange(len(emb)), k), labels[others].ravel()), 1.0)
    return (votes + 0.1) / (k + 0.1 * num_classes)


def errors_on_issues(labels: np.ndarray, pred: np.ndarray, focus: tuple[int, ...], suspect: np.ndarray) -> dict:
    """One run's focus-group errors split by whether the image is a suspected label issue.

    labels, pred: (N,) class ids; suspect: (N,) bool. The error is the focus-group error's own definition
    (metrics.focus_group_error): a focus-class image called another focus class, over all focus-class images.
    """
    in_focus = np.isin(labels, focus)
    errors = in_focus & np.isin(pred, focus) & (pred != labels)
    rest = in_focus & ~suspect
    return {
        "focus_errors": int(errors.sum()),
        "focus_error": float(errors.sum() / in_focus.sum()),
        "errors_on_suspected_issues": int((errors & suspect).sum()),
        "share_on_suspected_issues": float((errors & suspect).sum() / max(1, errors.sum())),
        "focus_error_on_the_rest": float((errors & rest).sum() / max(1, rest.sum())),
    }


def label_issues(labels: np.ndarray, probs: np.ndarray, focus: tuple[int, ...]) -> np.ndarray:
    """Indices of suspected label issues whose given label is a focus class, most confident first (cleanlab's
    find_label_issues, ranked by self-confidence)."""
    from cleanlab.filter import find_label_issues

    # n_jobs=1: ten classes are no work for a process pool, and forking one beside torch and faiss is not free
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return ranked[np.isin(labels[ranked], focus)]


def short(c: int) -> str:
    """A class name short enough for a gallery title: 'T-shirt/top' → 'T-shirt'."""
    return CLASS_NAMES[int(c)].split("/")[0]


def gallery(images: np.ndarray, labels, probs, agreement, indices, path: Path) -> None:
    """An 8 × 8 grid of the first GALLERY suspected issues: image, given → predicted label, share of runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(indices[:GALLERY])
    cols = 8
    rows = max(1, -(-len(shown) // cols))
    # constrained layout sizes each row to its three-line title, so no title runs into the image above it
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 2.0), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), shown):
        pred = int(probs[i].argmax())
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(
            f"#{i}\n{short(labels[i])} → {short(pred)}\n{100 * agreement[i]:.0f} % of runs",
            fontsize=6.5,
        )
    fig.suptitle("Suspected label issues in the focus classes (given → predicted, share of runs predicting it)")
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def floor(run_dirs: list[str], out: str | Path | None = None, k: int = 10, data_dir: str | None = None, log=print):
    """Analyse the runs; write floor.json, floor.md and label_issues.png into `out`. Returns the figures."""
    from embedfm.data import load_fashion_mnist

    if len(run_dirs) < 2:
        raise EmbedfmError("embedfm floor needs at least 2 evaluated runs (errors shared by every run)")
    if k < 1:
        raise EmbedfmError(f"--k must be at least 1, got {k}")
    runs = [read_run(r) for r in run_dirs]
    labels = runs[0]["test_labels"]
    if any(not np.array_equal(r["test_labels"], labels) for r in runs):
        raise EmbedfmError("these runs were evaluated on different test images and cannot be compared")
    focus = focus_of(run_dirs[0])
    preds = np.stack([r["pred_softmax"] for r in runs])
    probs = np.mean([r["test_probs"] for r in runs], axis=0)
    agreement = (preds == probs.argmax(1)).mean(0)
    shared = shared_errors(labels, preds, focus)
    test_issues = label_issues(labels, probs, focus)
    first = runs[0]
    loo = knn_loo_probs(first["train_embeddings"], first["train_labels"], k)
    train_issues = label_issues(first["train_labels"], loo, focus)

    suspect = np.zeros(len(labels), dtype=bool)
    suspect[test_issues] = True
    per_run = {r["name"]: errors_on_issues(labels, r["pred_softmax"], focus, suspect) for r in runs}
    best = max(runs, key=lambda r: r["val_acc"])
    result = {
        "runs": [r["name"] for r in runs],
        "focus_classes": list(focus),
        "shared": shared,
        "test_label_issues": {
            "count": len(test_issues),
            "by_class": {CLASS_NAMES[c]: int((labels[test_issues] == c).sum()) for c in focus},
            "all_wrong_same_way_among_them": int(np.isin(shared["all_wrong_same_way_indices"], test_issues).sum()),
            "indices": test_issues.tolist(),
        },
        "train_label_issues": {
            "from_run": first["name"],
            "k": k,
            "count": len(train_issues),
            "by_class": {CLASS_NAMES[c]: int((first["train_labels"][train_issues] == c).sum()) for c in focus},
        },
        "best_run": {"name": best["name"], "val_acc": best["val_acc"], **per_run[best["name"]]},
        # the same figures for every run, so that the floor does not rest on which run validation happened to pick
        "per_run": per_run,
    }
    out = Path(out) if out else rundir.default_out(run_dirs)
    data = load_fashion_mnist(data_dir or read_json(Path(run_dirs[0]) / rundir.CONFIG).get("data_dir"))
    if not np.array_equal(data.test_labels.numpy(), labels):
        raise EmbedfmError(f"{data.source}: its test labels differ from the runs' embeddings.npz; pass --data-dir")
    gallery(data.test_images.numpy(), labels, probs, agreement, test_issues, out / "label_issues.png")
    atomic_write_json(out / "floor.json", result)
    atomic_write_text(out / "floor.md", markdown(result))
    log(markdown(result))
    return result


def per_run_span(r: dict, key: str) -> str:
    """The lowest and highest of one per-run figure, in percent: `6.21 – 7.14 %`."""
    values = [100 * v[key] for v in r["per_run"].values()]
    return f"{min(values):.2f} – {max(values):.2f} %"


def markdown(r: dict) -> str:
    s, t, tr, b = r["shared"], r["test_label_issues"], r["train_label_issues"], r["best_run"]
    n = len(r["runs"])
    lines = [
        f"# The four-class floor over {n} runs",
        "",
        "| figure | value |",
        "|---|---|",
        f"| focus-class test images | {s['focus_images']:,} |",
        f"| wrong in every run (softmax) | {s['all_wrong']:,} |",
        f"| wrong in every run, with the same predicted class | {s['all_wrong_same_way']:,} |",
        f"| suspected test label issues in the focus classes (cleanlab) | {t['count']:,} "
        f"({', '.join(f'{c} {v}' for c, v in t['by_class'].items())}) |",
        "| of the images every run gets wrong the same way, suspected issues | "
        f"{t['all_wrong_same_way_among_them']:,} |",
        f"| suspected train label issues in the focus classes (kNN leave-one-out, k = {tr['k']}, `{tr['from_run']}`) "
        f"| {tr['count']:,} ({', '.join(f'{c} {v}' for c, v in tr['by_class'].items())}) |",
        f"| best run by validation accuracy | `{b['name']}` ({100 * b['val_acc']:.2f} % val) |",
        f"| its focus-group error | {100 * b['focus_error']:.2f} % ({b['focus_errors']:,} images) |",
        f"| its focus-group errors on suspected issues | {b['errors_on_suspected_issues']:,} "
        f"({100 * b['share_on_suspected_issues']:.1f} %) |",
        f"| its focus-group error on the other focus images | {100 * b['focus_error_on_the_rest']:.2f} % |",
        "| every run: share of its focus-group errors on suspected issues | "
        f"{per_run_span(r, 'share_on_suspected_issues')} |",
        f"| every run: focus-group error on the other focus images | {per_run_span(r, 'focus_error_on_the_rest')} |",
        "",
        "Images wrong in exactly k of the runs (k = 0 … " + f"{n}): " + ", ".join(map(str, s["wrong_in_k_runs"])),
        "",
    ]
    return "\n".join(lines)
