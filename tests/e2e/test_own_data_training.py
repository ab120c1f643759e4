"""Training on a set of one's own: the same images as IDX files, a PNG class folder and a CSV train to the same
history bit for bit; an RGB folder trains a torchvision backbone with weights from a local file through the CLI;
--focus by name; each bad choice of classes is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx
from PIL import Image

from embedfm import sources
from embedfm.cli import main
from embedfm.data import CLASS_NAMES, FILES
from embedfm.run import Run

pytestmark = pytest.mark.slow

TRAIN = ["--epochs", "1", "--val-size", "100", "--batch-size", "100", "--threads", "1", "--no-progress"]
# the history's figures that depend on the data and the weights alone (not on the clock)
FIGURES = ("train_loss", "train_acc", "val_loss", "val_acc", "val_focus_err", "val_knn_acc")


@pytest.fixture(scope="module")
def fmnist_three_ways(tmp_path_factory, real_data):
    """The first 600 training and 200 test images of Fashion-MNIST as IDX files (with classes.txt), as a PNG class
    folder, and as a CSV of those PNGs: (idx dir, folder, csv file)."""
    root = tmp_path_factory.mktemp("three-ways")
    data = sources.subset(real_data, 600, 200)
    idx = root / "idx"
    idx.mkdir()
    for split in ("train", "test"):
        write_idx(idx / FILES[f"{split}_images"], getattr(data, f"{split}_images").numpy())
        write_idx(idx / FILES[f"{split}_labels"], getattr(data, f"{split}_labels").numpy())
    (idx / "classes.txt").write_text("".join(n + "\n" for n in CLASS_NAMES))
    folder = sources.write_folder(data, root / "folder")
    rows = ["path,label,split"]
    for split in ("train", "test"):
        for i, y in enumerate(getattr(data, f"{split}_labels").tolist()):
            rows.append(f"folder/{split}/{sources.folder_name(CLASS_NAMES[y])}/{i:06d}.png,{CLASS_NAMES[y]},{split}")
    (root / "set.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("".join(n + "\n" for n in CLASS_NAMES))
    return idx, folder, root / "set.csv"


def history(run) -> list[dict]:
    return [{k: row[k] for k in FIGURES} for row in Run.open(run).history]


def test_idx_folder_and_csv_train_to_the_same_history(tmp_path, fmnist_three_ways, monkeypatch):
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    idx, folder, csv_file = fmnist_three_ways
    runs = {}
    for name, spec in (("idx", f"idx:{idx}"), ("folder", f"folder:{folder}"), ("csv", f"csv:{csv_file}")):
        # --focus-classes given: the Fashion-MNIST four on each (another set's default would be every class)
        assert main(["train", "--data", spec, "--loss", "triplet", "--focus-classes", "0,2,4,6", *TRAIN,
                     "--out", str(tmp_path / name)]) == 0  # fmt: skip
        runs[name] = tmp_path / name
    assert history(runs["idx"]) == history(runs["folder"]) == history(runs["csv"])
    fps = {n: Run.open(r).data_fingerprint for n, r in runs.items()}
    assert fps["idx"] == fps["folder"] == fps["csv"]
    assert Run.open(runs["folder"]).class_names == CLASS_NAMES
    # the same model: its weights equal bit for bit
    w = [Run.open(r).load().weights() for r in runs.values()]
    assert all(torch.equal(w[0][k], w[i][k]) for i in (1, 2) for k in w[0])


def rgb_folder(root, classes=("red", "green", "blue"), n=12, size=32):
    """n images a class: noise around the class's colour, so a network can tell them apart in one epoch."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        for i in range(n):
            a = rng.integers(0, 80, (size, size, 3))
            a[..., c] += 150
            p = root / name / f"{i:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a.astype(np.uint8)).save(p)
    return root


def test_rgb_folder_with_tv_resnet18_and_a_local_weights_file(tmp_path, monkeypatch):
    import torchvision
    from safetensors.torch import save_file

    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    root = rgb_folder(tmp_path / "colours")
    torch.manual_seed(1)
    weights = tmp_path / "resnet18.safetensors"
    save_file(torchvision.models.resnet18(weights=None).state_dict(), str(weights))
    out = tmp_path / "run"
    assert main(["train", "--data", f"folder:{root}", "--backbone", "tv:resnet18", "--weights", str(weights),
                 "--epochs", "1", "--val-size", "10", "--batch-size", "12", "--threads", "1", "--no-progress",
                 "--out", str(out)]) == 0  # fmt: skip
    run = Run.open(out)
    assert run.class_names == ("blue", "green", "red")
    assert run.model_args["in_channels"] == 3 and tuple(run.model_args["image_size"]) == (32, 32)
    assert run.model_args["weights"] == str(weights)
    # the first conv started from the file: three steps moved it a little (another initialisation differs by
    # about 1.4x its mean magnitude; measured: 0.2x after training)
    torch.manual_seed(1)
    start = torchvision.models.resnet18(weights=None).state_dict()["conv1.weight"]
    trained = run.load().weights()["backbone.net.conv1.weight"]
    assert (trained - start).abs().mean() < 0.5 * start.abs().mean()
    assert main(["eval", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["class_names"] == ["blue", "green", "red"]


def test_focus_by_name_and_bad_classes_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    root = rgb_folder(tmp_path / "colours", size=8)
    base = ["train", "--data", f"folder:{root}", "--epochs", "1", "--batch-size", "12",
            "--threads", "1", "--no-progress"]  # fmt: skip
    assert main([*base, "--focus", "green,red", "--out", str(tmp_path / "a")]) == 0
    assert Run.open(tmp_path / "a").config.focus_classes == (1, 2)
    assert main([*base, "--out", str(tmp_path / "b")]) == 0  # no --focus: every class
    assert Run.open(tmp_path / "b").config.focus_classes == (0, 1, 2)
    capsys.readouterr()
    for flags, message in (
        (["--focus", "purple"], "--focus 'purple' is not a class of this set (blue, green, red)"),
        (["--focus-classes", "0,2,4,6"], "this set has 3 classes, ids 0-2"),
        (["--holdout-classes", "0,1"], "must leave at least two classes to train on"),
    ):
        assert main([*base, *flags, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_focus_auto_k_and_the_confusions_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    root = rgb_folder(tmp_path / "colours", size=8)
    out = tmp_path / "run"
    assert main(["train", "--data", f"folder:{root}", "--focus", "auto:2", "--epochs", "2", "--batch-size", "12",
                 "--threads", "1", "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    cfg = Run.open(out).config
    probe = Run.open(cfg.focus_run)
    assert cfg.focus == "auto:2" and len(cfg.focus_classes) == 2 and probe.config.loss == "ce"
    assert probe.config.epochs == 2 and probe.config.focus_classes == (0, 1, 2)
    capsys.readouterr()
    assert main(["confusions", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "confusions on its validation split" in text and "| K | most-confused group |" in text
    # a second run with the same settings reuses the finished quick run
    assert main(["train", "--data", f"folder:{root}", "--focus", "auto:2", "--epochs", "2", "--batch-size", "12",
                 "--threads", "1", "--no-progress", "--out", str(out), "--overwrite"]) == 0  # fmt: skip
    assert "reusing the quick CE run" in capsys.readouterr().out


def test_serve_searches_and_adds_colour_images_of_a_folder_run(tmp_path, monkeypatch):
    """embedfm serve on an RGB folder run: uploads decoded to the run's size and channels, answers in its names."""
    pytest.importorskip("fastapi")
    import io

    from fastapi.testclient import TestClient

    from embedfm import serve
    from embedfm.live import LiveIndex

    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    root = rgb_folder(tmp_path / "colours", size=8)
    out, idx = tmp_path / "run", tmp_path / "idx"
    assert main(["train", "--data", f"folder:{root}", "--epochs", "2", "--batch-size", "12", "--threads", "1",
                 "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    assert main(["index", str(out), "--out", str(idx), "--no-progress"]) == 0
    run = Run.open(out)
    live = LiveIndex.open(idx, writable=True, command="serve", log=lambda *a: None)
    try:
        client = TestClient(serve.create_app(serve.Service(str(out), run.model("cpu"), run, live, "a-long-token")))
        buf = io.BytesIO()
        Image.open(root / "red" / "000.png").resize((20, 20)).save(buf, format="PNG")  # another size: resized
        r = client.post("/search", data={"k": "3"}, files={"image": ("q.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["vote"]["class"] in ("blue", "green", "red")
        r = client.post("/items", data={"ids": "9999", "labels": "2"}, headers={"Authorization": "Bearer a-long-token"},
                        files=[("images", ("a.png", buf.getvalue(), "image/png"))])  # fmt: skip
        assert r.status_code == 201, r.text
    finally:
        live.close()


def test_tune_reads_a_folder_set(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    root = rgb_folder(tmp_path / "colours", size=8)
    out = tmp_path / "tune"
    assert main(["tune", "--data", f"folder:{root}", "--loss", "ce", "--trials", "1", "--epochs", "1",
                 "--batch-size", "12", "--threads", "1", "--out", str(out)]) == 0  # fmt: skip
    best = json.loads((out / "best_config.json").read_text())
    assert best["data"] == f"folder:{root}" and best["focus"] == "all"


def test_the_report_shows_skipped_files_and_train_test_duplicates(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    root = rgb_folder(tmp_path / "colours", size=8)
    # one image copied from train into test (leakage) and one file that is not an image
    data = sources.load(f"folder:{root}", sources.Options(cache_dir=tmp_path / "c0", progress=False))
    split = sources.write_folder(data, tmp_path / "split")
    first = sorted((split / "train" / "red").iterdir())[0]
    (split / "test" / "red" / "copy.png").write_bytes(first.read_bytes())
    (split / "train" / "red" / "broken.png").write_text("not an image")
    out = tmp_path / "run"
    assert main(["train", "--data", f"folder:{split}", "--skip-bad", "true", "--epochs", "1", "--batch-size", "12",
                 "--threads", "1", "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    notes = Run.open(out).data_notes
    assert [Path(p).name for p in notes["skipped"]] == ["broken.png"] and notes["duplicates"]["count"] == 1
    assert main(["eval", str(out), "--no-progress"]) == 0
    md = (out / "report.md").read_text()
    assert "Skipped 1 unreadable image file(s)" in md and "Leakage: 1 test image(s) equal a training image" in md
