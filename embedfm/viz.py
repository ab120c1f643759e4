"""UMAP pictures of test embeddings, one panel per run, side by side.

Reads each run's `embeddings.npz` (written by `embedfm eval`; computed on the fly if missing), maps
the test embeddings to 2-d with umap-learn (seeded, cosine metric, the same settings for every run)
and draws them with one colour per class; the focus classes are drawn large and on top, the other
classes small and faint. Each panel's title carries the silhouette score of the focus classes
measured in the embedding space itself (not in the 2-d picture), so the figure has a number to it.

umap-learn compiles its kernels with numba on first use; `NUMBA_CACHE_DIR` is pointed at a
persistent cache so later calls skip most of that.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from embedfm import CLASS_NAMES, rundir
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_save_figure, atomic_write_json
from embedfm.report import class_label
from embedfm.run import Run, read_embeddings

NUMBA_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedfm" / "numba"
FOCUS_COLORS = {0: "#1f77b4", 2: "#2ca02c", 4: "#d62728", 6: "#ff7f0e"}
OTHER_COLORS = [
    "#9e9e9e",
    "#8c564b",
    "#bcbd22",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#9467bd",
    "#393b79",
    "#637939",
    "#843c39",
]


def _enable_numba_cache() -> None:
    NUMBA_CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(NUMBA_CACHE))


def focus_silhouette(
    embeddings: np.ndarray, labels: np.ndarray, focus: tuple[int, ...], max_points: int = 4000, seed: int = 0
) -> float:
    """Silhouette score (cosine) of the focus-class points only: +1 = well apart, 0 = overlapping."""
    from sklearn.metrics import silhouette_score

    mask = np.isin(labels, focus)
    x, y = embeddings[mask], labels[mask]
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(silhouette_score(x, y, metric="cosine", sample_size=min(max_points, len(y)), random_state=seed))


def umap_2d(
    embeddings: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1, n_epochs: int = 200
) -> np.ndarray:
    """(N, D) unit-norm embeddings → (N, 2) layout.

    The kNN graph comes from FAISS (exact, cosine) and is handed to UMAP as `precomputed_knn`: exact
    instead of NN-descent, and it skips pynndescent's numba compilation, which dominated viz time
    (scripts/bench). 200 layout epochs: UMAP's own choice above 10 k points; it would use 500 below.
    """
    import warnings

    _enable_numba_cache()
    import umap

    from embedfm.knn import build_index

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    sims, idx = build_index(x, "cosine").search(x, n_neighbors)  # (N, k), self first
    dists = np.maximum(1.0 - sims, 0.0).astype(np.float32)  # cosine distance
    reducer = umap.UMAP(
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric="cosine",
        random_state=seed,
        n_jobs=1,
        n_epochs=n_epochs,
        precomputed_knn=(idx, dists, None),
    )
    with warnings.catch_warnings():  # "no search index: transform() unavailable" etc. — we only fit
        warnings.simplefilter("ignore")
        return reducer.fit_transform(x)


def load_test_embeddings(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(test embeddings (N, D), test labels (N,), checkpoint config) of a run; a damaged or hostile
    embeddings.npz or config is one line (the file is read without pickles, its arrays checked)."""
    from embedfm.evaluate import evaluate_run, save_embeddings

    cfg = Run.open(run_dir).config.to_dict()  # the checkpoint's header only: no weights unless eval must run
    path = Path(run_dir) / rundir.EMBEDDINGS
    if not path.exists():
        _, arrays = evaluate_run(run_dir, progress=False)
        save_embeddings(run_dir, arrays)
    arrays = read_embeddings(run_dir, ("test_embeddings",))
    emb, labels = arrays["test_embeddings"], arrays["test_labels"]
    if emb.size == 0:
        raise EmbedfmError(f"{path}: no test embeddings; rerun `embedfm eval {run_dir}`")
    return emb, labels, cfg


def class_colors(k: int) -> list[str]:
    """One colour per class of a K-class set: Fashion-MNIST's ten as ever; more from matplotlib's tab20, then
    spread around the hue circle."""
    if k <= len(OTHER_COLORS):
        return OTHER_COLORS[:k]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab20"] if k <= 20 else colormaps["hsv"]
    return [to_hex(cmap(c if k <= 20 else c / k)) for c in range(k)]


def draw_panel(
    ax,
    xy: np.ndarray,
    labels: np.ndarray,
    focus: tuple[int, ...],
    title: str,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> None:
    k = len(class_names)
    colors = class_colors(k)
    focus_colors = FOCUS_COLORS if k <= len(OTHER_COLORS) else {}
    others = [c for c in range(k) if c not in focus]
    for c in others:
        m = labels == c
        label = class_label(c, class_names[c])
        ax.scatter(xy[m, 0], xy[m, 1], s=1, c=colors[c], alpha=0.25, linewidths=0, label=label)
    for c in focus:
        m = labels == c
        ax.scatter(
            xy[m, 0],
            xy[m, 1],
            s=3,
            c=focus_colors.get(c, colors[c]),
            alpha=0.8,
            linewidths=0,
            label=class_label(c, class_names[c]),
        )
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def visualize(
    run_dirs: list[str],
    out: str | Path | None = None,
    max_points: int = 10_000,
    seed: int = 0,
    focus: tuple[int, ...] | None = None,
    log=print,
) -> Path:
    """Draw `umap.png` into `out` (default as for eval); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if max_points < 20:
        raise EmbedfmError(f"--max-points must be at least 20, got {max_points}")
    names = rundir.run_names(run_dirs)
    loaded = [load_test_embeddings(r) for r in run_dirs]
    focus = tuple(focus or loaded[0][2]["focus_classes"])
    class_names = Run.open(run_dirs[0]).class_names
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 6), squeeze=False)
    rng = np.random.default_rng(seed)
    stats = {}
    for ax, name, (emb, labels, cfg) in zip(axes[0], names, loaded):
        idx = np.sort(rng.permutation(len(labels))[:max_points]) if len(labels) > max_points else np.arange(len(labels))
        sil = focus_silhouette(emb, labels, focus, seed=seed)
        xy = umap_2d(emb[idx], seed=seed)
        draw_panel(
            ax,
            xy,
            labels[idx],
            focus,
            f"{name} ({cfg['loss']}, {cfg['backbone']})\nfocus-class silhouette (cosine, {emb.shape[1]}-d): {sil:.3f}",
            class_names,
        )
        stats[name] = sil
        log(f"{name}: focus-class silhouette {sil:.3f}")
    handles, lbls = axes[0, 0].get_legend_handles_labels()
    order = sorted(range(len(lbls)), key=lambda i: int(lbls[i].split()[0]))
    fig.legend(
        [handles[i] for i in order],
        [lbls[i] for i in order],
        loc="lower center",
        ncol=min(10, len(lbls)),
        fontsize=8,
        markerscale=5,
        frameon=False,
    )
    fig.suptitle(f"UMAP of test embeddings (seed {seed}); focus classes {', '.join(map(str, focus))} drawn large")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(out) if out else rundir.default_out(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "umap.png"
    atomic_save_figure(fig, path)
    plt.close(fig)
    atomic_write_json(
        out / "umap.json",
        {"seed": seed, "max_points": max_points, "focus_classes": list(focus), "focus_silhouette": stats},
    )
    if (out / "report.json").exists():  # an eval report lives here: show the figure in it
        from embedfm.report import rerender_markdown

        rerender_markdown(out)
    log(f"figure: {path}")
    return path
