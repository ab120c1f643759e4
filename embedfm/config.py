"""Training configuration: the one schema of embedfm's settings, its validation, and config files.

Every `TrainConfig` field carries its default, its help text, its choices and its group (see `setting`);
`embedfm train --help` and `embedfm tune --help` are generated from it, `embedfm summarize` reads the groups to
know which settings change what a run learns. Resolution order (timm-style): field defaults < the `--recipe`
preset < `--config FILE` (JSON) < command-line flags. The resolved config is printed at the start of a run and
saved as `config.json` in the run dir and inside every checkpoint, so a run describes itself.

This module does not import torch: `--help` and config validation stay fast.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from embedfm import losstable
from embedfm.errors import ConfigError
from embedfm.losstable import SETTINGS, SPECS

LOSSES = ("ce", "triplet")
SAMPLERS = ("auto", "random", "balanced")
# --metric-loss: the pytorch-metric-learning losses of --loss triplet, their --miner auto and own settings
# (embedfm.losstable, docs/losses.md)
METRIC_LOSSES = tuple(SPECS)
# losses with parameters of their own (proxies, class centres): trained beside the network, saved in the checkpoint
PARAMETRIC_LOSSES = losstable.PARAMETRIC_LOSSES
MINERS = ("auto", "distance", "multisimilarity", "none")
# what --miner auto means for each metric loss: the miner its authors (or the comparison papers) paired it with
AUTO_MINER = {name: spec.auto_miner for name, spec in SPECS.items()}
MININGS = ("all", "focus")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
# the keys of models.BACKBONES (a test keeps them equal); named here so that validating a config, and so
# `--help`, does not import torch
BACKBONES = ("fastcnn", "linear", "mlp", "lenet", "vgg", "resnet20")
WIDE_BACKBONES = ("fastcnn", "vgg", "resnet20")  # the backbones whose three stage widths --widths sets
PRECISIONS = ("default", "auto", "fp32", "bf16")
FLIP_SCHEDULES = ("random", "alternate")
BN_MOMENTUM = 0.1  # PyTorch's default
LR_FLOOR = 1 / 4000  # the one-cycle schedule's final lr / peak: 1/20 at the start, then 1/200 of that
RESIZE_MODES = ("crop", "pad")  # the same as sources.RESIZE_MODES / CHANNELS (sources imports torch)
CHANNELS = ("auto", "1", "3")
FOCUS_CLASSES = (0, 2, 4, 6)  # T-shirt/top, Pullover, Coat, Shirt: the group every classifier confuses
SHIRT = 6  # the focus class every classifier recalls worst: its recall is reported on its own

# --recipe: presets that sit between the field defaults and --config / flags. `fast` is the speed-run recipe for
# about 10 minutes of training on two CPU cores, chosen on the validation split (docs/results/speedrun.md,
# studies/speedrun.py): at a fixed budget more epochs of the default network beat a wider network, random crops
# and shifted test-time views, so it is the default recipe trained for 9 epochs.
RECIPES: dict[str, dict] = {
    "default": {},
    "fast": {"epochs": 9},
}

# Groups, in the order `--help` shows them. Settings in RUN_GROUP say where and how fast a run happens, not
# what it learns: `embedfm summarize` groups runs that differ only in those (and in the seed).
GROUPS = {
    "model": "what to train",
    "metric": "metric-learning side (--loss triplet only)",
    "batches": "batches",
    "optimisation": "optimisation",
    "data": "data",
    "run": "where and how fast to run",
}
RUN_GROUP = "run"


def setting(default, help: str, group: str, choices: tuple | None = None, metavar: str | None = None):
    """A config field with its help text, choices and `--help` group (the schema the CLI is generated from)."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "metavar": metavar})


def loss_setting(name: str):
    """A metric loss's own setting as a config field: its default, help and check are declared with its loss
    (`losstable.SETTINGS`); the line in `TrainConfig` only places it in `--help` and config.json."""
    s = SETTINGS[name]
    return setting(s.default, s.help, "metric")


def with_loss_settings(settings: dict):
    """Class decorator (before @dataclass): every loss setting the class does not place becomes a field at the end
    of its "metric" group, so a new loss's settings need no line here."""

    def add(cls):
        annotations = inspect.get_annotations(cls)
        missing = [n for n in settings if n not in annotations]
        names = list(annotations)
        at = 1 + max(i for i, n in enumerate(names) if cls.__dict__[n].metadata["group"] == "metric")
        added = {n: type(settings[n].default).__name__ for n in missing}
        cls.__annotations__ = {
            **{n: annotations[n] for n in names[:at]},
            **added,
            **{n: annotations[n] for n in names[at:]},
        }
        for n in missing:
            s = settings[n]
            setattr(cls, n, setting(s.default, s.help, "metric"))
        return cls

    return add


def _auto_miners() -> str:
    """`--miner auto` in words, from the loss table: "distance for triplet, margin, ...; none for the rest"."""
    by_miner: dict[str, list[str]] = {}
    for name, spec in SPECS.items():
        by_miner.setdefault(spec.auto_miner, []).append(name)
    parts = [f"{m} for {', '.join(names)}" for m, names in by_miner.items()]
    if len(parts) > 1:
        parts[-1] = f"{list(by_miner)[-1]} for the rest"
    return "; ".join(parts)


@dataclass(frozen=True)
@with_loss_settings(SETTINGS)
class TrainConfig:
    # what to train
    recipe: str = setting(
        "default",
        "preset of the settings below: default, or fast (the speed-run recipe, docs/speedrun.md); --config and "
        "flags override it",
        "model",
        tuple(RECIPES),
    )
    loss: str = setting(
        "ce",
        "ce: plain classifier; triplet: --ce-weight × CE + --triplet-weight × the --metric-loss (by default "
        "TripletMarginLoss over distance-weighted-mined triplets)",
        "model",
        LOSSES,
    )
    backbone: str = setting(
        "fastcnn",
        f"network before the embedding head: {', '.join(BACKBONES)}, or tv:NAME, a torchvision model (e.g. "
        "tv:resnet18; docs/own-data.md)",
        "model",
    )
    # low-dimensional on purpose: distance-weighted sampling is designed for (and degrades above) ~128-d
    embedding_dim: int = setting(64, "embedding size (unit norm); low dims suit distance-weighted sampling", "model")
    widths: tuple[int, ...] | None = setting(
        None,
        "channels of the backbone's three stages (fastcnn, vgg, resnet20); default: the backbone's own",
        "model",
        metavar="W,W,W",
    )
    weights: str | None = setting(
        None,
        "a tv: backbone's pretrained weights: a local .safetensors file or torch state dict (never downloaded)",
        "model",
        metavar="FILE",
    )
    whiten: bool = setting(
        False,
        "patch-whitening first conv: its filters set from the training images' 3x3 patch covariance (eigenvectors "
        "/ sqrt(eigenvalue), both signs) and frozen (airbench)",
        "model",
    )
    pool_first: bool = setting(
        False,
        "fastcnn: the convs before each max-pool pool before their BN and ReLU (a quarter of the pixels)",
        "model",
    )
    dirac: bool = setting(
        False, "identity (dirac) initialisation of the first input-channels filters of every later conv", "model"
    )
    # metric-learning side
    margin: float = loss_setting("margin")
    triplet_weight: float = setting(1.0, "weight of the metric loss (whichever --metric-loss) next to CE", "metric")
    ce_weight: float = setting(
        1.0, "weight of cross-entropy next to the metric loss; 0 = the metric loss alone (the kNN classifies)", "metric"
    )
    metric_loss: str = setting(
        "triplet",
        "metric loss (pytorch-metric-learning; docs/losses.md): " + ", ".join(s.help for s in SPECS.values()),
        "metric",
        METRIC_LOSSES,
    )
    miner: str = setting(
        "auto",
        "tuple miner: distance-weighted, multi-similarity or none (every tuple of the batch); auto = the loss's "
        "own: " + _auto_miners(),
        "metric",
        MINERS,
    )
    beta: float = loss_setting("beta")
    mining: str = setting(
        "all", "all: the miner and loss see the whole batch; focus: only its focus-class images", "metric", MININGS
    )
    miner_cutoff: float = setting(0.5, "DistanceWeightedMiner: distances below this are clipped", "metric")
    miner_nonzero_loss_cutoff: float = setting(
        1.4, "DistanceWeightedMiner: negatives farther than this are never drawn (> --miner-cutoff)", "metric"
    )
    # the loss settings are declared with their loss (embedfm.losstable); these lines keep their place in --help
    pos_margin: float = loss_setting("pos_margin")
    neg_margin: float = loss_setting("neg_margin")
    ms_alpha: float = loss_setting("ms_alpha")
    ms_beta: float = loss_setting("ms_beta")
    ms_base: float = loss_setting("ms_base")
    ms_epsilon: float = setting(0.1, "MultiSimilarityMiner: similarity slack ε of the mined pairs", "metric")
    temperature: float = loss_setting("temperature")
    proxy_margin: float = loss_setting("proxy_margin")
    proxy_alpha: float = loss_setting("proxy_alpha")
    arcface_margin: float = loss_setting("arcface_margin")
    arcface_scale: float = loss_setting("arcface_scale")
    proxy_lr_mult: float = loss_setting("proxy_lr_mult")
    # batches
    sampler: str = setting("auto", "batch sampler; auto = balanced for triplet, random for ce", "batches", SAMPLERS)
    m_per_class: int = setting(8, "least images of each class in a balanced batch", "batches")
    focus_classes: tuple[int, ...] = setting(
        FOCUS_CLASSES, "confusable classes to report on and over-sample (comma-separated ids)", "batches"
    )
    focus: str | None = setting(
        None,
        "the focus classes by name (comma-separated), all, or auto:K (the K classes a quick CE run confuses most "
        "on the validation split); sets --focus-classes once the data is read (on a set other than fashion-mnist "
        "without either flag: all)",
        "batches",
        metavar="NAME,...",
    )
    focus_run: str | None = setting(
        None, "set by --focus auto:K: the quick CE run whose validation confusions chose the focus classes", "batches",
        metavar="DIR",
    )  # fmt: skip
    focus_oversample: float = setting(
        1.5, "balanced sampler draws focus classes this many times as often (1 = off)", "batches"
    )
    # optimisation
    epochs: int = setting(3, "passes over the train split", "optimisation")
    batch_size: int = setting(256, "images per step (the global batch under torchrun)", "optimisation")
    optimizer: str = setting(
        "adamw",
        "adamw, or sgd (Nesterov momentum 0.9; --weight-decay is then an L2 coefficient)",
        "optimisation",
        OPTIMIZERS,
    )
    lr: float = setting(4e-3, "peak learning rate of the one-cycle schedule", "optimisation")
    weight_decay: float = setting(5e-2, "weight decay of conv/linear weights (not of BN or biases)", "optimisation")
    label_smoothing: float = setting(0.1, "cross-entropy label smoothing", "optimisation")
    warmup_frac: float = setting(0.2, "share of steps spent warming up to the peak lr", "optimisation")
    lookahead: float = setting(
        0.0,
        "every 5 steps (and at each epoch's end) the weights become d × their slow copy + (1 − d) × themselves, and "
        "the slow copy follows (airbench's lookahead; 0 = off)",
        "optimisation",
        metavar="D",
    )
    bn_momentum: float = setting(
        BN_MOMENTUM,
        "BatchNorm's running-statistics momentum (PyTorch's sense: the weight of the new batch)",
        "optimisation",
    )
    lr_floor: float = setting(
        LR_FLOOR, "the one-cycle schedule's final lr as a share of --lr (it starts at 1/20 of it)", "optimisation"
    )
    precision: str = setting(
        "default",
        "forward passes under bf16 autocast: default = on CUDA only (as always); auto = on CUDA and on CPUs with AMX "
        "or AVX-512 BF16 (elsewhere bf16 is emulated and slower); fp32 = never; bf16 = on CUDA and any CPU. BatchNorm "
        "statistics, losses, the optimizer step and metrics stay fp32",
        "optimisation",
        PRECISIONS,
    )
    # data
    data: str = setting(
        "fashion-mnist",
        "the labelled images: fashion-mnist, idx:DIR (MNIST-format files), folder:DIR (DIR/<class>/<image>, or "
        "DIR/train/… and DIR/test/…) or csv:FILE (path,label[,split] rows); docs/own-data.md",
        "data",
        metavar="SPEC",
    )
    image_size: int | None = setting(
        None, "resize every image to NxN (folder/csv; default: the images' own size, which must be one)", "data"
    )
    resize: str = setting(
        "crop", "how --image-size fits an image: crop (shorter side to N, centre crop) or pad (longer side)", "data",
        RESIZE_MODES,
    )  # fmt: skip
    channels: str = setting(
        "auto", "1 (grey) or 3 (RGB); auto: what the images are (grey and colour mixed: give one)", "data", CHANNELS
    )
    test_frac: float = setting(
        0.2, "folder/csv sets without a test split: this share of each class is the test split (seeded)", "data"
    )
    class_names: str | None = setting(
        None, "idx sets: the names of labels 0..K-1, comma-separated (else DIR/classes.txt, else the ids)", "data",
        metavar="NAME,...",
    )  # fmt: skip
    skip_bad: bool = setting(
        False, "skip unreadable image files (recorded in the run and its report) instead of stopping", "data"
    )
    val_size: int = setting(
        5000,
        "images in the fixed stratified validation split carved from train (left at 5000 on another set of under "
        "25,000 training images: a tenth of them)",
        "data",
    )
    limit: int | None = setting(None, "train on a stratified subset of N images (smoke tests, quick looks)", "data")
    # 0 by default: at a 3-epoch budget random crops slow convergence more than they regularise
    crop_pad: int = setting(0, "random-crop padding in pixels (0 = no crop)", "data")
    flip: bool = setting(True, "random horizontal flips", "data")
    flip_schedule: str = setting(
        "random",
        "random: a fresh coin per image and epoch; alternate: each image mirrored in every other epoch from a seeded "
        "first pick (airbench's alternating flips: every view of an image is seen once in two epochs)",
        "data",
        FLIP_SCHEDULES,
    )
    random_erasing: float = setting(
        0.0, "probability of Random Erasing one rectangle of each training image (Zhong et al. 2017; 0 = off)", "data"
    )
    holdout_classes: tuple[int, ...] = setting(
        (),
        "classes kept out of training and validation: the unseen-class test (eval then measures retrieval and "
        "few-shot kNN on them; docs/losses.md)",
        "data",
    )
    tta_flip: bool = setting(True, "softmax predictions average the image and its mirror", "data")
    tta_shift: int = setting(
        0, "softmax predictions also average the image(s) shifted N pixels up, down, left and right (0 = off)", "data"
    )
    knn_k: int = setting(10, "k of the per-epoch validation kNN", "data")
    # run
    out: str = setting("artifacts/runs/run", "run dir to write (checkpoint, config, history)", "run", metavar="DIR")
    data_dir: str | None = setting(
        None,
        "dir with the four Fashion-MNIST IDX files, gzipped or not (else $EMBEDFM_DATA, "
        "/usr/share/datasets/fashion-mnist, else download)",
        "run",
        metavar="DIR",
    )
    seed: int = setting(0, "seed of weights, batches, augmentation and mining", "run")
    device: str = setting("auto", "auto = CUDA when present", "run", DEVICES)
    threads: int | None = setting(None, "torch CPU threads (default: torch's choice; with --procs, per process)", "run")
    procs: int = setting(
        1,
        "train in N processes on the one machine (gloo, DDP; the same run as under torchrun; docs/distributed.md)",
        "run",
    )
    compile: bool = setting(
        False,
        "torch.compile the training step (needs a C++ compiler on CPU; speed only, checkpoints hold the plain model)",
        "run",
    )
    # CPU runs are reproducible without it; on CUDA it is what makes a resumed run bit-identical (docs/distributed.md)
    deterministic: bool = setting(
        False,
        "deterministic kernels only (torch.use_deterministic_algorithms, cuBLAS workspace): bit-identical "
        "resume on a GPU too, at a cost in speed",
        "run",
    )

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["focus_classes"] = list(self.focus_classes)
        d["widths"] = None if self.widths is None else list(self.widths)
        d["holdout_classes"] = list(self.holdout_classes)
        return d

    @property
    def resolved_sampler(self) -> str:
        return resolved_sampler(self.loss, self.sampler)

    @property
    def resolved_miner(self) -> str:
        """What --miner auto means for this --metric-loss (AUTO_MINER)."""
        return AUTO_MINER[self.metric_loss] if self.miner == "auto" else self.miner

    @property
    def model_args(self) -> dict:
        """What `models.build_model(**model_args)` needs to rebuild this run's network (saved in its checkpoint)."""
        args = {"backbone": self.backbone, "embedding_dim": self.embedding_dim, "num_classes": 10}
        if self.widths is not None:
            args["backbone_kwargs"] = {"widths": list(self.widths)}
        if self.pool_first:
            args["backbone_kwargs"] = {**args.get("backbone_kwargs", {}), "pool_first": True}
        if self.whiten:  # the stem stays frozen when the run is rebuilt (--resume)
            args["frozen_stem"] = True
        return args

    def describe(self) -> str:
        """One `key = value` per line, aligned: what a run prints at start."""
        d = self.to_dict()
        w = max(map(len, d))
        return "\n".join(f"  {k:<{w}} = {v}" for k, v in d.items())


def class_counts(
    batch_size: int,
    focus_classes: tuple[int, ...],
    focus_oversample: float,
    num_classes: int = 10,
    absent: tuple[int, ...] = (),
):
    """How many images of each class a balanced batch holds: a list of num_classes ints summing to batch_size.

    Each class gets a share proportional to its weight (focus classes `focus_oversample`, `absent` ones 0 — the
    classes --holdout-classes keeps out of training —, others 1), rounded by largest remainder (ties to the lower
    class id) so the batch size is exact. Pure Python: config validation needs it without torch;
    `sampling.balanced_batches` draws batches by it."""
    w = [0.0 if k in absent else focus_oversample if k in focus_classes else 1.0 for k in range(num_classes)]
    total = sum(w)
    share = [x / total * batch_size for x in w]
    counts = [int(s // 1) for s in share]
    by_remainder = sorted((k for k in range(num_classes) if w[k] > 0), key=lambda k: -(share[k] - counts[k]))
    for k in by_remainder[: batch_size - sum(counts)]:
        counts[k] += 1
    return counts


def resolved_sampler(loss: str, sampler: str) -> str:
    """What --sampler auto means: class-balanced batches for the triplet loss (its miner needs positives and the
    confusable negatives in every batch), plain shuffled batches for CE."""
    if sampler != "auto":
        return sampler
    return "balanced" if loss == "triplet" else "random"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(c: TrainConfig) -> None:
    """Range and consistency checks, each failing with one line that says what to fix."""
    for f in dataclasses.fields(c):  # every field with choices: loss, backbone, metric_loss, ...
        choices, value = f.metadata["choices"], getattr(c, f.name)
        _check(
            choices is None or value in choices,
            f"--{flag(f.name)} {value!r} is not one of {', '.join(map(str, choices or ()))}",
        )
    _check(
        c.backbone in BACKBONES or (c.backbone.startswith("tv:") and len(c.backbone) > 3),
        f"--backbone {c.backbone!r} is not one of {', '.join(BACKBONES)} or tv:NAME (a torchvision model)",
    )
    _check(c.weights is None or c.backbone.startswith("tv:"), "--weights is for tv: backbones (torchvision models)")
    _check(not c.pool_first or c.backbone == "fastcnn", f"--pool-first is fastcnn's, not --backbone {c.backbone}")
    _check(c.image_size is None or 1 <= c.image_size <= 4096, f"--image-size must be in 1-4096, got {c.image_size}")
    _check(0 < c.test_frac < 1, f"--test-frac must be between 0 and 1, got {c.test_frac}")
    fmnist = c.data == "fashion-mnist"
    _check(c.epochs > 0, f"--epochs must be positive, got {c.epochs}")
    _check(c.batch_size >= 2, f"--batch-size must be at least 2, got {c.batch_size}")
    _check(c.lr > 0, f"--lr must be positive, got {c.lr}")
    _check(c.weight_decay >= 0, f"--weight-decay must be non-negative, got {c.weight_decay}")
    _check(0 <= c.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {c.label_smoothing}")
    _check(0 < c.warmup_frac < 1, f"--warmup-frac must be in (0, 1), got {c.warmup_frac}")
    _check(0 < c.lr_floor <= 1, f"--lr-floor must be in (0, 1], got {c.lr_floor}")
    _check(0 <= c.lookahead < 1, f"--lookahead must be in [0, 1), got {c.lookahead}")
    _check(0 < c.bn_momentum <= 1, f"--bn-momentum must be in (0, 1], got {c.bn_momentum}")
    _check(c.embedding_dim >= 2, f"--embedding-dim must be at least 2, got {c.embedding_dim}")
    _check(
        c.widths is None or (len(c.widths) == 3 and all(1 <= w <= 1024 for w in c.widths)),
        f"--widths must be three channel counts in 1-1024, got {','.join(map(str, c.widths or ()))}",
    )
    _check(
        c.widths is None or c.backbone in WIDE_BACKBONES,
        f"--widths applies to {', '.join(WIDE_BACKBONES)}, not --backbone {c.backbone}",
    )
    _check(c.triplet_weight >= 0, f"--triplet-weight must be non-negative, got {c.triplet_weight}")
    _check(c.ce_weight >= 0, f"--ce-weight must be non-negative, got {c.ce_weight}")
    _check(
        c.loss == "ce" or c.ce_weight > 0 or c.triplet_weight > 0,
        "--ce-weight and --triplet-weight are both 0: nothing would be trained",
    )
    for name, s in SETTINGS.items():  # every loss's settings, whichever --metric-loss: a config file may hold them
        _check(s.valid is None or s.valid(getattr(c, name)), f"--{flag(name)} {s.must}, got {getattr(c, name)}")
    for spec in SPECS.values():
        problem = spec.check(c) if spec.check else None
        _check(problem is None, problem or "")
    _check(c.ms_epsilon >= 0, f"--ms-epsilon must be non-negative, got {c.ms_epsilon}")
    _check(
        0 <= c.miner_cutoff < c.miner_nonzero_loss_cutoff,
        f"--miner-cutoff must be >= 0 and below --miner-nonzero-loss-cutoff, got {c.miner_cutoff} and "
        f"{c.miner_nonzero_loss_cutoff}",
    )
    _check(
        len(c.focus_classes) > 0 and all(0 <= k <= (9 if fmnist else 65535) for k in c.focus_classes),
        f"--focus-classes must be class ids in 0-9, got {','.join(map(str, c.focus_classes))}",
    )
    _check(len(set(c.focus_classes)) == len(c.focus_classes), "--focus-classes lists a class twice")
    _check(c.mining == "all" or len(c.focus_classes) >= 2, "--mining focus needs at least two focus classes")
    _check(1 <= c.focus_oversample <= 100, f"--focus-oversample must be in [1, 100], got {c.focus_oversample}")
    _check(
        2 <= c.m_per_class <= 10_000, f"--m-per-class must be in [2, 10000] (2: a positive pair), got {c.m_per_class}"
    )
    _check(c.val_size >= 10, f"--val-size must be at least 10, got {c.val_size}")
    _check(
        c.limit is None or not fmnist or c.limit >= 10 * c.m_per_class,
        f"--limit must be at least {10 * c.m_per_class} (--m-per-class × 10 classes), got {c.limit}",
    )
    _check(c.crop_pad >= 0, f"--crop-pad must be non-negative, got {c.crop_pad}")
    _check(0 <= c.random_erasing <= 1, f"--random-erasing must be a probability in [0, 1], got {c.random_erasing}")
    _check(0 <= c.tta_shift <= 4, f"--tta-shift must be in 0-4 pixels, got {c.tta_shift}")
    _check(c.knn_k >= 1, f"--knn-k must be at least 1, got {c.knn_k}")
    _check(c.threads is None or c.threads >= 1, f"--threads must be at least 1, got {c.threads}")
    _check(1 <= c.procs <= 64, f"--procs must be in 1-64, got {c.procs}")
    _check(
        all(0 <= k <= (9 if fmnist else 65535) for k in c.holdout_classes)
        and len(set(c.holdout_classes)) == len(c.holdout_classes),
        f"--holdout-classes must be distinct class ids in 0-9, got {','.join(map(str, c.holdout_classes))}",
    )
    _check(not fmnist or len(c.holdout_classes) <= 8, "--holdout-classes must leave at least two classes to train on")
    _check(
        c.mining == "all" or len(set(c.focus_classes) - set(c.holdout_classes)) >= 2,
        "--mining focus needs at least two focus classes that are not held out",
    )
    if c.resolved_sampler == "balanced" and fmnist:  # another set: checked once its classes are known
        counts = class_counts(c.batch_size, c.focus_classes, c.focus_oversample, absent=c.holdout_classes)
        least = min(n for k, n in enumerate(counts) if k not in c.holdout_classes)
        _check(
            least >= c.m_per_class,
            f"--batch-size {c.batch_size} is too small for the balanced sampler: it must hold "
            f"{c.m_per_class} images of each of 10 classes (use >= {_min_batch(c)} or lower --m-per-class)",
        )


def _min_batch(c: TrainConfig) -> int:
    """The smallest batch whose balanced plan holds --m-per-class images of every class. A class of weight w gets
    at least floor(b·w/W) of b (W: the weights' sum), so b = m·W/w_min is enough; the search starts just below
    that and takes a few steps (largest-remainder rounding may help earlier)."""
    kept = [k for k in range(10) if k not in c.holdout_classes]
    weights = [c.focus_oversample if k in c.focus_classes else 1.0 for k in kept]
    enough = math.ceil(c.m_per_class * sum(weights) / min(weights))
    b = max(len(kept) * c.m_per_class, enough - 20)

    def least(b: int) -> int:
        counts = class_counts(b, c.focus_classes, c.focus_oversample, absent=c.holdout_classes)
        return min(counts[k] for k in kept)

    while b < enough and least(b) < c.m_per_class:
        b += 1
    return b


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def flag(name: str) -> str:
    """The command-line spelling of a config key: batch_size → batch-size (used as --batch-size)."""
    return name.replace("_", "-")


def run_keys() -> set[str]:
    """Keys of the `run` group: where and how fast a run happens (out, seed, device, ...), not what it learns."""
    return {n for n, f in FIELDS.items() if f.metadata["group"] == RUN_GROUP}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_number(v) -> bool:
    try:
        return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


# a field's annotation (without "| None") → (the check a value from a file must pass, what to say otherwise)
_VALUE_TYPES = {
    "int": (_is_int, "an integer"),
    "float": (_is_finite_number, "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "tuple[int, ...]": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_int, v)), "a list of integers"),
}


def from_dict(d: dict, source: str = "config") -> TrainConfig:
    """Build a config from a dict (e.g. a JSON file), rejecting unknown keys and values of the wrong type."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: a config must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown config key(s) {', '.join(map(repr, unknown))[:200]}")
    for name, value in d.items():
        kind = FIELDS[name].type
        check, what = _VALUE_TYPES[kind.replace(" | None", "")]
        if not (check(value) or (value is None and kind.endswith("| None"))):
            shown = json.dumps(value, default=repr)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ConfigError(f"{source}: {name} must be {what}{' or null' * kind.endswith('| None')}, got {shown}")
    d = dict(d)
    if d.get("data", "fashion-mnist") != "fashion-mnist" and "focus" not in d and "focus_classes" not in d:
        d["focus"] = "all"  # Fashion-MNIST's four are no default for another set
    for key in ("focus_classes", "widths", "holdout_classes"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    try:
        return TrainConfig(**d)
    except (TypeError, ValueError, OverflowError) as e:  # e.g. a batch size too large for class_counts' floats
        raise ConfigError(f"{source}: {e}") from None


def load_config_file(path: str | Path) -> dict:
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as e:  # a directory, no permission, ...
        raise ConfigError(f"{p}: cannot read config file ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deeply
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: a config file must hold a JSON object")
    return d


def with_recipe(d: dict) -> dict:
    """The settings `d` gives, over its --recipe's preset (an unknown recipe is left for validation to name)."""
    preset = RECIPES.get(d.get("recipe", "default"), {}) if isinstance(d.get("recipe", "default"), str) else {}
    return {**preset, **d}


def resolve(file: str | None, overrides: dict) -> TrainConfig:
    """defaults < --recipe preset < file < overrides (flags that were actually given, i.e. not None)."""
    d = load_config_file(file) if file else {}
    d.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(with_recipe(d), source=file or "flags")
