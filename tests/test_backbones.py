"""Backbones at any image size and channel count, torchvision backbones (`tv:<name>`) and their local weights."""

import pytest
import torch

from embedfm import checkpoint
from embedfm.errors import ConfigError, DataError, EmbedfmError
from embedfm.models import BACKBONES, MIN_SIZE, build_model, count_macs, init_pretrained

# FastCNN at the defaults (1×28×28), as it has always been: names and shapes of every state-dict entry, in order.
# Existing checkpoints load into it with strict=True.
_FASTCNN = [("backbone.layers.0.0.weight", (24, 1, 3, 3))]
for _i, (_cin, _cout) in {0: (1, 24), 2: (24, 48), 3: (48, 48), 5: (48, 96), 6: (96, 96)}.items():
    if _i:
        _FASTCNN.append((f"backbone.layers.{_i}.0.weight", (_cout, _cin, 3, 3)))
    _FASTCNN += [(f"backbone.layers.{_i}.1.{k}", (_cout,)) for k in ("weight", "bias", "running_mean", "running_var")]
    _FASTCNN.append((f"backbone.layers.{_i}.1.num_batches_tracked", ()))
_FASTCNN += [("embed.weight", (64, 192)), ("embed.bias", (64,))]
_FASTCNN += [("classifier.weight", (10, 64)), ("classifier.bias", (10,))]


def _shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_default_structures_are_unchanged():
    assert _shapes(build_model()) == _FASTCNN
    assert _shapes(build_model("linear"))[:2] == [("embed.weight", (64, 784)), ("embed.bias", (64,))]
    assert _shapes(build_model("mlp"))[:2] == [("backbone.net.1.weight", (256, 784)), ("backbone.net.1.bias", (256,))]
    lenet = dict(_shapes(build_model("lenet")))
    assert lenet["backbone.net.0.weight"] == (6, 1, 5, 5) and lenet["backbone.net.7.weight"] == (120, 400)
    assert isinstance(build_model("lenet").backbone.net[6], torch.nn.Flatten)  # no adaptive pool at 28×28
    assert dict(_shapes(build_model("vgg")))["backbone.layers.0.0.weight"] == (64, 1, 3, 3)
    assert dict(_shapes(build_model("resnet20")))["backbone.layers.0.weight"] == (16, 1, 3, 3)


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (1, 28, 28), (3, 20, 13)])
def test_builtin_backbones_at_any_size(name, shape):
    c, h, w = shape
    if min(h, w) < MIN_SIZE[name]:
        with pytest.raises(ConfigError, match="at least"):
            build_model(name, embedding_dim=8, in_channels=c, image_size=(h, w))
        return
    torch.manual_seed(0)
    model = build_model(name, embedding_dim=8, num_classes=5, in_channels=c, image_size=(h, w))
    logits, emb = model(torch.randn(2, c, h, w))
    assert logits.shape == (2, 5) and emb.shape == (2, 8)
    assert model.input_shape == shape and count_macs(model) > 0  # count_macs runs the model's own shape


def test_min_sizes_are_the_smallest_that_run():
    assert MIN_SIZE == {"fastcnn": 4, "linear": 1, "mlp": 1, "lenet": 12, "vgg": 4, "resnet20": 1}
    for name in ("fastcnn", "lenet", "vgg"):
        s = MIN_SIZE[name]
        build_model(name, embedding_dim=4, image_size=(s, s)).eval()(torch.randn(1, 1, s, s))
        with pytest.raises(RuntimeError):  # what the size check spares: one below, the network itself fails
            build_model(name, embedding_dim=4).eval()(torch.randn(1, 1, s - 1, s - 1))


def test_count_macs_defaults_to_the_models_input_shape():
    m = build_model("linear", embedding_dim=8, in_channels=3, image_size=(32, 32))
    assert count_macs(m) == 3 * 32 * 32 * 8 + 8 * 10 == count_macs(m, (1, 3, 32, 32))


def _resnet18_file(tmp_path, fmt):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None).eval()
    sd = ref.state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "r18.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "r18.pt"
        torch.save(sd, path)
    return ref, path


def _features(ref, x):
    """resnet18's penultimate features (what tv:resnet18 outputs): everything but fc."""
    ref.fc = torch.nn.Identity()
    return ref(x)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_tv_resnet18_loads_a_local_weights_file(tmp_path, fmt):
    ref, path = _resnet18_file(tmp_path, fmt)
    model = build_model("tv:resnet18", embedding_dim=8, in_channels=3, image_size=(32, 32), weights=str(path))
    assert model.backbone.out_features == 512
    logs = []
    init_pretrained(model, path, log=logs.append)
    assert "ignored 2 classifier keys (fc.*)" in logs[0]
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.backbone(x), _features(ref, x))
        logits, emb = model(x)
    assert logits.shape == (2, 10) and emb.shape == (2, 8)


def test_tv_one_channel_sums_the_rgb_weights(tmp_path):
    ref, path = _resnet18_file(tmp_path, "safetensors")
    model = build_model("tv:resnet18", embedding_dim=8, in_channels=1, image_size=(32, 32))
    init_pretrained(model, path, log=lambda _: None)
    conv = model.backbone.net.conv1
    assert conv.in_channels == 1 and torch.equal(conv.weight, ref.conv1.weight.sum(1, keepdim=True))
    model.eval()
    grey = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # a grey image = the RGB model on that image repeated on three channels
        torch.testing.assert_close(model.backbone(grey), _features(ref, grey.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)
    four = build_model("tv:resnet18", embedding_dim=8, in_channels=4)
    init_pretrained(four, path, log=lambda _: None)  # other counts: RGB repeated cyclically, scaled by 3/C
    w = ref.conv1.weight
    assert torch.equal(four.backbone.net.conv1.weight, w[:, [0, 1, 2, 0]] * 0.75)


def test_tv_other_channel_counts_and_models():
    m = build_model("tv:resnet18", embedding_dim=8, in_channels=4, image_size=(32, 32))
    assert m.backbone.net.conv1.in_channels == 4 and m(torch.randn(2, 4, 32, 32))[1].shape == (2, 8)
    m = build_model("tv:mobilenet_v3_small", embedding_dim=8, in_channels=3, image_size=(32, 32))
    assert m.backbone.classifier == "classifier.3" and m.backbone.out_features == 1024
    with pytest.raises(ConfigError, match="unknown torchvision backbone"):
        build_model("tv:nosuchnet")
    with pytest.raises(ConfigError, match="no Linear classifier"):
        build_model("tv:squeezenet1_1")


def test_bad_weights_files_are_one_line(tmp_path):
    import torchvision

    model = build_model("tv:resnet18", embedding_dim=8, in_channels=3)
    wrong = torchvision.models.resnet34(weights=None).state_dict()
    torch.save(wrong, tmp_path / "r34.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not weights at all")
    torch.save({"a": 1}, tmp_path / "dict.pt")
    sd = torchvision.models.resnet18(weights=None).state_dict()
    sd["layer1.0.conv1.weight"] = sd["layer1.0.conv1.weight"][:32]
    torch.save(sd, tmp_path / "shape.pt")
    cases = {
        "missing.pt": "weights file not found",
        "junk.safetensors": "not a weights file",
        "dict.pt": "not a weights file",
        "r34.pt": "unexpected key layer1.2.conv1.weight",
        "shape.pt": "key layer1.0.conv1.weight has shape (32, 64, 3, 3), the model's is (64, 64, 3, 3)",
    }
    for name, expected in cases.items():
        with pytest.raises(DataError) as e:
            init_pretrained(model, tmp_path / name, log=lambda _: None)
        assert expected in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    with pytest.raises(EmbedfmError, match="tv: backbones"):
        init_pretrained(build_model(), tmp_path / "r34.pt")


def test_rebuild_from_model_args_needs_no_weights_file(tmp_path):
    _, path = _resnet18_file(tmp_path, "pt")
    args = {"backbone": "tv:resnet18", "embedding_dim": 8, "num_classes": 10, "in_channels": 1}
    args |= {"image_size": [32, 32], "weights": str(path)}  # as a checkpoint's JSON holds them
    model = build_model(**args)
    init_pretrained(model, path, log=lambda _: None)
    path.unlink()
    rebuilt = checkpoint.build_network({"model_args": args, "model": model.state_dict()}, "run")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x)[1], model.eval()(x)[1])
    assert rebuilt.input_shape == (1, 32, 32)


def test_old_model_args_rebuild_as_one_by_28_by_28():
    torch.manual_seed(0)
    model = build_model("lenet")
    old = {"backbone": "lenet", "embedding_dim": 64, "num_classes": 10}  # no in_channels / image_size
    rebuilt = checkpoint.build_network({"model_args": old, "model": model.state_dict()}, "run")
    assert rebuilt.input_shape == (1, 28, 28)
    new = {**old, "in_channels": 3, "image_size": [64, 64]}
    assert checkpoint.model_args({"model_args": new}, "run")["image_size"] == (64, 64)
    for bad in ({"image_size": [0, 28]}, {"in_channels": 1.5}, {"weights": 3}, {"backbone": "tv:nosuch"}):
        with pytest.raises(EmbedfmError):
            checkpoint.model_args({"model_args": {**old, **bad}}, "run")
