"""Training configuration: one frozen dataclass with the defaults, validation, and file I/O.

Resolution order (timm-style): dataclass defaults < `--config FILE` (JSON) < command-line flags.
The resolved config is printed at the start of a run and saved as `config.json` in the run dir and
inside every checkpoint, so a run describes itself.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from embedfm.errors import ConfigError

LOSSES = ("ce", "triplet")
SAMPLERS = ("auto", "random", "balanced")
METRIC_LOSSES = ("triplet", "margin")
MININGS = ("all", "focus")
DEVICES = ("auto", "cpu", "cuda")
# the keys of models.BACKBONES (a test keeps them equal); named here so that validating a config, and
# so `--help`, does not import torch
BACKBONES = ("fastcnn", "linear", "mlp", "lenet", "vgg", "resnet20")


@dataclass(frozen=True)
class TrainConfig:
    # what to train
    loss: str = "ce"                  # "ce": plain classifier; "triplet": CE + weight × triplet loss
    backbone: str = "fastcnn"         # one of BACKBONES (models.BACKBONES)
    embedding_dim: int = 64           # low-dim on purpose: distance-weighted sampling degrades at 128-d
    # metric-learning side (used when loss == "triplet")
    margin: float = 0.2               # triplet margin, on unit-norm embeddings (distances in [0, 2])
    triplet_weight: float = 1.0
    metric_loss: str = "triplet"      # "triplet" (TripletMarginLoss) or "margin" (MarginLoss, Wu et al.)
    beta: float = 1.2                 # MarginLoss boundary between positive and negative distances
    mining: str = "all"               # "all": mine the whole batch; "focus": only among focus-class images
    miner_cutoff: float = 0.5         # DistanceWeightedMiner: distances below this are clipped
    miner_nonzero_loss_cutoff: float = 1.4  # ... and negatives farther than this are never drawn
    sampler: str = "auto"             # auto = balanced for triplet, random for ce
    m_per_class: int = 8              # a balanced batch holds at least this many images of each class
    focus_classes: tuple[int, ...] = (0, 2, 4, 6)
    focus_oversample: float = 1.5     # balanced sampler draws focus classes this many times as often
    # optimisation
    epochs: int = 3
    batch_size: int = 256
    lr: float = 4e-3                  # peak learning rate of the one-cycle schedule (AdamW)
    weight_decay: float = 5e-2
    label_smoothing: float = 0.1
    warmup_frac: float = 0.2          # share of steps spent warming up to the peak lr
    # data
    data_dir: str | None = None
    val_size: int = 5000              # fixed stratified validation split carved from train
    limit: int | None = None          # train on a stratified subset of this many images
    crop_pad: int = 0                 # random-crop padding in pixels (0 disables: at a 3-epoch budget crops cost 0.9 pt val acc)
    flip: bool = True
    # run
    out: str = "artifacts/runs/run"
    seed: int = 0
    device: str = "auto"
    threads: int | None = None        # torch intra-op threads; None = torch's default
    compile: bool = False             # torch.compile the training forward/backward (x1.10 for resnet20 on CPU, x0.98 fastcnn)
    knn_k: int = 10                   # k of the per-epoch validation kNN
    tta_flip: bool = True             # softmax predictions average the image and its mirror

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["focus_classes"] = list(self.focus_classes)
        return d

    @property
    def resolved_sampler(self) -> str:
        if self.sampler != "auto":
            return self.sampler
        return "balanced" if self.loss == "triplet" else "random"

    def describe(self) -> str:
        """One `key = value` per line, aligned: what a run prints at start."""
        d = self.to_dict()
        w = max(map(len, d))
        return "\n".join(f"  {k:<{w}} = {v}" for k, v in d.items())


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(c: TrainConfig) -> None:
    """Range and consistency checks, each failing with one line that says what to fix."""
    _check(c.loss in LOSSES, f"unknown loss {c.loss!r}; choose from {', '.join(LOSSES)}")
    _check(c.backbone in BACKBONES, f"unknown backbone {c.backbone!r}; choose from {', '.join(BACKBONES)}")
    _check(c.metric_loss in METRIC_LOSSES, f"unknown metric loss {c.metric_loss!r}; choose from {', '.join(METRIC_LOSSES)}")
    _check(c.mining in MININGS, f"unknown mining {c.mining!r}; choose from {', '.join(MININGS)}")
    _check(c.beta > 0, f"--beta must be positive, got {c.beta}")
    _check(c.sampler in SAMPLERS, f"unknown sampler {c.sampler!r}; choose from {', '.join(SAMPLERS)}")
    _check(c.device in DEVICES, f"unknown device {c.device!r}; choose from {', '.join(DEVICES)}")
    _check(c.epochs > 0, f"--epochs must be positive, got {c.epochs}")
    _check(c.batch_size >= 2, f"--batch-size must be at least 2, got {c.batch_size}")
    _check(c.lr > 0, f"--lr must be positive, got {c.lr}")
    _check(c.weight_decay >= 0, f"--weight-decay must be non-negative, got {c.weight_decay}")
    _check(0 <= c.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {c.label_smoothing}")
    _check(0 < c.warmup_frac < 1, f"--warmup-frac must be in (0, 1), got {c.warmup_frac}")
    _check(c.embedding_dim >= 2, f"--embedding-dim must be at least 2, got {c.embedding_dim}")
    _check(c.margin >= 0, f"--margin must be non-negative, got {c.margin}")
    _check(c.triplet_weight >= 0, f"--triplet-weight must be non-negative, got {c.triplet_weight}")
    _check(0 <= c.miner_cutoff < c.miner_nonzero_loss_cutoff,
           f"miner cutoffs need 0 <= cutoff < nonzero-loss cutoff, got {c.miner_cutoff}, {c.miner_nonzero_loss_cutoff}")
    _check(len(c.focus_classes) > 0 and all(0 <= k <= 9 for k in c.focus_classes),
           f"--focus-classes must be class ids in 0-9, got {','.join(map(str, c.focus_classes))}")
    _check(len(set(c.focus_classes)) == len(c.focus_classes), "--focus-classes lists a class twice")
    _check(c.mining == "all" or len(c.focus_classes) >= 2, "--mining focus needs at least two focus classes")
    _check(c.focus_oversample >= 1, f"--focus-oversample must be >= 1, got {c.focus_oversample}")
    _check(c.m_per_class >= 2, f"--m-per-class must be at least 2 (a positive pair), got {c.m_per_class}")
    _check(c.val_size >= 10, f"--val-size must be at least 10, got {c.val_size}")
    _check(c.limit is None or c.limit >= 10 * c.m_per_class,
           f"--limit must be at least {10 * c.m_per_class} (m-per-class × 10 classes), got {c.limit}")
    _check(c.crop_pad >= 0, f"--crop-pad must be non-negative, got {c.crop_pad}")
    _check(c.knn_k >= 1, f"--knn-k must be at least 1, got {c.knn_k}")
    _check(c.threads is None or c.threads >= 1, f"--threads must be at least 1, got {c.threads}")
    if c.resolved_sampler == "balanced":
        from embedfm.data import class_counts_per_batch

        least = int(class_counts_per_batch(c.batch_size, c.focus_classes, c.focus_oversample).min())
        _check(least >= c.m_per_class,
               f"--batch-size {c.batch_size} is too small for the balanced sampler: it must hold "
               f"{c.m_per_class} images of each of 10 classes (use >= {_min_batch(c)} or lower --m-per-class)")


def _min_batch(c: TrainConfig) -> int:
    from embedfm.data import class_counts_per_batch

    b = 10 * c.m_per_class
    while int(class_counts_per_batch(b, c.focus_classes, c.focus_oversample).min()) < c.m_per_class:
        b += 1
    return b


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def from_dict(d: dict, source: str = "config") -> TrainConfig:
    """Build a config from a dict (e.g. a JSON file), rejecting unknown keys."""
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {', '.join(unknown)}")
    d = dict(d)
    if "focus_classes" in d and d["focus_classes"] is not None:
        d["focus_classes"] = tuple(int(k) for k in d["focus_classes"])
    try:
        return TrainConfig(**d)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config_file(path: str | Path) -> dict:
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: a config file must hold a JSON object")
    return d


def resolve(file: str | None, overrides: dict) -> TrainConfig:
    """defaults < file < overrides (flags that were actually given, i.e. not None)."""
    d = load_config_file(file) if file else {}
    d.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(d, source=file or "flags")
