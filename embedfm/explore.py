"""`embedfm explore`: one self-contained HTML page to look at runs' test embeddings side by side.

What this module owns: the page's content, computed from the runs (`prepare` → `Explore`): their test predictions,
each run's UMAP of the test embeddings (`viz.umap_2d`), the focus-class silhouettes, each shown test image's
nearest training images in each run (FAISS, cosine), the confusion matrices and the fixed / broken lists between
runs; and the command, which writes the page. Drawing it (Bokeh layout, HTML, style sheet, JavaScript) is
`explore_page.py`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedfm import CLASS_NAMES, rundir
from embedfm.errors import EmbedfmError
from embedfm.explore_page import page_html
from embedfm.fileio import atomic_write_text
from embedfm.run import Run, check_comparable, read_embeddings

NEIGHBORS = 10  # training neighbours shown per run
CLASSIFIERS = ("knn", "softmax", "knn_flip")  # the predictions in embeddings.npz (`pred_<name>`)


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class Explore:
    """Everything the page shows, as arrays (`prepare` builds it; `page_html` draws it)."""

    names: list[str]
    configs: list[dict]
    focus: tuple[int, ...]
    classifier: str
    test_ids: np.ndarray  # (N,) indices into the test set of the images shown
    labels: np.ndarray  # (N,) true labels
    preds: np.ndarray  # (R, N) each run's prediction
    xy: np.ndarray  # (R, N, 2) UMAP layouts
    silhouettes: list[float]  # focus-class silhouette in each run's embedding space
    neighbors: np.ndarray  # (R, N, k) indices into train_ids: each test image's nearest training images per run
    train_ids: np.ndarray  # (M,) indices into the training set of every image that is someone's neighbour
    train_labels: np.ndarray  # (M,)
    test_images: np.ndarray  # (N, H, W) grey or (N, 3, H, W) colour uint8
    train_images: np.ndarray  # (M, H, W) or (M, 3, H, W) uint8
    class_names: tuple[str, ...] = CLASS_NAMES  # the names of the runs' classes 0..K-1

    @property
    def confusions(self) -> np.ndarray:
        """(R, K, K): [run, true, predicted] → number of the images shown."""
        k = len(self.class_names)
        cm = np.zeros((len(self.names), k, k), dtype=np.int64)
        for r, pred in enumerate(self.preds):
            np.add.at(cm[r], (self.labels, pred), 1)
        return cm

    def comparison(self, a: int, b: int) -> dict[int, dict[str, np.ndarray]]:
        """Per focus class c: positions (into the images shown) of the images of class c that run `a` gets
        wrong and run `b` right ("fixed"), and the reverse ("broken"). For every c,
        len(fixed) − len(broken) = confusions[b, c, c] − confusions[a, c, c]."""
        ok_a, ok_b = self.preds[a] == self.labels, self.preds[b] == self.labels
        return {
            c: {
                "fixed": np.flatnonzero((self.labels == c) & ~ok_a & ok_b),
                "broken": np.flatnonzero((self.labels == c) & ok_a & ~ok_b),
            }
            for c in self.focus
        }


def _train_split_ids(data, cfg: dict) -> np.ndarray:
    """Indices into the training set of a run's train split (the kNN references, in embeddings.npz's order):
    make_splits itself, applied to the indices instead of the images, so the split cannot drift from eval's."""
    import torch

    from embedfm.sampling import make_splits

    ids = dataclasses.replace(data, train_images=torch.arange(len(data.train_labels)))
    return make_splits(
        ids, cfg["val_size"], cfg["limit"], holdout=tuple(cfg.get("holdout_classes") or ())
    ).train_x.numpy()


def _read_npz(run_dir: str | Path, classifier: str) -> dict:
    try:
        return read_embeddings(run_dir, ("train_embeddings", "test_embeddings", f"pred_{classifier}"))
    except EmbedfmError as e:
        if classifier == "knn_flip" and "lacks pred_knn_flip" in str(e):
            raise EmbedfmError(f"{run_dir}: no flip-averaged kNN predictions (the run has tta_flip off)") from None
        raise


def prepare(
    run_dirs: list[str],
    classifier: str = "knn",
    k: int = NEIGHBORS,
    focus: tuple[int, ...] | None = None,
    max_points: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    log=print,
) -> Explore:
    """Read the runs' embeddings.npz (computed by eval where missing), lay the test embeddings out with UMAP
    and find each test image's k nearest training images in each run."""
    from embedfm.knn import build_index
    from embedfm.viz import focus_silhouette, load_test_embeddings, umap_2d

    if classifier not in CLASSIFIERS:
        raise EmbedfmError(f"--classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
    if k < 1:
        raise EmbedfmError(f"--k must be at least 1, got {k}")
    if max_points is not None and max_points < 20:
        raise EmbedfmError(f"--max-points must be at least 20, got {max_points}")
    names = rundir.run_names(run_dirs)
    configs = [load_test_embeddings(r)[2] for r in run_dirs]  # computes embeddings.npz where missing
    arrays = [_read_npz(r, classifier) for r in run_dirs]
    check_comparable(run_dirs, [a["test_labels"] for a in arrays])
    labels = arrays[0]["test_labels"].astype(np.int64)
    focus = tuple(focus or configs[0]["focus_classes"])
    runs = [Run.open(r) for r in run_dirs]
    class_names = runs[0].class_names
    if not all(0 <= c < len(class_names) for c in focus):
        raise EmbedfmError(f"focus classes must be class ids 0-{len(class_names) - 1}, got {list(focus)}")
    data = runs[0].load_data(data_dir, progress=False)
    for run in runs[1:]:
        run.check_data(data)
    if len(data.test_labels) != len(labels) or not np.array_equal(data.test_labels.numpy(), labels):
        raise EmbedfmError(f"{data.source}: test labels differ from {names[0]}'s embeddings.npz; pass --data-dir")

    n = len(labels)
    shown = np.arange(n)
    if max_points is not None and n > max_points:
        shown = np.sort(np.random.default_rng(seed).permutation(n)[:max_points])
    xy, sils, global_nbrs = [], [], []
    for name, r, cfg, a in zip(names, run_dirs, configs, arrays):
        split = _train_split_ids(data, cfg)
        if len(split) != len(a["train_labels"]) or not np.array_equal(
            data.train_labels.numpy()[split], a["train_labels"]
        ):
            raise EmbedfmError(f"{r}: embeddings.npz does not match the run's train split; rerun `embedfm eval {r}`")
        if k > len(split):
            raise EmbedfmError(f"--k {k} is more than {name}'s {len(split)} training images")
        test_emb = np.ascontiguousarray(a["test_embeddings"][shown], dtype=np.float32)
        _, idx = build_index(np.ascontiguousarray(a["train_embeddings"], dtype=np.float32), "cosine").search(
            test_emb, k
        )
        global_nbrs.append(split[idx])
        sils.append(focus_silhouette(a["test_embeddings"], labels, focus, seed=seed))
        log(f"{name}: UMAP of {len(shown)} test embeddings, {k} neighbours each")
        xy.append(umap_2d(test_emb, seed=seed).astype(np.float32))
    train_ids = np.unique(np.concatenate([g.ravel() for g in global_nbrs]))
    return Explore(
        names=names,
        configs=configs,
        focus=focus,
        classifier=classifier,
        test_ids=shown,
        labels=labels[shown],
        preds=np.stack([a[f"pred_{classifier}"][shown].astype(np.int64) for a in arrays]),
        xy=np.stack(xy),
        silhouettes=sils,
        neighbors=np.stack([np.searchsorted(train_ids, g) for g in global_nbrs]),
        train_ids=train_ids,
        train_labels=data.train_labels.numpy()[train_ids].astype(np.int64),
        test_images=data.test_images.numpy()[shown],
        train_images=data.train_images.numpy()[train_ids],
        class_names=tuple(class_names),
    )


def explore(
    run_dirs: list[str],
    out: str | Path | None = None,
    classifier: str = "knn",
    k: int = NEIGHBORS,
    focus: tuple[int, ...] | None = None,
    max_points: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    log=print,
) -> Path:
    """Write the page to `out` (default explore.html in the run dir, or the runs' common parent)."""
    out = Path(out) if out else rundir.default_out(run_dirs) / "explore.html"
    if out.is_dir():
        out = out / "explore.html"
    ex = prepare(
        run_dirs, classifier=classifier, k=k, focus=focus, max_points=max_points, seed=seed, data_dir=data_dir, log=log
    )
    page = page_html(ex)
    atomic_write_text(out, page)
    log(f"page: {out} ({len(page.encode()) / 1e6:.1f} MB; {len(ex.train_ids):,} distinct neighbour images)")
    return out
