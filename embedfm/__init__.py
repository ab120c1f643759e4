"""embedfm: metric-learning embeddings for Fashion-MNIST.

One module per stage; imports point one way: `cli` → `commands` → `train` / `evaluate` / `viz` / `tune` /
`index` / `search` / `summarize` → `inference`, `checkpoint`, `rundir`, `fileio` → `data`, `models`,
`objectives`, `knn`, `metrics`, `config`. See docs/design.md for what each module owns.
"""

__version__ = "0.1.0"

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
