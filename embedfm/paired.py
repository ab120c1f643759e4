"""Paired comparisons of methods on the same test images: `embedfm summarize --paired`.

Seed-level mean ± std hides how uncertain a difference is: the focus group is 4,000 test images, so one model's
focus-group error alone carries about ±0.44 points of binomial error. Two methods evaluated on the same images
can be compared image by image instead. For each method against each CE control (a method whose runs have
`loss == "ce"`), over the runs' per-image records (`report.json`'s `per_image`, written by `embedfm eval`):

- the paired per-seed difference (seed s of the method minus seed s of the control), mean ± std;
- a paired bootstrap 95 % interval of the difference of the seed-averaged figures: test images are resampled
  with replacement (`draws` times), every model of both methods is scored on the same resample, and the
  interval is the 2.5 / 97.5 percentiles of (method's mean over seeds − control's mean over seeds);
- McNemar's exact test on the focus-class images, per seed pair: b = images the method gets right and the
  control wrong, c = the reverse, two-sided p = min(1, 2 · P(Binomial(b + c, ½) ≤ min(b, c))).

Figures: accuracy, focus-group error and shirt recall of the softmax head (`classifier`), and MAP@R of the
embedding. A method "helps" on a figure only where its interval excludes zero (in the good direction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from embedfm.errors import EmbedfmError

SHIRT = 6
FIGURES = ("accuracy", "focus_group_error", "shirt_recall", "map_at_r")
LOWER_IS_BETTER = {"focus_group_error"}


@dataclass
class Scored:
    """One run's per-image record as (numerator, denominator) pairs: a figure on a set of images is
    Σ numerator / Σ denominator over them (a mean for accuracy and MAP@R, a ratio for the others)."""

    seed: int
    num: np.ndarray  # (N, len(FIGURES))
    den: np.ndarray  # (N, len(FIGURES))
    correct: np.ndarray  # (N,) bool: the classifier's prediction is right
    focus: np.ndarray  # (N,) bool: the image's class is a focus class


def decode(digits: str, where: str) -> np.ndarray:
    """A digit string (one class id per image) → (N,) int64; one line naming `where` if it is not one."""
    if not isinstance(digits, str) or not digits.isdigit() or not digits.isascii():
        raise EmbedfmError(f"{where}: per-image predictions are not a string of class digits; run `embedfm eval` again")
    return np.frombuffer(digits.encode(), dtype=np.uint8).astype(np.int64) - ord("0")


def score(run: dict, classifier: str, focus: tuple[int, ...], where: str) -> Scored:
    rec = run.get("per_image")
    if not isinstance(rec, dict):
        raise EmbedfmError(
            f"{where}: no per-image predictions (evaluated before they were recorded); run `embedfm eval` again"
        )
    y = decode(rec.get("labels"), where)
    if classifier not in rec:
        raise EmbedfmError(f"{where}: no per-image {classifier!r} predictions")
    pred = decode(rec[classifier], where)
    ap = np.asarray(rec.get("ap_at_r"), dtype=np.float64) if isinstance(rec.get("ap_at_r"), list) else None
    if len(pred) != len(y) or ap is None or ap.shape != y.shape or not np.isfinite(ap).all():
        raise EmbedfmError(f"{where}: per-image records of different lengths; run `embedfm eval` again")
    correct, in_focus, shirt = pred == y, np.isin(y, focus), y == SHIRT
    wrong_within = in_focus & np.isin(pred, focus) & ~correct
    num = np.stack([correct, wrong_within, correct & shirt, ap], axis=1).astype(np.float64)
    den = np.stack([np.ones(len(y)), in_focus, shirt, np.ones(len(y))], axis=1).astype(np.float64)
    return Scored(int(run.get("seed", 0)), num, den, correct, in_focus)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b and c discordant pairs."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap(method: list[Scored], control: list[Scored], draws: int, seed: int) -> np.ndarray:
    """(draws, len(FIGURES)) differences of seed-averaged figures over image resamples."""
    n = method[0].num.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty((draws, len(FIGURES)))
    num = np.stack([s.num for s in method + control])  # (models, N, F)
    den = np.stack([s.den for s in method + control])
    sign = np.array([1 / len(method)] * len(method) + [-1 / len(control)] * len(control))  # (models,)
    for lo in range(0, draws, 250):
        b = min(250, draws - lo)
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(b)]).astype(np.float64)
        figs = np.einsum("bn,mnf->bmf", counts, num) / np.maximum(np.einsum("bn,mnf->bmf", counts, den), 1e-12)
        out[lo : lo + b] = np.einsum("bmf,m->bf", figs, sign)
    return out


def figure_of(s: Scored) -> np.ndarray:
    return s.num.sum(0) / np.maximum(s.den.sum(0), 1e-12)  # (F,)


def compare(method: list[Scored], control: list[Scored], draws: int = 2000, seed: int = 0) -> dict:
    """The paired statistics of `method` against `control` (lists of seeds' scored runs on the same images)."""
    if {s.num.shape[0] for s in method + control} != {method[0].num.shape[0]}:
        raise EmbedfmError("the runs were evaluated on different numbers of test images: not a paired comparison")
    by_seed = {s.seed: s for s in control}
    pairs = [(m, by_seed[m.seed]) for m in method if m.seed in by_seed]
    diffs = np.array([figure_of(m) - figure_of(c) for m, c in pairs]).reshape(len(pairs), len(FIGURES))
    boot = bootstrap(method, control, draws, seed)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    point = np.mean([figure_of(m) for m in method], 0) - np.mean([figure_of(c) for c in control], 0)
    tests = []
    for m, c in pairs:
        f = m.focus
        b, cc = int((m.correct & ~c.correct & f).sum()), int((~m.correct & c.correct & f).sum())
        tests.append({"seed": m.seed, "b": b, "c": cc, "p": mcnemar_p(b, cc)})
    out = {}
    for i, name in enumerate(FIGURES):
        better_up = name not in LOWER_IS_BETTER
        out[name] = {
            "difference": float(point[i]),
            "interval": [float(lo[i]), float(hi[i])],
            "per_seed": [float(d) for d in diffs[:, i]],
            "helps": bool(lo[i] > 0 if better_up else hi[i] < 0),  # the interval excludes zero, the good way
            "hurts": bool(hi[i] < 0 if better_up else lo[i] > 0),
        }
    out["mcnemar_focus"] = tests
    return out
