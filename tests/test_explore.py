"""`embedfm explore` (embedfm.explore and embedfm.explore_page: the interactive page; the static "most confused"
gallery is test_gallery.py's).

Fast tests check the data the page is built from (sprite geometry, counts, fixed/broken against the confusion
matrices, the page's embedded data) without a browser. The slow ones build a page from two small real runs (fake
runs where the real data set is absent) and drive it in headless Chromium: points drawn, hover preview with the
right image and labels, a click's neighbours, a confusion cell's gallery, fixed/broken counts, the focus switch.
"""

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_fake_dataset
from PIL import Image

from embedfm import CLASS_NAMES
from embedfm.cli import main
from embedfm.data import FILES, SYSTEM_DIR
from embedfm.explore import Explore
from embedfm.explore_page import SIDE, THUMB_LADDER, neighbor_sprite, page_html, png_bytes, sprite, sprite_cols
from embedfm.gallery import confused_pairs

CHROMEDRIVER = Path("/usr/bin/chromedriver")


FOCUS = (0, 2, 4, 6)


def test_sprite_geometry_and_png_round_trip():
    images = np.stack([np.full((SIDE, SIDE), 10 * i + 5, dtype=np.uint8) for i in range(10)])
    images[3, 0, 0] = 255  # a marker pixel: image 3's top-left corner
    grid, cols = sprite(images)
    assert cols == 4 and grid.shape == (3 * SIDE, 4 * SIDE)  # about square: 4 columns, 3 rows for 10 images
    for i in range(10):
        y, x = (i // cols) * SIDE, (i % cols) * SIDE  # the geometry the page's JavaScript uses
        assert np.array_equal(grid[y : y + SIDE, x : x + SIDE], images[i])
    assert not grid[2 * SIDE :, 2 * SIDE :].any()  # the two unused cells stay black
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(grid)))), grid)  # lossless

    ramp = np.tile(np.arange(256, dtype=np.uint8), (SIDE, 1))
    back = np.asarray(Image.open(io.BytesIO(png_bytes(ramp, levels=16))).convert("L")).astype(int)
    assert len(np.unique(back)) == 16 and np.abs(back - ramp).max() <= 255 / 15 / 2 + 1  # 16 greys, nearest one


def _synthetic(n: int = 400, m: int = 60, runs: int = 2, seed: int = 0) -> Explore:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    preds = np.stack([np.where(rng.random(n) < 0.7, labels, rng.integers(0, 10, n)) for _ in range(runs)])
    return Explore(
        names=[f"run{r}" for r in range(runs)],
        configs=[{"loss": "ce", "backbone": "fastcnn", "seed": r} for r in range(runs)],
        focus=FOCUS,
        classifier="knn",
        test_ids=np.arange(n) * 3,
        labels=labels,
        preds=preds,
        xy=rng.normal(size=(runs, n, 2)).astype(np.float32),
        silhouettes=[0.1] * runs,
        neighbors=rng.integers(0, m, (runs, n, 5)),
        train_ids=np.sort(rng.choice(1000, m, replace=False)),
        train_labels=rng.integers(0, 10, m),
        test_images=rng.integers(0, 256, (n, SIDE, SIDE), dtype=np.uint8),
        train_images=rng.integers(0, 256, (m, SIDE, SIDE), dtype=np.uint8),
    )


def test_confusions_and_fixed_broken_counts():
    ex = _synthetic()
    cm = ex.confusions
    assert cm.shape == (2, 10, 10) and (cm.sum(axis=(1, 2)) == len(ex.labels)).all()
    for r in range(2):
        for t in range(10):
            for p in range(10):
                assert cm[r, t, p] == ((ex.labels == t) & (ex.preds[r] == p)).sum()
    comp = ex.comparison(0, 1)
    assert set(comp) == set(FOCUS)
    for c, lists in comp.items():
        fixed, broken = lists["fixed"], lists["broken"]
        assert (ex.labels[fixed] == c).all() and (ex.preds[0][fixed] != c).all() and (ex.preds[1][fixed] == c).all()
        assert (ex.labels[broken] == c).all() and (ex.preds[0][broken] == c).all() and (ex.preds[1][broken] != c).all()
        assert len(fixed) - len(broken) == cm[1, c, c] - cm[0, c, c]  # what the page promises
        assert len(fixed) == ((ex.labels == c) & (ex.preds[0] != c) & (ex.preds[1] == c)).sum()


def _embedded(page: str, element_id: str) -> dict:
    m = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_page_embeds_everything_once_and_offline():
    import base64

    ex = _synthetic()
    page = page_html(ex)
    # Bokeh inline: no script or stylesheet to fetch (the browser test checks that no request is made at all)
    assert "<script src=" not in page and "<link" not in page
    sprites = re.findall(r'<script type="application/octet-stream" id="efm-sprite-(\w+)">([A-Za-z0-9+/=]+)<', page)
    assert [name for name, _ in sprites] == ["test", "train"]
    ours = re.sub(r"/\* BEGIN bokeh.*?/\* END bokeh[^*]*\*/", "", page, flags=re.S)  # minus Bokeh's own JS
    assert ours.count("iVBORw0KGgo") == 2  # a PNG's first bytes in base64: the two sprites, once each
    test_png = np.asarray(Image.open(io.BytesIO(base64.b64decode(sprites[0][1]))))
    assert np.array_equal(test_png, sprite(ex.test_images)[0])

    data = _embedded(page, "efm-data")
    decode = lambda s, dt: np.frombuffer(base64.b64decode(s), dtype=dt)
    assert data["n"] == len(ex.labels) and data["names"] == ex.names and data["focus"] == list(FOCUS)
    assert np.array_equal(decode(data["labels"], np.uint8), ex.labels)
    assert np.array_equal(decode(data["testIds"], "<u2"), ex.test_ids) and data["testIdBytes"] == 2
    for r in range(2):
        assert np.array_equal(decode(data["preds"][r], np.uint8), ex.preds[r])
        assert np.array_equal(decode(data["neighbors"][r], "<u2").reshape(-1, 5), ex.neighbors[r])
    assert data["confusions"] == ex.confusions.tolist()
    assert data["sprites"]["test"]["cols"] == sprite(ex.test_images)[1]
    for c, lists in ex.comparison(0, 1).items():  # the table's buttons carry the lists' lengths
        for kind in ("fixed", "broken"):
            assert f'data-class="{c}" data-kind="{kind}" data-count="{len(lists[kind])}"' in page
            assert data["comparisons"][0]["classes"][str(c)][kind] == lists[kind].tolist()


def test_page_of_one_run_has_no_comparison():
    page = page_html(_synthetic(runs=1))
    assert "efm-comparisons" not in page and _embedded(page, "efm-data")["comparisons"] == []


def test_neighbour_thumbnails_fit_the_room_they_are_given():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, SIDE, SIDE), dtype=np.uint8)
    png, side, levels = neighbor_sprite(images, room=10**9)
    assert (side, levels) == THUMB_LADDER[0] == (SIDE, 256)  # room to spare: lossless
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), sprite(images)[0])
    lossless = len(png)
    png, side, levels = neighbor_sprite(images, room=lossless // 2)
    assert len(png) * 4 / 3 <= lossless // 2 and (side, levels) != (SIDE, 256)  # base64 of it fits
    assert Image.open(io.BytesIO(png)).size == (sprite_cols(300) * side, 17 * side)  # 18 columns × 17 rows
    assert neighbor_sprite(images, room=1)[1:] == THUMB_LADDER[-1]  # nothing fits: the smallest


def _have_real_data() -> bool:
    return all((SYSTEM_DIR / f).is_file() for f in FILES.values())


@pytest.fixture(scope="module")
def explore_runs(tmp_path_factory, request):
    """(ce run, triplet run, data dir): the shared small real runs (conftest.real_runs), or fake ones without the
    data set."""
    if _have_real_data():
        ce, trip, _ = request.getfixturevalue("real_runs")
        return ce, trip, request.getfixturevalue("real_subset_dir")
    root = tmp_path_factory.mktemp("explore")
    data = make_fake_dataset(root / "data", n_train=300, n_test=50)
    budget = ["--epochs", "1", *TINY, "--batch-size", "100"]  # the triplet run's sampler needs 92+
    ce, trip = root / "ce", root / "triplet"
    for loss, run in (("ce", ce), ("triplet", trip)):
        assert main(["train", "--loss", loss, "--out", str(run), "--data-dir", str(data), *budget]) == 0
    assert main(["eval", str(ce), str(trip), "--out", str(root), "--data-dir", str(data), "--no-progress"]) == 0
    return ce, trip, data


@pytest.mark.slow
def test_prepare_neighbours_are_the_nearest_training_images(explore_runs):
    from embedfm.checkpoint import load_checkpoint
    from embedfm.data import load_fashion_mnist
    from embedfm.explore import _train_split_ids, prepare
    from embedfm.sampling import make_splits

    ce, trip, data_dir = explore_runs
    ex = prepare([str(ce), str(trip)], k=5, max_points=300, log=lambda *_: None)
    data = load_fashion_mnist(data_dir)
    n = min(300, len(data.test_labels))
    assert ex.xy.shape == (2, n, 2) and ex.neighbors.shape == (2, n, 5) and len(ex.test_ids) == n
    assert np.array_equal(ex.test_images, data.test_images.numpy()[ex.test_ids])
    assert np.array_equal(ex.train_images, data.train_images.numpy()[ex.train_ids])
    for r, run in enumerate((ce, trip)):
        z = np.load(run / "embeddings.npz")
        assert np.array_equal(ex.preds[r], z["pred_knn"][ex.test_ids])
        cfg = load_checkpoint(run)["config"]
        split_x = make_splits(data, cfg["val_size"], cfg["limit"]).train_x.numpy()
        pos = np.searchsorted(_train_split_ids(data, cfg), ex.train_ids[ex.neighbors[r]])  # rows of embeddings.npz
        assert np.array_equal(ex.train_images[ex.neighbors[r]], split_x[pos])  # the images eval embedded there
        assert np.array_equal(ex.train_labels[ex.neighbors[r]], z["train_labels"][pos])
        # the k most similar (brute force, unit vectors: cosine), compared by similarity: ties may come in any order
        sims = z["test_embeddings"][ex.test_ids] @ z["train_embeddings"].T
        best = -np.sort(-sims, axis=1)[:, :5]
        assert np.allclose(np.take_along_axis(sims, pos, axis=1), best, atol=1e-5)


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which("chromium") and CHROMEDRIVER.is_file()):
        pytest.skip("Chromium or chromedriver not installed (`make test-deps` installs them): browser test skipped")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1700,1250"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


# page coordinates of data point (x, y) in the plot named `name`, after scrolling it into view
_WHERE = """
const [name, x, y] = arguments;
const view = Bokeh.index.find_one(Bokeh.documents[0].get_model_by_name(name));
view.canvas_view.el.scrollIntoView({block: "center"});
const box = view.canvas_view.el.getBoundingClientRect();
return [box.left + view.frame.x_scale.compute(x), box.top + view.frame.y_scale.compute(y)];
"""


# the 28 × 28 pixels at (sx, sy) of the sprite behind a thumbnail element (its CSS background image)
_PIXELS = """
const [sel, sx, sy, done] = arguments;
const url = getComputedStyle(document.querySelector(sel)).backgroundImage.slice(5, -2);
const img = new Image();
img.onload = () => {
  const c = document.createElement("canvas");
  c.width = c.height = 28;
  const g = c.getContext("2d");
  g.drawImage(img, sx, sy, 28, 28, 0, 0, 28, 28);
  done(Array.from(g.getImageData(0, 0, 28, 28).data).filter((_, j) => j % 4 === 0));
};
img.src = url;
"""


def _pointer(driver, name: str, x: float, y: float, click: bool = False) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    px, py = driver.execute_script(_WHERE, name, x, y)
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(round(px), round(py))
    if click:
        actions.pointer_action.click()
    actions.perform()
    time.sleep(0.3)


@pytest.mark.slow
def test_page_in_headless_chromium(explore_runs, browser, tmp_path):
    import base64

    from embedfm.checkpoint import load_checkpoint
    from embedfm.data import load_fashion_mnist
    from embedfm.explore import _train_split_ids

    ce, trip, data_dir = explore_runs
    out = tmp_path / "explore.html"
    max_points = 2000
    assert main(["explore", str(ce), str(trip), "--out", str(out), "--max-points", str(max_points), "--k", "10"]) == 0
    size_mb = out.stat().st_size / 1e6
    data = load_fashion_mnist(data_dir)
    z = [np.load(run / "embeddings.npz") for run in (ce, trip)]

    t0 = time.perf_counter()
    browser.get(out.as_uri())
    while not browser.execute_script("return !!(window.EFM && EFM.ready)"):
        assert time.perf_counter() - t0 < 30, "the page did not become ready"
        time.sleep(0.05)
    ready_ms = browser.execute_script("return EFM.readyAt")
    print(f"page {size_mb:.1f} MB, interactive {ready_ms:.0f} ms after navigation")
    assert ready_ms < 10_000  # measured ~1 s here (docs/explore.md); generous for a busy CI machine
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith(("data:", "blob:")) for r in resources), resources  # offline: no network request

    # the points: one shared source drawn by both panels (so selections are linked)
    page = json.loads(browser.execute_script("return JSON.stringify(EFM.D)"))
    ids = np.frombuffer(base64.b64decode(page["testIds"]), dtype=f"<u{page['testIdBytes']}")
    n = min(max_points, len(data.test_labels))
    assert len(ids) == n
    doc = "const doc = Bokeh.documents[0];"
    assert browser.execute_script(doc + "return doc.get_model_by_name('points').data.label.length") == n
    assert browser.execute_script(
        doc + "const s = doc.get_model_by_name('points');"
        "return [0, 1].every(r => doc.get_model_by_name('points' + r).data_source === s)"
    )
    labels = z[0]["test_labels"][ids]
    preds = [zz["pred_knn"][ids] for zz in z]

    # hover: an isolated point of the first panel, so the mouse is over it alone
    xy = np.array(browser.execute_script(doc + "const d = doc.get_model_by_name('points').data;"
                                         "return [Array.from(d.x0), Array.from(d.y0)]")).T  # fmt: skip
    span = xy.max(0) - xy.min(0)
    d2 = (((xy[:, None] - xy[None]) / span) ** 2).sum(-1) + np.eye(n) * 1e9
    target = int(d2.min(1).argmax())
    _pointer(browser, "umap0", *xy[target])
    tip = browser.find_element("id", "efm-tip")
    assert tip.is_displayed() and tip.get_attribute("data-i") == str(target)
    text = tip.text
    assert f"test #{ids[target]}, true: {CLASS_NAMES[labels[target]]}" in text
    for name, p in zip(("ce", "triplet"), preds):
        assert f"{name}: {CLASS_NAMES[p[target]]}" in text
    cols = page["sprites"]["test"]["cols"]
    sx, sy = (target % cols) * SIDE, (target // cols) * SIDE
    pos = browser.execute_script("return document.querySelector('#efm-tip .efm-test').style.backgroundPosition")
    assert [float(v.removesuffix("px")) for v in pos.split()] == [-sx * 4, -sy * 4]  # the preview is 4× enlarged
    pixels = browser.execute_async_script(_PIXELS, "#efm-tip .efm-test", sx, sy)
    assert np.array_equal(np.array(pixels).reshape(SIDE, SIDE), data.test_images.numpy()[ids[target]])

    # click it: its 10 nearest training images in each run, with labels
    _pointer(browser, "umap0", *xy[target], click=True)
    point = browser.find_element("id", "efm-point")
    assert point.get_attribute("data-i") == str(target)
    for r, (run, zz) in enumerate(zip((ce, trip), z)):
        row = point.find_element("css selector", f'.efm-run[data-run="{r}"]')
        titles = [e.get_attribute("title") for e in row.find_elements("css selector", ".efm-train")]  # train #ID: label
        assert len(titles) == 10
        found = [re.fullmatch(r"train #(\d+): (.+)", t).groups() for t in titles]
        pos = np.searchsorted(_train_split_ids(data, load_checkpoint(run)["config"]), [int(i) for i, _ in found])
        assert [name for _, name in found] == [CLASS_NAMES[c] for c in zz["train_labels"][pos]]
        sims = zz["train_embeddings"] @ zz["test_embeddings"][ids[target]]
        assert np.allclose(sims[pos], -np.sort(-sims)[:10], atol=1e-5)  # the 10 most similar, nearest first

    # a confusion cell: the second run's largest focus-class confusion; its gallery holds exactly its images
    t, p, cell_ids = confused_pairs(labels, {"triplet": preds[1]}, FOCUS)[0]
    count = len(cell_ids["triplet"])
    assert browser.execute_script(doc + f"return doc.get_model_by_name('confusion1').data.count[{t * 10 + p}]") == count
    _pointer(browser, "cmplot1", p, t, click=True)
    gallery = browser.find_element("id", "efm-gallery")
    assert gallery.get_attribute("data-what") == f"cell 1 {t} {p}"
    thumbs = [int(e.get_attribute("data-i")) for e in gallery.find_elements("css selector", ".efm-test")]
    assert sorted(thumbs) == cell_ids["triplet"].tolist()  # count = the matrix entry, and the same images
    assert browser.execute_script(doc + "return doc.get_model_by_name('points').selected.indices.length") == count

    # fixed / broken per focus class: fixed − broken = the change of the confusion matrices' diagonal
    cms = browser.execute_script(doc + "return [0, 1].map(r => Array.from(doc.get_model_by_name('confusion' + r)"
                                       ".data.count))")  # fmt: skip
    cms = np.array(cms).reshape(2, 10, 10)
    best = None
    for c in FOCUS:
        counts = {}
        for kind in ("fixed", "broken"):
            btn = browser.find_element("css selector", f'button.efm-list[data-class="{c}"][data-kind="{kind}"]')
            counts[kind] = int(btn.text)
        assert counts["fixed"] - counts["broken"] == cms[1, c, c] - cms[0, c, c]
        assert counts["fixed"] == ((labels == c) & (preds[0] != c) & (preds[1] == c)).sum()
        assert counts["broken"] == ((labels == c) & (preds[0] == c) & (preds[1] != c)).sum()
        best = max(best or (c, counts["fixed"]), (c, counts["fixed"]), key=lambda x: x[1])
    browser.find_element("css selector", f'button.efm-list[data-class="{best[0]}"][data-kind="fixed"]').click()
    time.sleep(0.2)
    assert gallery.get_attribute("data-what") == f"fixed 1 {best[0]}"
    assert len(gallery.find_elements("css selector", ".efm-test")) == best[1]

    # the focus switch: only focus-class points stay
    browser.find_element("id", "efm-focus-only").click()
    time.sleep(0.2)
    kept = browser.execute_script(doc + "return doc.get_model_by_name('focus_filter').booleans.filter(b => b).length")
    assert kept == np.isin(labels, FOCUS).sum()

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(tmp_path / "explore.png"))
    assert (tmp_path / "explore.png").stat().st_size > 50_000
