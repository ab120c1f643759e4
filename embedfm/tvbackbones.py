"""Torchvision classification models as embedfm backbones (`--backbone tv:<name>`), and their weights from a local file.

This module owns three rules, and nothing else of the model (the embedding head, `build_model` and the built-in
backbones live in `models.py`, which looks a `tv:` name up here):

* **What the backbone is.** `tv:<name>` is `torchvision.models.get_model(<name>, weights=None)` — one of
  `torchvision.models.list_models(module=torchvision.models)`, e.g. `tv:resnet18`, `tv:resnet50`,
  `tv:efficientnet_b0`, `tv:mobilenet_v3_small`, `tv:convnext_tiny` — with its classifier, the last `nn.Linear` (the
  one that makes the 1,000 ImageNet logits: `fc`, `classifier.1`, `classifier.3`, `classifier.2`, ...), replaced by
  `nn.Identity`. Its output is the model's penultimate features (B, F), F = that layer's `in_features`; whatever
  sits before that layer in the head stays (ConvNeXt's LayerNorm, MobileNetV3's 576→1024 Linear + Hardswish,
  EfficientNet's Dropout). googlenet and inception_v3 are built without their auxiliary classifiers. A model with no
  such Linear (squeezenet) is refused. Inputs are (B, C, H, W) at any size the model itself accepts (inception_v3
  needs ≥ 75 px; the ViTs exactly 224).
* **Channels.** The model's first `nn.Conv2d` (`conv1`, `features.0.0`, `conv_proj`, ...) is rebuilt to take
  `in_channels` (any other setting kept). When 3-channel (RGB) weights are loaded into a model with another
  `in_channels`, that conv's weight W (out, 3, k, k) becomes: for 1 channel the sum over RGB, W.sum(1) — so a grey
  image gives exactly what the RGB model gives for that image repeated on three channels; for C ≠ 1, 3 the RGB
  weights repeated cyclically over the C channels and scaled by 3/C (W[:, c % 3] · 3/C), which keeps the
  activation's scale for inputs of similar magnitude on every channel. A file whose first conv already has
  `in_channels` channels is loaded as it is.
* **Weights.** Only from a local file the user names, never from the internet (every model is built with
  `weights=None`): a `.safetensors` file (read with `safetensors`), or anything else as a torch state dict read with
  `torch.load(..., weights_only=True)`, which runs no code from the file. The file holds the torchvision model's full
  state dict; the classifier's keys are ignored (their count is reported), missing BatchNorm `num_batches_tracked`
  counters are allowed (older files lack them), and anything else that does not match — a missing or unexpected key,
  a shape — is refused with one `DataError` line naming the first mismatching key. A missing file and a file that is
  not a state dict of tensors are refused the same way.

The weights are read once, at training start (`load_pretrained`, which `models.init_pretrained` calls): the path is
kept in `model_args["weights"]` for provenance only, and rebuilding a network from a checkpoint never reads it (the
checkpoint's state dict holds the trained weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from embedfm.errors import ConfigError, DataError, one_line

PREFIX = "tv:"
# constructor arguments some models need to be a plain single-output classifier built without downloads
_EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
_IMAGENET_CLASSES = 1000


def is_tv(backbone: str) -> bool:
    return isinstance(backbone, str) and backbone.startswith(PREFIX)


def names() -> list[str]:
    """The torchvision classification models `tv:<name>` accepts (not all have a usable classifier; see TVBackbone)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _first_conv(model: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _classifier(model: nn.Module) -> str | None:
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1][1].out_features == _IMAGENET_CLASSES:
        return linears[-1][0]
    return None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


class TVBackbone(nn.Module):
    """A torchvision classification model without its classifier: (B, in_channels, H, W) → (B, out_features).

    `self.net` is the torchvision model (state-dict keys `net.<torchvision key>`); `first_conv` and `classifier` name
    the modules this class changed (the classifier's keys are the ones `load_pretrained` ignores)."""

    def __init__(self, name: str, in_channels: int = 1):
        super().__init__()
        import torchvision

        if name not in names():
            raise ConfigError(
                f"unknown torchvision backbone tv:{name}; one of torchvision.models.list_models() "
                "(classification), e.g. tv:resnet18, tv:efficientnet_b0, tv:mobilenet_v3_small, tv:convnext_tiny"
            )
        if not (isinstance(in_channels, int) and in_channels >= 1):
            raise ConfigError(f"in_channels must be a positive int, not {in_channels!r}")
        net = torchvision.models.get_model(name, weights=None, **_EXTRA_KWARGS.get(name, {}))
        classifier = _classifier(net)
        if classifier is None:
            raise ConfigError(f"tv:{name} has no Linear classifier to remove (its head is not a Linear layer)")
        self.name = name
        self.classifier = classifier
        self.first_conv = _first_conv(net)
        self.out_features = net.get_submodule(classifier).in_features
        _replace(net, classifier, nn.Identity())
        conv = net.get_submodule(self.first_conv)
        if conv.in_channels != in_channels:
            _replace(
                net,
                self.first_conv,
                nn.Conv2d(
                    in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                    conv.bias is not None,
                    conv.padding_mode,
                ),
            )
        self.in_channels = in_channels
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # (B, out_features)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file (`.safetensors`, or a torch state dict read weights-only); one
    `DataError` line if it is missing or not a state dict of tensors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damage, a pickle that needs code, not a weights file at all: one line
        raise DataError(f"{path}: not a weights file ({one_line(e)})") from None
    if not (isinstance(sd, dict) and sd and all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items())):
        raise DataError(f"{path}: not a weights file (expected a state dict: a dict of names to tensors)")
    return dict(sd)


def _adapt_first_conv(w: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB weights (out, 3, k, k) for a first conv of `in_channels` (the rule in the module docstring)."""
    if in_channels == 1:
        return w.sum(dim=1, keepdim=True)
    return w[:, [c % 3 for c in range(in_channels)]] * (3 / in_channels)


def load_pretrained(backbone: TVBackbone, path: str | Path, log=print) -> None:
    """Load a local torchvision state dict (full model, classifier included or not) into `backbone`; see the module
    docstring for the rules. Logs one line with what was loaded and ignored; one `DataError` line if it does not fit."""
    sd = read_state_dict(path)
    ignored = [k for k in sd if k.startswith(backbone.classifier + ".")]
    sd = {k: v for k, v in sd.items() if k not in ignored}
    conv_key = backbone.first_conv + ".weight"
    adapted = ""
    if conv_key in sd and sd[conv_key].dim() == 4 and sd[conv_key].shape[1] == 3 and backbone.in_channels != 3:
        sd[conv_key] = _adapt_first_conv(sd[conv_key], backbone.in_channels)
        adapted = f"; {conv_key} adapted from 3 channels to {backbone.in_channels}"
    own = backbone.net.state_dict()
    for k, v in own.items():
        if k not in sd:
            if k.endswith("num_batches_tracked"):
                sd[k] = v  # older files lack the counters; the model's own (0) stands
                continue
            raise DataError(f"{path}: does not fit tv:{backbone.name}: missing key {k}")
        if sd[k].shape != v.shape:
            raise DataError(
                f"{path}: does not fit tv:{backbone.name}: key {k} has shape {tuple(sd[k].shape)}, "
                f"the model's is {tuple(v.shape)}"
            )
    extra = [k for k in sd if k not in own]
    if extra:
        raise DataError(f"{path}: does not fit tv:{backbone.name}: unexpected key {extra[0]}")
    with torch.no_grad():
        backbone.net.load_state_dict(sd, strict=True)
    log(
        f"tv:{backbone.name}: loaded {len(own)} tensors from {path}, ignored {len(ignored)} classifier "
        f"key{'s' if len(ignored) != 1 else ''} ({backbone.classifier}.*){adapted}"
    )
