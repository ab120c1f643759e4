"""Paired statistics (embedfm.paired, summarize --paired) and per-query AP@R, against hand-computed values,
brute-force enumerations and a coverage simulation."""

import itertools
import math

import numpy as np
import pytest

from embedfm.errors import EmbedfmError
from embedfm.paired import FIGURES, Scored, adjust, compare, decode, holm, score, sign_flip_p, two_level

FOCUS = (0, 2, 4, 6)


def test_sign_flip_p_by_hand_and_against_every_flip():
    # b=10, c=2: 2 · (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 · 79 / 4096
    assert sign_flip_p(10, 2) == pytest.approx(2 * 79 / 4096)
    assert sign_flip_p(2, 10) == sign_flip_p(10, 2)
    assert sign_flip_p(0, 0) == 1.0 and sign_flip_p(3, 3) == 1.0
    # the permutation test itself: each discordant image's difference (+1: only the control errs, -1: only the
    # method) flips sign with probability ½; p = share of the 2^(b+c) flips at least as far from 0 as observed
    for b, c in [(3, 1), (5, 0), (4, 2), (6, 1), (2, 2)]:
        observed = abs(b - c)
        flips = list(itertools.product((1, -1), repeat=b + c))
        p = sum(abs(sum(f)) >= observed for f in flips) / len(flips)
        assert sign_flip_p(b, c) == pytest.approx(p)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → monotone 0.03, 0.06, 0.06; None stays out
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]


def scored(seed: int, correct: np.ndarray, val: dict | None = None, figures: int = len(FIGURES)) -> Scored:
    """A run scored on len(correct) images with every figure the plain accuracy (den 1): for the bootstrap's
    arithmetic, which every figure shares."""
    num = np.repeat(correct.astype(np.float64)[:, None], figures, 1)
    return Scored(seed, num, np.ones_like(num), np.zeros(len(correct), bool), val or {})


def test_two_level_bootstrap_matches_an_enumeration_of_every_resample():
    """2 seed pairs × 3 images: every (seed pairs, images) resample is one of 2² · 3³ = 108 equally likely ones;
    the draws' mean and variance match the exact distribution's."""
    method = [scored(0, np.array([1, 1, 0])), scored(1, np.array([1, 0, 1]))]
    control = [scored(0, np.array([0, 1, 0])), scored(1, np.array([0, 0, 0]))]
    diff = np.array([[1, 0, 0], [1, 0, 1]], dtype=float)  # (seed pair, image): method − control, per image
    exact = [
        np.mean([diff[s, imgs].mean() for s in seeds])
        for seeds in itertools.product(range(2), repeat=2)
        for imgs in itertools.product(range(3), repeat=3)
    ]
    draws = two_level(list(zip(method, control)), draws=40_000, seed=3)[:, 0]
    # Monte Carlo error of a mean over 40,000 draws: sd / 200; of the variance: about sd² · √(2 / 40,000)
    assert draws.mean() == pytest.approx(np.mean(exact), abs=4 * np.std(exact) / 200)
    assert draws.var() == pytest.approx(np.var(exact), rel=0.05)


def simulated_study(rng, n: int, image_sd: float, seed_sd: float, noise_sd: float) -> tuple:
    """3 seeds of a method and a control scored on the same n images, and the true difference of their accuracy.

    An image is right where z + offsets > -1: z ~ N(0, 1) its difficulty (every model), w ~ N(0, image_sd) where
    the method helps or hurts (its every seed), a shift of 0.1 (the method), u ~ N(0, seed_sd) per run and
    e ~ N(0, noise_sd) per run and image. Over images and seeds the method is right with probability
    Φ(1.1 / √(1 + image_sd² + seed_sd² + noise_sd²)), the control with Φ(1 / √(1 + seed_sd² + noise_sd²))."""
    from scipy.stats import norm

    z, w = rng.normal(size=n), rng.normal(0, image_sd, n)

    def runs(offset):
        return [scored(s, z + offset + rng.normal(0, seed_sd) + rng.normal(0, noise_sd, n) > -1, figures=1)
                for s in range(3)]  # fmt: skip

    truth = norm.cdf(1.1 / math.hypot(1, image_sd, seed_sd, noise_sd)) - norm.cdf(1 / math.hypot(1, seed_sd, noise_sd))
    return runs(w + 0.1), runs(0.0), truth


@pytest.mark.slow  # a coverage simulation (seconds each); the fast suite keeps the exact enumeration of two_level above
@pytest.mark.parametrize(
    "image_sd, seed_sd, noise_sd", [(1.0, 0.0, 0.2), (0.0, 0.15, 0.5)], ids=["images-dominate", "seeds-dominate"]
)
def test_the_seed_level_interval_covers_the_true_difference(image_sd, seed_sd, noise_sd, monkeypatch):
    """500 simulated studies of 3 seeds with a known difference: the nominal 95 % two-level interval covers it in
    ≥ 93 % of them, whether the test images or the seeds dominate the uncertainty. The image-only interval does
    not when the seeds dominate (it is conditional on the trained models)."""
    import embedfm.paired

    # accuracy alone: every figure goes through the same arithmetic, column by column (a quarter of the work)
    monkeypatch.setattr(embedfm.paired, "FIGURES", FIGURES[:1])
    rng = np.random.default_rng(1)
    studies, covered, covered_images = 500, 0, 0
    for i in range(studies):
        method, control, truth = simulated_study(rng, 400, image_sd, seed_sd, noise_sd)
        res = compare(method, control, draws=100, seed=i)["accuracy"]
        covered += res["interval"][0] <= truth <= res["interval"][1]
        covered_images += res["interval_images"][0] <= truth <= res["interval_images"][1]
    assert covered / studies >= 0.93
    if seed_sd > 0:
        assert covered_images / studies < 0.8


def record(y: np.ndarray, pred: np.ndarray, ap: np.ndarray, seed: int, loss: str = "ce") -> dict:
    digits = lambda a: "".join(map(str, a.tolist()))
    return {
        "seed": seed,
        "config": {"loss": loss},
        "per_image": {"labels": digits(y), "softmax": digits(pred), "ap_at_r": ap.tolist()},
    }


def test_score_figures_by_hand():
    y = np.array([6, 6, 0, 2, 1, 4])
    pred = np.array([6, 0, 0, 2, 3, 6])  # shirt 1/2 right; focus errors within the group: 6→0, 4→6
    s = score(record(y, pred, np.full(6, 0.5), 0), "softmax", FOCUS, "test")
    figs = s.num.sum(0) / s.den.sum(0)
    assert figs.tolist() == pytest.approx([3 / 6, 2 / 5, 1 / 2, 0.5])


def test_identical_methods_give_an_interval_around_zero_and_a_better_one_helps():
    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 10, n)
    ap = rng.uniform(0, 1, n)
    # a wrong focus-class prediction is another focus class (a focus-group error), any other a neighbour
    wrong = np.where(np.isin(y, FOCUS), np.array([2, 0, 4, 0, 6, 0, 0, 0, 0, 0])[y], (y + 1) % 10)

    def noisy(p_wrong, seed):
        r = np.random.default_rng(seed)
        return np.where(r.uniform(size=n) < p_wrong, wrong, y)

    def run(p_wrong, seed, val_acc):
        rec = {**record(y, noisy(p_wrong, round(100 * p_wrong) + seed), ap, seed), "val": {"val_acc": val_acc}}
        return score(rec, "softmax", FOCUS, "run")

    ctrl = [run(0.2, s, 0.8) for s in range(3)]
    same, better = [run(0.2, 10 + s, 0.8) for s in range(3)], [run(0.1, 20 + s, 0.9) for s in range(3)]
    for s, m in enumerate(same + better):
        m.seed = s % 3  # paired with the control of the same seed
    res = compare(same, ctrl, draws=400)
    adjust([res])
    lo, hi = res["accuracy"]["interval"]
    assert lo < 0 < hi and not res["accuracy"]["helps"] and res["pairs"] == 3
    assert res["accuracy"]["interval_images"][0] < 0 < res["accuracy"]["interval_images"][1]
    res = compare(better, ctrl, draws=400)
    adjust([res])  # a family of 4: every figure of this one comparison
    assert res["accuracy"]["helps"] and res["accuracy"]["interval"][0] > 0.05 and res["accuracy"]["p_holm"] < 0.05
    assert res["focus_group_error"]["helps"] and not res["focus_group_error"]["hurts"]
    assert len(res["accuracy"]["per_seed"]) == 3 and all(d > 0.05 for d in res["accuracy"]["per_seed"])
    assert res["map_at_r"]["difference"] == pytest.approx(0) and not res["map_at_r"]["helps"]
    assert res["accuracy"]["validation"] == {"difference": pytest.approx(0.1), "per_seed": [pytest.approx(0.1)] * 3}
    assert res["focus_group_error"]["validation"] is None  # no validation focus-group error recorded
    assert all(t["b"] > t["c"] and t["p"] < 1e-6 for t in res["focus_error_test"])


def test_one_seed_pair_has_no_seed_level_interval_and_no_verdict():
    one = [scored(0, np.array([1, 1, 1, 0] * 50))], [scored(0, np.array([0, 0, 1, 0] * 50))]
    res = compare(*one, draws=100)
    adjust([res])
    assert res["pairs"] == 1 and res["accuracy"]["interval"] is None and res["accuracy"]["p"] is None
    assert res["accuracy"]["interval_images"][0] > 0.3  # the models differ, given these two
    assert not res["accuracy"]["helps"] and res["accuracy"]["p_holm"] is None


def test_records_that_are_not_digit_strings_are_one_line():
    with pytest.raises(EmbedfmError, match="not a string of class digits"):
        decode("12a", "run 'x'")
    with pytest.raises(EmbedfmError, match="no per-image predictions"):
        score({"config": {}}, "softmax", FOCUS, "run 'x'")
    bad = record(np.array([1, 2]), np.array([1, 2, 3]), np.zeros(2), 0)
    with pytest.raises(EmbedfmError, match="different lengths"):
        score(bad, "softmax", FOCUS, "run 'x'")


def test_more_than_ten_classes_are_recorded_as_id_lists_and_read_back():
    from embedfm.evaluate import digits

    assert digits(np.array([0, 9, 3])) == "093"
    assert digits(np.array([0, 12, 3])) == [0, 12, 3]
    assert decode(digits(np.array([0, 12, 3])), "x").tolist() == [0, 12, 3]
    with pytest.raises(EmbedfmError, match="not a list of class ids"):
        decode([0, -1], "run 'x'")
