"""Rendering an evaluation report: `report.json`, `report.md` and the confusion-matrix figures.

Kept apart from `evaluate.py` so that the numbers (computed there) and their presentation (here)
can change independently; everything here reads only the report dict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedfm import CLASS_NAMES, fileio
from embedfm.config import SHIRT
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_save_figure, atomic_write_json, atomic_write_text
from embedfm.markdown import md_table

EVAL_AGAIN = "rerun `embedfm eval`"

# ----------------------------------------------------------------------------------------------
# reading report files back (report.json, umap.json; summarize reads report.json, history.json, pixels.json):
# they may come from anyone, so each is checked for what its reader uses, and a bad one is one line


def read_json(path: str | Path, fix: str = EVAL_AGAIN):
    """The JSON document in `path`, or one line naming the file (see `fileio.read_json`)."""
    return fileio.read_json(path, fix)


def is_number(v) -> bool:
    """An int or float (not a bool) that converts to a float; NaN counts (figures may be undefined)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


_KINDS = {"number": is_number, "dict": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
          "str": lambda v: isinstance(v, str), "any": lambda v: True}  # fmt: skip


def require(doc, keys: tuple, kind: str, where: str, fix: str = EVAL_AGAIN):
    """doc[keys[0]][keys[1]]... if it is there and of `kind` (number, dict, list, str, any), else one line."""
    value = doc
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise EmbedfmError(f"{where}: {'.'.join(keys)!r} is missing; {fix}")
        value = value[key]
    if not _KINDS[kind](value):
        raise EmbedfmError(f"{where}: {'.'.join(keys)!r} is not a {kind}; {fix}")
    return value


def class_names(report: dict) -> tuple[str, ...]:
    """The names of the report's classes 0..K-1 (Fashion-MNIST's for reports that record none)."""
    names = report.get("class_names") if isinstance(report, dict) else None
    if isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names):
        return tuple(names)
    return CLASS_NAMES


def class_label(c: int, name: str) -> str:
    """ "3 dress"; a class named by its id ("3") is "3" alone."""
    return name if name == str(c) else f"{c} {name}"


def is_fashion_mnist(report: dict) -> bool:
    """Whether the report is of Fashion-MNIST's classes (the shirt-recall column and its test-set line)."""
    return class_names(report) == CLASS_NAMES


def check_report(report, where: str) -> None:
    """What render_markdown reads from a report: focus classes, and per run its classifiers' figures (softmax
    and kNN per class), retrieval figures and the run's description."""
    focus = require(report, ("focus_classes",), "list", where)
    k = len(class_names(report))
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < k for c in focus):
        raise EmbedfmError(f"{where}: 'focus_classes' must be class ids 0-{k - 1}; {EVAL_AGAIN}")
    for name, r in require(report, ("runs",), "dict", where).items():
        w = f"{where}: run {name!r}"
        for key in ("run_dir", "loss", "backbone", "seed", "epochs", "train_seconds", "embedding_dim"):
            require(r, (key,), "any", w)
        for key in ("precision_at_1", "map_at_r"):
            require(r, ("retrieval", key), "number", w)
        for clf in {"softmax": None, "knn": None, **require(r, ("classifiers",), "dict", w)}:
            for key in ("accuracy", "focus_group_error"):
                require(r, ("classifiers", clf, key), "number", w)
            per = range(k) if clf in ("softmax", "knn") else (SHIRT,) if is_fashion_mnist(report) else ()
            for c in per:
                for key in ("precision", "recall", "f1") if clf in ("softmax", "knn") else ("recall",):
                    require(r, ("classifiers", clf, "per_class", str(c), key), "number", w)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _label(clf: str, c: dict) -> str:
    return {
        "softmax": "softmax",
        "knn": f"kNN (k={c.get('k')})",
        "knn_flip": f"kNN (k={c.get('k')}), flip-averaged queries",
    }.get(clf, clf)


def summary_table(report: dict) -> list[str]:
    """One row per run and classifier (softmax, kNN, and kNN with flip-averaged queries where evaluated)."""
    rows, fm = [], is_fashion_mnist(report)  # shirt recall: Fashion-MNIST's hardest class, no other set's
    for name, r in report["runs"].items():
        for clf, c in r["classifiers"].items():
            ret = r["retrieval"]
            shirt = [f"{c['per_class'][str(SHIRT)]['recall']:.3f}"] if fm else []
            rows.append(
                [name, r["loss"], _label(clf, c), _pct(c["accuracy"]), _pct(c["focus_group_error"]), *shirt,
                 f"{ret['precision_at_1']:.4f}", f"{ret['map_at_r']:.4f}"]
            )  # fmt: skip
    header = ["run", "loss", "classifier", "accuracy", "focus-group error", *(["shirt recall"] if fm else []), "P@1",
              "MAP@R"]  # fmt: skip
    return md_table(header, rows).split("\n")


def per_class_table(report: dict) -> list[str]:
    focus, names = set(report["focus_classes"]), class_names(report)
    cols = [(n, clf) for n in report["runs"] for clf in ("softmax", "knn")]
    rows = []
    for c in range(len(names)):
        name = f"**{class_label(c, names[c])}**" if c in focus else class_label(c, names[c])
        cells = []
        for n, clf in cols:
            pc = report["runs"][n]["classifiers"][clf]["per_class"][str(c)]
            cells.append(f"{pc['precision']:.3f} / {pc['recall']:.3f} / {pc['f1']:.3f}")
        rows.append([name, *cells])
    return md_table(["class", *(f"{n} {c}" for n, c in cols)], rows).split("\n")


def unseen_table(report: dict) -> list[str]:
    """The unseen-class test (runs trained with --holdout-classes): retrieval and few-shot kNN per held-out class."""
    rows, names = [], class_names(report)
    for name, r in report["runs"].items():
        unseen = r.get("unseen")
        if not isinstance(unseen, dict):
            continue
        for c, u in unseen.items():
            try:
                shots = "; ".join(
                    f"n={n}: {f['recall']:.3f} ± {f['recall_std']:.3f} (acc {_pct(f['accuracy'])})"
                    for n, f in u["few_shot"].items()
                )
                rows.append(
                    [name, class_label(int(c), names[int(c)]), f"{u['map_at_r']:.4f}", f"{u['r_precision']:.4f}", shots]
                )
            except (KeyError, TypeError, ValueError, IndexError):
                raise EmbedfmError(f"run {name!r}: unseen-class figures damaged; {EVAL_AGAIN}") from None
    if not rows:
        return []
    return [
        "## Unseen classes",
        "",
        "Runs trained without these classes. MAP@R and R-precision of the class's test images among all test "
        "images; few-shot kNN: recall of the class (and overall accuracy) when n of its train images join the kNN "
        "references, mean ± std over draws.",
        "",
        *md_table(["run", "held-out class", "MAP@R", "R-precision", "few-shot kNN recall"], rows).split("\n"),
        "",
    ]


def data_notes(notes) -> list[str]:
    """What reading a folder / CSV set found, as report lines: how its test split was made, files skipped
    (--skip-bad), test images that equal a training image (leakage). Nothing for Fashion-MNIST."""
    if not isinstance(notes, dict) or not notes:
        return []
    lines = [f"Test split: {notes.get('test_split', '?')}" + (f"; images resized ({notes['resize']})" if
             notes.get("resize") else "") + "."]  # fmt: skip
    skipped = notes.get("skipped") or []
    if skipped:
        lines.append(f"Skipped {len(skipped)} unreadable image file(s) (--skip-bad), e.g. `{skipped[0]}`.")
    dup = notes.get("duplicates") or {}
    if dup.get("count"):
        lines.append(f"**Leakage: {dup['count']} test image(s) equal a training image** (e.g. {dup['examples'][0]}); "
                     "test figures that count them are optimistic.")  # fmt: skip
    return lines


def render_markdown(report: dict, figures: list[str]) -> str:
    names = class_names(report)
    focus = ", ".join(class_label(c, names[c]) for c in report["focus_classes"])
    if is_fashion_mnist(report):
        test_set = "10 000 Fashion-MNIST images"
    else:
        n = int(np.asarray(next(iter(report["runs"].values()))["classifiers"]["softmax"]["confusion"]).sum())
        data = report.get("data", "the runs' set")
        test_set = f"{n:,} images of {data}, {len(names)} classes ({', '.join(names)})"
    md = [
        "# embedfm evaluation report",
        "",
        f"Test set: {test_set}. Focus classes: {focus}.",
        *data_notes(report.get("data_notes")),
        "Focus-group error = share of focus-class test images predicted as a *different* focus class. "
        'kNN: FAISS exact search over the run\'s train-split embeddings (cosine); "flip-averaged queries": '
        "each test image's embedding averaged with its mirror's. "
        "Retrieval (P@1, MAP@R): each test image queried against the other test images.",
        "",
        "## Summary",
        "",
        *summary_table(report),
        "",
        "## Per class (precision / recall / F1)",
        "",
        *per_class_table(report),
        "",
        *unseen_table(report),
    ]
    md += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    md += ["## Runs", ""]
    for name, r in report["runs"].items():
        md.append(
            f"- **{name}**: `{r['run_dir']}`, loss {r['loss']}, backbone {r['backbone']}, seed {r['seed']}, "
            f"{r['epochs']} epochs, {r['train_seconds']} s training, embedding dim {r['embedding_dim']}"
            + ("" if r.get("complete", True) else " (**unfinished run**)")
        )
    return "\n".join(md) + "\n"


def plot_confusions(report: dict, out: Path) -> list[str]:
    """confusion.png: row-normalised matrices, one row per run, (softmax, kNN) side by side.
    confusion_diff.png: each later run minus the first (the baseline), in percentage points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    names = list(runs)
    focus = report["focus_classes"]
    names_ = class_names(report)
    k = len(names_)
    font = 7 if k <= 12 else max(3, 7 * 12 / k)  # tick labels shrink with the class count

    def norm(cm):
        cm = np.asarray(cm, dtype=float)
        return 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1)

    def draw(ax, m, title, cmap, vmin, vmax):
        im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(k), [str(i) for i in range(k)], fontsize=font)
        ax.set_yticks(range(k), [class_label(i, names_[i]) for i in range(k)], fontsize=font)
        for t in ax.get_yticklabels() + ax.get_xticklabels():
            if int(t.get_text().split()[0]) in focus:
                t.set_fontweight("bold")
                t.set_color("crimson")
        ax.set_xlabel("predicted", fontsize=8)
        signed = vmin < 0
        for i in range(k if k <= 30 else 0):  # no cell figures where the cells are too small to read
            for j in range(k):
                if abs(m[i, j]) >= (0.25 if signed else 0.5):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:+.1f}" if signed else f"{m[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=5 if signed else 5.5,
                        color="white" if abs(m[i, j]) > 0.6 * max(abs(vmin), vmax) else "black",
                    )
        return im

    files = []
    fig, axes = plt.subplots(len(names), 2, figsize=(9, 4.2 * len(names)), squeeze=False)
    for row, n in enumerate(names):
        for col, clf in enumerate(("softmax", "knn")):
            c = runs[n]["classifiers"][clf]
            draw(
                axes[row, col],
                norm(c["confusion"]),
                f"{n} — {clf}: acc {_pct(c['accuracy'])}, focus err {_pct(c['focus_group_error'])}",
                "Blues",
                0,
                100,
            )
    fig.suptitle("Test confusion matrices (row-normalised, %)")
    fig.tight_layout()
    atomic_save_figure(fig, out / "confusion.png")
    plt.close(fig)
    files.append("confusion.png")

    if len(names) > 1:
        base = names[0]
        fig, axes = plt.subplots(len(names) - 1, 2, figsize=(9, 4.2 * (len(names) - 1)), squeeze=False)
        for row, n in enumerate(names[1:]):
            for col, clf in enumerate(("softmax", "knn")):
                d = norm(runs[n]["classifiers"][clf]["confusion"]) - norm(runs[base]["classifiers"][clf]["confusion"])
                lim = max(2.0, float(np.abs(d).max()))
                draw(axes[row, col], d, f"{n} − {base} — {clf} (pp)", "RdBu_r", -lim, lim)
        fig.suptitle(
            "Difference of row-normalised confusion matrices (percentage points): blue off-diagonal = fewer errors"
        )
        fig.tight_layout()
        atomic_save_figure(fig, out / "confusion_diff.png")
        plt.close(fig)
        files.append("confusion_diff.png")
    return files


def write_report(report: dict, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_confusions(report, out)
    atomic_write_json(out / "report.json", report)
    rerender_markdown(out)


def rerender_markdown(out: str | Path) -> None:
    """(Re)write report.md from report.json and whichever figures are in `out` (viz adds umap.png)."""
    out = Path(out)
    report = read_json(out / "report.json")
    check_report(report, str(out / "report.json"))
    figures = [
        f for f in ("confusion.png", "confusion_diff.png", "most_confused.png", "umap.png") if (out / f).exists()
    ]
    md = render_markdown(report, figures)
    if (out / "umap.json").exists():
        umap_path, again = out / "umap.json", "rerun `embedfm viz`"
        sil = require(read_json(umap_path, again), ("focus_silhouette",), "dict", str(umap_path), again)
        for n in sil:
            require(sil, (n,), "number", f"{umap_path}: focus_silhouette", again)
        md = md.replace(
            "## Runs\n",
            "Focus-class silhouette in the embedding space (cosine; +1 = apart, 0 = "
            "overlapping): " + ", ".join(f"{n} {v:.3f}" for n, v in sil.items()) + ".\n\n## Runs\n",
        )
    atomic_write_text(out / "report.md", md)
