"""The `mlp` backbone's seed baseline (docs/results/study.md): CE against CE + triplet, three seeds, 10 epochs."""

from embedfm.study import Study

STUDY = Study(
    name="mlp",
    base={"backbone": "mlp", "epochs": 10},
    methods={"ce": {"loss": "ce"}, "triplet": {"loss": "triplet"}},
    labels="settings",
    contrasts=(("ce", "CE", "triplet", "CE + triplet"),),
)
