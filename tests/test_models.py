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


def test_patch_whitening_decorrelates_the_stems_outputs_and_is_frozen():
    """whiten_stem: the first conv's outputs over the images' patches have identity covariance (the +/- pairs:
    each direction twice with opposite signs); built with frozen_stem, the conv is not trained."""
    from embedfm.models import build_model, stem, whiten_stem

    torch.manual_seed(0)
    x = torch.randn(64, 1, 12, 12) @ torch.randn(12, 12) * 0.3  # correlated pixels along rows
    net = build_model("fastcnn", frozen_stem=True, backbone_kwargs={"widths": [18, 8, 8]}, image_size=(12, 12))
    assert whiten_stem(net, x, eps=0.0) == 18 and not stem(net).weight.requires_grad
    out = torch.nn.functional.conv2d(x, stem(net).weight)  # (N, 18, 10, 10), no padding: whole patches only
    z = out[:, 0::2].transpose(0, 1).reshape(9, -1).double()  # the + filters
    cov = torch.cov(z)
    assert torch.allclose(cov, torch.eye(9, dtype=torch.float64), atol=1e-3)
    assert torch.equal(out[:, 1::2], -out[:, 0::2])


def test_dirac_init_makes_square_convs_pass_their_input_through():
    from embedfm.models import dirac_init

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 6, 3, padding=1))
    assert dirac_init(net) == 1
    x = torch.randn(2, 4, 5, 5)
    y = torch.nn.functional.conv2d(x, net[1].weight, padding=1)
    assert torch.allclose(y[:, :4], x)


def test_pool_first_keeps_the_parameter_names_and_pools_before_bn():
    from embedfm.models import build_model, fuse_for_inference

    torch.manual_seed(0)
    plain = build_model("fastcnn")
    pooled = build_model("fastcnn", backbone_kwargs={"pool_first": True})
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == [
        (k, v.shape) for k, v in pooled.state_dict().items()
    ]
    pooled.load_state_dict(plain.state_dict())
    pooled.eval()
    x = torch.randn(3, 1, 28, 28)
    block = pooled.backbone.layers[0]
    conv, bn, relu = block._modules["0"], block._modules["1"], block._modules["2"]
    want = relu(bn(torch.nn.functional.max_pool2d(conv(x), 2)))
    assert torch.equal(block(x), want) and want.shape == (3, 24, 14, 14)
    logits, emb = pooled(x)
    assert logits.shape == (3, 10) and emb.shape == (3, 64)
    fused = fuse_for_inference(pooled)  # the pool-first blocks are not folded: the same outputs
    assert torch.allclose(fused(x)[0], logits, atol=1e-5)
