"""embedfm.models: the backbones' shapes, sizes and MAC counts, and a train step with each."""

from __future__ import annotations

import pytest
import torch
from conftest import labelled_batch as _batch
from shadow import IGNORE_META_COPY

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


@pytest.mark.numeric
@pytest.mark.slow  # every backbone backward: the fast suite keeps every forward (above) and fastcnn's train steps
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


def test_config_names_every_backbone():
    """config.BACKBONES (torch-free, for validation) must list exactly the models that exist."""
    from embedfm import config

    assert sorted(config.BACKBONES) == sorted(BACKBONES)


@pytest.mark.device
@pytest.mark.filterwarnings(IGNORE_META_COPY)
def test_count_macs_runs_on_the_models_device(device):
    """Defect 1: `count_macs` fed the model a CPU tensor, after `train` had moved the model to the GPU."""
    from embedfm.models import build_model, count_macs

    torch.manual_seed(0)
    expected = count_macs(build_model())
    assert count_macs(build_model().to(device)) == expected
