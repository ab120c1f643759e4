"""embedfm: metric-learning embeddings for Fashion-MNIST.

One module per stage; imports point one way: `cli` → `commands` → `train` / `evaluate` / `viz` / `tune` /
`index` / `search` / `summarize` → `inference`, `checkpoint`, `rundir`, `fileio` → `data`, `models`,
`objectives`, `knn`, `metrics`, `config`. See docs/design.md for what each module owns. The Python API
(`embedfm.load`, `api.py`; docs/api.md) and `export` sit beside the commands, over `inference`, `knn` and `index`.
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


def __getattr__(name: str):
    """`embedfm.load` and `embedfm.Model` (the Python API, `embedfm/api.py`), imported on first use so that
    `import embedfm` stays cheap and torch-free."""
    if name in ("load", "Model"):
        from embedfm import api

        return getattr(api, name)
    raise AttributeError(f"module 'embedfm' has no attribute {name!r}")
