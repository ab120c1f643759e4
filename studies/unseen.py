"""The unseen-class test of the loss comparison (docs/results/losses.md): Shirt held out of training for CE and the
two metric losses with the best mean validation kNN accuracy in studies/losses.py (validation only), three seeds
each; T-shirt/top, Pullover and Coat held out once each (seed 0) for CE and the best metric loss. Each run starts
from its method's tuned best_config.json."""

from pathlib import Path

from embedfm.config import SHIRT
from embedfm.study import Study, load

LOSSES = load(Path(__file__).with_name("losses.py"))
RANKED = list(LOSSES.ranking(LOSSES))
HOLDOUT = [*((m, (SHIRT,), (0, 1, 2)) for m in ("ce", *RANKED[:2])),
           *((m, (c,), (0,)) for c in (0, 2, 4) for m in ("ce", RANKED[0]))]  # fmt: skip

STUDY = Study(
    name="unseen",
    methods={m: LOSSES.methods[m] for m in ("ce", *RANKED[:2])},
    base={"epochs": 2},
    holdout=HOLDOUT,
    work=LOSSES.work + "/holdout",
    config_file=lambda _study, m: LOSSES.config_file(LOSSES, m),
    notes="the methods were picked by studies/losses.py's validation ranking (holdout_plan.json)",
)
