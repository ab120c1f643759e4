"""Training: `train(cfg)` runs one configuration to the end and returns its history.

Reads top to bottom: set-up (seeds, data, model, optimiser, one-cycle schedule), then per epoch
plan the batches, step through them with a progress bar, validate (softmax and kNN accuracy on the
fixed validation split), and save an atomic checkpoint + history. A finished run gets a DONE mark.
`--resume` restarts after the last checkpointed epoch with every RNG state restored, so the result
equals an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from embedfm import checkpoint as ckpt_io
from embedfm import distributed
from embedfm.config import TrainConfig, from_dict
from embedfm.data import (FashionMNIST, Splits, augment, balanced_batches, load_fashion_mnist, make_splits,
                          shuffled_batches, to_float)
from embedfm.errors import EmbedfmError
from embedfm.knn import KNNClassifier
from embedfm.metrics import focus_group_error
from embedfm.models import build_model, count_macs, count_params, fuse_for_inference
from embedfm.objectives import build_objective

VAL_KNN_REFS = 5_000  # train images used as kNN reference for the per-epoch validation kNN (cheap)


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EmbedfmError("--device cuda was asked for but no CUDA device is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", distributed.from_env().local_rank)  # one GPU per torchrun process
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA (tensor cores; no loss scaling needed); a no-op on CPU, where fp32 is
    what oneDNN runs fastest for these small convs."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class Embedded(NamedTuple):
    logits: torch.Tensor            # (N, C); with tta_flip the mean of the image's and its mirror's
    emb: torch.Tensor               # (N, D) unit norm, of the image itself (what kNN references, UMAP, retrieval use)
    emb_flip: torch.Tensor | None   # (N, D) unit norm, normalize(emb + mirror's emb); only with tta_flip


@torch.no_grad()
def embed(model, images: torch.Tensor, device: torch.device, batch_size: int = 256,
          tta_flip: bool = False, progress: bool = False, desc: str = "embed") -> Embedded:
    """uint8 images (N, 28, 28) → Embedded(logits, embeddings, flip-averaged embeddings) on the CPU, fp32.

    With `tta_flip` the model also sees each image's mirror: the logits average the two, and
    `emb_flip` holds the two embeddings' normalised mean (for kNN queries; `emb` stays the image's own,
    so UMAP and retrieval see exactly what the model maps the image to). The mirror pass is needed for
    the logits anyway, so `emb_flip` costs nothing extra.
    """
    # BN folded into the convs, channels-last: both ~1.3x faster inference on CPU (scripts/bench)
    model = fuse_for_inference(model).to(memory_format=torch.channels_last)
    logits, embs, flips = [], [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        x = to_float(images[i:i + batch_size]).to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device):
            lg, em = model(x)
            if tta_flip:
                lg_m, em_m = model(x.flip(3))
                lg = (lg + lg_m) / 2
                flips.append(F.normalize((em + em_m).float(), dim=1).cpu())
        logits.append(lg.float().cpu())
        embs.append(em.float().cpu())
    return Embedded(torch.cat(logits), torch.cat(embs), torch.cat(flips) if tta_flip else None)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state(gen: torch.Generator) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "data": gen.get_state()}


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    gen.set_state(state["data"])


def make_optimizer(model, cfg: TrainConfig, steps: int):
    # weight decay on conv/linear weights only; BN parameters and biases are not decayed
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    return opt, one_cycle(opt, cfg, steps)


def one_cycle(opt, cfg: TrainConfig, steps: int):
    """The one-cycle lr schedule of `steps` steps peaking at cfg.lr, for any optimizer."""
    if steps < 4:  # too few steps to warm up and anneal (OneCycleLR divides by zero): constant lr
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    # at least 2 warm-up steps: OneCycleLR needs its warm-up phase to end after step 0
    pct = min(max(cfg.warmup_frac, 2.5 / steps), 0.5)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=pct,
                                               div_factor=20.0, final_div_factor=200.0)


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
    over a fixed subset of the train split (cheap stand-in for the full-train kNN that eval runs)."""
    logits, emb, _ = embed(model, splits.val_x, device, tta_flip=cfg.tta_flip)
    n_ref = min(VAL_KNN_REFS, len(splits.train_y))
    ref_emb = embed(model, splits.train_x[:n_ref], device).emb
    knn = KNNClassifier(k=min(cfg.knn_k, n_ref)).fit(ref_emb.numpy(), splits.train_y[:n_ref].numpy())
    knn_pred = torch.from_numpy(knn.predict(emb.numpy()))
    pred = logits.argmax(1)
    return {"val_loss": F.cross_entropy(logits, splits.val_y).item(),
            "val_acc": (pred == splits.val_y).float().mean().item(),
            "val_focus_err": focus_group_error(splits.val_y.numpy(), pred.numpy(), cfg.focus_classes),
            "val_knn_acc": (knn_pred == splits.val_y).float().mean().item()}


def check_run_dir(cfg: TrainConfig, overwrite: bool, resume: bool) -> bool:
    """Refuse an --out we must not write into; returns whether it holds a run. Changes nothing."""
    run = Path(cfg.out)
    if run.exists() and not run.is_dir():
        raise EmbedfmError(f"--out {run} is a file, not a directory")
    has_run = (run / ckpt_io.CHECKPOINT).exists() or ckpt_io.is_done(run)
    if has_run and not (overwrite or resume):
        state = "a finished run" if ckpt_io.is_done(run) else "an unfinished run"
        raise EmbedfmError(f"--out {run} already holds {state}; use --resume to continue it, "
                           "--overwrite to replace it, or another --out")
    return has_run


def prepare_run_dir(cfg: TrainConfig, overwrite: bool, resume: bool) -> Path:
    run = Path(cfg.out)
    has_run = check_run_dir(cfg, overwrite, resume)
    if overwrite and has_run:
        for name in (ckpt_io.CHECKPOINT, ckpt_io.DONE, "history.json", "summary.csv", "config.json"):
            (run / name).unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    return run


def train(cfg: TrainConfig, data: FashionMNIST | None = None, overwrite: bool = False, resume: bool = False,
          progress: bool = True, log=print, on_epoch=None) -> dict:
    """Train one run into `cfg.out`. Returns {"run_dir", "history", "seconds"}.

    `on_epoch(row)` is called with each epoch's history row after its checkpoint is saved; an
    exception it raises stops the run there (how `embedfm tune` prunes a trial).
    """
    old = None
    if resume:
        old = ckpt_io.load_checkpoint(cfg.out)
        cfg = from_dict(old["config"], source=f"{cfg.out}/{ckpt_io.CHECKPOINT}")
        if ckpt_io.is_done(cfg.out):
            log(f"{cfg.out}: already finished, nothing to resume")
            return {"run_dir": cfg.out, "history": old["history"], "seconds": 0.0}
    # everything that can fail on bad input happens before the run dir is touched
    check_run_dir(cfg, overwrite, resume)
    device = select_device(cfg.device)
    data = data or load_fashion_mnist(cfg.data_dir)
    splits = make_splits(data, cfg.val_size, cfg.limit)
    steps = steps_per_epoch(cfg, len(splits.train_y))
    dd = distributed.init(device, cfg.batch_size)
    try:
        return _train(cfg, data, splits, steps, device, dd, overwrite, resume, progress and dd.main,
                      log if dd.main else (lambda *a, **k: None), on_epoch, old)
    finally:
        distributed.close(dd)


def _train(cfg, data, splits, steps, device, dd, overwrite, resume, progress, log, on_epoch, old) -> dict:
    run = Path(cfg.out)
    if dd.main:
        prepare_run_dir(cfg, overwrite, resume)
    dd.barrier()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    gen = seed_everything(cfg.seed)
    model_args = {"backbone": cfg.backbone, "embedding_dim": cfg.embedding_dim, "num_classes": 10}
    # channels_last: oneDNN's fastest conv layout on CPU (~1.3x here, see scripts/bench)
    net = build_model(**model_args).to(device, memory_format=torch.channels_last)
    opt, sched = make_optimizer(net, cfg, cfg.epochs * steps)
    objective = build_objective(cfg)
    history, start_epoch = [], 0
    if resume:
        net.load_state_dict(old["model"])
        opt.load_state_dict(old["optimizer"])
        sched.load_state_dict(old["scheduler"])
        set_rng_state(old["rng"], gen)
        history, start_epoch = old["history"], old["epoch"] + 1
        log(f"resuming {run} after epoch {old['epoch'] + 1}/{cfg.epochs}")
    # DDP averages gradients over processes; `net` stays the plain model for validation and checkpoints
    model = torch.nn.parallel.DistributedDataParallel(net) if dd.enabled else net
    if cfg.compile:  # shares net's parameters; batches have one fixed shape, so it compiles once
        model = torch.compile(model)

    procs = f", {dd.world} processes" if dd.enabled else ""
    log(f"embedfm train → {run}  ({count_params(net) / 1e3:.0f} k params, "
        f"{count_macs(net) / 1e6:.1f} M MACs/image, {len(splits.train_y)} train / {len(splits.val_y)} val, "
        f"device {device}, {torch.get_num_threads()} threads{procs})\n{cfg.describe()}")
    if dd.main:
        ckpt_io.atomic_write_json(run / "config.json", cfg.to_dict())
    train_seconds = history[-1]["train_seconds"] if history else 0.0

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        stats = run_epoch(model, objective, opt, sched, splits, cfg, gen, device, epoch, progress, dd)
        train_seconds += time.perf_counter() - t0
        if not dd.main:  # rank 0 validates and writes; the others wait for it
            dd.barrier()
            continue
        row = {"epoch": epoch + 1, **stats, **validate(net, splits, cfg, device),
               "lr": sched.get_last_lr()[0], "train_seconds": round(train_seconds, 2)}
        history.append(row)
        log(format_row(row, cfg.epochs))
        ckpt_io.save_checkpoint(run, {
            "model_args": model_args, "model": net.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "epoch": epoch, "history": history, "config": cfg.to_dict(),
            "rng": rng_state(gen), "data": data.fingerprint(), "splits": {"n_train": len(splits.train_y),
                                                                          "n_val": len(splits.val_y)}})
        ckpt_io.atomic_write_json(run / "history.json", history)
        ckpt_io.atomic_write_csv(run / "summary.csv", history)
        dd.barrier()
        if on_epoch is not None:
            on_epoch(row)
    if dd.main:
        ckpt_io.atomic_write_text(run / ckpt_io.DONE, f"finished {len(history)} epochs\n")
    return {"run_dir": str(run), "history": history, "seconds": train_seconds}


def run_epoch(model, objective, opt, sched, splits: Splits, cfg: TrainConfig, gen: torch.Generator,
              device: torch.device, epoch: int, progress: bool, dd=distributed.Dist()) -> dict:
    """One pass over the planned batches; returns the epoch's mean train figures (over all ranks)."""
    model.train()
    batches = plan_epoch(cfg, splits.train_y, gen)  # (steps, B)
    sums: dict[str, float] = {}
    correct = seen = 0
    t0 = time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False,
               file=sys.stderr, dynamic_ncols=True)
    for step, idx in enumerate(bar):
        # every rank augments the whole global batch (keeps the generators in step), then takes its shard
        x = dd.shard(augment(splits.train_x[idx], cfg.crop_pad, cfg.flip, gen))  # (B / world, 28, 28)
        x = to_float(x).to(device).contiguous(memory_format=torch.channels_last)  # (B / world, 1, 28, 28)
        y = dd.shard(splits.train_y[idx]).to(device)  # (B / world,)
        with autocast(device):
            logits, emb = model(x)  # (B / world, C), (B / world, D)
        loss, parts = objective(logits, emb, y)  # in fp32 (objectives cast)
        if not math.isfinite(dd.sum([loss.item()], device)[0]):  # all ranks stop together
            raise EmbedfmError(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                               "stopped, the last good checkpoint is kept (try a lower --lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in {"train_loss": loss.detach(), **parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{sums['train_loss'] / (step + 1):.3f}", acc=f"{correct / seen:.3f}",
                            ips=f"{seen / (time.perf_counter() - t0):.0f}")
    bar.close()
    n = len(batches)
    keys = list(sums)
    totals = dd.sum([sums[k] for k in keys] + [correct, seen], device)  # means over ranks
    out = {k: round(v / n / dd.world, 5) for k, v in zip(keys, totals)}
    correct, seen = totals[-2], totals[-1]
    out["train_acc"] = round(correct / seen, 5)
    out["images_per_s"] = round(seen / (time.perf_counter() - t0), 1)
    return out


def format_row(row: dict, epochs: int) -> str:
    trip = f" triplet {row['triplet']:.3f} ({row['triplets']:.0f} triplets/batch)" if "triplet" in row else ""
    return (f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.3f}{trip} train acc {row['train_acc']:.4f} | "
            f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.4f} focus err {row['val_focus_err']:.4f} "
            f"knn {row['val_knn_acc']:.4f} | "
            f"{row['images_per_s']:.0f} img/s, {row['train_seconds']:.0f} s")
