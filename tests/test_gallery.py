"""embedfm.gallery: the most-confused pairs of focus classes and their strips of images."""

import numpy as np
from PIL import Image

from embedfm.explore_page import SIDE
from embedfm.gallery import confused_pairs, most_confused

FOCUS = (0, 2, 4, 6)


def test_most_confused_gallery(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 600)
    preds = {n: np.where(rng.random(600) < 0.6, labels, rng.integers(0, 10, 600)) for n in ("ce", "triplet")}
    images = rng.integers(0, 256, (600, SIDE, SIDE), dtype=np.uint8)
    pairs = confused_pairs(labels, preds, FOCUS)
    assert len(pairs) == len(FOCUS) * (len(FOCUS) - 1)  # every ordered pair of distinct focus classes
    totals = [sum(len(v) for v in ids.values()) for _, _, ids in pairs]
    assert totals == sorted(totals, reverse=True)  # most confused first
    for a, b, ids in pairs:
        for n, p in preds.items():
            assert len(ids[n]) == ((labels == a) & (p == b)).sum()  # = the confusion-matrix entry
    path = most_confused(images, labels, preds, FOCUS, tmp_path / "most_confused.png", per_pair=6)
    w, h = Image.open(path).size
    assert path.stat().st_size > 20_000 and h > w / 2  # 12 rows of strips
