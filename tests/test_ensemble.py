"""embedfm.ensemble: averaged probabilities and concatenated unit embeddings, by hand."""

import numpy as np
import pytest
from conftest import evaluated_dir as _arrays

from embedfm.cli import main


def test_ensemble_averages_probabilities_and_concatenates_unit_embeddings(tmp_path):
    from embedfm.ensemble import ensemble

    labels = np.array([0, 2, 4, 6, 1])
    train_labels = np.array([0, 2, 4, 6, 1])
    eye = np.eye(10)
    # run a predicts [0, 2, 4, 0, 3] (3 of 5 right), run b [2, 4, 4, 6, 2] (2 of 5). Averaged, a's confident 0 beats
    # b's hesitant 2 on image 0, b's confident 6 beats a's hesitant 0 on image 3, and image 4 stays wrong (3 or 2)
    pa = 0.04 + np.array([0.9, 0.1, 0.3, 0.1, 0.6])[:, None] * eye[[0, 2, 4, 0, 3]]
    pb = 0.04 + np.array([0.2, 0.6, 0.3, 0.9, 0.5])[:, None] * eye[[2, 4, 4, 6, 2]]
    rng = np.random.default_rng(0)
    train_a, test_a = 7.0 * rng.normal(size=(5, 4)), rng.normal(size=(5, 4))  # scale must not matter
    train_b, test_b = rng.normal(size=(5, 3)), 0.1 * rng.normal(size=(5, 3))
    _arrays(tmp_path / "a", pa, train_a, test_a, labels, train_labels)
    _arrays(tmp_path / "b", pb, train_b, test_b, labels, train_labels)
    r = ensemble([str(tmp_path / "a"), str(tmp_path / "b")], out=tmp_path, k=1, log=lambda _: None)
    # averaged: [0, 4, 4, 6, 3]: right on images 0, 2, 3; a different set than either run's
    assert (pa + pb).argmax(1).tolist() == [0, 4, 4, 6, 3]
    conf = np.array(r["softmax_average"]["confusion"])
    assert conf[0, 0] == 1 and conf[2, 4] == 1 and conf[4, 4] == 1 and conf[6, 6] == 1 and conf[1, 3] == 1
    assert r["single_runs_mean"]["accuracy"] == pytest.approx((3 / 5 + 2 / 5) / 2)
    # brute force: cosine 1-NN over [unit(a), unit(b)] side by side
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    cat = lambda x, y: np.hstack([norm(x), norm(y)])
    train, test = cat(train_a, train_b), cat(test_a, test_b)
    expected = train_labels[np.argmax(test @ train.T, axis=1)]
    assert r["knn_concatenated"]["accuracy"] == pytest.approx((expected == labels).mean())
    assert "Ensemble of 2 runs" in (tmp_path / "ensemble.md").read_text()
    assert main(["ensemble", str(tmp_path / "a")]) == 2  # one run: one line, exit 2
