"""Probe a training-recipe change before building it in: validation only, measured side by side.

    .venv/bin/python scripts/probe_recipe.py trajectory [--loss ce] [--seed 0] [--ema 0.99,0.998]
        [--optimizer adamw|sgd] [--weight-decay X] [--lr X] [--batch-size B] [--epochs E] [--checks-per-epoch 4]
    .venv/bin/python scripts/probe_recipe.py compile [--backbone fastcnn] [--reps 5]
    .venv/bin/python scripts/probe_recipe.py knn-flip RUN [RUN ...] [--k 10]

`trajectory` runs `embedfm train` itself (the package's loop, data, model, augmentation, objective and one-cycle
schedule, in a temporary run dir) with an `on_step` hook that, `--checks-per-epoch` times an epoch, validates the
raw weights and an EMA copy per `--ema` decay on the validation split (flip TTA, as `embedfm train` validates): one
training run answers both "does an EMA of the weights help?" and "when, within an epoch, is 91 % reached?".
Training seconds exclude the hook (validations, EMA updates). `--optimizer sgd` is `embedfm train --optimizer sgd`
(Nesterov momentum 0.9 under the same schedule; pass its L2 `--weight-decay`, e.g. 5e-4). Prints one JSON line per
check. The test split is never read.

`compile` times the package's training step (`embedfm.train.train_step`, batch 256, channels-last) of the eager
model against `torch.compile` of the same model, alternating, best of `--reps`, and the compile time.

`knn-flip` takes trained runs and measures, on the validation split, the kNN classifier eval would build (FAISS
over the run's whole train split) with single-image queries, with flip-averaged queries (eval's `knn_flip`), and
with flip-averaged queries and references; and a blend of the softmax probabilities with the kNN vote shares,
(1 - w) p + w v, whose weight w (0, 0.1, ..., 1) is chosen by 2-fold cross-validation inside the validation split
(even / odd positions): each half is scored with the w that is best on the other half.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from embedfm.config import TrainConfig
from embedfm.data import load_fashion_mnist
from embedfm.inference import embed
from embedfm.models import build_model
from embedfm.objectives import build_objective
from embedfm.sampling import make_splits
from embedfm.train import Step, compile_model, make_optimizer, train_step

CPU = torch.device("cpu")


def val_acc(model, splits) -> float:
    logits = embed(model, splits.val_x, CPU, tta_flip=True).logits  # (N_val, 10)
    return round((logits.argmax(1) == splits.val_y).float().mean().item(), 4)


def trajectory(a) -> None:
    """`embedfm.trajectory.run` (the validation points) with EMA copies of the weights updated every step and scored
    at each check beside the raw weights."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from embedfm.trajectory import run

    overrides = {k: getattr(a, k) for k in ("lr", "weight_decay") if getattr(a, k) is not None}
    emas: dict[float, AveragedModel] = {}
    decays = [float(s) for s in a.ema.split(",") if s]
    print(json.dumps({"config": {k: v for k, v in vars(a).items() if k != "func"}}), flush=True)

    def every_step(s: Step) -> None:
        if not emas:  # BN statistics are averaged too (use_buffers), as timm's ModelEmaV2 does
            emas.update({d: AveragedModel(s.net, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True)
                         for d in decays})  # fmt: skip
        for e in emas.values():
            e.update_parameters(s.net)

    def log(p: dict) -> None:
        row = {"epoch": p["epoch"], "train_s": round(p["train_s"], 1), "raw": round(p["val_acc"], 4)}
        print(json.dumps({**row, **{k: v for k, v in p.items() if k.startswith("ema")}}), flush=True)

    cfg = TrainConfig(loss=a.loss, seed=a.seed, batch_size=a.batch_size, epochs=a.epochs, optimizer=a.optimizer,
                      **overrides)  # fmt: skip
    run(cfg, load_fashion_mnist(), checks=a.checks_per_epoch, log=log, every_step=every_step,
        on_check=lambda _s, splits: {f"ema{d}": val_acc(e.module, splits) for d, e in emas.items()})  # fmt: skip


def compile_step(a) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(backbone=a.backbone)
    x = torch.randn(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,))

    def make(compiled: bool):
        net = build_model(a.backbone, cfg.embedding_dim, 10).to(memory_format=torch.channels_last)
        opt, sched = make_optimizer(net, cfg, 10 * (a.reps + 1) + 1)
        fwd = compile_model(net) if compiled else net  # as `embedfm train --compile` does
        objective = build_objective(cfg)
        return lambda: train_step(fwd, objective, opt, sched, x, y, CPU)

    eager, compiled = make(False), make(True)
    eager()
    t0 = time.perf_counter()
    compiled()  # the first call compiles forward and backward
    compile_s = time.perf_counter() - t0
    best = {"eager": 0.0, "compiled": 0.0}
    for _ in range(a.reps):
        for name, step in (("eager", eager), ("compiled", compiled)):
            t = time.perf_counter()
            for _ in range(10):
                step()
            best[name] = max(best[name], 2560 / (time.perf_counter() - t))
    print(
        json.dumps(
            {
                "backbone": a.backbone,
                "compile_s": round(compile_s, 1),
                "img_per_s": {k: round(v) for k, v in best.items()},
                "compiled_over_eager": round(best["compiled"] / best["eager"], 3),
            }
        )
    )


def knn_flip(a) -> None:
    from embedfm.checkpoint import load_model
    from embedfm.config import from_dict
    from embedfm.knn import KNNClassifier, vote

    for run in a.runs:
        model, ckpt = load_model(run)
        cfg = from_dict(ckpt["config"])
        splits = make_splits(load_fashion_mnist(cfg.data_dir), cfg.val_size, cfg.limit)
        cpu, y = CPU, splits.val_y.numpy()
        ref = embed(model, splits.train_x, cpu, tta_flip=True)  # references, plain and flip-averaged
        val = embed(model, splits.val_x, cpu, tta_flip=True)
        knn = KNNClassifier(k=a.k).fit(ref.emb.numpy(), splits.train_y.numpy())
        knn_avg = KNNClassifier(k=a.k).fit(ref.emb_flip.numpy(), splits.train_y.numpy())
        softmax = val.logits.softmax(1).numpy()  # (N_val, 10)
        _, idx = knn.kneighbors(val.emb_flip.numpy())
        neighbours = knn.labels[idx]  # (N_val, k)
        votes = (neighbours[:, :, None] == np.arange(10)).mean(1)  # (N_val, 10) vote shares
        acc = lambda pred, m=slice(None), y=y: float((pred[m] == y[m]).mean())
        weights = [i / 10 for i in range(11)]
        halves = [slice(0, None, 2), slice(1, None, 2)]
        blend = {w: ((1 - w) * softmax + w * votes).argmax(1) for w in weights}
        cv_correct = 0
        for h, other in ((halves[0], halves[1]), (halves[1], halves[0])):
            w = max(weights, key=lambda w: acc(blend[w], other))
            cv_correct += int((blend[w][h] == y[h]).sum())
        print(
            json.dumps(
                {
                    "run": run,
                    "val_softmax": round(acc(softmax.argmax(1)), 4),
                    "val_knn": round(acc(knn.predict(val.emb.numpy())), 4),
                    "val_knn_flip_queries": round(acc(vote(neighbours, 10)), 4),  # = knn.predict
                    "val_knn_flip_queries_and_refs": round(acc(knn_avg.predict(val.emb_flip.numpy())), 4),
                    "val_blend_2fold_cv": round(cv_correct / len(y), 4),
                }
            ),
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(required=True)
    t = sub.add_parser("trajectory", help="one demo training run, validated within epochs, raw vs EMA weights")
    t.add_argument("--loss", default="ce", choices=("ce", "triplet"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--ema", default="0.99,0.998", help="comma-separated EMA decays ('' for none)")
    t.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"), help="embedfm train --optimizer")
    t.add_argument("--weight-decay", type=float, default=None, help="default: embedfm's (an L2 coefficient for sgd)")
    t.add_argument("--lr", type=float, default=None, help="peak lr (default: embedfm's)")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--checks-per-epoch", type=int, default=4)
    t.set_defaults(func=trajectory)
    c = sub.add_parser("compile", help="training step: eager vs torch.compile")
    c.add_argument("--backbone", default="fastcnn")
    c.add_argument("--reps", type=int, default=5)
    c.set_defaults(func=compile_step)
    f = sub.add_parser("knn-flip", help="validation kNN: single vs flip-averaged queries (and refs); softmax blend")
    f.add_argument("runs", nargs="+")
    f.add_argument("--k", type=int, default=10)
    f.set_defaults(func=knn_flip)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
