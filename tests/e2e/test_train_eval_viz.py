"""Through the command line on a small real subset: train (CE and CE + triplet) → eval → viz."""

import json

import numpy as np
import pytest
from conftest import SUBSET

from embedfm.cli import main


@pytest.mark.slow
def test_train_eval_viz_on_real_subset(tmp_path, real_runs):
    ce, trip, reported = real_runs  # trained and evaluated by the shared fixture (conftest.real_runs)
    for run in (ce, trip):
        assert (run / "checkpoint.safetensors").is_file() and (run / "DONE").is_file()
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["limit"] == 2000
        hist = json.loads((run / "history.json").read_text())
        assert len(hist) == 1 and {"train_loss", "val_loss", "val_acc", "val_knn_acc"} <= set(hist[0])
    assert json.loads((trip / "history.json").read_text())[0]["triplets"] > 0  # the miner found triplets

    report = json.loads((reported / "report.json").read_text())
    assert report["focus_classes"] == [0, 2, 4, 6]
    for name, loss in (("ce", "ce"), ("triplet", "triplet")):
        r = report["runs"][name]
        assert r["loss"] == loss and r["backbone"] == "fastcnn" and r["embedding_dim"] == 64
        for clf in ("softmax", "knn", "knn_flip"):  # knn_flip: tta_flip is on by default
            c = r["classifiers"][clf]
            assert 0.3 < c["accuracy"] <= 1  # 20 steps on 2000 images: far above chance (0.1)
            assert np.array(c["confusion"]).sum() == SUBSET["test"]
            assert set(c["per_class"]) == {str(i) for i in range(10)}
            assert 0 <= c["focus_group_error"] <= 1
        assert r["classifiers"]["knn"]["k"] == 10
        assert set(r["retrieval"]) >= {"precision_at_1", "r_precision", "map_at_r"}
        z = np.load(reported / name / "embeddings.npz")
        assert z["test_embeddings"].shape == (SUBSET["test"], 64) and z["train_embeddings"].shape == (2000, 64)
        assert set(z.files) == {
            "train_embeddings",
            "train_labels",
            "test_embeddings",
            "test_labels",
            "pred_softmax",
            "pred_knn",
            "pred_knn_flip",
            "test_probs",  # out-of-sample class probabilities, for embedfm floor / ensemble
        }
        np.testing.assert_allclose(z["test_probs"].sum(1), 1.0, rtol=1e-5)
        assert (z["test_probs"].argmax(1) == z["pred_softmax"]).all()
        for clf in ("knn", "knn_flip"):
            acc = (z[f"pred_{clf}"] == z["test_labels"]).mean()
            assert acc == pytest.approx(r["classifiers"][clf]["accuracy"])
    for f in ("report.md", "confusion.png", "confusion_diff.png"):
        assert (reported / f).is_file()

    assert main(["viz", str(ce), str(trip), "--out", str(tmp_path), "--max-points", "400"]) == 0
    assert (tmp_path / "umap.png").stat().st_size > 10_000
    sil = json.loads((tmp_path / "umap.json").read_text())["focus_silhouette"]
    assert set(sil) == {"ce", "triplet"}
