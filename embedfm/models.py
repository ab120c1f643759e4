"""Backbones and the embedding/classifier head shared by every loss.

Every model is `EmbeddingNet(backbone, embedding_dim)`:

    image (B, 1, 28, 28) → backbone → features (B, F) → Linear → z (B, D)
        embedding = normalize(z)     (B, D)  unit norm: what the triplet loss, kNN and UMAP see
        logits    = Linear(z)        (B, 10) what cross-entropy and the softmax classifier see

The CE model and the CE + triplet model have exactly this architecture, so the CE model's
embedding is its own penultimate layer and comparisons between them are fair.

`model_args` (a plain dict) is stored in every checkpoint; `build_model(**model_args)` rebuilds the
network from the checkpoint alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FastCNN(nn.Module):
    """The default CPU backbone: 5 conv-BN-ReLU layers at 28→14→7 resolution, global pooling.

    Shaped for a 2-core budget: only the narrow stem runs at full 28×28 resolution, the wide layers
    run at 14×14 and 7×7 where they are cheap. Global average + max pooling keeps both "how much"
    and "where strongest" of each channel (max pooling helps on small garments like sandals).
    """

    def __init__(self, widths: tuple[int, int, int] = (24, 48, 96)):
        super().__init__()
        w0, w1, w2 = widths
        self.layers = nn.Sequential(
            conv_bn(1, w0),
            nn.MaxPool2d(2),  # (B, w0, 14, 14)
            conv_bn(w0, w1),
            conv_bn(w1, w1),
            nn.MaxPool2d(2),  # (B, w1, 7, 7)
            conv_bn(w1, w2),
            conv_bn(w2, w2),  # (B, w2, 7, 7)
        )
        self.out_features = 2 * w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(x)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2*w2)


class Linear(nn.Module):
    """Softmax regression's feature map: the raw pixels (the embedding head is then a linear map)."""

    out_features = 28 * 28

    def forward(self, x):
        return x.flatten(1)  # (B, 784)


class MLP(nn.Module):
    """The classic one-hidden-layer network (the NumPy / scikit-learn baselines)."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(inplace=True))
        self.out_features = hidden

    def forward(self, x):
        return self.net(x)  # (B, hidden)


class LeNet(nn.Module):
    """LeNet-5 as usually ported to 28×28 inputs: two 5×5 conv + pool stages, two dense layers."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # (B, 6, 14, 14)
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # (B, 16, 5, 5)
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.out_features = 84

    def forward(self, x):
        return self.net(x)


class VGG(nn.Module):
    """VGG-style: pairs of 3×3 conv-BN-ReLU at 28, 14, 7 with max pooling, global average pooling."""

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256)):
        super().__init__()
        w0, w1, w2 = widths
        self.layers = nn.Sequential(
            conv_bn(1, w0),
            conv_bn(w0, w0),
            nn.MaxPool2d(2),  # (B, w0, 14, 14)
            conv_bn(w0, w1),
            conv_bn(w1, w1),
            nn.MaxPool2d(2),  # (B, w1, 7, 7)
            conv_bn(w1, w2),
            conv_bn(w2, w2),
        )  # (B, w2, 7, 7)
        self.out_features = w2

    def forward(self, x):
        return self.layers(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x), inplace=True)


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): 6n+2 layers, widths 16/32/64 at 28/14/7. n=3 is ResNet-20."""

    def __init__(self, n: int = 3, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        layers = [nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        cin = widths[0]
        for stage, w in enumerate(widths):
            for i in range(n):
                layers.append(BasicBlock(cin, w, stride=2 if (stage > 0 and i == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.out_features = widths[-1]

    def forward(self, x):
        return self.layers(x).mean(dim=(2, 3))  # (B, 64)


BACKBONES = {
    "fastcnn": FastCNN,
    "linear": Linear,
    "mlp": MLP,
    "lenet": LeNet,
    "vgg": VGG,
    "resnet20": ResNet,
}


class EmbeddingNet(nn.Module):
    def __init__(
        self,
        backbone: str = "fastcnn",
        embedding_dim: int = 64,
        num_classes: int = 10,
        backbone_kwargs: dict | None = None,
    ):
        super().__init__()
        self.backbone = BACKBONES[backbone](**(backbone_kwargs or {}))
        self.embed = nn.Linear(self.backbone.out_features, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, 28, 28) → (logits (B, C), unit-norm embedding (B, D))."""
        z = self.embed(self.backbone(x))  # (B, D)
        return self.classifier(z), F.normalize(z, dim=1)


def build_model(
    backbone: str = "fastcnn", embedding_dim: int = 64, num_classes: int = 10, backbone_kwargs: dict | None = None
) -> EmbeddingNet:
    return EmbeddingNet(backbone, embedding_dim, num_classes, backbone_kwargs)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every Conv2d → BatchNorm2d pair inside a Sequential folded
    into one conv (same outputs up to float rounding, ~1/4 less inference time on CPU). Blocks that
    are not Sequentials (ResNet's) keep their BN."""
    import copy
    import itertools

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for seq in [m for m in fused.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return fused


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def device_of(model: nn.Module) -> torch.device:
    """Where a model computes: the device of its parameters (the CPU for one without parameters). Everything that
    makes a tensor for a model it did not place asks this, so a model moved to the GPU gets GPU inputs."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def count_macs(model: nn.Module, shape: tuple[int, ...] = (1, 1, 28, 28)) -> int:
    """Multiply-accumulates of one forward pass through conv and linear layers (per image), counted by running one
    zero image through the model where it is (CPU or GPU)."""
    macs = 0

    def hook(m, inp, out):
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(shape, device=device_of(model)))
    model.train(was_training)
    for h in handles:
        h.remove()
    return macs
