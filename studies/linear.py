"""The `linear` backbone's seed baseline (docs/results/study.md): CE against CE + triplet, three seeds, 10 epochs,
and one CE seed without label smoothing, flips or flip test-time augmentation (what those add to a linear model)."""

from embedfm.study import Study

STUDY = Study(
    name="linear",
    base={"backbone": "linear", "epochs": 10},
    methods={
        "ce": {"loss": "ce"},
        "ce-plain": {"loss": "ce", "label_smoothing": 0.0, "flip": False, "tta_flip": False},
        "triplet": {"loss": "triplet"},
    },
    only={"ce-plain": (0,)},
    labels="settings",
    contrasts=(("ce", "CE", "triplet", "CE + triplet"),),
)
