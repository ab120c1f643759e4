"""embedfm.diagnostics: the per-epoch probe's counts against a brute force, its own RNG stream, the plot."""

import json
import math

import pytest
import torch
from conftest import make_fake_dataset

from embedfm import checkpoint, diagnostics, rundir
from embedfm.config import TrainConfig
from embedfm.objectives import build_objective
from embedfm.train import train

pytestmark = pytest.mark.usefixtures("diagnostics_plot")  # the drawing is what these tests check

QUIET = {"progress": False, "log": lambda *a: None}


# a tiny balanced run: 150 train images, 3 steps of 50 an epoch
TINY_CFG = {"limit": 200, "val_size": 50, "batch_size": 50, "m_per_class": 4, "knn_k": 3}


class _PixelNet(torch.nn.Module):
    """Embeds an image as its first D (normalised) pixels: embeddings the test can compute by hand."""

    def __init__(self, d=4):
        super().__init__()
        self.d = d

    def forward(self, x):
        return torch.zeros(len(x), 10), torch.nn.functional.normalize(x.flatten(1)[:, : self.d].float(), dim=1)


class _AllTriplets:
    """A miner drawing every (a, p, n) of the batch, in place of the random distance-weighted miner."""

    def __init__(self, **kwargs):
        pass

    def __call__(self, emb, labels):
        t = [(a, p, n) for a in range(len(labels)) for p in range(len(labels)) for n in range(len(labels))
             if a != p and labels[a] == labels[p] and labels[a] != labels[n]]  # fmt: skip
        return tuple(torch.tensor(c) for c in zip(*t))


@pytest.mark.numeric
def test_diagnostics_match_a_brute_force_count(monkeypatch):
    from pytorch_metric_learning import miners

    from embedfm.data import to_float

    monkeypatch.setattr(miners, "DistanceWeightedMiner", _AllTriplets)
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 6] * 6)  # focus 0, 2, 6 (and 3 is not): every group is filled
    batches = torch.arange(30).view(2, 15)
    cfg = TrainConfig(loss="triplet", metric_loss="triplet", miner="none", margin=0.3, focus_classes=(0, 2, 6))
    obj = build_objective(cfg)
    row = diagnostics.probe(_PixelNet(), images, labels, batches, cfg, torch.device("cpu"), obj)

    x = to_float(images).flatten(1)[:, :4].double()
    emb = x / x.norm(dim=1, keepdim=True)

    def dist(i, j):
        return math.sqrt(sum((float(emb[i, k]) - float(emb[j, k])) ** 2 for k in range(4)))

    want = {g: [0, 0, 0.0, 0.0] for g in ("focus", "other", "ff")}
    for b in batches.tolist():
        for a in b:
            for p in b:
                for n in b:
                    if a == p or labels[a] != labels[p] or labels[a] == labels[n]:
                        continue
                    fa, fn = int(labels[a]) in (0, 2, 6), int(labels[n]) in (0, 2, 6)
                    d_ap, d_an = dist(a, p), dist(a, n)
                    for grp in [g for g, on in (("focus", fa), ("other", not fa), ("ff", fa and fn)) if on]:
                        want[grp][0] += 1
                        want[grp][1] += d_an - d_ap < 0.3
                        want[grp][2] += d_ap
                        want[grp][3] += d_an
    assert row["diag_triplets"] == (want["focus"][0] + want["other"][0]) / 2
    for grp, (n, active, ap, an) in want.items():
        assert 0 < active < n, grp  # a check with teeth: some active, some not
        assert row[f"diag_active_{grp}"] == round(active / n, 5)
        assert row[f"diag_ap_{grp}"] == pytest.approx(ap / n, abs=2e-5)
        assert row[f"diag_an_{grp}"] == pytest.approx(an / n, abs=2e-5)
    # the run's own loss (TripletMarginLoss over every triplet, --miner none) counts the same triplets
    assert row["diag_own_tuples"] == row["diag_triplets"]
    assert row["diag_own_active_focus"] == row["diag_active_focus"]
    assert row["diag_own_active_other"] == row["diag_active_other"]


def test_the_probe_leaves_the_training_stream_alone():
    cfg = TrainConfig(loss="triplet")
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)
    labels = torch.arange(100) % 10
    batches = torch.arange(100).view(2, 50)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    first = diagnostics.probe(_PixelNet(8), images, labels, batches, cfg, torch.device("cpu"), build_objective(cfg))
    assert torch.equal(torch.rand(3), expected)
    again = diagnostics.probe(_PixelNet(8), images, labels, batches, cfg, torch.device("cpu"), build_objective(cfg))
    assert first == again  # seeded per batch: the same figures every time


def test_every_run_records_diagnostics_and_draws_them(tmp_path):
    """A CE run (the control: no loss of its own to count) and a CE + supcon run with --ce-weight 0, whose
    validation figures are then the kNN's."""
    data = make_fake_dataset(tmp_path / "data")
    ce = train(TrainConfig(out=str(tmp_path / "ce"), data_dir=str(data), epochs=1, **TINY_CFG), **QUIET)["history"]
    alone = TrainConfig(loss="triplet", metric_loss="contrastive", ce_weight=0, out=str(tmp_path / "alone"),
                        data_dir=str(data), epochs=1, **TINY_CFG)  # fmt: skip
    metric = train(alone, **QUIET)["history"]
    for run, row in (("ce", ce[-1]), ("alone", metric[-1])):
        assert row["diag_triplets"] > 0 and 0 <= row["diag_active_focus"] <= 1, run
        assert 0 < row["diag_ap_other"] <= 2 and 0 < row["diag_an_ff"] <= 2, run
        assert (tmp_path / run / diagnostics.PNG).stat().st_size > 1000 and rundir.is_done(tmp_path / run)
    assert "diag_own_active_focus" not in ce[-1] and 0 <= metric[-1]["diag_own_active_focus"] <= 1
    assert metric[-1]["val_acc"] == metric[-1]["val_knn_acc"]  # --ce-weight 0: the kNN classifies
    header = (tmp_path / "alone" / rundir.SUMMARY).read_text().splitlines()[0]
    assert "diag_own_active_focus" in header
    assert "objective" not in checkpoint.load_checkpoint(tmp_path / "alone")  # no parameters of its own


def test_plot_skips_a_history_from_before_the_diagnostics(tmp_path):
    (tmp_path / rundir.HISTORY).write_text(json.dumps([{"epoch": 1, "train_loss": 1.0}]))
    assert diagnostics.plot(tmp_path) is None and not (tmp_path / diagnostics.PNG).exists()
    assert diagnostics.main([str(tmp_path)]) == 0


def test_an_empty_group_is_left_out_and_every_value_is_a_number():
    cfg = TrainConfig(loss="triplet", metric_loss="margin", mining="focus")  # own tuples: focus anchors only
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(100) % 10
    row = diagnostics.probe(_PixelNet(8), images, labels, torch.arange(100).view(2, 50), cfg, torch.device("cpu"),
                            build_objective(cfg))  # fmt: skip
    assert "diag_own_active_focus" in row and "diag_own_active_other" not in row
    assert all(isinstance(v, float | int) and math.isfinite(v) for v in row.values())


def test_the_probe_refuses_a_non_finite_embedding_in_one_line():
    """Before the distance-weighted miner, whose own failure on NaN distances is a traceback."""
    from embedfm.errors import EmbedfmError

    class NaNNet(torch.nn.Module):
        def forward(self, x):
            emb = torch.nn.functional.normalize(x.flatten(1)[:, :8].float() + 1, dim=1)
            emb[3, 0] = float("nan")
            return torch.zeros(len(x), 10), emb

    cfg = TrainConfig(loss="triplet")
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)
    batches = torch.arange(100).view(2, 50)
    with pytest.raises(EmbedfmError, match=r"^non-finite embeddings in the diagnostics probe$"):
        diagnostics.probe(NaNNet(), images, torch.arange(100) % 10, batches, cfg, torch.device("cpu"),
                          build_objective(cfg))  # fmt: skip
