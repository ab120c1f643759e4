"""embedfm.confusions: mutual confusion, the most-confused group against brute force, the auto:K parser, the table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from embedfm import confusions
from embedfm.errors import ConfigError

# rows true, columns predicted: classes 0 and 2 swap a lot, 1 and 3 a little, 4 is clean
CM = np.array(
    [
        [80, 0, 20, 0, 0],
        [0, 90, 0, 10, 0],
        [30, 0, 70, 0, 0],
        [0, 5, 0, 95, 0],
        [0, 0, 0, 0, 100],
    ]
)


def test_mutual_is_the_two_row_rates_added():
    m = confusions.mutual(CM)
    assert m[0, 2] == m[2, 0] == pytest.approx(0.2 + 0.3)
    assert m[1, 3] == pytest.approx(0.1 + 0.05) and m[4].sum() == 0 and np.trace(m) == 0


def test_most_confused_group_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        cm = rng.integers(0, 50, (7, 7))
        m = confusions.mutual(cm)
        for k in (2, 3, 4):
            best = max(confusions.group_score(m, g) for g in itertools.combinations(range(7), k))
            assert confusions.group_score(m, confusions.most_confused_group(cm, k)) == pytest.approx(best)
    assert confusions.most_confused_group(CM, 2) == (0, 2)
    assert confusions.most_confused_group(CM, 4) == (0, 1, 2, 3)


def test_the_greedy_path_for_many_classes_starts_from_the_top_pair(monkeypatch):
    monkeypatch.setattr(confusions, "EXHAUSTIVE", 0)
    assert confusions.most_confused_group(CM, 2) == (0, 2)
    assert set(confusions.most_confused_group(CM, 3)) >= {0, 2}


def test_group_size_out_of_range_is_one_line():
    with pytest.raises(ConfigError, match=r"--focus auto:6: K must be in 2-5 \(this set has 5 classes\)"):
        confusions.most_confused_group(CM, 6)


def test_parse_auto():
    assert confusions.parse_auto("auto:4") == 4
    assert confusions.parse_auto("Shirt,Coat") is None and confusions.parse_auto(None) is None
    with pytest.raises(ConfigError, match="expected auto:K"):
        confusions.parse_auto("auto:x")


def test_table_names_pairs_and_groups():
    text = confusions.table(CM, ("a", "b", "c", "d", "e"), ks=(2, 3))
    assert "| 0 a / 2 c | 20.00 % | 30.00 % | 50.00 % |" in text
    assert "| 2 | 0 a, 2 c | 0.5000 | --focus-classes 0,2 |" in text
    assert "4 e /" not in text  # a pair never confused is not listed
