"""Training diagnostics: what the metric term sees at the end of each epoch, for every run (CE runs as a control).

At the end of each epoch `probe` embeds a fixed set of class-balanced batches of the train split (DIAG_BATCHES
batches of --batch-size images, drawn once from the run's seed, the same every epoch) with the model in eval
mode, and on each batch:

- the **probe**: draws triplets with the distance-weighted miner (the run's --miner-cutoff and
  --miner-nonzero-loss-cutoff, over the whole batch) and reports, split by anchor class, the share of those
  triplets that are **active** (non-zero TripletMarginLoss at --margin: d(a, n) − d(a, p) < margin) and the mean
  anchor–positive and anchor–negative distances (L2 between unit embeddings, in [0, 2]). The same probe for every
  run, whatever its loss: a CE run's figures are those of its own embedding.
- the run's **own** loss, when it is a hinge (triplet, margin, contrastive): its own miner's tuples (or every
  tuple of the batch with --miner none) and the share of them with non-zero loss, split by anchor class.

History keys (one row per epoch; a key is left out where its group has no tuples, e.g. the own loss's `other`
anchors under --mining focus):

    diag_triplets                       probe triplets per batch
    diag_active_{focus,other,ff}        share of probe triplets that violate the margin
    diag_ap_{focus,other,ff}            mean anchor–positive distance of those triplets
    diag_an_{focus,other,ff}            mean anchor–negative distance
    diag_own_tuples                     tuples the run's own loss scores per batch (hinge losses only)
    diag_own_active_{focus,other}       share of them with non-zero loss

Groups: `focus` = anchors of a focus class, `other` = the rest, `ff` = focus anchors whose negative is a focus
class too (the confusable pairs the issue is about).

The probe changes nothing a run computes: it draws from torch's generators inside `torch.random.fork_rng`
(seeded per batch, so a resumed run sees the same figures; the run's streams are restored after it), from no other
generator, and runs the model in eval mode without gradients. The probe's miner runs on the CPU; the run's own
loss where training runs it. `plot(run_dir)` draws `RUN/diagnostics.png` from `history.json`; `embedfm train` calls it
when a run finishes, and `python -m embedfm.diagnostics RUN...` draws it for any run dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from embedfm.config import TrainConfig

DIAG_BATCHES = 8
GROUPS = ("focus", "other", "ff")
OWN_GROUPS = ("focus", "other")
PNG = "diagnostics.png"
_SEED = 0x5EED  # mixed into the run's seed: the probe's batches and draws, apart from the training streams


def fixed_batches(labels, cfg: TrainConfig):
    """(K, B) indices into the train split: the first DIAG_BATCHES class-balanced batches of a plan drawn from a
    generator of its own. None where the split cannot fill one balanced batch (a tiny --limit)."""
    import torch

    from embedfm.errors import DataError
    from embedfm.sampling import balanced_batches

    gen = torch.Generator().manual_seed((cfg.seed ^ _SEED) % 2**63)
    try:
        plan = balanced_batches(labels.cpu(), cfg.batch_size, cfg.focus_classes, cfg.focus_oversample, gen)
    except DataError:
        return None
    return plan[:DIAG_BATCHES] if len(plan) else None


class _Sums:
    """Running counts and sums of one group of tuples."""

    def __init__(self):
        self.n, self.active, self.ap, self.an = 0, 0, 0.0, 0.0

    def add(self, mask, active, d_ap=None, d_an=None):
        self.n += int(mask.sum())
        self.active += int((active & mask).sum())
        if d_ap is not None:
            self.ap += float(d_ap[mask].double().sum())
            self.an += float(d_an[mask].double().sum())

    def merge(self, other: _Sums) -> None:
        self.n, self.active = self.n + other.n, self.active + other.active
        self.ap, self.an = self.ap + other.ap, self.an + other.an

    def share(self):
        return round(self.active / self.n, 5) if self.n else None

    def mean(self, total):
        return round(total / self.n, 5) if self.n else None


def tuple_stats(emb, labels, triplets, margin: float, focus_classes) -> dict[str, _Sums]:
    """Per group: probe triplets (a, p, n) counted, active at `margin`, and their distances summed (emb: (B, D))."""
    import torch

    from embedfm.objectives import unit_l2

    a, p, n = triplets
    mat = unit_l2()(emb)  # (B, B), as the triplet loss computes it
    d_ap, d_an = mat[a, p], mat[a, n]
    active = torch.nn.functional.relu(d_ap - d_an + margin) > 0  # TripletMarginLoss's per-triplet loss
    focus = torch.tensor(focus_classes, device=labels.device)
    fa, fn = torch.isin(labels[a], focus), torch.isin(labels[n], focus)
    out = {g: _Sums() for g in GROUPS}
    for g, mask in (("focus", fa), ("other", ~fa), ("ff", fa & fn)):
        out[g].add(mask, active, d_ap, d_an)
    return out


def probe(net, images, labels, batches, cfg: TrainConfig, device, objective=None) -> dict:
    """The diagnostics of one epoch as history keys (see the module doc). images: the uint8 train split (N, 28, 28)
    and labels (N,) on the CPU; batches: `fixed_batches`; objective: the run's (its hinge tuples are counted).
    Raises NonFiniteError (one line) when an embedding is NaN or infinite."""
    import torch
    from pytorch_metric_learning import miners

    from embedfm.inference import embed
    from embedfm.objectives import unit_l2

    if batches is None:
        return {}
    flat = batches.reshape(-1)
    emb = embed(net, images[flat], device, batch_size=cfg.batch_size).emb  # (K·B, D) fp32 on the CPU, eval mode
    if not bool(torch.isfinite(emb).all()):  # the miner would fail on them with a traceback
        from embedfm.errors import NonFiniteError

        raise NonFiniteError("non-finite embeddings in the diagnostics probe")
    emb, lab = emb.view(*batches.shape, -1), labels[flat].view(batches.shape)  # (K, B, D), (K, B)
    miner = miners.DistanceWeightedMiner(
        cutoff=cfg.miner_cutoff, nonzero_loss_cutoff=cfg.miner_nonzero_loss_cutoff, distance=unit_l2()
    )
    own_loss = getattr(objective, "tuple_losses", None)
    focus = torch.tensor(cfg.focus_classes)
    sums = {g: _Sums() for g in GROUPS}
    own = {g: _Sums() for g in OWN_GROUPS}
    own_n, has_own = 0, False
    seed = (cfg.seed ^ _SEED) % 2**63
    # the training's random streams are put back as they were (CUDA's too: the own loss runs where training does)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i, (e, y) in enumerate(zip(emb, lab)):
            torch.manual_seed(seed + i)
            for g, s in tuple_stats(e, y, miner(e, y), cfg.margin, cfg.focus_classes).items():
                sums[g].merge(s)
            if own_loss is not None:
                torch.manual_seed(seed + i)  # the same draws: a default triplet run's own tuples are the probe's
                r = own_loss(e.to(device), y.to(device))
                if r is not None:
                    has_own = True
                    anchors, active = (t.cpu() for t in r)
                    fa = torch.isin(anchors, focus)
                    own["focus"].add(fa, active)
                    own["other"].add(~fa, active)
                    own_n += len(anchors)
    k = len(batches)
    row = {"diag_triplets": round(sum(sums[g].n for g in ("focus", "other")) / k, 2)}
    for g in GROUPS:
        s = sums[g]
        row.update({f"diag_active_{g}": s.share(), f"diag_ap_{g}": s.mean(s.ap), f"diag_an_{g}": s.mean(s.an)})
    if has_own:
        row["diag_own_tuples"] = round(own_n / k, 2)
        row.update({f"diag_own_active_{g}": own[g].share() for g in OWN_GROUPS})
    return {k: v for k, v in row.items() if v is not None}  # every history value stays a number


# ----------------------------------------------------------------------------------------------
# the plot


def _series(history: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key) if isinstance(r.get(key), (int, float)) else np.nan for r in history], dtype=float)


def plot(run_dir: str | Path) -> Path | None:
    """Draw RUN/diagnostics.png from RUN/history.json: per epoch, the share of active probe triplets (and of the
    loss's own tuples) and the anchor–positive / anchor–negative distances, focus anchors against the others.
    Returns the PNG's path, or None when the history has no diagnostics (a run from before them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from embedfm import rundir
    from embedfm.fileio import atomic_save_figure, read_json

    run = Path(run_dir)
    history = read_json(run / rundir.HISTORY, "retrain the run")
    if not isinstance(history, list) or not any(isinstance(r, dict) and "diag_active_focus" in r for r in history):
        return None
    history = [r for r in history if isinstance(r, dict)]
    cfg = read_json(run / rundir.CONFIG) if (run / rundir.CONFIG).is_file() else {}
    cfg = cfg if isinstance(cfg, dict) else {}
    epochs = np.array([r.get("epoch", i + 1) for i, r in enumerate(history)], dtype=float)
    colours = {"focus": "tab:red", "other": "tab:blue", "ff": "tab:purple"}
    names = {"focus": "focus anchors", "other": "other anchors", "ff": "focus anchor & negative"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for g in GROUPS:
        left.plot(epochs, _series(history, f"diag_active_{g}"), "o-", color=colours[g], label=names[g])
    for g in OWN_GROUPS:
        y = _series(history, f"diag_own_active_{g}")
        if not np.isnan(y).all():
            left.plot(epochs, y, "x--", color=colours[g], label=f"own loss, {names[g]}")
    left.set(xlabel="epoch", ylabel="share of tuples with non-zero loss", ylim=(-0.02, 1.02))
    left.set_title(f"active probe triplets (margin {cfg.get('margin', '?')})", fontsize=10)
    left.legend(fontsize=7)
    for g in ("focus", "other"):
        right.plot(epochs, _series(history, f"diag_ap_{g}"), "o-", color=colours[g], label=f"d(a, p), {names[g]}")
        right.plot(epochs, _series(history, f"diag_an_{g}"), "s--", color=colours[g], label=f"d(a, n), {names[g]}")
    right.set(xlabel="epoch", ylabel="mean L2 distance (unit embeddings)")
    for ax in (left, right):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    right.set_title("anchor–positive and anchor–negative distance", fontsize=10)
    right.legend(fontsize=7)
    loss = cfg.get("loss", "?")
    what = f"CE ×{cfg.get('ce_weight', 1.0)} + {cfg.get('metric_loss', '?')}" if loss == "triplet" else "CE"
    fig.suptitle(f"{run.name}: {what}, diagnostics on {DIAG_BATCHES} fixed train batches", fontsize=11)
    fig.tight_layout()
    atomic_save_figure(fig, run / PNG)
    plt.close(fig)
    return run / PNG


def main(argv: list[str] | None = None) -> int:
    """python -m embedfm.diagnostics RUN...: draw RUN/diagnostics.png for each run dir."""
    from embedfm.errors import EmbedfmError

    runs = sys.argv[1:] if argv is None else argv
    if not runs:
        print("usage: python -m embedfm.diagnostics RUN...", file=sys.stderr)
        return 2
    status = 0
    for run in runs:
        try:
            out = plot(run)
        except EmbedfmError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"{run}: {'no diagnostics in its history' if out is None else out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
