"""embedfm: metric-learning embeddings for Fashion-MNIST.

Pipeline stages, one module each: `data` (IDX files → uint8 tensors, splits, batch augmentation,
class-balanced batches), `models` (backbones + embedding/classifier heads), `objectives` (CE, CE +
triplet with distance-weighted mining), `train`, `knn` (FAISS kNN classifier), `evaluate` (metrics,
reports), `viz` (UMAP figures), `checkpoint`, `config`, `cli`.
"""

__version__ = "0.1.0"

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
