"""The metric losses of `--loss triplet`, one `LossSpec` each: the table the rest of embedfm reads them from.

- `config` takes `--metric-loss`'s choices, what `--miner auto` means, and each loss's own settings (config fields
  with their defaults, help and checks) from it;
- `tune` takes the search range of each setting, and searches a loss's settings with it;
- `objectives` builds a loss by looking its name up in `objectives.BUILDERS` (the one part that needs torch);
- the loss comparison (`embedfm study run studies/losses.py`) takes its metric-loss methods from `study_methods()`
  and the losses whose diagnostics it plots from `HINGE_LOSSES`.

A new metric loss is a `LossSpec` in `SPECS` below, a builder in `objectives.BUILDERS` and its row in
docs/losses.md (CONTRIBUTING.md, "Add a loss"). This module does not import torch: `--help` and config validation
read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Setting:
    """A hyper-parameter of a metric loss: the config field (and flag `--NAME`) it is built from.

    `search` is `embedfm tune`'s range for it: ("float" | "log", low, high), "log" drawn log-uniformly. `valid`
    checks a value on its own, `must` says what it requires in the one-line error ("--NAME must ..., got X");
    without `valid`, the loss's `check` covers it."""

    default: float
    help: str
    search: tuple[str, float, float]
    valid: Callable[[float], bool] | None = None
    must: str = ""


@dataclass(frozen=True)
class LossSpec:
    """One `--metric-loss` choice.

    name: the `--metric-loss` value; help: how `--metric-loss --help` names it (the pytorch-metric-learning class);
    auto_miner: what `--miner auto` means with it (a `config.MINERS` value: the miner its authors, or the comparison
    papers, paired it with); settings: the config fields it is built from, in the order `embedfm tune` draws them
    (after the shared settings, before the miner's); hinge: its per-tuple losses are zero once a tuple meets its
    margin (the diagnostics count the active ones); parametric: it has trainable parameters of its own (trained
    beside the network, saved in the checkpoint); check: a constraint between its settings, returning the one-line
    problem or None."""

    name: str
    help: str
    auto_miner: str
    settings: dict[str, Setting] = field(default_factory=dict)
    hinge: bool = False
    parametric: bool = False
    check: Callable[[Any], str | None] | None = None


def _positive(v: float) -> bool:
    return v > 0


# settings two losses share (one field each): the hinge margin, the learning-rate multiplier of own parameters
MARGIN = Setting(
    0.2,
    "margin on unit-norm embeddings (distances in [0, 2]): TripletMarginLoss's, MarginLoss's α, and the "
    "diagnostics' probe",
    ("float", 0.05, 0.5),
    lambda v: v >= 0,
    "must be non-negative",
)
PROXY_LR_MULT = Setting(
    1.0,
    "learning-rate multiplier of the loss's own parameters (ProxyAnchor proxies, ArcFace class centres)",
    ("log", 1.0, 100.0),
    _positive,
    "must be positive",
)


def _contrastive_margins(c) -> str | None:
    if 0 <= c.pos_margin < c.neg_margin <= 2:
        return None
    return (
        f"--pos-margin and --neg-margin must satisfy 0 <= pos < neg <= 2 (unit-norm distances), got {c.pos_margin} "
        f"and {c.neg_margin}"
    )


SPECS: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec("triplet", "TripletMarginLoss", "distance", {"margin": MARGIN}, hinge=True),
        LossSpec(
            "margin",
            "MarginLoss with boundary --beta",
            "distance",
            {
                "margin": MARGIN,
                "beta": Setting(
                    1.2,
                    "MarginLoss boundary β between positive and negative distances",
                    ("float", 0.8, 1.6),
                    _positive,
                    "must be positive",
                ),
            },
            hinge=True,
        ),
        LossSpec(
            "contrastive",
            "ContrastiveLoss",
            "distance",
            {
                "pos_margin": Setting(
                    0.0, "ContrastiveLoss: positive pairs farther apart than this are pulled", ("float", 0.0, 0.5)
                ),
                "neg_margin": Setting(
                    1.0, "ContrastiveLoss: negative pairs closer than this are pushed", ("float", 0.6, 1.6)
                ),
            },
            hinge=True,
            check=_contrastive_margins,
        ),
        LossSpec(
            "multisimilarity",
            "MultiSimilarityLoss",
            "multisimilarity",
            {
                "ms_alpha": Setting(
                    2.0,
                    "MultiSimilarityLoss: weight α of positive pairs",
                    ("log", 0.5, 10.0),
                    _positive,
                    "must be positive",
                ),
                "ms_beta": Setting(
                    50.0,
                    "MultiSimilarityLoss: weight β of negative pairs",
                    ("log", 10.0, 100.0),
                    _positive,
                    "must be positive",
                ),
                "ms_base": Setting(
                    0.5,
                    "MultiSimilarityLoss: similarity threshold λ",
                    ("float", 0.3, 0.8),
                    lambda v: -1 < v < 1,
                    "must be a cosine similarity in (-1, 1)",
                ),
            },
        ),
        LossSpec(
            "supcon",
            "SupConLoss",
            "none",
            {
                "temperature": Setting(
                    0.1,
                    "SupConLoss: temperature τ of the cosine similarities",
                    ("log", 0.03, 0.5),
                    _positive,
                    "must be positive",
                )
            },
        ),
        LossSpec(
            "proxyanchor",
            "ProxyAnchorLoss",
            "none",
            {
                "proxy_margin": Setting(
                    0.1,
                    "ProxyAnchorLoss: margin δ on cosine similarity",
                    ("float", 0.0, 0.3),
                    lambda v: 0 <= v < 1,
                    "must be in [0, 1)",
                ),
                "proxy_alpha": Setting(
                    32.0, "ProxyAnchorLoss: scale α", ("log", 4.0, 64.0), _positive, "must be positive"
                ),
                "proxy_lr_mult": PROXY_LR_MULT,
            },
            parametric=True,
        ),
        LossSpec(
            "arcface",
            "ArcFaceLoss",
            "none",
            {
                "arcface_margin": Setting(
                    28.6,
                    "ArcFaceLoss: additive angular margin in degrees",
                    ("float", 10.0, 45.0),
                    lambda v: 0 <= v < 90,
                    "must be in [0, 90) degrees",
                ),
                "arcface_scale": Setting(
                    64.0, "ArcFaceLoss: scale s of the cosine logits", ("log", 8.0, 64.0), _positive, "must be positive"
                ),
                "proxy_lr_mult": PROXY_LR_MULT,
            },
            parametric=True,
        ),
    )
}


def _settings() -> dict[str, Setting]:
    """Every loss's settings, each once (a shared setting must be the same object in every loss that lists it)."""
    out: dict[str, Setting] = {}
    for spec in SPECS.values():
        for name, s in spec.settings.items():
            if out.setdefault(name, s) is not s:
                raise ValueError(f"losstable: setting {name!r} is declared twice; share one Setting")
    return out


SETTINGS = _settings()
HINGE_LOSSES = tuple(n for n, s in SPECS.items() if s.hinge)
PARAMETRIC_LOSSES = tuple(n for n, s in SPECS.items() if s.parametric)


def study_methods() -> dict[str, dict]:
    """The loss comparison's metric-loss methods: the config settings that make each (CE + the loss)."""
    return {name: {"loss": "triplet", "metric_loss": name} for name in SPECS}
