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
  which run validation picked. These figures are **in-sample**, circular: the suspects are found from the very
  runs whose errors are then split, so an image a run gets wrong is more likely to be suspected, and the error
  "on the rest" is low by construction;
- the same two figures **cross-fitted** (`crossfit`): the runs are split into two halves (sorted by run name,
  alternately into A and B, so runs named `<method>_s<seed>` alternate within each method and each half holds
  every method with two or more seeds), suspects are found from half A's runs only and half B's runs are scored
  on and off them, then the other way round. A run's figures then rest on suspects it took no part in finding.
  Two rules find a half's suspects: cleanlab as above on the half's averaged test probabilities (where the runs'
  embeddings.npz are at hand), and, from hard predictions alone, the focus-class images that every run of the half
  predicts as one and the same other class (`unanimous`; report.json's per-image predictions are enough, so it
  runs on a published study without its checkpoints: `embedfm floor --crossfit-only RUN...`). Cross-fitting
  removes the scored run's own errors from the selection, not what all the models share (the same training
  images, similar architectures): a suspect is an image other models get wrong, which may be a wrong label or an
  image every model finds hard. Each rule's in-sample counterpart on the same half sizes (each run scored on its
  own half's suspects) is reported beside it.

Writes floor.json, floor.md, crossfit.json, crossfit.md and label_issues.png (the 64 most confident suspected
issues among the focus classes: image, given label, the runs' averaged prediction and the share of runs that
predict it). Reads each run's embeddings.npz (`embedfm eval` writes it, with the test probabilities, since
2026-11-27) and history.json; `--crossfit-only` reads report.json and history.json and writes crossfit.json and
crossfit.md only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from embedfm import CLASS_NAMES, rundir
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_save_figure, atomic_write_json, atomic_write_text, read_json
from embedfm.markdown import md_table
from embedfm.report import is_number
from embedfm.run import EvaluatedRuns, check_comparable

GALLERY = 64
KEYS = ("test_labels", "test_probs", "pred_softmax", "train_embeddings", "train_labels")


def read_runs(run_dirs: list[str]) -> list[dict]:
    """The runs' arrays (KEYS, checked by `run.read_embeddings`; the runs checked to be comparable by
    `run.EvaluatedRuns`), each with its final validation accuracy and name."""
    try:
        evaluated = EvaluatedRuns.open(run_dirs, KEYS)
    except EmbedfmError as e:
        if "lacks test_probs" in str(e):
            raise EmbedfmError(f"{e} (eval saves the test probabilities since 2026-11-27)") from None
        raise
    return [{**a, "val_acc": final_val_acc(r), "name": Path(r).name} for r, a in zip(run_dirs, evaluated.arrays)]


def read_run(run_dir: str | Path) -> dict:
    """One run's arrays (KEYS) with its final validation accuracy and name."""
    return read_runs([run_dir])[0]


def final_val_acc(run_dir: str | Path) -> float:
    """A run's final validation accuracy (its history.json's last epoch); one line if there is none."""
    history = read_json(Path(run_dir) / rundir.HISTORY, "retrain the run")
    val = (
        history[-1].get("val_acc") if isinstance(history, list) and history and isinstance(history[-1], dict) else None
    )
    if not is_number(val) or not math.isfinite(val):
        raise EmbedfmError(f"{run_dir}/{rundir.HISTORY}: no final validation accuracy; retrain the run")
    return float(val)


def open_run(run_dir: str | Path):
    """The run (`run.Run`) of a run dir, or None where it has no readable checkpoint (evaluated files only: the
    figures read those; class names and data are then Fashion-MNIST's)."""
    from embedfm.run import Run

    try:
        return Run.open(run_dir)
    except EmbedfmError:
        return None


def focus_of(run_dir: str | Path, k: int = len(CLASS_NAMES)) -> tuple[int, ...]:
    """The focus classes of a run (its config.json), checked: one line if they are not class ids (0..k-1)."""
    cfg = read_json(Path(run_dir) / rundir.CONFIG, "retrain the run")
    focus = cfg.get("focus_classes") if isinstance(cfg, dict) else None
    if not (isinstance(focus, list) and focus and all(type(c) is int and 0 <= c < k for c in focus)):
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


SPLIT = (
    "runs sorted by name, alternately into halves A and B (A takes the extra run of an odd count); runs named "
    "<method>_s<seed> alternate within each method"
)
RULES = {
    "cleanlab": "cleanlab's find_label_issues on the half's averaged test probabilities, focus-class images",
    "unanimous": "focus-class images that every run of the half predicts as one and the same other class",
}


def halves(names: list[str]) -> tuple[list[int], list[int]]:
    """The two halves of a cross-fit as indices into `names` (SPLIT): sorted by name, then A, B, A, B, ... Runs of
    one method named `<method>_s<seed>` sort together, so with two or more seeds each half holds every method."""
    order = sorted(range(len(names)), key=lambda i: names[i])
    return order[0::2], order[1::2]


def unanimous_suspects(labels: np.ndarray, preds: np.ndarray, focus: tuple[int, ...]) -> np.ndarray:
    """(N,) bool: the focus-class images that every run of preds (R, N) predicts as one and the same other class."""
    return np.isin(labels, focus) & (preds[0] != labels) & (preds == preds[0]).all(0)


def crossfit_rule(labels: np.ndarray, preds: np.ndarray, names: list[str], focus: tuple[int, ...], find) -> dict:
    """One rule's cross-fit. `find(run indices)` → (N,) bool: the suspects found from those runs alone.

    Per run: `cross_fitted`, its focus-group errors split on the other half's suspects (`errors_on_issues`), and
    `in_sample`, split on its own half's suspects (the circular figure on the same half sizes, for comparison)."""
    a, b = halves(names)
    found = {"A": find(a), "B": find(b)}
    half_of = {**{i: "A" for i in a}, **{i: "B" for i in b}}
    per_run = {}
    for i, name in enumerate(names):
        mine = half_of[i]
        other = "B" if mine == "A" else "A"
        per_run[name] = {
            "half": mine,
            "cross_fitted": errors_on_issues(labels, preds[i], focus, found[other]),
            "in_sample": errors_on_issues(labels, preds[i], focus, found[mine]),
        }
    return {
        "halves": {"A": [names[i] for i in a], "B": [names[i] for i in b]},
        "suspects": {h: int(m.sum()) for h, m in found.items()} | {"both": int((found["A"] & found["B"]).sum())},
        "suspect_indices": {h: np.flatnonzero(m).tolist() for h, m in found.items()},
        "per_run": per_run,
    }


def crossfit(
    labels: np.ndarray,
    preds: np.ndarray,
    names: list[str],
    focus: tuple[int, ...],
    val_acc: list[float],
    probs: np.ndarray | None = None,
) -> dict:
    """The cross-fitted floor: labels (N,), preds (R, N) each run's predicted class, names the runs' names (they
    make the halves), val_acc their final validation accuracies (the best run is the highest), probs (R, N, C)
    their test probabilities or None. The `unanimous` rule always, `cleanlab` where probs are given."""
    if len(names) < 2:
        raise EmbedfmError("a cross-fit needs at least 2 runs (one in each half)")
    if len(set(names)) != len(names):
        raise EmbedfmError("the runs' dir names must differ: the halves of the cross-fit are made by name")
    n = len(labels)

    def cleanlab_suspects(idx: list[int]) -> np.ndarray:
        m = np.zeros(n, dtype=bool)
        m[label_issues(labels, probs[idx].mean(0), focus)] = True
        return m

    rules = {}
    if probs is not None:
        rules["cleanlab"] = crossfit_rule(labels, preds, names, focus, cleanlab_suspects)
    rules["unanimous"] = crossfit_rule(
        labels, preds, names, focus, lambda idx: unanimous_suspects(labels, preds[idx], focus)
    )
    for name, rule in rules.items():
        rule["rule"] = RULES[name]
    best = max(range(len(names)), key=lambda i: val_acc[i])
    return {
        "runs": list(names),
        "focus_classes": list(focus),
        "split": SPLIT,
        "best_run": {"name": names[best], "val_acc": float(val_acc[best])},
        "rules": rules,
    }


def report_predictions(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A run's test labels and softmax predictions from its report.json's per-image record (`embedfm eval RUN`)."""
    from embedfm.paired import decode

    path = Path(run_dir) / rundir.REPORT
    runs = read_json(path, f"run `embedfm eval {run_dir}`")
    runs = runs.get("runs") if isinstance(runs, dict) else None
    if not isinstance(runs, dict) or not runs:
        raise EmbedfmError(f"{path}: no runs; run `embedfm eval {run_dir}`")
    entry = runs.get(Path(run_dir).name, next(iter(runs.values())) if len(runs) == 1 else None)
    rec = entry.get("per_image") if isinstance(entry, dict) else None
    if not isinstance(rec, dict):
        raise EmbedfmError(f"{path}: no per-image predictions of this run; run `embedfm eval {run_dir}` again")
    labels, pred = decode(rec.get("labels"), str(path)), decode(rec.get("softmax"), str(path))
    if labels.shape != pred.shape:
        raise EmbedfmError(f"{path}: per-image records of different lengths; run `embedfm eval {run_dir}` again")
    return labels, pred


def crossfit_reports(run_dirs: list[str], out: str | Path | None = None, log=print) -> dict:
    """`embedfm floor --crossfit-only`: the `unanimous` cross-fit from each run's report.json (per-image softmax
    predictions) and history.json, no embeddings.npz or checkpoint needed. Writes crossfit.json and crossfit.md."""
    if len(run_dirs) < 2:
        raise EmbedfmError("embedfm floor needs at least 2 evaluated runs (one in each half of the cross-fit)")
    read = [report_predictions(r) for r in run_dirs]
    check_comparable(run_dirs, [y for y, _ in read])
    labels = read[0][0]
    focus = focus_of(run_dirs[0], max(len(CLASS_NAMES), int(labels.max(initial=0)) + 1))
    names = [Path(r).name for r in run_dirs]
    result = crossfit(labels, np.stack([p for _, p in read]), names, focus, [final_val_acc(r) for r in run_dirs])
    write_crossfit(result, Path(out) if out else rundir.default_out(run_dirs), log)
    return result


def write_crossfit(result: dict, out: Path, log=print) -> None:
    atomic_write_json(out / "crossfit.json", result)
    atomic_write_text(out / "crossfit.md", crossfit_markdown(result))
    log(crossfit_markdown(result))


def short(c: int, class_names: tuple[str, ...] = CLASS_NAMES) -> str:
    """A class name short enough for a gallery title: 'T-shirt/top' → 'T-shirt'."""
    return class_names[int(c)].split("/")[0][:16]


def gallery(
    images: np.ndarray, labels, probs, agreement, indices, path: Path, class_names: tuple[str, ...] = CLASS_NAMES
) -> None:
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
        if images[i].ndim == 3:  # colour (3, H, W)
            ax.imshow(np.moveaxis(images[i], 0, -1))
        else:
            ax.imshow(images[i], cmap="gray_r")
        ax.set_title(
            f"#{i}\n{short(labels[i], class_names)} → {short(pred, class_names)}\n{100 * agreement[i]:.0f} % of runs",
            fontsize=6.5,
        )
    fig.suptitle("Suspected label issues in the focus classes (given → predicted, share of runs predicting it)")
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def floor(run_dirs: list[str], out: str | Path | None = None, k: int = 10, data_dir: str | None = None, log=print):
    """Analyse the runs; write floor.json, floor.md and label_issues.png into `out`. Returns the figures."""

    if len(run_dirs) < 2:
        raise EmbedfmError("embedfm floor needs at least 2 evaluated runs (errors shared by every run)")
    if k < 1:
        raise EmbedfmError(f"--k must be at least 1, got {k}")
    runs = read_runs(run_dirs)
    labels = runs[0]["test_labels"]
    run = open_run(run_dirs[0])
    class_names = run.class_names if run is not None else CLASS_NAMES
    focus = focus_of(run_dirs[0], len(class_names))
    preds = np.stack([r["pred_softmax"] for r in runs])
    probs_each = np.stack([r["test_probs"] for r in runs])
    probs = probs_each.mean(0)
    agreement = (preds == probs.argmax(1)).mean(0)
    shared = shared_errors(labels, preds, focus)
    test_issues = label_issues(labels, probs, focus)
    first = runs[0]
    loo = knn_loo_probs(first["train_embeddings"], first["train_labels"], k, len(class_names))
    train_issues = label_issues(first["train_labels"], loo, focus)

    suspect = np.zeros(len(labels), dtype=bool)
    suspect[test_issues] = True
    cross = crossfit(labels, preds, [r["name"] for r in runs], focus, [r["val_acc"] for r in runs], probs_each)
    per_run = {r["name"]: errors_on_issues(labels, r["pred_softmax"], focus, suspect) for r in runs}
    best = max(runs, key=lambda r: r["val_acc"])
    result = {
        "runs": [r["name"] for r in runs],
        "focus_classes": list(focus),
        "shared": shared,
        "test_label_issues": {
            "count": len(test_issues),
            "by_class": {class_names[c]: int((labels[test_issues] == c).sum()) for c in focus},
            "all_wrong_same_way_among_them": int(np.isin(shared["all_wrong_same_way_indices"], test_issues).sum()),
            "indices": test_issues.tolist(),
        },
        "train_label_issues": {
            "from_run": first["name"],
            "k": k,
            "count": len(train_issues),
            "by_class": {class_names[c]: int((first["train_labels"][train_issues] == c).sum()) for c in focus},
        },
        "best_run": {"name": best["name"], "val_acc": best["val_acc"], **per_run[best["name"]]},
        # the same figures for every run, so that the floor does not rest on which run validation happened to pick
        "per_run": per_run,
    }
    out = Path(out) if out else rundir.default_out(run_dirs)
    if run is not None:
        data = run.load_data(data_dir, progress=False)
    else:  # evaluated files without a checkpoint: Fashion-MNIST, where the config says
        from embedfm.data import load_fashion_mnist

        data = load_fashion_mnist(data_dir or read_json(Path(run_dirs[0]) / rundir.CONFIG).get("data_dir"))
    if not np.array_equal(data.test_labels.numpy(), labels):
        raise EmbedfmError(f"{data.source}: its test labels differ from the runs' embeddings.npz; pass --data-dir")
    gallery(data.test_images.numpy(), labels, probs, agreement, test_issues, out / "label_issues.png", class_names)
    atomic_write_json(out / "floor.json", result)
    atomic_write_text(out / "floor.md", markdown(result))
    log(markdown(result))
    write_crossfit(cross, out, log)
    return result


def per_run_span(r: dict, key: str, part: str | None = None) -> str:
    """The lowest and highest of one per-run figure, in percent: `6.21 – 7.14 %`. `part`: the cross-fit's
    `cross_fitted` or `in_sample` figures of each run (a rule of crossfit.json as `r`)."""
    values = [100 * (v[part] if part else v)[key] for v in r["per_run"].values()]
    return f"{min(values):.2f} – {max(values):.2f} %"


def markdown(r: dict) -> str:
    s, t, tr, b = r["shared"], r["test_label_issues"], r["train_label_issues"], r["best_run"]
    n = len(r["runs"])
    lines = [
        f"# The four-class floor over {n} runs",
        "",
        md_table(
            ["figure", "value"],
            [
                ["focus-class test images", f"{s['focus_images']:,}"],
                ["wrong in every run (softmax)", f"{s['all_wrong']:,}"],
                ["wrong in every run, with the same predicted class", f"{s['all_wrong_same_way']:,}"],
                [
                    "suspected test label issues in the focus classes (cleanlab)",
                    f"{t['count']:,} ({', '.join(f'{c} {v}' for c, v in t['by_class'].items())})",
                ],
                [
                    "of the images every run gets wrong the same way, suspected issues",
                    f"{t['all_wrong_same_way_among_them']:,}",
                ],
                [
                    f"suspected train label issues in the focus classes (kNN leave-one-out, k = {tr['k']}, "
                    f"`{tr['from_run']}`)",
                    f"{tr['count']:,} ({', '.join(f'{c} {v}' for c, v in tr['by_class'].items())})",
                ],
                ["best run by validation accuracy", f"`{b['name']}` ({100 * b['val_acc']:.2f} % val)"],
                ["its focus-group error", f"{100 * b['focus_error']:.2f} % ({b['focus_errors']:,} images)"],
                [
                    "its focus-group errors on suspected issues (in-sample)",
                    f"{b['errors_on_suspected_issues']:,} ({100 * b['share_on_suspected_issues']:.1f} %)",
                ],
                [
                    "its focus-group error on the other focus images (in-sample)",
                    f"{100 * b['focus_error_on_the_rest']:.2f} %",
                ],
                [
                    "every run: share of its focus-group errors on suspected issues (in-sample)",
                    per_run_span(r, "share_on_suspected_issues"),
                ],
                [
                    "every run: focus-group error on the other focus images (in-sample)",
                    per_run_span(r, "focus_error_on_the_rest"),
                ],
            ],
        ),
        "",
        "Images wrong in exactly k of the runs (k = 0 … " + f"{n}): " + ", ".join(map(str, s["wrong_in_k_runs"])),
        "",
    ]
    return "\n".join(lines)


def crossfit_markdown(r: dict) -> str:
    """crossfit.json as a page: per rule, the halves' suspect counts, the best run's and every run's figures."""
    rules = r["rules"]
    b = r["best_run"]["name"]
    cols = list(rules)
    first = rules[cols[0]]
    a_n, b_n = len(first["halves"]["A"]), len(first["halves"]["B"])

    def row(label: str, f) -> list[str]:
        return [label, *(f(rules[c]) for c in cols)]

    cf = lambda rule, key: rule["per_run"][b]["cross_fitted"][key]
    lines = [
        f"# The cross-fitted floor over {len(r['runs'])} runs",
        "",
        f"Halves: {r['split']}. A ({a_n}): {', '.join(first['halves']['A'])}; "
        f"B ({b_n}): {', '.join(first['halves']['B'])}.",
        "Cross-fitted: each run's focus-group errors split on the suspects of the *other* half; in-sample: on its "
        "own half's suspects.",
        "",
        md_table(
            ["figure", *cols],
            [
                row(f"suspects from half A ({a_n} runs)", lambda x: f"{x['suspects']['A']:,}"),
                row(f"suspects from half B ({b_n} runs)", lambda x: f"{x['suspects']['B']:,}"),
                row("suspects of both halves", lambda x: f"{x['suspects']['both']:,}"),
                row(
                    f"best run by validation accuracy `{b}`: "
                    "share of its focus-group errors on suspects (cross-fitted)",
                    lambda x: f"{100 * cf(x, 'share_on_suspected_issues'):.1f} %",
                ),
                row(
                    "… its focus-group error on the rest (cross-fitted)",
                    lambda x: f"{100 * cf(x, 'focus_error_on_the_rest'):.2f} %",
                ),
                row(
                    "every run: share of its focus-group errors on suspects (cross-fitted)",
                    lambda x: per_run_span(x, "share_on_suspected_issues", "cross_fitted"),
                ),
                row(
                    "every run: focus-group error on the rest (cross-fitted)",
                    lambda x: per_run_span(x, "focus_error_on_the_rest", "cross_fitted"),
                ),
                row(
                    "every run: share of its focus-group errors on suspects (in-sample, own half)",
                    lambda x: per_run_span(x, "share_on_suspected_issues", "in_sample"),
                ),
                row(
                    "every run: focus-group error on the rest (in-sample, own half)",
                    lambda x: per_run_span(x, "focus_error_on_the_rest", "in_sample"),
                ),
            ],
        ),
        "",
        *(f"- {c}: {rules[c]['rule']}" for c in cols),
        "",
    ]
    return "\n".join(lines)
