"""The page of `embedfm explore`: an `Explore` (explore.py) drawn as one self-contained HTML string.

The page (Bokeh with inline resources) holds
- each run's UMAP of the test embeddings, side by side; all panels draw one shared ColumnDataSource, so a
  selection (tap, box, lasso) in one panel selects the same test images in every panel;
- a preview that follows the mouse: the hovered image enlarged, its true label and every run's prediction;
- clicking a point: its nearest training images in each run with their labels;
- each run's confusion matrix; clicking a cell opens a gallery of exactly the test images in it;
- for each later run against the first: per focus class, the images the first run gets wrong and the later one
  right ("fixed") and the reverse ("broken"); fixed − broken = the change of the confusion matrix's diagonal;
- a switch that shows only the focus classes.

Images travel as two sprites (one PNG each, base64 in a <script> block, shown through a Blob URL held by a CSS
custom property): every test image, lossless (hover, galleries), and only the training images that are someone's
neighbour, as small as the page's size budget requires (`THUMB_LADDER`; docs/explore.md has the measurements).
Thumbnails are `<div>`s showing a sprite at an offset. The page's template, style sheet and JavaScript glue (which
draws the preview, neighbours, galleries and lists) are files of their own in `explore_assets/`, shipped with the
package. Nothing is fetched: the page works from disk, offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np

from embedfm import CLASS_NAMES

if TYPE_CHECKING:
    from embedfm.explore import Explore

SIDE = 28  # Fashion-MNIST images are SIDE × SIDE
MAX_SIDE = 64  # thumbnails of larger images are shrunk to this side
PAGE_BUDGET = 15_000_000  # bytes: the page for 2 runs × 10,000 test images must stay under this
BUDGET_MARGIN = 200_000  # what the estimate of the training sprite's size may be off by
# (side, grey levels) of the training-image thumbnails, best first: the sprite takes the first that fits the budget
THUMB_LADDER = ((28, 256), (28, 16), (24, 16), (20, 16), (20, 8), (16, 8), (14, 8))
SAMPLE = 2000  # training images encoded per rung to estimate its size
_TRAIN_PNG, _THUMBS = "efm-train-sprite", "<!--efm-thumbs-->"  # filled in once the rest of the page is known


@cache
def asset(name: str) -> str:
    """A file of explore_assets/: `page.html` (the Jinja template extending Bokeh's page), `explore.css`, and
    `explore.js`, the page's glue (decodes the data, draws the preview, neighbours and galleries; Bokeh's
    CustomJS callbacks call it)."""
    return (files("embedfm") / "explore_assets" / name).read_text(encoding="utf-8")


def thumbnails(images: np.ndarray) -> np.ndarray:
    """A set's images (n, H, W) grey or (n, 3, H, W) colour → square thumbnails (n, s, s) or (n, s, s, 3):
    non-square images centred on black, s = the longer side, at most MAX_SIDE (larger ones shrunk). Fashion-MNIST's
    (n, 28, 28) come back as they are."""
    from PIL import Image

    a = np.asarray(images)
    if a.ndim == 4:
        a = np.moveaxis(a, 1, -1)
    n, h, w = a.shape[:3]
    if h == w and h <= MAX_SIDE:
        return a
    side = max(h, w)
    sq = np.zeros((n, side, side, *a.shape[3:]), dtype=np.uint8)
    sq[:, (side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = a
    if side <= MAX_SIDE:
        return sq
    return np.stack([np.asarray(Image.fromarray(im).resize((MAX_SIDE, MAX_SIDE), Image.LANCZOS)) for im in sq])


def sprite(images: np.ndarray) -> tuple[np.ndarray, int]:
    """(n, s, s) grey or (n, s, s, 3) colour → (one image with the n images in a grid, columns). Image i sits at
    pixel x = (i % cols) · s, y = (i // cols) · s; the grid is about square, so neither side grows long."""
    n, side, extra = len(images), images.shape[1], images.shape[3:]
    cols = sprite_cols(n)
    rows = max(1, math.ceil(n / cols))
    grid = np.zeros((rows * cols, side, side, *extra), dtype=np.uint8)
    grid[:n] = images
    out = grid.reshape(rows, cols, side, side, *extra).transpose(0, 2, 1, 3, *range(4, 4 + len(extra)))
    return out.reshape(rows * side, cols * side, *extra), cols


def sprite_cols(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def png_bytes(grey: np.ndarray, levels: int = 256) -> bytes:
    """A grey image as PNG; with `levels` < 256, quantised to that many evenly spaced greys and stored as a
    palette PNG of log2(levels) bits a pixel (16 levels: less than half the bytes of the 8-bit image). A colour
    image (H, W, 3) likewise, quantised to `levels` colours."""
    from PIL import Image

    buf = io.BytesIO()
    if levels >= 256:
        Image.fromarray(grey, "RGB" if grey.ndim == 3 else "L").save(buf, "PNG")  # optimize: 1 % smaller, 2× time
        return buf.getvalue()
    bits = max(1, math.ceil(math.log2(levels)))
    if grey.ndim == 3:
        Image.fromarray(grey, "RGB").quantize(colors=levels).save(buf, "PNG", bits=bits)
        return buf.getvalue()
    q = (grey.astype(np.int32) * (levels - 1) + 127) // 255
    img = Image.fromarray(q.astype(np.uint8), "P")
    img.putpalette([g for v in range(levels) for g in (round(v * 255 / (levels - 1)),) * 3])
    img.save(buf, "PNG", bits=bits)
    return buf.getvalue()


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


def _class_color(c: int, focus: tuple[int, ...], k: int = len(CLASS_NAMES)) -> str:
    from embedfm.viz import FOCUS_COLORS, OTHER_COLORS, class_colors

    colors = class_colors(k)
    return FOCUS_COLORS.get(c, colors[c]) if c in focus and k <= len(OTHER_COLORS) else colors[c]


def _page_data(ex: Explore, test_cols: int, train_cols: int, side: int = SIDE) -> dict:
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
        "classNames": list(ex.class_names),
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
        "sprites": {"test": {"cols": test_cols}, "train": {"cols": train_cols}, "side": side},
        "scales": {"g": GALLERY_SCALE, "n": NEIGHBOR_SCALE, "p": PREVIEW_SCALE},
    }


def _sprite_css(name: str, cols: int, side: int = SIDE) -> str:
    """A thumbnail class per display scale, showing the sprite held by the custom property --efm-NAME (set at
    load); the page's JavaScript sets each thumbnail's background-position."""
    css = []
    for cls, scale in (("g", GALLERY_SCALE), ("n", NEIGHBOR_SCALE), ("p", PREVIEW_SCALE)):
        s = side * scale
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

    n = len(ex.class_names)
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
            "true_name": [ex.class_names[t] for t in true],
            "pred_name": [ex.class_names[p] for p in pred],
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
    ticks = {i: (f"★ {c}" if i in ex.focus else c) for i, c in enumerate(ex.class_names)}
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
    """(PNG, thumbnail side, grey levels) of the training-image sprite (`images`: square thumbnails, see
    `thumbnails`): the first rung of THUMB_LADDER (its sides scaled from 28 to the thumbnails' side) whose base64
    fits in `room` bytes (estimated from a sample of the images; the last rung if none fits)."""
    from PIL import Image

    full = images.shape[1]
    ladder = [(full if s == SIDE else max(4, round(s * full / SIDE)), levels) for s, levels in THUMB_LADDER]

    def shrink(imgs: np.ndarray, side: int) -> np.ndarray:
        if side == full:
            return imgs
        return np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.LANCZOS)) for im in imgs])

    n = len(images)
    sample = images[np.random.default_rng(seed).permutation(n)[:SAMPLE]] if n > SAMPLE else images
    for rung, (side, levels) in enumerate(ladder):
        last = rung == len(ladder) - 1
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
    k = len(ex.class_names)
    colors = LinearColorMapper(palette=[_class_color(c, ex.focus, k) for c in range(k)], low=-0.5, high=k - 0.5)
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

    test_thumbs, train_thumbs = thumbnails(ex.test_images), thumbnails(ex.train_images)
    side = test_thumbs.shape[1]
    test_grid, test_cols = sprite(test_thumbs)
    train_cols = sprite_cols(len(train_thumbs))
    data = json.dumps(_page_data(ex, test_cols, train_cols, side), separators=(",", ":")).replace("</", "<\\/")
    variables = {
        # the sprites' rules, a blank line, then the page's own style sheet
        "efm_css": "\n".join(
            [_sprite_css("test", test_cols, side), _sprite_css("train", train_cols, side), "", asset("explore.css")]
        ),
        "efm_test_png": base64.b64encode(png_bytes(test_grid)).decode(),
        "efm_train_png": _TRAIN_PNG,
        "efm_body": _header_html(ex, title),
        "efm_after": _comparison_html(ex) + "</main>" + _aside_html(),
        "efm_data": data,
        "efm_js": asset("explore.js"),
    }
    page = file_html(doc, resources=INLINE, title=title, template=asset("page.html"), template_variables=variables)
    room = budget - len(page.encode()) - BUDGET_MARGIN
    png, thumb_side, levels = neighbor_sprite(train_thumbs, room)
    shades = "colours" if train_thumbs.ndim == 4 else "greys"
    thumbs = f"{thumb_side}×{thumb_side} pixels, {levels} {shades}" if levels < 256 or thumb_side < side else "lossless"
    train = f'id="efm-sprite-train">{_TRAIN_PNG}<'
    page = page.replace(train, f'id="efm-sprite-train">{base64.b64encode(png).decode()}<', 1)
    return page.replace(_THUMBS, thumbs, 1)


def _legend_html(ex: Explore) -> str:
    items = [
        f'<span class="efm-sw" style="background:{_class_color(c, ex.focus, len(ex.class_names))}"></span>'
        + (f"<b>{html.escape(name)}</b>" if c in ex.focus else html.escape(name))
        for c, name in enumerate(ex.class_names)
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
                f'<tr data-class="{c}"><td>{html.escape(ex.class_names[c])}</td>'
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
