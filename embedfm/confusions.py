"""Which classes a model confuses, found on the validation split: the most-confused pairs, and the K classes with the
most mutual confusion, the group `--focus auto:K` trains against and `embedfm confusions RUN` prints.

What this module owns:
- `mutual(cm)`: how much two classes are mistaken for each other, from a confusion matrix (rows true, columns
  predicted): the share of i's images predicted as j plus the share of j's predicted as i (each class's row
  normalised, so a large class does not dominate);
- `most_confused_group(cm, k)`: the k classes whose pairwise mutual confusions sum highest (every group of k
  classes tried when there are at most 200,000 of them, else grown greedily from the most-confused pair);
- `validation_confusion(run)`: a trained run's confusion matrix on its own validation split (never the test split:
  the focus group is a choice, and choices are made on validation);
- `auto_focus(cfg, k)`: a quick CE run on the same set (kept beside the run, named in its config as `focus_run`) and
  the group its validation confusions give;
- `table(...)`: the pairs and groups as Markdown.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from embedfm.errors import ConfigError
from embedfm.markdown import md_table

EXHAUSTIVE = 200_000  # groups of k tried one by one up to this many (C(20, 6) = 38,760)
PROBE_EPOCHS = 3  # the quick CE run of --focus auto:K (fewer if the run itself is shorter)


def mutual(cm: np.ndarray) -> np.ndarray:
    """(K, K) symmetric, zero diagonal: rate(i → j) + rate(j → i), each rate a share of the true class's images."""
    cm = np.asarray(cm, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    m = rates + rates.T
    np.fill_diagonal(m, 0.0)
    return m


def group_score(m: np.ndarray, group) -> float:
    """The sum of the group's pairwise mutual confusions."""
    return float(sum(m[i, j] for i, j in itertools.combinations(group, 2)))


def most_confused_group(cm: np.ndarray, k: int) -> tuple[int, ...]:
    """The k classes (sorted ids) whose pairwise mutual confusions sum highest; ties go to the lower ids."""
    m = mutual(cm)
    n = len(m)
    if not 2 <= k <= n:
        raise ConfigError(f"--focus auto:{k}: K must be in 2-{n} (this set has {n} classes)")
    if math.comb(n, k) <= EXHAUSTIVE:
        best = max(itertools.combinations(range(n), k), key=lambda g: (group_score(m, g), [-c for c in g]))
        return tuple(best)
    i, j = np.unravel_index(np.argmax(np.triu(m, 1)), m.shape)
    group = [int(i), int(j)]
    while len(group) < k:
        rest = [c for c in range(n) if c not in group]
        group.append(max(rest, key=lambda c: (m[c, group].sum(), -c)))
    return tuple(sorted(group))


def top_pairs(cm: np.ndarray, n: int = 10) -> list[tuple[int, int, float, float]]:
    """The n most mutually confused pairs: (i, j, rate i → j, rate j → i), most confused first."""
    cm = np.asarray(cm, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    pairs = [(i, j, rates[i, j], rates[j, i]) for i, j in itertools.combinations(range(len(cm)), 2)]
    pairs.sort(key=lambda p: (-(p[2] + p[3]), p[0], p[1]))
    return [p for p in pairs[:n] if p[2] + p[3] > 0]


def table(cm: np.ndarray, names: tuple[str, ...], ks=(2, 3, 4), top: int = 10) -> str:
    """The most-confused pairs and, for each k, the most-confused group, as two Markdown tables."""
    m = mutual(cm)
    pct = lambda x: f"{100 * x:.2f} %"
    pairs = md_table(
        ["classes", "i → j", "j → i", "together"],
        [[f"{i} {names[i]} / {j} {names[j]}", pct(a), pct(b), pct(a + b)] for i, j, a, b in top_pairs(cm, top)],
    )
    rows = []
    for k in ks:
        if 2 <= k <= len(names):
            g = most_confused_group(cm, k)
            rows.append([str(k), ", ".join(f"{c} {names[c]}" for c in g), f"{group_score(m, g):.4f}",
                         f"--focus-classes {','.join(map(str, g))}"])  # fmt: skip
    groups = md_table(["K", "most-confused group", "score (sum of pair rates)", "flag"], rows)
    return f"Most-confused pairs:\n\n{pairs}\n\nMost-confused groups:\n\n{groups}"


def validation_confusion(run, data_dir: str | None = None, progress: bool = True) -> np.ndarray:
    """The run's (K, K) confusion matrix (rows true) on its own validation split, by its softmax head (by the kNN
    for a metric-loss-only run)."""
    import torch

    from embedfm.inference import embed
    from embedfm.knn import KNNClassifier
    from embedfm.sampling import make_splits
    from embedfm.train import VAL_KNN_REFS

    cfg = run.config
    data = run.load_data(data_dir, progress)
    s = make_splits(data, cfg.val_size, cfg.limit, holdout=cfg.holdout_classes)
    model = run.model("cpu")
    logits, emb, _ = embed(model, s.val_x, torch.device("cpu"), tta_flip=cfg.tta_flip, progress=progress)
    if cfg.loss == "triplet" and cfg.ce_weight == 0:
        n = min(VAL_KNN_REFS, len(s.train_y))
        ref = embed(model, s.train_x[:n], torch.device("cpu")).emb.numpy()
        knn = KNNClassifier(k=min(cfg.knn_k, n), num_classes=run.num_classes).fit(ref, s.train_y[:n].numpy())
        pred = knn.predict(emb.numpy())
    else:
        pred = logits.argmax(1).numpy()
    k = run.num_classes
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (s.val_y.numpy(), pred), 1)
    return cm


def parse_auto(focus: str | None) -> int | None:
    """K of `--focus auto:K`, or None for any other --focus."""
    if not focus or not focus.startswith("auto"):
        return None
    _, _, k = focus.partition(":")
    if not k.isdigit():
        raise ConfigError(f"--focus {focus!r}: expected auto:K, e.g. auto:4")
    return int(k)


def probe_dir(out: str) -> str:
    return f"{str(out).rstrip('/')}-focus-probe"


def auto_focus(cfg, k: int, log=print, progress: bool = True):
    """`cfg` with its focus classes chosen by a quick CE run: trained (or reused, if finished) in `probe_dir(out)`
    with the run's data, backbone and seed, `PROBE_EPOCHS` epochs and every class as a focus class; the k classes
    its validation split confuses most become --focus-classes, and the probe's dir is recorded as `focus_run`."""
    from embedfm import rundir, sources
    from embedfm.run import Run
    from embedfm.train import train

    probe = probe_dir(cfg.out)
    quick = replace(cfg, loss="ce", sampler="auto", epochs=min(PROBE_EPOCHS, cfg.epochs), focus="all", out=probe,
                    focus_run=None)  # fmt: skip
    data = sources.for_config(quick, progress=progress)
    if rundir.state(probe) in ("finished", "evaluated") and _same_probe(
        Run.open(probe).config, sources.fit_config(quick, data)
    ):
        log(f"--focus auto:{k}: reusing the quick CE run {probe}")
    else:
        log(f"--focus auto:{k}: a quick CE run ({quick.epochs} epochs) into {probe} to find the confused classes")
        train(quick, data=data, overwrite=True, progress=progress, log=log)
    run = Run.open(probe)
    cm = validation_confusion(run, progress=progress)
    group = most_confused_group(cm, k)
    names = run.class_names
    log(f"--focus auto:{k}: {', '.join(f'{c} {names[c]}' for c in group)} (validation split of {probe})")
    return replace(cfg, focus_classes=group, focus_run=str(Path(probe)))


def _same_probe(a, b) -> bool:
    """Whether a finished probe run was trained as `b` (resolved for the data) asks: every setting but where and
    how fast it ran."""
    da, db = a.to_dict(), b.to_dict()
    return all(da.get(key) == db.get(key) for key in db if key not in ("out", "threads", "device"))
