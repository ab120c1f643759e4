"""The best model embedfm trains from scratch on two CPU cores, its CE controls on the same and on random batches,
ensembles of each method's seeds, the label-issue floor, and accuracy against schedule length (docs/results/best.md).
The recipe is the resnet20 study's, set rather than chosen: ResNet-20, 30 epochs, 2-pixel random crops and flips,
AdamW with the one-cycle schedule, flip test-time augmentation. `triplet_e15` (CE + triplet at 15 epochs) is a point
of the curve, kept under curve/ and out of the tables; the curve also reads studies/resnet20.py's runs. Two runs side
by side with `--threads 1` each use two cores better than one run with two threads (scripts/bench.py --only threads).
"""

from embedfm.study import Study

RECIPE = {"backbone": "resnet20", "epochs": 30, "crop_pad": 2}
METHODS = {
    "triplet": {"loss": "triplet"},  # CE + triplet over distance-weighted sampling, class-balanced batches
    "ce-balanced": {"loss": "ce", "sampler": "balanced"},  # the same batches, CE only
    "ce": {"loss": "ce"},  # random batches: the resnet20 study's control again, with per-image records
}
CURVE = {"triplet_e15": {"loss": "triplet", "epochs": 15}}
OUT, RESNET20 = "artifacts/reference/study/best", "artifacts/reference/study/resnet20"

STUDY = Study(
    name="best", base=RECIPE, methods=METHODS, curve_methods=CURVE, only={"triplet_e15": (0,)},
    paired=True, floor=True, ensembles=tuple(METHODS),
    curve=((OUT, "triplet"), (OUT, "triplet_e15"), (RESNET20, "triplet"), (RESNET20, "triplet_e60")),
    protocol={"recipe": RECIPE, "methods": METHODS, "curve": CURVE, "seeds": [0, 1, 2],
              "random_batch_control": RESNET20},
    sections=("paired_table_marked", "floor_table", "best_targets", "best_curve", "best_beside_study", "headline"),
)  # fmt: skip
