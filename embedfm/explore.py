"""`embedfm explore`: one self-contained HTML page to look at runs' test embeddings side by side.

The page (Bokeh with inline resources) holds
- each run's UMAP of the test embeddings (`viz.umap_2d`), side by side; all panels draw one shared
  ColumnDataSource, so a selection (tap, box, lasso) in one panel selects the same test images in every panel;
- a preview that follows the mouse: the hovered image enlarged, its true label and every run's prediction;
- clicking a point: its nearest training images in each run (FAISS, cosine, precomputed) with their labels;
- each run's confusion matrix; clicking a cell opens a gallery of exactly the test images in it;
- for each later run against the first: per focus class, the images the first run gets wrong and the later one
  right ("fixed") and the reverse ("broken"); fixed − broken = the change of the confusion matrix's diagonal;
- a switch that shows only the focus classes.

Images travel as two sprites (one PNG each, base64 in a <script> block, shown through a Blob URL held by a CSS
custom property): every test image, lossless (hover, galleries), and only the training images that are someone's
neighbour, as small as the page's size budget requires (`THUMB_LADDER`; docs/explore.md has the measurements).
Thumbnails are `<div>`s showing a sprite at an offset; JavaScript glue (`_APP_JS`) draws the preview,
neighbours, galleries and lists. Nothing is fetched: the page works from disk, offline.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedfm import CLASS_NAMES, checkpoint, rundir
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_write_text

SIDE = 28  # Fashion-MNIST images are SIDE × SIDE
NEIGHBORS = 10  # training neighbours shown per run
CLASSIFIERS = ("knn", "softmax", "knn_flip")  # the predictions in embeddings.npz (`pred_<name>`)
PAGE_BUDGET = 15_000_000  # bytes: the page for 2 runs × 10,000 test images must stay under this
BUDGET_MARGIN = 200_000  # what the estimate of the training sprite's size may be off by
# (side, grey levels) of the training-image thumbnails, best first: the sprite takes the first that fits the budget
THUMB_LADDER = ((28, 256), (28, 16), (24, 16), (20, 16), (20, 8), (16, 8), (14, 8))
SAMPLE = 2000  # training images encoded per rung to estimate its size
_TRAIN_PNG, _THUMBS = "efm-train-sprite", "<!--efm-thumbs-->"  # filled in once the rest of the page is known


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
    test_images: np.ndarray  # (N, 28, 28) uint8
    train_images: np.ndarray  # (M, 28, 28) uint8

    @property
    def confusions(self) -> np.ndarray:
        """(R, 10, 10): [run, true, predicted] → number of the images shown."""
        cm = np.zeros((len(self.names), len(CLASS_NAMES), len(CLASS_NAMES)), dtype=np.int64)
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


def sprite(images: np.ndarray) -> tuple[np.ndarray, int]:
    """(n, s, s) → (one grey image with the n images in a grid, columns). Image i sits at pixel
    x = (i % cols) · s, y = (i // cols) · s; the grid is about square, so neither side grows long."""
    n, side = len(images), images.shape[1]
    cols = sprite_cols(n)
    rows = max(1, math.ceil(n / cols))
    grid = np.zeros((rows * cols, side, side), dtype=np.uint8)
    grid[:n] = images
    return grid.reshape(rows, cols, side, side).transpose(0, 2, 1, 3).reshape(rows * side, cols * side), cols


def sprite_cols(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def png_bytes(grey: np.ndarray, levels: int = 256) -> bytes:
    """A grey image as PNG; with `levels` < 256, quantised to that many evenly spaced greys and stored as a
    palette PNG of log2(levels) bits a pixel (16 levels: less than half the bytes of the 8-bit image)."""
    from PIL import Image

    buf = io.BytesIO()
    if levels >= 256:
        Image.fromarray(grey, "L").save(buf, "PNG")  # optimize=True: 1 % smaller, twice the time
        return buf.getvalue()
    bits = max(1, math.ceil(math.log2(levels)))
    q = (grey.astype(np.int32) * (levels - 1) + 127) // 255
    img = Image.fromarray(q.astype(np.uint8), "P")
    img.putpalette([g for v in range(levels) for g in (round(v * 255 / (levels - 1)),) * 3])
    img.save(buf, "PNG", bits=bits)
    return buf.getvalue()


def _train_split_ids(data, cfg: dict) -> np.ndarray:
    """Indices into the training set of a run's train split (the kNN references, in embeddings.npz's order):
    make_splits itself, applied to the indices instead of the images, so the split cannot drift from eval's."""
    import torch

    from embedfm.data import make_splits

    ids = dataclasses.replace(data, train_images=torch.arange(len(data.train_labels)))
    return make_splits(
        ids, cfg["val_size"], cfg["limit"], holdout=tuple(cfg.get("holdout_classes") or ())
    ).train_x.numpy()


def _read_npz(run_dir: str | Path, classifier: str) -> dict:
    from embedfm.evaluate import read_embeddings

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
    from embedfm.data import load_fashion_mnist
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
    labels = arrays[0]["test_labels"].astype(np.int64)
    for name, a in zip(names[1:], arrays[1:]):
        if not np.array_equal(a["test_labels"], labels):
            raise EmbedfmError(f"{names[0]} and {name} were evaluated on different test sets; rerun `embedfm eval`")
    focus = tuple(focus or configs[0]["focus_classes"])
    if not all(0 <= c < len(CLASS_NAMES) for c in focus):
        raise EmbedfmError(f"focus classes must be class ids 0-{len(CLASS_NAMES) - 1}, got {list(focus)}")
    data = load_fashion_mnist(data_dir or configs[0]["data_dir"])
    for name, r in zip(names, run_dirs):
        trained_on = checkpoint.load_checkpoint(r).get("data")
        if trained_on is not None and trained_on != data.fingerprint():
            raise EmbedfmError(f"{name}: trained on different data than {data.source} holds; pass --data-dir")
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
    )


# ----------------------------------------------------------------------------------------------
# page

FOCUS_SIZE, OTHER_SIZE = 5, 3
FOCUS_ALPHA, OTHER_ALPHA = 0.85, 0.3
GALLERY_SCALE, NEIGHBOR_SCALE, PREVIEW_SCALE = 1.5, 1.5, 4


def _ids(a: np.ndarray) -> str:
    """The smallest unsigned little-endian dtype for these indices (Fashion-MNIST's fit in 16 bits)."""
    return "<u2" if len(a) == 0 or a.max() < 1 << 16 else "<u4"


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def _class_color(c: int, focus: tuple[int, ...]) -> str:
    from embedfm.viz import FOCUS_COLORS, OTHER_COLORS

    return FOCUS_COLORS.get(c, OTHER_COLORS[c]) if c in focus else OTHER_COLORS[c]


def _page_data(ex: Explore, test_cols: int, train_cols: int) -> dict:
    """What the page's JavaScript reads (JSON in a <script> element). Integer arrays travel as base64 of
    little-endian bytes, decoded into typed arrays."""
    idx_dtype = _ids(np.arange(len(ex.train_ids)))
    comparisons = []
    for b in range(1, len(ex.names)):
        comp = ex.comparison(0, b)
        comparisons.append(
            {
                "a": 0,
                "b": b,
                "classes": {str(c): {kind: v.tolist() for kind, v in lists.items()} for c, lists in comp.items()},
            }
        )
    return {
        "names": ex.names,
        "classNames": list(CLASS_NAMES),
        "focus": list(ex.focus),
        "classifier": ex.classifier,
        "n": len(ex.labels),
        "k": int(ex.neighbors.shape[2]),
        "testIds": _b64(ex.test_ids.astype(_ids(ex.test_ids))),
        "testIdBytes": np.dtype(_ids(ex.test_ids)).itemsize,
        "labels": _b64(ex.labels.astype(np.uint8)),
        "preds": [_b64(p.astype(np.uint8)) for p in ex.preds],
        "neighbors": [_b64(nb.astype(idx_dtype)) for nb in ex.neighbors],
        "neighborBytes": np.dtype(idx_dtype).itemsize,
        "trainIds": _b64(ex.train_ids.astype(_ids(ex.train_ids))),
        "trainIdBytes": np.dtype(_ids(ex.train_ids)).itemsize,
        "trainLabels": _b64(ex.train_labels.astype(np.uint8)),
        "confusions": ex.confusions.tolist(),
        "comparisons": comparisons,
        "sprites": {"test": {"cols": test_cols}, "train": {"cols": train_cols}, "side": SIDE},
        "scales": {"g": GALLERY_SCALE, "n": NEIGHBOR_SCALE, "p": PREVIEW_SCALE},
    }


def _sprite_css(name: str, cols: int) -> str:
    """A thumbnail class per display scale, showing the sprite held by the custom property --efm-NAME (set at
    load); the page's JavaScript sets each thumbnail's background-position."""
    css = []
    for cls, scale in (("g", GALLERY_SCALE), ("n", NEIGHBOR_SCALE), ("p", PREVIEW_SCALE)):
        s = SIDE * scale
        css.append(
            f".efm-{name}.{cls}{{background-image:var(--efm-{name});width:{s:g}px;height:{s:g}px;"
            f"background-size:{cols * s:g}px auto}}"
        )
    return "\n".join(css)


def _umap_panel(ex: Explore, r: int, source, view, colors, size: int):
    from bokeh.models import CustomJS, HoverTool
    from bokeh.plotting import figure

    cfg = ex.configs[r]
    acc = float((ex.preds[r] == ex.labels).mean())
    p = figure(
        width=size,
        height=size,
        title=f"{ex.names[r]} ({cfg['loss']}, {cfg['backbone']}): {ex.classifier} acc {acc:.1%}, "
        f"focus silhouette {ex.silhouettes[r]:.3f}",
        tools="pan,wheel_zoom,box_select,lasso_select,tap,reset",
        active_scroll="wheel_zoom",
        toolbar_location="above",
        name=f"umap{r}",
    )
    p.axis.visible = False
    p.grid.visible = False
    scatter = p.scatter(
        x=f"x{r}",
        y=f"y{r}",
        source=source,
        view=view,
        size="size",
        fill_color={"field": "label", "transform": colors},
        line_color=None,
        fill_alpha="alpha",
        nonselection_fill_alpha=0.06,
        selection_fill_alpha=1.0,
        selection_line_color="black",
        name=f"points{r}",
    )
    hover = CustomJS(args={"run": r, "plot": p}, code="window.EFM && EFM.hover(cb_data, run, plot);")
    p.add_tools(HoverTool(renderers=[scatter], tooltips=None, callback=hover, description="preview images"))
    return p


def _confusion_panel(ex: Explore, r: int, cm: np.ndarray, size: int):
    from bokeh.models import ColumnDataSource, CustomJS, HoverTool, Range1d, TapTool
    from bokeh.palettes import Blues256
    from bokeh.plotting import figure

    n = len(CLASS_NAMES)
    true, pred = np.divmod(np.arange(n * n), n)
    counts = cm.ravel()
    share = counts / np.maximum(cm.sum(1), 1)[true]
    palette = Blues256[::-1]
    src = ColumnDataSource(
        {
            "true": true,
            "pred": pred,
            "count": counts,
            "share": (100 * share).round(1),
            "true_name": [CLASS_NAMES[t] for t in true],
            "pred_name": [CLASS_NAMES[p] for p in pred],
            "color": [palette[min(255, int(s * 255))] for s in share],
            "text_color": ["white" if s > 0.55 else "#222" for s in share],
            "label": [str(c) if c else "" for c in counts],
            "alpha": [1.0] * (n * n),
            "text_alpha": [1.0] * (n * n),
        },
        name=f"confusion{r}",
    )
    p = figure(
        width=size,
        height=size,
        title=f"{ex.names[r]}: confusion ({ex.classifier}); click a cell",
        x_range=Range1d(-0.5, n - 0.5),
        y_range=Range1d(n - 0.5, -0.5),
        tools="",
        toolbar_location=None,
        name=f"cmplot{r}",
    )
    cells = p.rect(
        x="pred",
        y="true",
        width=1,
        height=1,
        source=src,
        fill_color="color",
        fill_alpha="alpha",
        line_color="white",
        selection_line_color="crimson",
        selection_line_width=3,
        nonselection_fill_alpha="alpha",
        name=f"cells{r}",
    )
    p.text(x="pred", y="true", text="label", source=src, text_align="center", text_baseline="middle",
           text_font_size="8pt", text_color="text_color", text_alpha="text_alpha",
           nonselection_text_alpha="text_alpha")  # fmt: skip
    p.add_tools(TapTool(renderers=[cells]))
    p.add_tools(HoverTool(renderers=[cells], tooltips="@true_name → @pred_name: @count (@share% of the row)"))
    ticks = {i: (f"★ {c}" if i in ex.focus else c) for i, c in enumerate(CLASS_NAMES)}
    for axis in (p.xaxis, p.yaxis):
        axis.ticker = list(range(n))
        axis.major_label_overrides = ticks
        axis.major_label_text_font_size = "8pt"
    p.xaxis.major_label_orientation = 0.8
    p.xaxis.axis_label, p.yaxis.axis_label = "predicted", "true"
    p.grid.visible = False
    src.selected.js_on_change("indices", CustomJS(args={"run": r}, code="window.EFM && EFM.cell(run, cb_obj.indices);"))
    return p, src


def neighbor_sprite(images: np.ndarray, room: int, seed: int = 0) -> tuple[bytes, int, int]:
    """(PNG, thumbnail side, grey levels) of the training-image sprite: the first rung of THUMB_LADDER whose
    base64 fits in `room` bytes (estimated from a sample of the images; the last rung if none fits)."""
    from PIL import Image

    def shrink(imgs: np.ndarray, side: int) -> np.ndarray:
        if side == SIDE:
            return imgs
        return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.LANCZOS)) for im in imgs])

    n = len(images)
    sample = images[np.random.default_rng(seed).permutation(n)[:SAMPLE]] if n > SAMPLE else images
    for rung, (side, levels) in enumerate(THUMB_LADDER):
        last = rung == len(THUMB_LADDER) - 1
        per_image = len(png_bytes(sprite(shrink(sample, side))[0], levels)) / max(1, len(sample))
        if per_image * n * 4 / 3 > room and not last:
            continue
        png = png_bytes(sprite(shrink(images, side))[0], levels)
        if math.ceil(len(png) / 3) * 4 <= room or last:  # the estimate was right (else: the next rung)
            return png, side, levels
    raise AssertionError("unreachable: the last rung always returns")


def page_html(ex: Explore, title: str | None = None, budget: int = PAGE_BUDGET) -> str:
    """The whole page as one HTML string (Bokeh's JavaScript inline, both sprites inside). The training-image
    thumbnails get whatever the rest of the page leaves of `budget` bytes (`neighbor_sprite`)."""
    from bokeh.document import Document
    from bokeh.embed import file_html
    from bokeh.events import DocumentReady
    from bokeh.layouts import column, row
    from bokeh.models import BooleanFilter, CDSView, ColumnDataSource, CustomJS, LinearColorMapper
    from bokeh.resources import INLINE

    title = title or "embedfm explore: " + " vs ".join(ex.names)
    focus = np.isin(ex.labels, ex.focus)
    cols = {"label": ex.labels.astype(np.uint8)}
    for r in range(len(ex.names)):
        cols[f"x{r}"], cols[f"y{r}"] = ex.xy[r, :, 0], ex.xy[r, :, 1]
    cols["size"] = np.where(focus, FOCUS_SIZE, OTHER_SIZE).astype(np.uint8)
    cols["alpha"] = np.where(focus, FOCUS_ALPHA, OTHER_ALPHA).astype(np.float32)
    source = ColumnDataSource(cols, name="points")
    colors = LinearColorMapper(
        palette=[_class_color(c, ex.focus) for c in range(len(CLASS_NAMES))], low=-0.5, high=len(CLASS_NAMES) - 0.5
    )
    only_focus = BooleanFilter(booleans=[True] * len(ex.labels), name="focus_filter")
    view = CDSView(filter=only_focus)
    size = 560 if len(ex.names) <= 2 else 440
    umaps = [_umap_panel(ex, r, source, view, colors, size) for r in range(len(ex.names))]
    confusions = [_confusion_panel(ex, r, cm, size) for r, cm in enumerate(ex.confusions)]
    source.selected.js_on_change("indices", CustomJS(code="window.EFM && EFM.selected(cb_obj.indices);"))
    layout = column(row(*umaps), row(*[p for p, _ in confusions]), name="explore")
    doc = Document()
    doc.add_root(layout)
    models = {"source": source, "filter": only_focus, "umaps": umaps, "cms": [s for _, s in confusions],
              "cmplots": [p for p, _ in confusions]}  # fmt: skip
    doc.js_on_event(DocumentReady, CustomJS(args=models, code="EFM.init({source, filter, umaps, cms, cmplots});"))

    test_grid, test_cols = sprite(ex.test_images)
    train_cols = sprite_cols(len(ex.train_images))
    data = json.dumps(_page_data(ex, test_cols, train_cols), separators=(",", ":")).replace("</", "<\\/")
    template = (
        "{% block postamble %}<style>{{ efm_css }}</style>{% endblock %}\n"
        "{% block contents %}{{ efm_body }}{{ plot_div }}{{ efm_after }}"
        '<script type="application/octet-stream" id="efm-sprite-test">{{ efm_test_png }}</script>'
        '<script type="application/octet-stream" id="efm-sprite-train">{{ efm_train_png }}</script>'
        '<script type="application/json" id="efm-data">{{ efm_data }}</script>'
        "<script>{{ efm_js }}</script>{% endblock %}"
    )
    variables = {
        "efm_css": "\n".join([_sprite_css("test", test_cols), _sprite_css("train", train_cols), _APP_CSS]),
        "efm_test_png": base64.b64encode(png_bytes(test_grid)).decode(),
        "efm_train_png": _TRAIN_PNG,
        "efm_body": _header_html(ex, title),
        "efm_after": _comparison_html(ex) + "</main>" + _aside_html(),
        "efm_data": data,
        "efm_js": _APP_JS,
    }
    page = file_html(doc, resources=INLINE, title=title, template=template, template_variables=variables)
    room = budget - len(page.encode()) - BUDGET_MARGIN
    png, side, levels = neighbor_sprite(ex.train_images, room)
    thumbs = f"{side}×{side} pixels, {levels} greys" if levels < 256 or side < SIDE else "lossless"
    train = f'id="efm-sprite-train">{_TRAIN_PNG}<'
    page = page.replace(train, f'id="efm-sprite-train">{base64.b64encode(png).decode()}<', 1)
    return page.replace(_THUMBS, thumbs, 1)


def _legend_html(ex: Explore) -> str:
    items = [
        f'<span class="efm-sw" style="background:{_class_color(c, ex.focus)}"></span>'
        + (f"<b>{html.escape(name)}</b>" if c in ex.focus else html.escape(name))
        for c, name in enumerate(CLASS_NAMES)
    ]
    return "".join(f"<span>{i}</span>" for i in items)


def _header_html(ex: Explore, title: str) -> str:
    runs = ", ".join(
        f"<b>{html.escape(n)}</b> ({html.escape(c['loss'])}, {html.escape(c['backbone'])}, seed {c['seed']})"
        for n, c in zip(ex.names, ex.configs)
    )
    return (
        f'<div class="efm-page"><main><h1>{html.escape(title)}</h1>'
        f"<p>{len(ex.labels):,} test images; runs {runs}; predictions: {ex.classifier}; "
        f"neighbours: {ex.neighbors.shape[2]} nearest training images (cosine). "
        f"neighbour thumbnails {_THUMBS}. "
        "Hover a point for its image; click one for its neighbours; box/lasso-select (toolbar) to see many; "
        "click a confusion cell for its images. Focus classes are drawn large.</p>"
        '<p class="efm-bar"><label><input type="checkbox" id="efm-focus-only"> only the focus classes</label>'
        f'<span class="efm-legend">{_legend_html(ex)}</span></p>'
    )


def _comparison_html(ex: Explore) -> str:
    """Fixed / broken per focus class for each later run against the first; the numbers are buttons that
    open the images."""
    if len(ex.names) < 2:
        return ""
    cm = ex.confusions
    out = ['<section id="efm-comparisons"><h2>Fixed and broken (focus classes)</h2>']
    for b in range(1, len(ex.names)):
        a_name, b_name = html.escape(ex.names[0]), html.escape(ex.names[b])
        out.append(
            f'<table class="efm-cmp" data-a="0" data-b="{b}"><caption><b>fixed</b>: {a_name} wrong, {b_name} right; '
            f"<b>broken</b>: {a_name} right, {b_name} wrong. fixed − broken = the change of the diagonal "
            f"({b_name} − {a_name}).</caption><tr><th>class</th><th>fixed</th><th>broken</th>"
            f"<th>fixed − broken</th><th>diagonal {a_name} → {b_name}</th></tr>"
        )
        tot = {"fixed": 0, "broken": 0}
        for c, lists in ex.comparison(0, b).items():
            nf, nb = len(lists["fixed"]), len(lists["broken"])
            tot["fixed"] += nf
            tot["broken"] += nb
            out.append(
                f'<tr data-class="{c}"><td>{html.escape(CLASS_NAMES[c])}</td>'
                + "".join(
                    f'<td><button class="efm-list" data-b="{b}" data-class="{c}" data-kind="{kind}" '
                    f'data-count="{m}">{m}</button></td>'
                    for kind, m in (("fixed", nf), ("broken", nb))
                )
                + f"<td>{nf - nb:+d}</td><td>{cm[0, c, c]} → {cm[b, c, c]}</td></tr>"
            )
        out.append(
            f'<tr class="efm-total"><td>all focus classes</td><td data-total="fixed">{tot["fixed"]}</td>'
            f'<td data-total="broken">{tot["broken"]}</td><td>{tot["fixed"] - tot["broken"]:+d}</td><td></td></tr>'
            "</table>"
        )
    return "".join(out) + "</section>"


def _aside_html() -> str:
    return (
        '<aside id="efm-side"><section id="efm-point"><h2>Point</h2><p class="efm-hint">Click a point (or a '
        'thumbnail) to see its nearest training images in each run.</p></section><section id="efm-gallery-box">'
        '<h2 id="efm-gallery-title">Gallery</h2><p class="efm-hint">Click a confusion cell, a fixed/broken count, '
        'or select points.</p><div id="efm-gallery"></div></section></aside></div>'
        '<div id="efm-tip" hidden></div>'
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


_APP_CSS = """
body{font:13px/1.4 system-ui,sans-serif;color:#222;margin:0}
.efm-page{display:flex;align-items:flex-start;gap:12px;padding:8px 12px}
main{flex:0 0 auto}
main h1{font-size:18px;margin:4px 0}
main>p{max-width:1120px;margin:4px 0 8px}
h2{font-size:14px;margin:10px 0 4px}
.efm-bar{margin:4px 0}.efm-legend{margin-left:14px;font-size:12px}.efm-legend>span{margin-right:9px;white-space:nowrap}
.efm-sw{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:3px}
#efm-side{flex:1 1 380px;min-width:360px;max-width:560px;position:sticky;top:0;max-height:100vh;overflow:auto}
.efm-hint{color:#777}
.efm-test,.efm-train{display:inline-block;background-repeat:no-repeat}
.efm-test.p{image-rendering:pixelated}
#efm-gallery{display:flex;flex-wrap:wrap;gap:2px;max-height:46vh;overflow:auto}
#efm-gallery .efm-test{cursor:pointer;outline:1px solid #ddd}
.efm-cap{font-size:9px;color:#555;text-align:center;width:46px;overflow:hidden;white-space:nowrap}
.efm-fig{display:inline-flex;flex-direction:column;align-items:center;margin:0 1px 4px 0}
.efm-fig.ok .efm-train{outline:2px solid #2ca02c}.efm-fig.bad .efm-train{outline:2px solid #d62728}
.efm-run{margin:6px 0}
.ok-t{color:#2ca02c}.bad-t{color:#d62728}
#efm-tip{position:fixed;z-index:1000;background:#fff;border:1px solid #999;border-radius:4px;padding:6px;
 box-shadow:0 2px 8px rgba(0,0,0,.25);pointer-events:none;font-size:12px}
#efm-tip:not([hidden]){display:flex;gap:8px;align-items:flex-start}
.efm-q{display:flex;gap:10px;align-items:flex-start}
#efm-tip div.l{white-space:nowrap}
table.efm-cmp{border-collapse:collapse;margin:6px 0 12px}
table.efm-cmp caption{text-align:left;color:#555;padding-bottom:4px;max-width:900px}
table.efm-cmp td,table.efm-cmp th{border:1px solid #ddd;padding:2px 8px;text-align:right}
table.efm-cmp td:first-child{text-align:left}
button.efm-list{font:inherit;min-width:48px;cursor:pointer}
"""

# The page's glue: decodes the data, draws the preview, neighbours, galleries; called from Bokeh's CustomJS.
_APP_JS = r"""
window.EFM = (function () {
  const D = JSON.parse(document.getElementById("efm-data").textContent);
  const bytes = (s) => {
    const bin = atob(s), out = new Uint8Array(bin.length);
    for (let j = 0; j < bin.length; j++) out[j] = bin.charCodeAt(j);
    return out;
  };
  // the sprites: base64 in <script> blocks, shown through Blob URLs (Chromium ignores a style sheet's
  // multi-megabyte data: URI); custom properties inherit into Bokeh's shadow DOM too
  for (const kind of ["test", "train"]) {
    const b64 = document.getElementById("efm-sprite-" + kind).textContent.trim();
    const png = new Blob([bytes(b64)], {type: "image/png"});
    document.documentElement.style.setProperty("--efm-" + kind, `url(${URL.createObjectURL(png)})`);
  }
  const uint = (s, size) => size === 2 ? new Uint16Array(bytes(s).buffer) : new Uint32Array(bytes(s).buffer);
  const labels = bytes(D.labels), preds = D.preds.map(bytes), testIds = uint(D.testIds, D.testIdBytes);
  const trainIds = uint(D.trainIds, D.trainIdBytes), trainLabels = bytes(D.trainLabels);
  const nbrs = D.neighbors.map((s) => uint(s, D.neighborBytes));
  const K = D.k, N = D.n, side = D.sprites.side;
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);
  const cname = (c) => esc(D.classNames[c]);
  let M = null, quiet = null, hovered = -1;

  function thumb(kind, i, cls, extra) {
    const cols = D.sprites[kind].cols, s = D.scales[cls] * side;
    const x = (i % cols) * s, y = Math.floor(i / cols) * s;
    const style = `background-position:-${x}px -${y}px`;
    return `<div class="efm-${kind} ${cls}" data-i="${i}" style="${style}"${extra || ""}></div>`;
  }
  function describe(i) {
    const runs = D.names.map((n, r) => {
      const ok = preds[r][i] === labels[i];
      return `<div class="l">${esc(n)}: <span class="${ok ? "ok-t" : "bad-t"}">${cname(preds[r][i])}</span></div>`;
    });
    return `<div class="l">test #${testIds[i]}, true: <b>${cname(labels[i])}</b></div>` + runs.join("");
  }
  function title(i) {
    return ` title="test #${testIds[i]}: ${cname(labels[i])}; ` +
      D.names.map((n, r) => `${esc(n)} → ${cname(preds[r][i])}`).join("; ") + `"`;
  }
  function hover(cb, r, plot) {
    const tip = document.getElementById("efm-tip");
    const hit = cb.index.indices;
    if (!hit.length) { tip.hidden = true; hovered = -1; return; }
    const g = cb.geometry, xs = M.source.data["x" + r], ys = M.source.data["y" + r];
    const w = plot.x_range.end - plot.x_range.start, h = plot.y_range.end - plot.y_range.start;
    let best = hit[0], bd = Infinity;
    for (const i of hit) {
      const d = ((xs[i] - g.x) / w) ** 2 + ((ys[i] - g.y) / h) ** 2;
      if (d < bd) { bd = d; best = i; }
    }
    hovered = best;
    tip.innerHTML = thumb("test", best, "p") + `<div>${describe(best)}</div>`;
    tip.dataset.i = best;
    tip.hidden = false;
    const canvas = Bokeh.index.find_one(plot).canvas_view.el.getBoundingClientRect();
    const mx = canvas.left + g.sx, my = canvas.top + g.sy, tw = tip.offsetWidth, th = tip.offsetHeight;
    tip.style.left = (mx + 16 + tw > innerWidth ? mx - 16 - tw : mx + 16) + "px";
    tip.style.top = Math.max(0, Math.min(my + 16, innerHeight - th - 4)) + "px";
  }
  function showPoint(i) {
    const rows = D.names.map((n, r) => {
      const figs = [];
      for (let j = 0; j < K; j++) {
        const t = nbrs[r][i * K + j], c = trainLabels[t];
        figs.push(`<div class="efm-fig ${c === labels[i] ? "ok" : "bad"}">` +
          thumb("train", t, "n", ` title="train #${trainIds[t]}: ${cname(c)}"`) +
          `<div class="efm-cap">${cname(c)}</div></div>`);
      }
      const ok = preds[r][i] === labels[i];
      return `<div class="efm-run" data-run="${r}"><b>${esc(n)}</b> predicts ` +
        `<span class="${ok ? "ok-t" : "bad-t"}">${cname(preds[r][i])}</span>; ${K} nearest training images:<br>` +
        figs.join("") + `</div>`;
    });
    const box = document.getElementById("efm-point");
    box.innerHTML = `<h2>Point</h2><div class="efm-q" data-i="${i}">` + thumb("test", i, "p") +
      `<div>${describe(i)}</div></div>` + rows.join("");
    box.dataset.i = i;
  }
  function gallery(what, head, ids, caption) {
    document.getElementById("efm-gallery-title").textContent = head;
    const parts = new Array(ids.length);
    for (let j = 0; j < ids.length; j++) {
      const i = ids[j];
      parts[j] = caption ? `<div class="efm-fig">${thumb("test", i, "g", title(i))}<div class="efm-cap">` +
        `${caption(i)}</div></div>` : thumb("test", i, "g", title(i));
    }
    const g = document.getElementById("efm-gallery");
    g.innerHTML = parts.join("");
    g.dataset.count = ids.length;
    g.dataset.what = what;
    g.parentElement.querySelector(".efm-hint")?.remove();
  }
  function highlight(ids) {  // select in the panels without the selection replacing the gallery
    quiet = Array.from(ids);
    M.source.selected.indices = quiet;
  }
  function selected(ids) {
    if (!M || (quiet && ids.length === quiet.length && ids.every((v, j) => v === quiet[j]))) return;
    quiet = null;
    if (!ids.length) return;
    const sorted = Array.from(ids).sort((a, b) => a - b);
    if (ids.length > 1) gallery("selection", `${ids.length} selected images`, sorted);
    // a tap selects every point under the mouse: show the one the preview showed
    showPoint(ids.includes(hovered) ? hovered : sorted[0]);
  }
  function cell(r, sel) {
    if (!M || !sel.length) return;
    const src = M.cms[r], c = sel[0], t = src.data.true[c], p = src.data.pred[c], pr = preds[r], ids = [];
    for (let i = 0; i < N; i++) if (labels[i] === t && pr[i] === p) ids.push(i);
    gallery(`cell ${r} ${t} ${p}`, `${D.names[r]}: true ${D.classNames[t]}, predicted ${D.classNames[p]}: ` +
      `${ids.length} images`, ids);
    highlight(ids);
  }
  function list(b, c, kind) {
    const cmp = D.comparisons.find((x) => x.b === b), ids = cmp.classes[c][kind], a = cmp.a;
    const wrong = kind === "fixed" ? a : b;  // the run that gets them wrong: its prediction under each image
    gallery(`${kind} ${b} ${c}`, `${kind}: ${ids.length} ${D.classNames[c]} images ` +
      (kind === "fixed" ? `${D.names[a]} gets wrong and ${D.names[b]} right` :
        `${D.names[a]} gets right and ${D.names[b]} wrong`) + ` (under each: ${D.names[wrong]}'s prediction)`,
      ids, (i) => cname(preds[wrong][i]));
    highlight(ids);
  }
  function focusOnly(on) {
    const f = D.focus;
    M.filter.booleans = Array.from(labels, (c) => !on || f.includes(c));
    for (const src of M.cms) {
      const keep = Array.from(src.data.true, (t, j) => !on || (f.includes(t) && f.includes(src.data.pred[j])));
      src.data.alpha = keep.map((k) => k ? 1 : 0.12);
      src.data.text_alpha = keep.map((k) => k ? 1 : 0.3);
      src.change.emit();
    }
  }
  function init(models) {
    M = models;
    document.getElementById("efm-gallery").addEventListener("click", (e) => {
      const el = e.target.closest("[data-i]");
      if (el) { const i = +el.dataset.i; showPoint(i); highlight([i]); }
    });
    const box = document.getElementById("efm-focus-only");
    box.addEventListener("change", () => focusOnly(box.checked));
    if (box.checked) focusOnly(true);  // a reload can keep the box ticked
    for (const btn of document.querySelectorAll("button.efm-list")) {
      btn.addEventListener("click", () => list(+btn.dataset.b, btn.dataset.class, btn.dataset.kind));
    }
    for (const p of M.umaps) {  // the preview hides when the mouse leaves a panel
      const v = Bokeh.index.find_one(p);
      v && v.el.addEventListener("mouseleave", () => { document.getElementById("efm-tip").hidden = true; });
    }
    for (const p of [...M.umaps, ...M.cmplots]) {  // no focus ring after a mouse click (keyboard focus keeps it)
      const root = Bokeh.index.find_one(p)?.canvas_view.el.shadowRoot;
      if (!root) continue;
      const css = document.createElement("style");
      css.textContent = ".bk-events:focus:not(:focus-visible){outline:none}";
      root.appendChild(css);
    }
    EFM.readyAt = performance.now();
    EFM.ready = true;
  }
  return {D, hover, selected, cell, list, focusOnly, showPoint, init, ready: false};
})();
"""
