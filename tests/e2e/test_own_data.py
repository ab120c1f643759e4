"""Every command after training on a run trained on a set of one's own (a class folder): scikit-learn's 8×8 digits
(grey, ten classes named '0'..'9') through eval, viz, explore, index + search, summarize, floor, ensemble, export and
the Python API; and a small RGB folder set (16×16, three classes) evaluated, explored and searched in colour."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

import embedfm
from embedfm.cli import main

pytestmark = pytest.mark.slow

QUIET = ["--threads", "1", "--no-progress"]
DIGITS = tuple(str(d) for d in range(10))


def write_digits(root):
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (im, y) in enumerate(zip(d.images, d.target)):
        (root / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((im * 255 / 16).round().astype(np.uint8)).save(root / str(y) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(folder, CE run, triplet run, report dir): the digits folder trained 3 epochs each way and evaluated."""
    tmp = tmp_path_factory.mktemp("own")
    folder = write_digits(tmp / "digits")
    ce, trip, rep = tmp / "ce", tmp / "triplet", tmp / "report"
    train = ["train", "--data", f"folder:{folder}", "--val-size", "200", "--epochs", "3", *QUIET]
    assert main([*train, "--out", str(ce)]) == 0
    assert main([*train, "--loss", "triplet", "--out", str(trip)]) == 0
    assert main(["eval", str(ce), str(trip), "--out", str(rep), "--no-progress"]) == 0
    return folder, ce, trip, rep


def test_eval_reports_the_sets_class_names(digits):
    rep = digits[3]
    report = json.loads((rep / "report.json").read_text())
    assert report["class_names"] == list(DIGITS) and report["data"].startswith("folder:")
    assert report["focus_classes"] == list(range(10))  # another set without --focus: all its classes
    for name in ("ce", "triplet"):
        knn = report["runs"][name]["classifiers"]["knn"]
        assert knn["accuracy"] > 0.8
        assert set(knn["per_class"]) == set(DIGITS)
    md = (rep / "report.md").read_text()
    assert "10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)" in md and "Fashion-MNIST" not in md
    assert "shirt recall" not in md
    for f in ("confusion.png", "confusion_diff.png", "most_confused.png"):
        assert (rep / f).stat().st_size > 0


def test_viz_and_explore(digits):
    _, ce, trip, rep = digits
    assert main(["viz", str(ce), str(trip), "--out", str(rep)]) == 0
    assert (rep / "umap.png").stat().st_size > 0
    page = rep / "explore.html"
    assert main(["explore", str(ce), str(trip), "--out", str(page)]) == 0
    html = page.read_text()
    assert '"classNames":["0","1","2","3","4","5","6","7","8","9"]' in html
    assert "T-shirt" not in html


def test_index_and_search_with_a_query_png(digits, tmp_path, capsys):
    folder, ce, _, _ = digits
    assert main(["index", str(ce), "--no-progress"]) == 0
    meta = json.loads((ce / "index" / "index.json").read_text())
    assert meta["image_shape"] == [8, 8]
    query = folder / "3" / "3.png"  # a training image: found again, labelled '3'
    capsys.readouterr()
    grid = tmp_path / "search.png"
    assert main(["search", str(ce), str(query), "test:0", "--k", "3", "--out", str(grid)]) == 0
    out = capsys.readouterr().out
    first_hit = out.splitlines()[2].split()
    assert first_hit[2] == "3" and float(first_hit[3]) > 0.99
    assert grid.stat().st_size > 0


def test_summarize_floor_ensemble(digits, tmp_path):
    _, ce, trip, rep = digits
    assert main(["summarize", str(rep), "--out", str(tmp_path / "summary")]) == 0
    assert main(["floor", str(ce), str(trip), "--out", str(tmp_path)]) == 0
    floor = json.loads((tmp_path / "floor.json").read_text())
    assert set(floor["test_label_issues"]["by_class"]) <= set(DIGITS)
    assert (tmp_path / "label_issues.png").stat().st_size > 0
    assert main(["ensemble", str(ce), str(trip), "--out", str(tmp_path)]) == 0
    ens = json.loads((tmp_path / "ensemble.json").read_text())
    assert ens["class_names"] == list(DIGITS) and ens["knn_concatenated"]["accuracy"] > 0.8


def test_export(digits, tmp_path):
    _, ce, _, _ = digits
    assert main(["export", str(ce), "--format", "npz", "--out", str(tmp_path), "--no-progress"]) == 0
    z = np.load(tmp_path / "embeddings.npz")
    assert z["test_embeddings"].shape[1] == 64
    assert main(["export", str(ce), "--format", "tensorboard", "--out", str(tmp_path)]) == 0
    assert "single_image_dim: 8" in (tmp_path / "projector_config.pbtxt").read_text()
    rows = [r.split("\t") for r in (tmp_path / "metadata.tsv").read_text().splitlines()[1:]]
    assert rows and all(r[2] == DIGITS[int(r[1])] and r[3] in DIGITS for r in rows)  # the set's class names
    if all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript")):
        import onnx

        assert main(["export", str(ce), "--format", "onnx", "--out", str(tmp_path)]) == 0
        proto = onnx.load(tmp_path / "model.onnx")
        assert "(N, 1, 8, 8)" in proto.doc_string
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[1:]] == [1, 8, 8]


def test_the_api(digits):
    folder, ce, _, _ = digits
    m = embedfm.load(ce)
    assert m.class_names == DIGITS
    x, y = m.split("test")
    assert x.shape[1:] == (8, 8)
    assert (m.predict(x, classifier="knn") == y).mean() > 0.8
    pred = m.predict([str(folder / "7" / p.name) for p in sorted((folder / "7").iterdir())[:5]], classifier="knn")
    assert pred.shape == (5,) and (pred == 7).mean() >= 0.8


def test_an_rgb_folder_is_evaluated_explored_and_searched_in_colour(tmp_path, capsys):
    rng = np.random.default_rng(0)
    colours = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230)}
    for name, colour in colours.items():
        (tmp_path / "rgb" / name).mkdir(parents=True)
        for i in range(24):
            a = rng.integers(0, 80, (16, 16, 3), dtype=np.uint8)
            a[4:12, 4:12] = colour
            Image.fromarray(a).save(tmp_path / "rgb" / name / f"{i}.png")
    run, rep = tmp_path / "run", tmp_path / "report"
    train = ["train", "--data", f"folder:{tmp_path / 'rgb'}", "--backbone", "fastcnn", "--val-size", "12"]
    assert main([*train, "--epochs", "1", "--batch-size", "30", "--out", str(run), *QUIET]) == 0
    assert main(["eval", str(run), "--out", str(rep), "--no-progress"]) == 0
    report = json.loads((rep / "report.json").read_text())
    assert report["class_names"] == ["blue", "green", "red"]
    assert "blue" in (rep / "report.md").read_text()
    page = rep / "explore.html"
    assert main(["explore", str(run), "--out", str(page)]) == 0
    assert '"classNames":["blue","green","red"]' in page.read_text()
    assert main(["index", str(run), "--no-progress"]) == 0
    assert json.loads((run / "index" / "index.json").read_text())["image_shape"] == [3, 16, 16]
    capsys.readouterr()
    grid = tmp_path / "search.png"
    assert main(["search", str(run), str(tmp_path / "rgb" / "green" / "0.png"), "--k", "2", "--out", str(grid)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[2] == "green"
    pixels = np.asarray(Image.open(grid).convert("RGB")).reshape(-1, 3).astype(int)
    assert ((pixels[:, 1] - pixels[:, 0]) > 100).any()  # the grid shows the green squares in colour
