"""The default backbone's seed baselines (docs/results/study.md): CE against CE + triplet over three seeds at the
3-epoch default budget, the balanced-batch CE control that separates the sampler from the loss, and two CE + triplet
variants (triplet mining restricted to the focus classes; the margin loss, one seed). Rows are labelled by the
settings that tell them apart."""

from embedfm.study import Study

STUDY = Study(
    name="fastcnn",
    base={"backbone": "fastcnn", "epochs": 3},
    methods={
        "ce": {"loss": "ce"},
        "ce-balanced": {"loss": "ce", "sampler": "balanced"},
        "triplet": {"loss": "triplet"},
        "triplet-focusmine": {"loss": "triplet", "mining": "focus"},
        "triplet-margin": {"loss": "triplet", "metric_loss": "margin"},
    },
    only={"triplet-margin": (0,)},
    labels="settings",
    contrasts=(
        ("ce", "CE, random batches", "triplet", "CE + triplet"),
        ("ce", "CE, random batches", "ce-balanced", "CE, balanced batches"),
        ("ce-balanced", "CE, balanced batches", "triplet", "CE + triplet"),
        ("ce-balanced", "CE, balanced batches", "triplet-focusmine", "CE + triplet, focus-only mining"),
    ),
)
