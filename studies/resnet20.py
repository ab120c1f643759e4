"""ResNet-20's seed baseline (docs/results/study.md): CE against CE + triplet, three seeds, 30 epochs with 2-pixel
random crops, and one CE + triplet seed at 60 epochs (a further point of docs/results/best.md's curve)."""

from embedfm.study import Study

STUDY = Study(
    name="resnet20",
    base={"backbone": "resnet20", "epochs": 30, "crop_pad": 2},
    methods={"ce": {"loss": "ce"}, "triplet": {"loss": "triplet"}, "triplet_e60": {"loss": "triplet", "epochs": 60}},
    only={"triplet_e60": (0,)},
    labels="settings",
    contrasts=(("ce", "CE, random batches", "triplet", "CE + triplet"),),
)
