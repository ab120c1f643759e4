"""The speed recipe's ablation (docs/results/speedrun.md): each row adds one change to the row it builds on, every
row trained over three seeds and validated every quarter epoch (validation split only: the test split is never
read). A row that only changes test-time augmentation re-scores the checkpoints of the row it builds on. One line per
(row, seed) of artifacts/reference/speedrun/ablation.jsonl (`embedfm.trajectory.ablation_line`), appended as soon as
the run ends, so a killed ablation resumes. `epochs4` is `--recipe fast` at the 4-minute budget (a test checks it)."""

from pathlib import Path

from embedfm.config import from_dict, with_recipe
from embedfm.study import Study

TARGETS, TEST_TIME, RECIPE_ROW, SHORT = (0.92, 0.93, 0.94), {"tta_flip", "tta_shift"}, "epochs4", {"epochs": 4}
ROWS = [  # (row, what it changes, the row it builds on, the settings it adds)
    ("demo", "the demo recipe: fastcnn (24, 48, 96), AdamW, one-cycle, flips, 3 epochs", None, {}),
    ("epochs4", "4 epochs: fills the 4-minute budget", "demo", {"epochs": 4}),
    ("wide", "instead: widths 32, 64, 128 at 3 epochs (the same budget)", "demo", {"widths": [32, 64, 128]}),
    ("crop", "random crops with 1-pixel padding", "epochs4", {"crop_pad": 1}),
    ("shift_tta", "test-time views shifted 1 pixel up, down, left, right", "epochs4", {"tta_shift": 1}),
]
SETTINGS: dict[str, dict] = {}
for name, _, on, adds in ROWS:
    SETTINGS[name] = {**(SETTINGS[on] if on else {}), **adds}
OUT = Path("artifacts/reference/speedrun")


def train(study, run, _flags):
    from embedfm.trajectory import ablation_done, ablation_line

    name, what, on, adds = next(r for r in ROWS if r[0] == run.method)
    if (name, run.seed) in ablation_done(OUT / "ablation.jsonl"):
        return
    row = {"row": name, "change": what, "on": on, "settings": SETTINGS[name]}
    rescore = on if on is not None and set(adds) <= TEST_TIME else None
    ablation_line(OUT / "ablation.jsonl", row, run.seed, config(study, run), Path(study.work), rescore, TARGETS)


def config(_study, run):
    return from_dict(with_recipe({**SETTINGS[run.method], "seed": run.seed}))


STUDY = Study(name="speedrun", methods=SETTINGS, out=str(OUT), work="artifacts/speedrun/ablation", train=train,
              resolve=lambda s, r: vars(config(s, r)),
              sections=("speedrun_ablation", "speedrun_race", "speedrun_targets"))  # fmt: skip
