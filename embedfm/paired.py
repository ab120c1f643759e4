"""Paired comparisons of methods on the same test images: `embedfm summarize --paired`.

Seed-level mean ± std hides how uncertain a difference is, and an interval over test images alone hides the seeds:
the focus group is 4,000 test images, so one model's focus-group error alone carries about ±0.44 points of
binomial error, and two seeds of one recipe differ by more than that. Two methods evaluated on the same images are
compared seed pair by seed pair (seed s of the method against seed s of the control), over the runs' per-image
records (`report.json`'s `per_image`, written by `embedfm eval`):

- `per_seed`: each seed pair's difference (method − control); `difference`: their mean.
- `interval` (the one shown, and the one ✓ rests on): a **two-level bootstrap** over the S seed pairs and the N
  test images. Each draw resamples S seed pairs with replacement, then the N test images with replacement, once,
  shared by every chosen model (every model was scored on the same images: seeds and images are crossed, so one
  image resample moves all of them together), and takes the mean over the chosen pairs of the difference on the
  resampled images. The draws' variance, less that of the image-only draws below, is the seed level; corrected
  for the few seeds (× S / (S − 1)) and added back to the image level it gives the standard error, and the 95 %
  interval is difference ± t(df) · SE with Welch–Satterthwaite degrees of freedom (S − 1 where the seeds
  dominate, about N − 1 where the images do: `t_interval`). Why not the draws' percentiles: from 3 seeds the
  bootstrap mean never leaves the range of the 3 per-seed differences, which misses the truth up to
  2 · ½³ = 25 % of the time when seed-to-seed variance dominates; the coverage of this construction is checked by
  simulation in tests/test_paired.py. `p`: the two-sided p-value of the same construction. Needs ≥ 2 seed
  pairs; with one there is no seed-level interval (None).
- `interval_images`: the image-only bootstrap: test images resampled, the trained models fixed; percentiles.
  It is conditional on these trained models and says nothing about another seed.
- `validation`: the same paired difference of the final epoch's validation accuracy and focus-group error (from
  each run's history; per pair and mean), for the figures the validation split has.
- `focus_error_test`: per seed pair, an exact paired sign-flip test of the focus-group error itself (not overall
  correctness): b = focus-class images on which only the control makes a focus-group error (calls the image
  another focus class), c = those on which only the method does; under the null each such image is equally likely
  either way, so p = min(1, 2 · P(Binomial(b + c, ½) ≤ min(b, c))) (McNemar's exact test on those images). Conditional
  on the two models.

`holm` adjusts the p-values of a family (summarize --paired: every comparison × figure of one table) for the number
of comparisons; a method "helps" on a figure where the Holm-adjusted p is below 0.05 and the difference is in the
good direction ("hurts": the other direction). Figures: accuracy, focus-group error and shirt recall of the softmax
head (`classifier`), and MAP@R of the embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from embedfm.config import SHIRT
from embedfm.errors import EmbedfmError
from embedfm.run import check_same_images

FIGURES = ("accuracy", "focus_group_error", "shirt_recall", "map_at_r")
LOWER_IS_BETTER = {"focus_group_error"}
VAL_FIGURES = {"accuracy": "val_acc", "focus_group_error": "val_focus_err"}  # figure → history key
ALPHA = 0.05
CHUNK = 250  # bootstrap draws per vectorised block: (CHUNK, N) image counts at a time


@dataclass
class Scored:
    """One run's per-image record as (numerator, denominator) pairs: a figure on a set of images is
    Σ numerator / Σ denominator over them (a mean for accuracy and MAP@R, a ratio for the others)."""

    seed: int
    num: np.ndarray  # (N, len(FIGURES))
    den: np.ndarray  # (N, len(FIGURES))
    focus_wrong: np.ndarray  # (N,) bool: a focus-class image called another focus class (a focus-group error)
    val: dict = field(default_factory=dict)  # final-epoch validation figures (VAL_FIGURES' keys), where known
    labels: np.ndarray | None = None  # (N,) the test labels in image order, to check that runs compared share them


def decode(digits: str | list, where: str) -> np.ndarray:
    """A digit string (one class id per image), or a list of class ids (a set of more than ten classes) → (N,) int64;
    one line naming `where` if it is neither."""
    if isinstance(digits, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 31 for c in digits):
            raise EmbedfmError(f"{where}: per-image predictions are not a list of class ids; run `embedfm eval` again")
        return np.asarray(digits, dtype=np.int64)
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
    val = run.get("val") if isinstance(run.get("val"), dict) else {}
    val = {k: float(val[k]) for k in VAL_FIGURES.values() if isinstance(val.get(k), (int, float)) and
           math.isfinite(val[k])}  # fmt: skip
    return Scored(int(run.get("seed", 0)), num, den, wrong_within, val, y)


def sign_flip_p(b: int, c: int) -> float:
    """Exact two-sided p of the paired sign-flip test with b and c discordant images (McNemar's exact test)."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None: not tested, left out of the family)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, out, running = len(tested), list(pvalues), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))  # monotone: never below an earlier (smaller) p's
        out[i] = running
    return out


def figure_of(s: Scored) -> np.ndarray:
    return s.num.sum(0) / np.maximum(s.den.sum(0), 1e-12)  # (F,)


def _figures_on(counts: np.ndarray, runs: list[Scored]) -> np.ndarray:
    """(B, R, F) figures of each run on each of B image resamples given as (B, N) multiplicities."""
    num = np.stack([s.num for s in runs])  # (R, N, F)
    den = np.stack([s.den for s in runs])
    return np.einsum("bn,rnf->brf", counts, num) / np.maximum(np.einsum("bn,rnf->brf", counts, den), 1e-12)


def _image_counts(rng: np.random.Generator, draws: int, n: int) -> np.ndarray:
    """(draws, n) multiplicities of the n images in `draws` resamples with replacement."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(draws)]).astype(np.float64)


def bootstrap(method: list[Scored], control: list[Scored], draws: int, seed: int) -> np.ndarray:
    """(draws, F) image-only bootstrap: differences of seed-averaged figures over image resamples, every model
    fixed (conditional on the trained models)."""
    rng = np.random.default_rng(seed)
    n = method[0].num.shape[0]
    sign = np.array([1 / len(method)] * len(method) + [-1 / len(control)] * len(control))  # (R,)
    out = np.empty((draws, len(FIGURES)))
    for lo in range(0, draws, CHUNK):
        b = min(CHUNK, draws - lo)
        out[lo : lo + b] = np.einsum("brf,r->bf", _figures_on(_image_counts(rng, b, n), method + control), sign)
    return out


def two_level(pairs: list[tuple[Scored, Scored]], draws: int, seed: int) -> np.ndarray:
    """(draws, F) two-level bootstrap: each draw resamples the seed pairs with replacement, then the test images
    once (shared by every chosen model), and takes the mean over the chosen pairs of method − control."""
    rng = np.random.default_rng(seed)
    s, n = len(pairs), pairs[0][0].num.shape[0]
    methods, controls = [m for m, _ in pairs], [c for _, c in pairs]
    out = np.empty((draws, len(FIGURES)))
    for lo in range(0, draws, CHUNK):
        b = min(CHUNK, draws - lo)
        weights = np.stack([np.bincount(rng.integers(0, s, s), minlength=s) for _ in range(b)]) / s  # (b, S)
        counts = _image_counts(rng, b, n)  # (b, N)
        diff = _figures_on(counts, methods) - _figures_on(counts, controls)  # (b, S, F)
        out[lo : lo + b] = np.einsum("bsf,bs->bf", diff, weights)
    return out


def t_interval(
    point: np.ndarray, draws: np.ndarray, image_draws: np.ndarray, pairs: int, images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, p) per figure: point ± t(df) · SE, and the matching two-sided Student-t p-value.

    The two-level draws' variance V2 holds both levels; the image-only draws' variance VI (models fixed) is the
    image level alone, so V2 − VI is the seed level, which a bootstrap over S seed pairs underestimates by
    (S − 1) / S. SE² = (V2 − VI) · S / (S − 1) + VI, with Welch–Satterthwaite degrees of freedom: S − 1 where
    the seeds dominate (3 seeds: t = 4.30, not 1.96), about N − 1 where the images do."""
    from scipy import stats

    image_var = image_draws.var(0, ddof=1)
    seed_var = np.maximum(draws.var(0, ddof=1) - image_var, 0.0) * pairs / (pairs - 1)
    var = seed_var + image_var
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(var > 0, var**2 / (seed_var**2 / (pairs - 1) + image_var**2 / (images - 1)), pairs - 1)
        t = np.abs(point) / np.sqrt(var)
    se = np.sqrt(var)
    half = stats.t.ppf(1 - ALPHA / 2, df) * se
    p = np.where(se > 0, 2 * stats.t.sf(t, df), np.where(point == 0, 1.0, 0.0))
    return point - half, point + half, p


def compare(method: list[Scored], control: list[Scored], draws: int = 2000, seed: int = 0) -> dict:
    """The paired statistics of `method` against `control` (lists of seeds' scored runs on the same images), before
    any correction for multiple comparisons (`adjust` adds it)."""
    runs = method + control
    # where a run's labels are not known, its number of images stands in for them (-1 each)
    names = [f"the method's seed {s.seed}" for s in method] + [f"the control's seed {s.seed}" for s in control]
    check_same_images(names, [s.labels if s.labels is not None else np.full(len(s.num), -1) for s in runs])
    by_seed = {s.seed: s for s in control}
    pairs = [(m, by_seed[m.seed]) for m in method if m.seed in by_seed]
    if not pairs:
        raise EmbedfmError("no seed of the method has a control run of the same seed: nothing to pair")
    diffs = np.array([figure_of(m) - figure_of(c) for m, c in pairs]).reshape(len(pairs), len(FIGURES))
    point = diffs.mean(0)
    image_draws = bootstrap([m for m, _ in pairs], [c for _, c in pairs], draws, seed)  # (draws, F)
    images = np.percentile(image_draws, [2.5, 97.5], axis=0)
    if len(pairs) >= 2:
        n = pairs[0][0].num.shape[0]
        lo, hi, p = t_interval(point, two_level(pairs, draws, seed), image_draws, len(pairs), n)
    else:  # one seed pair: no seed-to-seed variance to estimate, so no interval that covers the seeds
        lo = hi = p = [None] * len(FIGURES)
    out = {"pairs": len(pairs)}
    for i, name in enumerate(FIGURES):
        val_key = VAL_FIGURES.get(name)
        val = [m.val[val_key] - c.val[val_key] for m, c in pairs if val_key in m.val and val_key in c.val]
        out[name] = {
            "difference": float(point[i]),
            "per_seed": [float(d) for d in diffs[:, i]],
            "interval": None if lo[i] is None else [float(lo[i]), float(hi[i])],
            "p": None if p[i] is None else float(p[i]),
            "interval_images": [float(images[0, i]), float(images[1, i])],
            "validation": {"difference": float(np.mean(val)), "per_seed": val} if val else None,
        }
    out["focus_error_test"] = []
    for m, c in pairs:
        b = int((c.focus_wrong & ~m.focus_wrong).sum())  # only the control errs: the method is better there
        cc = int((m.focus_wrong & ~c.focus_wrong).sum())
        out["focus_error_test"].append({"seed": m.seed, "b": b, "c": cc, "p": sign_flip_p(b, cc)})
    return out


def adjust(comparisons: list[dict]) -> None:
    """Holm over the family of every comparison × figure given; sets `p_holm`, `helps` and `hurts` in place."""
    cells = [(c, f) for c in comparisons for f in FIGURES]
    for (c, f), p_adj in zip(cells, holm([c[f]["p"] for c, f in cells])):
        fig = c[f]
        good = fig["difference"] < 0 if f in LOWER_IS_BETTER else fig["difference"] > 0
        significant = p_adj is not None and p_adj < ALPHA
        fig.update(p_holm=p_adj, helps=significant and good, hurts=significant and not good)
