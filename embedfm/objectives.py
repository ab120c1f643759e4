"""Training objectives built from pytorch-metric-learning pieces (docs/losses.md).

- `ce`: cross-entropy (with label smoothing) on the classifier logits.
- `triplet`: --ce-weight × CE + --triplet-weight × a metric loss on the unit-norm embeddings. The metric loss
  (`--metric-loss`), its tuple miner (`--miner`) and which images of the batch they see (`--mining`) are separate
  choices. The metric losses, what `--miner auto` means for each and their settings are the table in
  `embedfm.losstable` (docs/losses.md describes them); `BUILDERS` below builds each from a config.

  The distance-weighted miner (Wu et al. 2017) draws, for every anchor–positive pair, one negative with
  probability inversely proportional to the density of distances on the unit hypersphere (clipped at `cutoff`,
  never beyond `nonzero_loss_cutoff`); pair losses read its triplets as pairs (a, p) and (a, n). The miner and the
  metric loss always run in fp32.

An objective is a callable `(logits, embeddings, labels) → (loss, stats)` where stats holds floats for the
progress bar and history (loss parts, number of mined tuples). Parameters of its own (ProxyAnchor's proxies,
ArcFace's class centres) are ordinary `nn.Module` parameters: `embedfm.train` optimises them in a group of their
own and saves them in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.utils import distributed as pml_dist

from embedfm.config import TrainConfig
from embedfm.distributed import is_active
from embedfm.losstable import HINGE_LOSSES, PARAMETRIC_LOSSES

NUM_CLASSES = 10
# the PML reduction types of the per-tuple losses of the hinge losses (HINGE_LOSSES): the ones the diagnostics count
# "active" tuples of
_TUPLE_REDUCTIONS = ("triplet", "pos_pair", "neg_pair")


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits, embeddings, labels):
        ce = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return ce, {"ce": ce.detach()}


def unit_l2() -> distances.LpDistance:
    """Euclidean distance between L2-normalised embeddings, in [0, 2]: the only distance the distance-weighted
    miner accepts, and the one the diagnostics report."""
    return distances.LpDistance(p=2, power=1, normalize_embeddings=True)


# how each metric loss of the table (embedfm.losstable.SPECS; a test keeps the names equal) is built from a config
# and the data's class count k (the proxies of ProxyAnchor and ArcFace)
BUILDERS: dict[str, Callable[[TrainConfig, int], nn.Module]] = {
    "triplet": lambda c, k: losses.TripletMarginLoss(margin=c.margin, distance=unit_l2()),
    "margin": lambda c, k: losses.MarginLoss(margin=c.margin, beta=c.beta, distance=unit_l2()),
    "contrastive": lambda c, k: losses.ContrastiveLoss(
        pos_margin=c.pos_margin, neg_margin=c.neg_margin, distance=unit_l2()
    ),
    "multisimilarity": lambda c, k: losses.MultiSimilarityLoss(alpha=c.ms_alpha, beta=c.ms_beta, base=c.ms_base),
    "supcon": lambda c, k: losses.SupConLoss(temperature=c.temperature),
    # proxies drawn from torch's generator (kaiming normal), as the weights are
    "proxyanchor": lambda c, k: losses.ProxyAnchorLoss(k, c.embedding_dim, margin=c.proxy_margin, alpha=c.proxy_alpha),
    "arcface": lambda c, k: losses.ArcFaceLoss(k, c.embedding_dim, margin=c.arcface_margin, scale=c.arcface_scale),
}


def make_metric_loss(cfg: TrainConfig, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The --metric-loss; `num_classes`: the proxies of ProxyAnchor / ArcFace (one per class of the data)."""
    return BUILDERS[cfg.metric_loss](cfg, num_classes)


def make_miner(cfg: TrainConfig) -> nn.Module | None:
    miner = cfg.resolved_miner
    if miner == "distance":
        return miners.DistanceWeightedMiner(
            cutoff=cfg.miner_cutoff, nonzero_loss_cutoff=cfg.miner_nonzero_loss_cutoff, distance=unit_l2()
        )
    if miner == "multisimilarity":
        return miners.MultiSimilarityMiner(epsilon=cfg.ms_epsilon)
    return None  # "none": the loss takes every tuple of the batch (or, for proxy losses, every image)


def count_tuples(tuples) -> int:
    """Triplets (a, p, n) → their number; pairs (a1, p, a2, n) → positive + negative pairs."""
    return len(tuples[0]) if len(tuples) == 3 else len(tuples[0]) + len(tuples[2])


class CEMetric(nn.Module):
    """ce_weight × CE + weight × a metric loss (`--metric-loss`) over the tuples of a miner (`--miner`).

    mining: "all" (the miner and loss see the whole batch) or "focus" (they see only the focus-class images, so
    every tuple is made of the confusable classes). With a miner, the mined tuples index the whole batch (the
    loss is computed on it as before); without one, or for a loss with parameters (a per-image loss), the loss
    is computed on the focus images alone.
    """

    def __init__(self, cfg: TrainConfig, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.ce = CrossEntropy(cfg.label_smoothing)
        self.ce_weight = cfg.ce_weight
        self.weight = cfg.triplet_weight
        self.mining = cfg.mining
        self.parametric = cfg.metric_loss in PARAMETRIC_LOSSES
        self.hinge = cfg.metric_loss in HINGE_LOSSES
        self.register_buffer("focus", torch.tensor(cfg.focus_classes, dtype=torch.long), persistent=False)
        self.miner = make_miner(cfg)
        self.metric = make_metric_loss(cfg, num_classes)

    def _focus_idx(self, labels: torch.Tensor) -> torch.Tensor:
        if self.focus.device != labels.device:  # built on the CPU: the focus ids follow the labels, moved once
            self.focus = self.focus.to(labels.device)
        return torch.nonzero(torch.isin(labels, self.focus)).squeeze(1)  # (F,) focus images of the batch

    def mine(self, emb: torch.Tensor, labels: torch.Tensor):
        """The miner's tuples as indices into the batch: triplets (a, p, n) or pairs (a1, p, a2, n); None without
        a miner."""
        if self.miner is None:
            return None
        if self.mining == "all":
            return self.miner(emb, labels)
        keep = self._focus_idx(labels)
        return tuple(keep[i] for i in self.miner(emb[keep], labels[keep]))

    def select(self, emb: torch.Tensor, labels: torch.Tensor):
        """(embeddings, labels, tuples) the metric loss is computed on."""
        if self.mining == "focus" and (self.miner is None or self.parametric):
            keep = self._focus_idx(labels)
            emb, labels = emb[keep], labels[keep]
            return emb, labels, (self.miner(emb, labels) if self.miner is not None else None)
        return emb, labels, self.mine(emb, labels)

    def forward(self, logits, embeddings, labels):
        ce, stats = self.ce(logits, embeddings, labels)
        emb = embeddings.float()  # (B, D); the miner's log-weights lose precision in half types
        scale = 1.0
        if is_active() and not self.parametric:
            # distributed: mine and score over every rank's embeddings (ours first; only ours carry
            # gradients), as PML's DistributedLossWrapper does; DDP then averages gradients over
            # ranks, which the world-size factor undoes for this part. A loss with parameters is a per-image
            # loss: each rank scores its own images and `average_loss_grads` averages the parameters' gradients.
            emb, labels, _ = pml_dist.gather(emb, labels)  # (B_local × world, D), (B_local × world,)
            scale = float(torch.distributed.get_world_size())
        emb, labels, tuples = self.select(emb, labels)
        metric = self.metric(emb, labels, tuples)
        stats["triplet"] = metric.detach()  # the metric term, whatever the loss (the column keeps its name)
        if tuples is not None:
            # made on the embeddings' device (a fill, no host-to-device copy): the loop sums stats where they are
            stats["triplets"] = torch.full((), float(count_tuples(tuples)), device=emb.device)
        ce_part = ce if self.ce_weight == 1.0 else self.ce_weight * ce
        return ce_part + self.weight * scale * metric, stats

    @torch.no_grad()
    def tuple_losses(self, emb: torch.Tensor, labels: torch.Tensor):
        """(anchor labels (T,), active (T,) bool): every tuple the loss scores on this batch and whether its loss
        is non-zero, for hinge losses (triplet, margin, contrastive); None for losses without per-tuple hinges
        (multi-similarity, SupCon, ProxyAnchor, ArcFace weigh every tuple or image smoothly). Draws from torch's
        random generator when the miner does."""
        if not self.hinge:
            return None
        emb, labels, tuples = self.select(emb.float(), labels)
        parts = self.metric.compute_loss(emb, labels, tuples, emb, labels)
        anchors, active = [], []
        for part in parts.values():
            per_tuple = part["losses"]
            if part["reduction_type"] in _TUPLE_REDUCTIONS and torch.is_tensor(per_tuple) and len(per_tuple):
                anchors.append(labels[part["indices"][0]])
                active.append(per_tuple > 0)
        if not anchors:
            return None
        return torch.cat(anchors), torch.cat(active)


CETriplet = CEMetric  # the name before --metric-loss had more than triplet and margin


def loss_parameters(objective) -> list[torch.nn.Parameter]:
    """The objective's own trainable parameters (empty for CE and the pair losses; a plain function has none)."""
    return list(objective.parameters()) if isinstance(objective, nn.Module) else []


def average_loss_grads(objective, world: int) -> None:
    """Distributed: average the gradients of the objective's own parameters over ranks (DDP averages the
    network's; the objective is outside it). Every rank takes part, with a zero gradient where it has none."""
    for p in loss_parameters(objective):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)


def build_objective(cfg: TrainConfig, num_classes: int = NUM_CLASSES) -> nn.Module:
    if cfg.loss == "ce":
        return CrossEntropy(cfg.label_smoothing)
    return CEMetric(cfg, num_classes)
