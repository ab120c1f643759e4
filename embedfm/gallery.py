"""The "most confused" gallery: a PNG for the eval report that shows faces, not only counts.

For every ordered pair of focus classes (true a, predicted b ≠ a), the test images of that confusion, one strip
per run, pairs sorted by how often the runs make that mistake (most first). Each strip shows the first
`per_pair` such images in test-set order and says how many there are, so its number is the confusion-matrix
entry of that run. Images that another run gets right are framed in green: at a glance, which of a run's mistakes
the other run fixed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedfm import CLASS_NAMES
from embedfm.fileio import atomic_save_figure

PER_PAIR = 10
MAX_PAIRS = 12  # rows of the gallery: the most confused pairs (4 focus classes have 12; a 10-class focus 90)


def as_hwc(images: np.ndarray) -> np.ndarray:
    """A batch of uint8 images (N, H, W) grey or (N, 3, H, W) colour → (N, H, W, 3), what imshow draws as is."""
    a = np.asarray(images)
    return np.moveaxis(a, 1, -1) if a.ndim == 4 else np.repeat(a[..., None], 3, axis=-1)


def show_image(ax, image: np.ndarray, **kw) -> None:
    """One image (H, W) grey (with the grey colour map, as ever) or (3, H, W) colour onto a matplotlib axis."""
    a = np.asarray(image)
    if a.ndim == 3:
        ax.imshow(np.moveaxis(a, 0, -1), **kw)
    else:
        ax.imshow(a, cmap="gray", **{"vmin": 0, "vmax": 255, **kw})


def confused_pairs(
    labels: np.ndarray, preds: dict[str, np.ndarray], focus: tuple[int, ...]
) -> list[tuple[int, int, dict[str, np.ndarray]]]:
    """[(true a, predicted b, {run: test indices with label a predicted b})] for every ordered pair of distinct
    focus classes, most confused (summed over runs) first; ties in class order. len(indices) is the run's
    confusion-matrix entry [a, b]."""
    labels = np.asarray(labels)
    pairs = []
    for a in focus:
        for b in focus:
            if a != b:
                pairs.append(
                    (a, b, {n: np.flatnonzero((labels == a) & (np.asarray(p) == b)) for n, p in preds.items()})
                )
    return sorted(pairs, key=lambda t: -sum(len(v) for v in t[2].values()))  # stable: class order on ties


def most_confused(
    images: np.ndarray,
    labels: np.ndarray,
    preds: dict[str, np.ndarray],
    focus: tuple[int, ...],
    out_png: str | Path,
    per_pair: int = PER_PAIR,
    classifier: str = "knn",
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> Path:
    """Draw the gallery into `out_png`; returns its path.

    images: (N, H, W) grey or (N, 3, H, W) colour uint8 test images; labels: (N,) true labels; preds: {run name:
    (N,) predictions}, in report order (the first is the baseline); focus: the focus classes; classifier: named in
    the title only;
    class_names: the names of the set's classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = as_hwc(images)
    names = list(preds)
    pairs = confused_pairs(labels, preds, focus)[:MAX_PAIRS]
    side, width = images.shape[1], images.shape[2]
    right = {n: np.asarray(p) == np.asarray(labels) for n, p in preds.items()}
    step = width + 6  # 2-pixel frame + 1 pixel of white each side
    fig, axes = plt.subplots(
        max(1, len(pairs)),
        len(names),
        figsize=(len(names) * per_pair * 0.42 + 1.2, 0.62 * max(1, len(pairs)) + 0.8),
        squeeze=False,
    )
    for row, (a, b, ids) in enumerate(pairs):
        for col, name in enumerate(names):
            ax = axes[row, col]
            rgb = np.full((side + 4, per_pair * step, 3), 255, dtype=np.uint8)  # white between images
            for j, i in enumerate(ids[name][:per_pair]):
                x = 3 + j * step
                others_right = [o for o in names if o != name and right[o][i]]
                if others_right:  # a green frame: another run gets this image right
                    rgb[0 : side + 4, x - 2 : x + width + 2] = (44, 160, 44)
                rgb[2 : side + 2, x : x + width] = images[i]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            n = len(ids[name])
            shown = f"first {per_pair} of {n}" if n > per_pair else f"{n}"
            ax.set_title(f"{name}: {shown}", fontsize=7, loc="left", pad=2)
            if col == 0:
                ax.set_ylabel(f"{class_names[a]}\n→ {class_names[b]}", fontsize=7, rotation=0, ha="right", va="center")
    if not pairs:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "fewer than two focus classes: no confusions to show", ha="center", va="center")
    fig.suptitle(
        f"Most confused focus classes (true → predicted, {classifier}); green frame: another run gets it right",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out_png = Path(out_png)
    atomic_save_figure(fig, out_png)
    plt.close(fig)
    return out_png
