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
            conv_bn(1, w0), nn.MaxPool2d(2),          # (B, w0, 14, 14)
            conv_bn(w0, w1), conv_bn(w1, w1), nn.MaxPool2d(2),  # (B, w1, 7, 7)
            conv_bn(w1, w2), conv_bn(w2, w2),         # (B, w2, 7, 7)
        )
        self.out_features = 2 * w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(x)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2*w2)


BACKBONES = {
    "fastcnn": FastCNN,
}


class EmbeddingNet(nn.Module):
    def __init__(self, backbone: str = "fastcnn", embedding_dim: int = 64, num_classes: int = 10,
                 backbone_kwargs: dict | None = None):
        super().__init__()
        self.backbone = BACKBONES[backbone](**(backbone_kwargs or {}))
        self.embed = nn.Linear(self.backbone.out_features, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, 28, 28) → (logits (B, C), unit-norm embedding (B, D))."""
        z = self.embed(self.backbone(x))  # (B, D)
        return self.classifier(z), F.normalize(z, dim=1)


def build_model(backbone: str = "fastcnn", embedding_dim: int = 64, num_classes: int = 10,
                backbone_kwargs: dict | None = None) -> EmbeddingNet:
    return EmbeddingNet(backbone, embedding_dim, num_classes, backbone_kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, shape: tuple[int, ...] = (1, 1, 28, 28)) -> int:
    """Multiply-accumulates of one forward pass through conv and linear layers (per image)."""
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
        model(torch.zeros(shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return macs
