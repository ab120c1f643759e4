"""The speed run's second ablation, in E (the demo recipe's epoch time, timed by each invocation before its first row:
`trajectory.unit_line`): rows building on rows at 10 E and 4 E, three seeds, validation only, a quarter-epoch
trajectory each; one line per (row, seed) of artifacts/reference/speedrun2/ablation.jsonl, appended as it ends."""

import os
from pathlib import Path

from embedfm.config import from_dict
from embedfm.study import Study

TARGETS, TEST_TIME, OUT = (0.93, 0.94, 0.945), {"tta_flip", "tta_shift"}, Path("artifacts/reference/speedrun2")
ROWS = [  # (row, what it changes, the row it builds on, the settings it adds)
    ("base10", "the demo recipe (fastcnn 24/48/96, AdamW, one-cycle, flips) for 10 epochs", None, {"epochs": 10}),
    ("ls02", "label smoothing 0.2", "base10", {"label_smoothing": 0.2}),
    ("altflip", "alternating flips", "ls02", {"flip_schedule": "alternate"}),
    ("lookahead", "lookahead 0.77, BN momentum 0.4 (airbench)", "altflip", {"lookahead": 0.77, "bn_momentum": 0.4}),
    ("whiten", "patch-whitening stem (frozen) and dirac init", "lookahead", {"whiten": True, "dirac": True}),
    ("poolfirst", "max-pool before BN", "whiten", {"pool_first": True}),
    ("sgd", "Nesterov SGD, lr 0.1, L2 5e-4", "poolfirst", {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4}),
    ("batch512", "batch 512", "poolfirst", {"batch_size": 512}),
    ("floor", "final lr 1/50 of the peak", "poolfirst", {"lr_floor": 0.02}),
    ("crop_tta", "2-pixel crops, and test-time views shifted 1 pixel", "poolfirst", {"crop_pad": 2, "tta_shift": 1}),
    ("wide", "widths 32/64/128, 6 epochs (about the same time)", "poolfirst", {"widths": [32, 64, 128], "epochs": 6}),
    ("auto_bf16", "--precision auto (bf16 with AMX / AVX-512 BF16)", "poolfirst", {"precision": "auto"}),
    ("best4", "the 10 E row's settings at 4 epochs (the 4 E budget)", "poolfirst", {"epochs": 4}),
]
SETTINGS: dict[str, dict] = {}
for name, _, on, adds in ROWS:
    SETTINGS[name] = {**(SETTINGS[on] if on else {}), **adds}


def train(study, run, _flags):
    from embedfm.trajectory import ablation_done, ablation_line, unit_line

    name, what, on, adds = next(r for r in ROWS if r[0] == run.method)
    if (name, run.seed) in ablation_done(OUT / "ablation.jsonl"):
        return
    unit_line(OUT / "ablation.jsonl", os.getpid())  # E of this invocation, once
    row = {"row": name, "change": what, "on": on, "settings": SETTINGS[name]}
    rescore = on if on is not None and set(adds) <= TEST_TIME else None
    ablation_line(OUT / "ablation.jsonl", row, run.seed, config(study, run), Path(study.work), rescore, TARGETS)


def config(_study, run):
    return from_dict({**SETTINGS[run.method], "seed": run.seed})


STUDY = Study(name="speedrun2", methods=SETTINGS, out=str(OUT), work="artifacts/speedrun2/ablation", train=train,
              resolve=lambda s, r: vars(config(s, r)))  # fmt: skip
