"""Training: `train(cfg)` runs one configuration to the end and returns its history.

Reads top to bottom: set-up (seeds, data, model, objective, optimiser, one-cycle schedule), then per epoch plan
the batches, step through them with a progress bar, validate (softmax and kNN accuracy on the fixed validation
split), probe what the metric term sees (`diagnostics.py`), and save an atomic checkpoint + history. A NaN or an
infinity (in a step's loss, in the weights after the epoch, in validation's or the probe's logits and embeddings)
stops the run with one line (`NonFiniteError`) naming the epoch, before that epoch's checkpoint: the last one saved
is good and resumable. An objective's own parameters (ProxyAnchor, ArcFace) are optimised and checkpointed beside
the network's. A finished run gets its diagnostics plot and a DONE mark. `--resume` restarts after the last
checkpointed epoch with every RNG state restored, so the result equals an uninterrupted run: bit for bit on the CPU;
on CUDA only with `--deterministic` (docs/distributed.md).

The device is chosen once (`select_device`) and everything follows it: the model, the objective's tensors, and on
an accelerator the uint8 train split itself (`Splits.train_on`), so batches are gathered and augmented there (per
step only the (B,) crop offsets and flip bits come from the host); step statistics are summed where they are made
and read once an epoch. On CUDA the miner's random stream is re-seeded every step (`step_seed`).

This is the one training loop: `embedfm tune`, the benchmarks and the recipe probes drive it through `Hooks`
(per step and per epoch) or reuse its pieces (`TrainState` and `run_epoch`, `prepare_batch`, `train_step`,
`make_optimizer`), so a measured recipe is the shipped recipe.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from embedfm import checkpoint, diagnostics, distributed, rundir, sources
from embedfm.config import BN_MOMENTUM, LR_FLOOR, TrainConfig
from embedfm.data import MEAN, STD, FashionMNIST, ImageSet, to_float
from embedfm.errors import EmbedfmError, NonFiniteError
from embedfm.fileio import atomic_write_csv, atomic_write_json, atomic_write_text
from embedfm.inference import autocast, embed, select_device
from embedfm.knn import KNNClassifier
from embedfm.metrics import focus_group_error
from embedfm.models import (
    build_model,
    count_macs,
    count_params,
    dirac_init,
    init_pretrained,
    norm_of,
    whiten_stem,
)
from embedfm.objectives import average_loss_grads, build_objective, loss_parameters
from embedfm.run import Run
from embedfm.sampling import Splits, augment, balanced_batches, make_splits, shuffled_batches


class Step(NamedTuple):
    """What an `on_step` hook sees after each optimisation step."""

    epoch: int  # 0-based
    step: int  # 0-based, within the epoch
    steps: int  # steps per epoch
    net: torch.nn.Module  # the plain model (not the DDP or compiled wrapper): validate or average it freely
    loss: float  # this step's training loss
    train_seconds: float  # training time so far, hooks and validation excluded


@dataclass
class Hooks:
    """Callbacks into the training loop; time spent inside them is not counted as training time.

    on_step(Step): after every optimisation step (all ranks), e.g. an EMA of the weights, a mid-epoch probe.
    on_epoch(row): after each epoch's checkpoint, with its history row (rank 0); an exception it raises stops the
    run there, with that epoch saved (how `embedfm tune` prunes a trial).
    """

    on_step: Callable[[Step], None] | None = None
    on_epoch: Callable[[dict], None] | None = None


@dataclass
class TrainState:
    """What the epochs carry from one to the next, and where they run: `TrainState.start` builds it from a config,
    `_loop` restores a checkpoint into it and wraps the model, `run_epoch` steps it (a probe may build its own)."""

    model: torch.nn.Module  # what a step calls: `net`, or its DDP / compiled wrapper sharing net's parameters
    net: torch.nn.Module  # the plain model: validation, checkpoints, hooks
    objective: torch.nn.Module  # (logits, embeddings, labels) → (loss, stats); may have parameters of its own
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler  # stepped once a step
    gen: torch.Generator  # the data generator: batch plans and augmentation, the same on every rank
    splits: Splits  # train_x (N, 28, 28) uint8, train_y (N,): held where batches are gathered (`Splits.train_on`)
    device: torch.device
    dd: distributed.Dist = field(default_factory=distributed.Dist)
    hooks: Hooks = field(default_factory=Hooks)
    progress: bool = False  # a progress bar per epoch
    model_args: dict = field(default_factory=dict)  # what rebuilds `net` (saved in every checkpoint)

    @classmethod
    def start(
        cls,
        cfg: TrainConfig,
        splits: Splits,
        steps: int,
        device: torch.device,
        dd: distributed.Dist | None = None,
        hooks: Hooks | None = None,
        progress: bool = False,
        model_args: dict | None = None,
    ) -> TrainState:
        """A fresh run's state, `steps` steps per epoch: every random stream seeded, then (in this order, which
        fixes what each draws) the network, the objective, the optimizer and its one-cycle schedule. `model_args`:
        the network's, sized for the data (`model_args_for`); default: the config's (Fashion-MNIST's shape)."""
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        gen = seed_everything(cfg.seed)
        # channels_last: oneDNN's fastest conv layout on CPU
        model_args = model_args or cfg.model_args
        net = build_model(**model_args)
        # deterministic initialisations (they draw nothing, so every later draw is what it was without them)
        if cfg.whiten:
            whiten_stem(net, to_float(splits.train_x[:WHITEN_IMAGES], *net.norm))
        if cfg.dirac:
            dirac_init(net)
        if cfg.bn_momentum != BN_MOMENTUM:  # a module attribute, not saved: set again whenever a run is built
            for m in net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.momentum = cfg.bn_momentum
        net = net.to(device, memory_format=torch.channels_last)
        # a loss with parameters draws them here, after the weights
        objective = build_objective(cfg, model_args["num_classes"])
        if isinstance(objective, torch.nn.Module):
            objective.to(device)
        opt, sched = make_optimizer(net, cfg, cfg.epochs * steps, loss_parameters(objective))
        # the uint8 train split beside the model (the CPU: the split itself)
        train_splits = splits.train_on(device)
        dd, hooks = dd or distributed.Dist(), hooks or Hooks()
        return cls(net, net, objective, opt, sched, gen, train_splits, device, dd, hooks, progress, model_args)


def model_args_for(cfg: TrainConfig, data: ImageSet) -> dict:
    """The network's `model_args` for this data: the config's, with the set's class count, and (only where they
    are not Fashion-MNIST's, so its checkpoints stay as they were) its channels, image size and pixel statistics;
    a tv: backbone's weights file for the record."""
    args = {**cfg.model_args, "num_classes": data.num_classes}
    if (data.in_channels, data.image_size) != (1, (28, 28)):
        args.update(in_channels=data.in_channels, image_size=list(data.image_size))
    if (data.mean, data.std) != ((MEAN,), (STD,)):
        args["norm"] = {"mean": list(data.mean), "std": list(data.std)}
    if cfg.weights:
        args["weights"] = cfg.weights
    return args


VAL_KNN_REFS = 5_000  # train images used as kNN reference for the per-epoch validation kNN (cheap)
WHITEN_IMAGES = 5_000  # training images whose patches --whiten's covariance is estimated from (~3.4 M 3x3 patches)


def set_deterministic(on: bool) -> None:
    """--deterministic: PyTorch's deterministic kernels only (cuDNN's convolution and index_put_'s backward among
    them); an op without one then fails naming itself instead of silently varying. cuBLAS reads its workspace
    setting when it starts, so this runs before the run's first CUDA work (a process that already used cuBLAS
    keeps the workspace it had). Off, it restores PyTorch's default (a tune trial after a deterministic one)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # only when it changes: the call imports torch._dynamo (about 3 s) in every process that makes it
    if torch.are_deterministic_algorithms_enabled() != on or torch.is_deterministic_algorithms_warn_only_enabled():
        torch.use_deterministic_algorithms(on)


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The seed of one step's CUDA random stream (the triplet miner's torch.multinomial draws from the device's
    generator): a function of the step's place in the run, so a resumed run, and every torchrun rank, draws what
    an uninterrupted run does without carrying per-rank generator states in the checkpoint."""
    return int(np.random.SeedSequence([seed % 2**64, epoch, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state(gen: torch.Generator) -> dict:
    """Every random stream a run draws from: Python, NumPy, torch's CPU and (where used) CUDA generators, and
    the data generator (batch plans, augmentation)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "data": gen.get_state(),
        "cuda": cuda,
    }


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def make_optimizer(model, cfg: TrainConfig, steps: int, loss_params=()):
    """(optimizer, one-cycle scheduler over `steps` steps). Weight decay on conv/linear weights only; BN
    parameters and biases are not decayed. AdamW's decay is decoupled, SGD's an L2 coefficient. The objective's
    own parameters (`loss_params`: ProxyAnchor proxies, ArcFace class centres), if any, are a third group,
    undecayed, at --proxy-lr-mult × the lr."""
    groups = [
        {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]
    loss_params = list(loss_params)
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0, "lr": cfg.lr * cfg.proxy_lr_mult})
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    return opt, one_cycle(opt, cfg, steps)


def one_cycle(opt, cfg: TrainConfig, steps: int):
    """The one-cycle lr schedule of `steps` steps peaking at cfg.lr (× --proxy-lr-mult for a third group, the
    objective's parameters), for any optimizer."""
    if steps < 4:  # too few steps to warm up and anneal (OneCycleLR divides by zero): constant lr
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    # at least 2 warm-up steps: OneCycleLR needs its warm-up phase to end after step 0
    pct = min(max(cfg.warmup_frac, 2.5 / steps), 0.5)
    max_lr = cfg.lr if len(opt.param_groups) <= 2 else [cfg.lr, cfg.lr, cfg.lr * cfg.proxy_lr_mult]
    # final lr = lr / (20 · final_div_factor); the default floor's 200.0 is written out so its runs stay bit for bit
    final = 200.0 if cfg.lr_floor == LR_FLOOR else 1 / (20.0 * cfg.lr_floor)
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=steps, pct_start=pct, div_factor=20.0, final_div_factor=final
    )


def alternating_flips(cfg: TrainConfig, n: int, epoch: int) -> torch.Tensor | None:
    """--flip-schedule alternate: (n,) bool, which train images are mirrored in `epoch`: a first pick drawn from
    its own generator seeded by --seed (the same on every rank, after any resume; the data generator's stream is
    untouched), inverted every other epoch. None for random flips (or none)."""
    if not cfg.flip or cfg.flip_schedule != "alternate":
        return None
    first = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(cfg.seed + 7919)).bool()
    return first ^ bool(epoch % 2)


def plan_epoch(cfg: TrainConfig, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(steps, batch_size) indices into the train split for one epoch."""
    if cfg.resolved_sampler == "balanced":
        return balanced_batches(labels, cfg.batch_size, cfg.focus_classes, cfg.focus_oversample, gen)
    return shuffled_batches(len(labels), cfg.batch_size, gen)


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    steps = n_train // cfg.batch_size
    if steps < 1:
        raise EmbedfmError(f"--batch-size {cfg.batch_size} is larger than the training set ({n_train} images)")
    return steps


@torch.no_grad()
def validate(model, splits: Splits, cfg: TrainConfig, device: torch.device) -> dict:
    """Validation figures: loss, accuracy and focus-group error of the softmax head, accuracy of a kNN
    over a fixed subset of the train split (cheap stand-in for the full-train kNN that eval runs). Raises
    NonFiniteError when a logit or embedding is not finite (the kNN would otherwise fail with a traceback)."""
    p = cfg.precision
    logits, emb, _ = embed(model, splits.val_x, device, tta_flip=cfg.tta_flip, tta_shift=cfg.tta_shift, precision=p)
    n_ref = min(VAL_KNN_REFS, len(splits.train_y))
    ref_emb = embed(model, splits.train_x[:n_ref], device, precision=p).emb
    if not all(bool(torch.isfinite(t).all()) for t in (logits, emb, ref_emb)):
        raise NonFiniteError("non-finite logits or embeddings in validation")
    knn = KNNClassifier(k=min(cfg.knn_k, n_ref), num_classes=logits.shape[1])
    knn.fit(ref_emb.numpy(), splits.train_y[:n_ref].numpy())
    knn_pred = torch.from_numpy(knn.predict(emb.numpy()))
    # --ce-weight 0: the softmax head is not trained, the kNN is the run's classifier (docs/losses.md)
    pred = knn_pred if cfg.loss == "triplet" and cfg.ce_weight == 0 else logits.argmax(1)
    return {
        "val_loss": F.cross_entropy(logits, splits.val_y).item(),
        "val_acc": (pred == splits.val_y).float().mean().item(),
        "val_focus_err": focus_group_error(splits.val_y.numpy(), pred.numpy(), cfg.focus_classes),
        "val_knn_acc": (knn_pred == splits.val_y).float().mean().item(),
    }


def train(
    cfg: TrainConfig,
    data: FashionMNIST | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    log=print,
    hooks: Hooks | None = None,
) -> dict:
    """Train one run into `cfg.out`. Returns {"run_dir", "history", "seconds"} (seconds: training time, hooks
    and validation excluded)."""
    hooks = hooks or Hooks()
    # rank 0 (or the one process) owns the run dir: it alone checks and writes it. Another rank checking would
    # race rank 0, which may already hold the dir's lock (busy) or have prepared it (not empty) by then.
    owner = distributed.from_env().main
    if owner:
        rundir.check_not_busy(cfg.out)  # another process training into this dir is the first thing to say
    old = None
    if resume:
        old = Run.open(cfg.out)
        # the run continues where it is now, whatever dir it was trained in (run dirs are moved and shared)
        cfg = replace(old.config, out=cfg.out)
        if rundir.is_done(cfg.out):
            log(f"{cfg.out}: already finished, nothing to resume")
            return {"run_dir": cfg.out, "history": old.history, "seconds": 0.0}
        old.load()  # weights and training state: a damaged file is one line before the run dir is touched
    # everything that can fail on bad input happens before the run dir is touched
    if owner:
        rundir.check_writable(cfg.out, overwrite, resume)
    set_deterministic(cfg.deterministic)  # before the first CUDA work
    device = select_device(cfg.device)
    data = data or sources.for_config(cfg)
    cfg = sources.fit_config(cfg, data)  # --focus names → ids, class ids checked against the set's classes
    splits = make_splits(data, cfg.val_size, cfg.limit, holdout=cfg.holdout_classes)
    steps = steps_per_epoch(cfg, len(splits.train_y))
    # one writer per run dir: rank 0 holds the lock (the only rank that writes) until the run ends
    with rundir.lock(cfg.out, "train", log) if owner else contextlib.nullcontext():
        if owner:
            rundir.check_writable(cfg.out, overwrite, resume)  # again: another run may have finished meanwhile
        dd = distributed.init(device, cfg.batch_size)
        quiet = lambda *a, **k: None
        try:
            if dd.main:
                rundir.prepare(cfg.out, overwrite, resume)
            dd.barrier()
            main_log = log if dd.main else quiet
            args = model_args_for(cfg, data)
            state = TrainState.start(cfg, splits, steps, device, dd, hooks, progress and dd.main, args)
            if cfg.weights and old is None:  # a new run starts from the file; a resumed one from its checkpoint
                init_pretrained(state.net, cfg.weights, log=main_log)
            return _loop(state, cfg, data, splits, old, main_log)
        finally:
            distributed.close(dd)


def _loop(state: TrainState, cfg: TrainConfig, data: FashionMNIST, splits: Splits, old: Run | None, log) -> dict:
    """The epochs of `train`, from a fresh state or, with `old`, after its last checkpointed epoch. `splits` are
    the CPU splits (validation, the probe); `state.splits` the train split where batches are gathered."""
    run = Path(cfg.out)
    net, objective, opt, sched = state.net, state.objective, state.opt, state.sched
    gen, device, dd = state.gen, state.device, state.dd
    loss_params = loss_parameters(objective)
    diag_batches = diagnostics.fixed_batches(splits.train_y, cfg) if dd.main else None
    history, start_epoch = [], 0
    if old is not None:
        try:
            history, start_epoch = _resumable(old, cfg, opt)
            net.load_state_dict(old.weights())
            if loss_params:  # saved as JSON numbers: float32 → float64 → float32 is exact
                saved = {k: torch.tensor(v, dtype=torch.float32) for k, v in old.objective_state().items()}
                objective.load_state_dict(saved)
            opt.load_state_dict(old.optimizer_state())
            sched.load_state_dict(old.scheduler_state())
            set_rng_state(old.rng_state(), gen)
        except (KeyError, TypeError, ValueError, RuntimeError, OverflowError, AttributeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EmbedfmError(f"{run}: checkpoint does not fit this run's model or optimizer ({first})") from None
        log(f"resuming {run} after epoch {start_epoch}/{cfg.epochs}")
    # DDP averages gradients over processes; `net` stays the plain model for validation and checkpoints
    if dd.enabled:
        state.model = torch.nn.parallel.DistributedDataParallel(net)
    if cfg.compile:  # shares net's parameters; batches have one fixed shape, so it compiles once
        state.model = compile_model(state.model)

    procs = f", {dd.world} processes" if dd.enabled else ""
    log(
        f"embedfm train → {run}  ({count_params(net) / 1e3:.0f} k params, "
        f"{count_macs(net) / 1e6:.1f} M MACs/image, {len(splits.train_y)} train / {len(splits.val_y)} val, "
        f"device {device}, {torch.get_num_threads()} threads{procs})\n{cfg.describe()}"
    )
    if dd.main:
        atomic_write_json(run / rundir.CONFIG, cfg.to_dict())
    train_seconds = history[-1]["train_seconds"] if history else 0.0

    for epoch in range(start_epoch, cfg.epochs):
        stats = run_epoch(state, cfg, epoch, train_seconds)
        train_seconds += stats.pop("seconds")
        # a NaN or infinity anywhere stops the run before this epoch's checkpoint: the last one saved stays good
        try:
            check_finite(net, objective)  # every rank: DDP keeps their weights equal
        except NonFiniteError as e:
            raise _diverged(e, epoch) from None
        if not dd.main:  # rank 0 validates and writes; the others wait for it
            dd.barrier()
            continue
        try:
            row = {
                "epoch": epoch + 1,
                **stats,
                **validate(net, splits, cfg, device),
                "lr": sched.get_last_lr()[0],
                "train_seconds": round(train_seconds, 2),
                **diagnostics.probe(net, splits.train_x, splits.train_y, diag_batches, cfg, device, objective),
            }
        except NonFiniteError as e:
            raise _diverged(e, epoch) from None
        history.append(row)
        log(format_row(row, cfg.epochs))
        # the objective's own parameters (few: classes × embedding dim) ride in the checkpoint's JSON metadata
        own = {"objective": {k: v.tolist() for k, v in objective.state_dict().items()}} if loss_params else {}
        checkpoint.save_checkpoint(
            run,
            {
                **own,
                "model_args": state.model_args,
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "history": history,
                "config": cfg.to_dict(),
                "rng": rng_state(gen),
                "data": data.fingerprint(),
                **sources.run_meta(data),
                "splits": {"n_train": len(splits.train_y), "n_val": len(splits.val_y)},
            },
        )
        atomic_write_json(run / rundir.HISTORY, history)
        atomic_write_csv(run / rundir.SUMMARY, _table(history))
        dd.barrier()
        if state.hooks.on_epoch is not None:
            state.hooks.on_epoch(row)
    if dd.main:
        try:  # a plot is not worth leaving a finished run unfinished for
            diagnostics.plot(run)
        except Exception as e:
            log(f"{run}: {diagnostics.PNG} not drawn ({type(e).__name__}: {str(e).strip()[:200]})")
        atomic_write_text(run / rundir.DONE, f"finished {len(history)} epochs\n")
    return {"run_dir": str(run), "history": history, "seconds": train_seconds}


def compile_model(model):
    """torch.compile(model), with inductor's CPU vector width pinned to the one this process uses.

    Inductor generates its C++ kernels for one vector ISA (`pick_vec_isa`: the CPU's best, or the one
    ATEN_CPU_CAPABILITY forces) but leaves that ISA out of its on-disk FX-graph cache key, so a process run with
    another ATEN_CPU_CAPABILITY can load kernels generated for another vector width and compile them for its own:
    AVX-512 code (16 floats a vector) built for AVX2 (8) computes garbage (docs/usage.md, after the flags). The pinned
    `cpp.simdlen` is part of the key and picks the same ISA inductor would have picked, so each ISA caches apart."""
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor.cpu_vec_isa import pick_vec_isa
    except ImportError:  # an older torch: its cache is keyed as it is
        pass
    else:
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())  # the CUDA kernels are Triton's
        if on_cpu and inductor_config.cpp.simdlen is None:
            inductor_config.cpp.simdlen = pick_vec_isa().bit_width()
    return torch.compile(model)


def check_finite(net: torch.nn.Module, objective=None) -> None:
    """Raises NonFiniteError naming the first parameter or buffer of `net` (or of the objective: ProxyAnchor,
    ArcFace) that holds a NaN or an infinity. One device sync for all of them."""
    tensors = [(n, t) for n, t in (*net.named_parameters(), *net.named_buffers()) if t.is_floating_point()]
    if isinstance(objective, torch.nn.Module):
        tensors += [(f"objective.{n}", t) for n, t in objective.named_parameters()]
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors]).cpu()
    if not bool(finite.all()):
        name = tensors[int((~finite).nonzero()[0])][0]
        raise NonFiniteError(f"non-finite weights ({name})")


def _diverged(e: NonFiniteError, epoch: int) -> NonFiniteError:
    return NonFiniteError(f"{e} after epoch {epoch + 1}; stopped, the last good checkpoint is kept (try a lower --lr)")


def _table(history: list[dict]) -> list[dict]:
    """History rows with one set of columns (a resumed run's older rows may lack newer keys): for the CSV."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    return [{k: row.get(k) for k in keys} for row in history]


def _resumable(old: Run, cfg: TrainConfig, opt) -> tuple[list, int]:
    """(history, first epoch to run) of a checkpoint to resume, after checking that its training state has the
    shape this run's own would have: raises ValueError naming the first thing that does not fit."""
    epoch, history = old.epoch, old.history
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < cfg.epochs:
        raise ValueError(f"epoch {epoch!r} is not one of this run's {cfg.epochs} epochs")
    if not (isinstance(history, list) and len(history) == epoch + 1 and all(isinstance(r, dict) for r in history)):
        raise ValueError(f"the history does not hold the {epoch + 1} finished epochs")
    seconds = history[-1].get("train_seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        raise ValueError("the history's train_seconds is not a number")
    groups, fresh = old.optimizer_state()["param_groups"], opt.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(fresh):
        raise ValueError("the optimizer's parameter groups differ")
    for g, f in zip(groups, fresh):  # every hyper-parameter of the type this run's optimizer uses
        for key, value in f.items():
            v = g.get(key) if isinstance(g, dict) else None
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) if number else type(v) is type(value)):
                raise ValueError(f"optimizer setting {key!r} is {v!r}")
    return history, epoch + 1


def prepare_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
    dd: distributed.Dist | None = None,
    norm: tuple = ((MEAN,), (STD,)),
    flips: torch.Tensor | None = None,
):
    """A uint8 global batch (B, 28, 28) → this rank's augmented float batch (B / world, 1, 28, 28), channels-last,
    and its labels (B / world,), on `device`. The batch is augmented where it is: on the GPU when the train split
    is held there, and the copies to `device` are then no-ops. `flips` (B,) bool: which images to mirror
    (--flip-schedule alternate); None: a coin per image from `gen`."""
    dd = dd or distributed.Dist()
    # every rank augments the whole global batch (keeps the generators in step), then takes its shard
    x = dd.shard(augment(images, cfg.crop_pad, cfg.flip, gen, cfg.random_erasing, flips))  # (B / world, [C,] H, W)
    x = to_float(x, *norm).to(device).contiguous(memory_format=torch.channels_last)  # (B / world, C, H, W)
    return x, dd.shard(labels).to(device)


def train_step(
    model,
    objective,
    opt,
    sched,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    dd: distributed.Dist | None = None,
    precision: str = "default",
):
    """One optimisation step on a prepared batch (the forward pass under `--precision`'s autocast). Returns (loss,
    loss parts, logits), detached.

    Raises FloatingPointError, before any weight changes, when the loss is not finite on any rank (all ranks
    stop together)."""
    with autocast(device, precision):
        logits, emb = model(x)  # (B, C), (B, D)
    loss, parts = objective(logits, emb, y)  # in fp32 (objectives cast)
    total = dd.sum([loss.item()], device)[0] if dd is not None and dd.enabled else loss.item()
    if not math.isfinite(total):
        raise FloatingPointError(f"non-finite loss ({loss.item()})")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if dd is not None and dd.enabled and loss_parameters(objective):
        average_loss_grads(objective, dd.world)
    opt.step()
    sched.step()
    return loss.detach(), parts, logits.detach()


def run_epoch(state: TrainState, cfg: TrainConfig, epoch: int, seconds_before: float = 0.0) -> dict:
    """One pass over the planned batches; returns the epoch's mean train figures (over all ranks) and "seconds",
    its training time with the hooks' time taken out (`seconds_before`: the run's training time before this epoch,
    for the hooks' `Step`). `state.splits.train_x` / `train_y` may be held on the device (`Splits.train_on`):
    batches are gathered there."""
    model, splits, gen, device, dd, hooks = state.model, state.splits, state.gen, state.device, state.dd, state.hooks
    model.train()
    # planned on the CPU from the CPU generator (the same plan on any device), then moved once an epoch to where
    # the images are; on the CPU both moves are no-ops
    batches = plan_epoch(cfg, splits.train_y.cpu(), gen).to(splits.train_x.device)  # (steps, B)
    # running sums where the step made them (fp64, as Python floats summed them): read once an epoch, and every
    # 10 steps for the progress bar, so a GPU step waits for the host only in the finite-loss check
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    hook_seconds = 0.0
    t0 = time.perf_counter()
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not state.progress,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    alternate = alternating_flips(cfg, len(splits.train_y), epoch)  # (N,) bool, or None: a coin per batch
    slow = Lookahead(state.net, cfg.lookahead) if cfg.lookahead > 0 else None
    for step, idx in enumerate(bar):
        flips = None if alternate is None else alternate[idx.cpu()]
        x, y = prepare_batch(splits.train_x[idx], splits.train_y[idx], cfg, gen, device, dd, norm_of(state.net), flips)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(step_seed(cfg.seed, epoch, step, dd.rank))
        try:
            loss, parts, logits = train_step(
                model, state.objective, state.opt, state.sched, x, y, device, dd, cfg.precision
            )
        except FloatingPointError as e:
            raise NonFiniteError(
                f"{e} at epoch {epoch + 1}, step {step + 1}; stopped, the last good checkpoint is "
                "kept (try a lower --lr)"
            ) from None
        if slow is not None and (step + 1) % LOOKAHEAD_EVERY == 0:
            slow.update()
        for k, v in {"train_loss": loss, **parts}.items():
            sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, device=device).double()  # () fp64
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if hooks.on_step is not None:
            th = time.perf_counter()
            elapsed = th - t0 - hook_seconds
            hooks.on_step(Step(epoch, step, len(batches), state.net, float(loss), seconds_before + elapsed))
            model.train()  # a hook may have validated the model
            hook_seconds += time.perf_counter() - th
        if state.progress and step % 10 == 0:
            bar.set_postfix(
                loss=f"{sums['train_loss'].item() / (step + 1):.3f}",
                acc=f"{correct.item() / seen:.3f}",
                ips=f"{seen / (time.perf_counter() - t0 - hook_seconds):.0f}",
            )
    bar.close()
    if slow is not None and len(batches) % LOOKAHEAD_EVERY:  # the epoch ends on an update: checkpoints hold it
        slow.update()
    seconds = time.perf_counter() - t0 - hook_seconds
    n = len(batches)
    keys = list(sums)
    totals = dd.sum([sums[k].item() for k in keys] + [correct.item(), seen], device)  # means over ranks
    out = {k: round(v / n / dd.world, 5) for k, v in zip(keys, totals)}
    correct, seen = totals[-2], totals[-1]
    out["train_acc"] = round(correct / seen, 5)
    out["images_per_s"] = round(seen / seconds, 1)
    out["seconds"] = seconds
    return out


LOOKAHEAD_EVERY = 5  # steps between --lookahead updates (airbench's)


class Lookahead:
    """--lookahead d (airbench's lookahead, after Zhang et al. 2019): slow copies of the trainable weights; every
    LOOKAHEAD_EVERY steps, and at the end of each epoch, slow ← d·slow + (1 − d)·weights, and the weights are set to
    slow. The slow weights start each epoch equal to the weights (the end of the last epoch made them so), so
    a checkpoint needs nothing more and a resumed run continues as an uninterrupted one. BatchNorm's running
    statistics are buffers, untouched (airbench raises BN momentum with it: --bn-momentum)."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.slow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self) -> None:
        for p, s in zip(self.params, self.slow):
            s.lerp_(p, 1 - self.decay)
            p.copy_(s)


def format_row(row: dict, epochs: int) -> str:
    trip = f" metric {row['triplet']:.3f}" if "triplet" in row else ""
    trip += f" ({row['triplets']:.0f} tuples/batch)" if "triplets" in row else ""
    return (
        f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.3f}{trip} train acc {row['train_acc']:.4f} | "
        f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.4f} focus err {row['val_focus_err']:.4f} "
        f"knn {row['val_knn_acc']:.4f} | "
        f"{row['images_per_s']:.0f} img/s, {row['train_seconds']:.0f} s"
    )
