"""Image search: `embedfm search RUN QUERY...` finds the k nearest catalogue items of each query.

A QUERY is an image file (any size and format PIL reads; for a Fashion-MNIST run made to look like
Fashion-MNIST, see `images.to_fashion_mnist`; for a run on another set brought to its size and channels, see
`images.load_image_as`) or `test:N`, the N-th test image of the run's set. The run's model embeds the queries, the
index built by `embedfm index` answers them; results are printed as a table and drawn as a PNG grid
(one row per query: the query, then its neighbours nearest first, labels and similarity in titles).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from embedfm import CLASS_NAMES
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_save_figure
from embedfm.gallery import show_image
from embedfm.images import load_image_as, run_format
from embedfm.inference import embed_images, select_device
from embedfm.live import LiveIndex
from embedfm.run import Run

TEST_QUERY = re.compile(r"^test:(\d+)$")


def load_queries(queries: list[str], data_dir: str | None = None, run: Run | None = None):
    """(images (Q, 28, 28) uint8 — `run`'s format: (Q, H, W) or (Q, 3, H, W) — true labels (Q,) with -1 = unknown,
    names (Q,)). Without a run: Fashion-MNIST's."""
    data = None
    fmt, mode = (run_format(run), run.config.resize) if run is not None else (None, "crop")
    images, labels = [], []
    for q in queries:
        m = TEST_QUERY.match(q)
        if m:
            if data is None and run is not None:
                data = run.load_data(data_dir, progress=False)
            elif data is None:
                from embedfm.data import load_fashion_mnist

                data = load_fashion_mnist(data_dir)
            i = int(m.group(1))
            if i >= len(data.test_labels):
                raise EmbedfmError(
                    f"{q}: the test set has {len(data.test_labels)} images (0-{len(data.test_labels) - 1})"
                )
            images.append(data.test_images[i].numpy())
            labels.append(int(data.test_labels[i]))
        elif q.startswith("test:"):
            raise EmbedfmError(f"{q}: expected test:N with N a test-set index, e.g. test:42")
        else:
            images.append(load_image_as(q, fmt, mode))
            labels.append(-1)
    return np.stack(images), np.array(labels, dtype=np.int64), list(queries)


def label_name(label: int, class_names: tuple[str, ...] = CLASS_NAMES) -> str:
    return class_names[label] if 0 <= label < len(class_names) else "?"


def search(
    run_dir: str,
    queries: list[str],
    index_dir: str | None = None,
    k: int = 10,
    nprobe: int | None = None,
    ef_search: int | None = None,
    out: str | None = None,
    data_dir: str | None = None,
    log=print,
) -> list[dict]:
    """Search each query; print a table, write the grid PNG. Returns one dict per query."""
    run = Run.open(run_dir)
    model = run.model(select_device("auto"))  # a bad run fails before the index is read
    names_ = run.class_names
    live = LiveIndex.open(index_dir or Path(run_dir) / "index")  # the build plus what was added and removed since
    if k < 1 or k > live.size:
        raise EmbedfmError(f"--k must be in 1..{live.size} (catalogue size), got {k}")
    images, true, names = load_queries(queries, data_dir, run)
    if images.shape[1:] != live.image_shape:
        raise EmbedfmError(
            f"the index holds images of shape {live.image_shape} but this run takes {images.shape[1:]}; "
            "rebuild the index with this run"
        )
    emb = embed_images(model, images, progress=False)  # (Q, D)
    if emb.shape[1] != live.dim:
        raise EmbedfmError(
            f"the index holds {live.dim}-d embeddings but this run makes {emb.shape[1]}-d ones; "
            "rebuild the index with this run"
        )
    t0 = time.perf_counter()
    found = live.search(emb, k, nprobe=nprobe, ef_search=ef_search)  # (Q, k) each
    seconds = time.perf_counter() - t0
    neighbour_images = live.images(found.slots)
    results = []
    for qi, name in enumerate(names):
        hits = [
            {
                "rank": r + 1,
                "id": int(found.ids[qi, r]),
                "label": int(found.labels[qi, r]),
                "source": str(found.sources[qi, r]),
                "similarity": float(found.similarities[qi, r]),
                "image": neighbour_images[qi, r],
            }
            for r in range(k)
            if found.slots[qi, r] >= 0
        ]
        results.append({"query": name, "label": int(true[qi]), "hits": hits})
        log(format_hits(results[-1], names_))
    log(
        f"{len(names)} quer{'y' if len(names) == 1 else 'ies'} against {live.meta['factory']} over {live.size} "
        f"items in {seconds * 1e3:.1f} ms"
    )
    out_png = Path(out) if out else Path(index_dir or Path(run_dir) / "index") / "search.png"
    draw_grid(images, results, out_png, names_)
    for r in results:  # the images were for the grid; callers get plain JSON-able dicts, as before
        for h in r["hits"]:
            del h["image"]
    log(f"grid: {out_png}")
    return results


def format_hits(result: dict, class_names: tuple[str, ...] = CLASS_NAMES) -> str:
    lines = [
        f"query {result['query']} (label: {label_name(result['label'], class_names)})",
        f"  {'rank':>4}  {'id':>7}  {'label':<12} {'similarity':>10}  source",
    ]
    for h in result["hits"]:
        same = "" if result["label"] < 0 else ("  ✓" if h["label"] == result["label"] else "  ✗")
        lines.append(
            f"  {h['rank']:>4}  {h['id']:>7}  {label_name(h['label'], class_names):<12} {h['similarity']:>10.4f}  "
            f"{h['source']}{same}"
        )
    return "\n".join(lines)


def draw_grid(
    query_images: np.ndarray, results: list[dict], path: Path, class_names: tuple[str, ...] = CLASS_NAMES
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(len(r["hits"]) for r in results)
    fig, axes = plt.subplots(len(results), k + 1, figsize=(1.3 * (k + 1), 1.55 * len(results)), squeeze=False)
    for row, (img, r) in enumerate(zip(query_images, results)):
        show_image(axes[row, 0], img)
        axes[row, 0].set_title(f"query\n{label_name(r['label'], class_names)}", fontsize=7, fontweight="bold")
        for col in range(1, k + 1):
            ax = axes[row, col]
            if col <= len(r["hits"]):
                h = r["hits"][col - 1]
                show_image(ax, h["image"])
                wrong = r["label"] >= 0 and h["label"] != r["label"]
                ax.set_title(
                    f"{label_name(h['label'], class_names)}\n{h['similarity']:.3f}",
                    fontsize=7,
                    color="crimson" if wrong else "black",
                )
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
