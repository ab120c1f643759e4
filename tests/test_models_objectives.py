import pytest
import torch

from embedfm.config import TrainConfig
from embedfm.models import BACKBONES, build_model, count_macs
from embedfm.objectives import build_objective


@pytest.mark.numeric
def test_forward_shapes_and_unit_norm():
    for name in BACKBONES:
        m = build_model(name, embedding_dim=32)
        logits, emb = m(torch.randn(5, 1, 28, 28))
        assert logits.shape == (5, 10) and emb.shape == (5, 32)
        assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)


def test_count_macs_of_fastcnn():
    # stem 28²·9·24 + 14²·9·(24·48 + 48·48) + 7²·9·(48·96 + 96·96) + head 192·64 + 64·10
    expected = 784 * 9 * 24 + 196 * 9 * (24 * 48 + 48 * 48) + 49 * 9 * (48 * 96 + 96 * 96) + 192 * 64 + 640
    assert count_macs(build_model()) == expected


def _batch(n_per_class=4, classes=10):
    torch.manual_seed(0)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return torch.randn(len(y), 1, 28, 28), y


def test_triplet_objective_mines_triplets_and_trains():
    torch.manual_seed(0)
    model = build_model()
    obj = build_objective(TrainConfig(loss="triplet"))
    x, y = _batch()
    logits, emb = model(x)
    loss, stats = obj(logits, emb, y)
    assert stats["triplets"] > 0 and torch.isfinite(loss)
    assert loss > stats["ce"]  # the triplet part adds to CE
    loss.backward()
    assert model.backbone.layers[0][0].weight.grad.abs().sum() > 0


def test_ce_objective_has_no_triplet_part():
    model = build_model()
    x, y = _batch()
    loss, stats = build_objective(TrainConfig(loss="ce"))(*model(x), y)
    assert set(stats) == {"ce"} and torch.isclose(loss, stats["ce"])


@pytest.mark.numeric
def test_one_train_step_per_loss_lowers_loss_on_a_fixed_batch():
    for loss_name in ("ce", "triplet"):
        torch.manual_seed(0)
        model = build_model()
        obj = build_objective(TrainConfig(loss=loss_name))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        x, y = _batch()
        first = None
        for _ in range(5):
            torch.manual_seed(1)  # same mined triplets each step
            loss, _ = obj(*model(x), y)
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < first


@pytest.mark.numeric
def test_every_backbone_takes_a_train_step_with_each_loss():
    for name in BACKBONES:
        for loss_name in ("ce", "triplet"):
            torch.manual_seed(0)
            model = build_model(name, embedding_dim=16)
            obj = build_objective(TrainConfig(loss=loss_name, backbone=name))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x, y = _batch(n_per_class=3)
            loss, stats = obj(*model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss), (name, loss_name)
            if loss_name == "triplet":
                assert stats["triplets"] > 0, name


def test_resnet20_has_20_weight_layers():
    m = build_model("resnet20")
    convs = [n for n, mod in m.backbone.named_modules() if isinstance(mod, torch.nn.Conv2d) and "shortcut" not in n]
    assert len(convs) + 1 == 20  # 19 convs + the embedding/classifier head counted as the FC layer


def test_margin_loss_and_focus_mining_variants():
    x, y = _batch(n_per_class=4)
    for kwargs in ({"metric_loss": "margin"}, {"mining": "focus"}, {"metric_loss": "margin", "mining": "focus"}):
        torch.manual_seed(0)
        model = build_model()
        obj = build_objective(TrainConfig(loss="triplet", **kwargs))
        loss, stats = obj(*model(x), y)
        assert torch.isfinite(loss) and stats["triplets"] > 0, kwargs
        loss.backward()


def test_focus_mining_only_makes_focus_triplets():
    torch.manual_seed(0)
    obj = build_objective(TrainConfig(loss="triplet", mining="focus"))
    _, y = _batch(n_per_class=4)
    emb = torch.nn.functional.normalize(torch.randn(len(y), 16), dim=1)
    a, p, n = obj.mine(emb, y)
    focus = torch.tensor([0, 2, 4, 6])
    assert len(a) > 0
    for idx in (a, p, n):
        assert torch.isin(y[idx], focus).all()
    assert (y[a] == y[p]).all() and (y[a] != y[n]).all()


def test_config_names_every_backbone():
    """config.BACKBONES (torch-free, for validation) must list exactly the models that exist."""
    from embedfm import config

    assert sorted(config.BACKBONES) == sorted(BACKBONES)


def test_every_loss_of_the_table_is_built_as_it_declares():
    """objectives.BUILDERS builds exactly the losses of embedfm.losstable, each with the own parameters and hinge
    tuples its LossSpec declares, and a train step with it moves the network."""
    from embedfm.losstable import SPECS
    from embedfm.objectives import BUILDERS, loss_parameters

    assert list(BUILDERS) == list(SPECS)
    x, y = _batch(n_per_class=4)
    for name, spec in SPECS.items():
        torch.manual_seed(0)
        model = build_model(embedding_dim=16)
        obj = build_objective(TrainConfig(loss="triplet", metric_loss=name, embedding_dim=16))
        assert bool(loss_parameters(obj)) == spec.parametric, name
        logits, emb = model(x)
        assert (obj.tuple_losses(emb.detach(), y) is not None) == spec.hinge, name
        loss, stats = obj(logits, emb, y)
        assert torch.isfinite(loss) and ("triplets" in stats) == (spec.auto_miner != "none"), name
        loss.backward()
        assert model.backbone.layers[0][0].weight.grad.abs().sum() > 0, name
