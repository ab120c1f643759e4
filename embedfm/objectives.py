"""Training objectives built from pytorch-metric-learning pieces.

- `ce`: cross-entropy (with label smoothing) on the classifier logits.
- `triplet`: cross-entropy + weight × TripletMarginLoss on the unit-norm embeddings, with triplets
  drawn by DistanceWeightedMiner (Wu et al. 2017: negatives sampled with probability inversely
  proportional to the density of distances on the unit hypersphere, clipped at `cutoff` and never
  beyond `nonzero_loss_cutoff`). Distance: LpDistance(p=2, normalize_embeddings=True), the only one
  the miner accepts. The miner and metric loss always run in fp32.

An objective is a callable `(logits, embeddings, labels) → (loss, stats)` where stats holds floats
for the progress bar and history (loss parts, number of mined triplets).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.utils import distributed as pml_dist

from embedfm.config import TrainConfig
from embedfm.distributed import is_active


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits, embeddings, labels):
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return ce, {"ce": ce.detach()}


class CETriplet(nn.Module):
    """CE + weight × metric loss over distance-weighted-mined triplets.

    metric_loss: "triplet" (TripletMarginLoss, the default) or "margin" (MarginLoss with boundary β,
    the loss Wu et al. paired with distance-weighted sampling). mining: "all" (the miner sees the
    whole batch) or "focus" (it sees only the focus-class images, so every triplet is made of the
    confusable classes).
    """

    def __init__(
        self,
        label_smoothing: float,
        margin: float,
        weight: float,
        cutoff: float,
        nonzero_loss_cutoff: float,
        metric_loss: str = "triplet",
        beta: float = 1.2,
        mining: str = "all",
        focus_classes: tuple[int, ...] = (0, 2, 4, 6),
    ):
        super().__init__()
        self.ce = CrossEntropy(label_smoothing)
        self.weight = weight
        self.mining = mining
        self.register_buffer("focus", torch.tensor(focus_classes, dtype=torch.long), persistent=False)
        distance = distances.LpDistance(p=2, power=1, normalize_embeddings=True)
        self.miner = miners.DistanceWeightedMiner(
            cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff, distance=distance
        )
        if metric_loss == "margin":
            self.metric = losses.MarginLoss(margin=margin, beta=beta, distance=distance)
        else:
            self.metric = losses.TripletMarginLoss(margin=margin, distance=distance)

    def mine(self, emb: torch.Tensor, labels: torch.Tensor):
        """Triplets (a, p, n) as indices into the batch."""
        if self.mining == "all":
            return self.miner(emb, labels)
        if self.focus.device != labels.device:  # built on the CPU: the focus ids follow the labels, moved once
            self.focus = self.focus.to(labels.device)
        keep = torch.nonzero(torch.isin(labels, self.focus)).squeeze(1)  # (F,) focus images of the batch
        a, p, n = self.miner(emb[keep], labels[keep])
        return keep[a], keep[p], keep[n]

    def forward(self, logits, embeddings, labels):
        ce, stats = self.ce(logits, embeddings, labels)
        emb = embeddings.float()  # (B, D); the miner's log-weights lose precision in half types
        scale = 1.0
        if is_active():
            # distributed: mine and score over every rank's embeddings (ours first; only ours carry
            # gradients), as PML's DistributedLossWrapper does; DDP then averages gradients over
            # ranks, which the world-size factor undoes for this part
            emb, labels, _ = pml_dist.gather(emb, labels)  # (B_local × world, D), (B_local × world,)
            scale = float(torch.distributed.get_world_size())
        triplets = self.mine(emb, labels)  # (anchors, positives, negatives), each (T,)
        metric = self.metric(emb, labels, triplets)
        # made on the embeddings' device (a fill, no host-to-device copy): the loop sums stats where they are
        stats.update(triplet=metric.detach(), triplets=torch.full((), float(len(triplets[0])), device=emb.device))
        return ce + self.weight * scale * metric, stats


def build_objective(cfg: TrainConfig) -> nn.Module:
    if cfg.loss == "ce":
        return CrossEntropy(cfg.label_smoothing)
    return CETriplet(
        cfg.label_smoothing,
        cfg.margin,
        cfg.triplet_weight,
        cfg.miner_cutoff,
        cfg.miner_nonzero_loss_cutoff,
        cfg.metric_loss,
        cfg.beta,
        cfg.mining,
        cfg.focus_classes,
    )
