"""--holdout-classes and the unseen-class test (embedfm.unseen), against refits and hand-made cases."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY

from embedfm.config import TrainConfig, class_counts
from embedfm.data import load_fashion_mnist
from embedfm.errors import ConfigError
from embedfm.knn import KNNClassifier
from embedfm.metrics import retrieval_metrics, retrieval_per_query
from embedfm.sampling import balanced_batches, make_splits
from embedfm.unseen import few_shot, unseen_figures


def test_held_out_classes_get_no_share_of_a_batch():
    counts = class_counts(100, (0, 2, 4, 6), 1.5, absent=(6,))
    assert counts[6] == 0 and sum(counts) == 100 and min(c for k, c in enumerate(counts) if k != 6) >= 9
    labels = torch.tensor([c for c in range(10) if c != 6] * 30)
    plan = balanced_batches(labels, 90, (0, 2, 4, 6), 1.5, torch.Generator().manual_seed(0))
    assert plan.numel() > 0 and not (labels[plan.flatten()] == 6).any()
    assert set(labels[plan[0]].tolist()) == set(range(10)) - {6}


def test_holdout_is_checked():
    with pytest.raises(ConfigError, match="--holdout-classes must be distinct"):
        TrainConfig(holdout_classes=(6, 6))
    with pytest.raises(ConfigError, match="at least two classes"):
        TrainConfig(holdout_classes=tuple(range(9)))
    with pytest.raises(ConfigError, match="two focus classes that are not held out"):
        TrainConfig(loss="triplet", mining="focus", holdout_classes=(0, 2, 4))
    assert TrainConfig(holdout_classes=(6,)).to_dict()["holdout_classes"] == [6]


def test_splits_drop_held_out_classes_from_train_and_val_only(fake_data_dir):
    data = load_fashion_mnist(fake_data_dir)
    full, held = make_splits(data, 50), make_splits(data, 50, holdout=(6, 9))
    assert not torch.isin(held.train_y, torch.tensor([6, 9])).any()
    assert not torch.isin(held.val_y, torch.tensor([6, 9])).any()
    assert len(held.train_y) == (~torch.isin(full.train_y, torch.tensor([6, 9]))).sum()
    assert torch.equal(held.test_y, full.test_y)


def test_r_precision_per_query_matches_pytorch_metric_learning():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 15)
    e = rng.normal(size=(45, 4)) + y[:, None] * 0.5
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    ap, rp = retrieval_per_query(e, y)
    expected = retrieval_metrics(e, y)
    assert rp.mean() == pytest.approx(expected["r_precision"])
    # PML's float32 faiss search may order a near-tie differently (the exact definition: tests/test_paired.py)
    assert ap.mean() == pytest.approx(expected["map_at_r"], abs=1e-3)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_few_shot_merge_equals_refitting_the_index(metric):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(60, 6)).astype(np.float32)
    ref_y = rng.integers(0, 5, 60)  # classes 0-4 trained; class 7 unseen
    pool = (rng.normal(size=(8, 6)) + 2).astype(np.float32)
    test = np.concatenate([rng.normal(size=(20, 6)), rng.normal(size=(10, 6)) + 2]).astype(np.float32)
    test_y = np.array([0] * 20 + [7] * 10)
    knn = KNNClassifier(k=3, metric=metric).fit(ref, ref_y)
    got = few_shot(knn, test, test_y, pool, 7, shots=(1, 5), draws=4, seed=5)
    draws = np.random.default_rng(5)  # the same draws, refitting the index each time
    for n in (1, 5):
        recalls, accs = [], []
        for _ in range(4):
            added = pool[draws.choice(len(pool), size=n, replace=False)]
            refit = KNNClassifier(k=3, metric=metric).fit(np.concatenate([ref, added]), np.r_[ref_y, [7] * n])
            pred = refit.predict(test)
            recalls.append((pred[test_y == 7] == 7).mean())
            accs.append((pred == test_y).mean())
        assert got[str(n)]["recall"] == pytest.approx(np.mean(recalls))
        assert got[str(n)]["accuracy"] == pytest.approx(np.mean(accs))
    assert got["5"]["recall"] >= got["1"]["recall"]


def test_unseen_figures_score_the_held_out_queries_only():
    y = np.array([0, 0, 1, 1, 6, 6])
    e = np.eye(6, 3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]  # each class its own direction: perfect retrieval
    knn = KNNClassifier(k=1).fit(e[:4], y[:4])
    out = unseen_figures(knn, e, y, {6: e[4:]}, seed=0)
    assert out["6"]["map_at_r"] == 1.0 and out["6"]["r_precision"] == 1.0 and out["6"]["test_images"] == 2
    assert out["6"]["few_shot"]["1"]["recall"] == 1.0


@pytest.mark.slow  # train + eval; the fast suite keeps the held-out splits, batches and figures above
def test_train_and_eval_with_a_held_out_class(fake_run, tmp_path):
    from embedfm.cli import main

    _, data = fake_run
    run = tmp_path / "held"
    assert main(["train", "--out", str(run), "--data-dir", str(data), "--epochs", "1", "--holdout-classes", "6",
                 *TINY]) == 0  # fmt: skip
    assert main(["eval", str(run), "--data-dir", str(data), "--no-progress"]) == 0
    (entry,) = json.loads((run / "report.json").read_text())["runs"].values()
    assert set(entry["unseen"]["6"]["few_shot"]) == {"1", "5", "20"}
    assert "## Unseen classes" in (run / "report.md").read_text()
