"""The Python API: a trained run as an object that embeds, classifies and searches images.

    import embedfm

    m = embedfm.load("artifacts/demo/triplet")
    images, labels = m.split("test")           # uint8 (N, 28, 28), int64 (N,)
    z = m.embed(images)                         # float32 (N, D), unit norm
    m.predict(images)                           # the softmax head: int64 (N,)
    m.predict(images, classifier="knn", k=10)   # kNN over the run's train-split embeddings
    m.search(["shirt.jpg"], k=5)                # nearest items of the index `embedfm index RUN` built

A thin layer over the modules the commands use: `inference` runs the network (BN folded, channels-last, bf16 on
CUDA, flip averaging of the logits where the run was trained with it), `knn.KNNClassifier` classifies, `index`
loads and checks an index, `images.load_image` makes an image file look like Fashion-MNIST. So `m.predict(test)`
equals `embedfm eval`'s `pred_softmax`, `m.predict(test, classifier="knn")` its `pred_knn`, and `m.search` finds
what `embedfm search` finds.

Images are given as uint8 arrays (N, 28, 28) (or one (28, 28) image), or as image file paths (one path or a
list), which are converted like Fashion-MNIST (`images.load_image`: grey, inverted when the background is light,
cropped, centred, 28 × 28). A run trained on another set (`--data folder:DIR` ...) takes its own format: arrays
(N, H, W) grey or (N, 3, H, W) colour of its image size, and files brought to that size and those channels
(`images.load_image_as`, the run's --resize); its `class_names` are its set's.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from embedfm import rundir
from embedfm.errors import EmbedfmError
from embedfm.images import run_format

__all__ = ["Model", "Outputs", "SearchResult", "as_images", "load"]

CLASSIFIERS = ("softmax", "knn")
SPLITS = ("train", "val", "test")


class Outputs(NamedTuple):
    """Both heads of the network for N images."""

    logits: np.ndarray  # (N, C) float32; the mean of the image's and its mirror's where the run uses tta_flip
    embeddings: np.ndarray  # (N, D) float32, unit norm: the image's own embedding (what kNN, UMAP, search use)


class SearchResult(NamedTuple):
    """The k nearest catalogue items of Q queries, nearest first. Where an approximate index finds fewer than k,
    the missing slots hold id -1, label -1, similarity -inf, source "" and a black image."""

    similarities: np.ndarray  # (Q, k) float32, cosine similarity
    ids: np.ndarray  # (Q, k) int64, item id: the catalogue row for a built index, the given id for an added item
    labels: np.ndarray  # (Q, k) int64, class id (-1 = unknown)
    sources: np.ndarray  # (Q, k) str, e.g. "train:123" or the image file's path
    images: np.ndarray  # (Q, k, 28, 28) uint8, the catalogue images


def load(run_dir: str | os.PathLike, device=None, data_dir: str | os.PathLike | None = None) -> Model:
    """Load a trained run (a run dir, or its checkpoint.safetensors) for inference.

    `device`: None or "auto" (CUDA when available, else CPU), "cpu", "cuda" or a torch.device. `data_dir`: where
    the Fashion-MNIST files are, for `split` and for the kNN references when the run has no `embeddings.npz`
    (default: where the run was trained). A bad run fails with one `EmbedfmError` line.
    """
    from embedfm.inference import select_device
    from embedfm.run import Run

    if device is None or (isinstance(device, str) and device in ("auto", "cuda")):
        device = select_device(device or "auto")
    run = Run.open(run_dir)
    return Model(run.model(device), run, data_dir=data_dir)


def as_images(images, fmt: tuple[int, int, int] | None = None, resize_mode: str = "crop") -> np.ndarray:
    """Images as given to the API → uint8 (N, 28, 28), or (N, H, W) / (N, 3, H, W) in a run's format `fmt`
    (channels, height, width: `images.run_format`).

    Accepts a uint8 array (N, 28, 28) or (28, 28) (NumPy, a CPU torch tensor or nested lists), an image file
    path, or a list of paths (each converted like Fashion-MNIST by `images.load_image`, or to `fmt` by
    `images.load_image_as`)."""
    from embedfm.images import load_image_as

    shape = (28, 28) if fmt is None else (fmt[1:] if fmt[0] == 1 else fmt)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, (list, tuple)) and images and all(isinstance(p, (str, os.PathLike)) for p in images):
        return np.stack([load_image_as(p, fmt, resize_mode) for p in images])
    x = np.asarray(images)
    if x.ndim == len(shape):
        x = x[None]
    if x.size == 0 and x.ndim != len(shape) + 1:  # an empty list
        return np.zeros((0, *shape), dtype=np.uint8)
    if x.shape[1:] != shape:
        want = ", ".join(map(str, shape))
        raise EmbedfmError(f"expected images of shape (N, {want}) or image file paths, got an array of {x.shape}")
    if x.dtype != np.uint8:
        raise EmbedfmError(
            f"expected uint8 pixels (0-255, like Fashion-MNIST), got {x.dtype}; "
            "for floats in [0, 1] pass (x * 255).round().astype(np.uint8)"
        )
    return x


class Model:
    """A trained run's network with the run's settings; made by `embedfm.load`.

    Attributes: `run_dir`, `run` (its `run.Run`), `config` (the run's `TrainConfig`), `class_names` (C,),
    `embedding_dim` (D), `num_classes` (C), `device`, `network` (the torch module, eval mode)."""

    def __init__(self, network, run, data_dir: str | os.PathLike | None = None):
        self.run = run
        self.run_dir = run.dir
        self.network = network
        self.device = next(network.parameters()).device
        self.config = run.config
        self.embedding_dim = run.embedding_dim
        self.num_classes = run.num_classes
        self.class_names = run.class_names  # the set's (Fashion-MNIST's for its runs)
        self._format = run_format(run)  # None: Fashion-MNIST's (28, 28) framing
        self.data_dir = data_dir
        self.reference_source: str | None = None  # "embeddings.npz" or "embedded", once `reference()` ran
        self._splits = None
        self._reference: tuple[np.ndarray, np.ndarray] | None = None
        self._knn: dict[tuple[int, str], object] = {}
        self._indexes: dict[Path, object] = {}  # index dir → live.LiveIndex, opened for searching

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<embedfm.Model {self.run_dir}: {c.loss} {c.backbone}, {self.embedding_dim}-d embedding, "
            f"{self.num_classes} classes, on {self.device}>"
        )

    # ------------------------------------------------------------------------------------------ forward

    def embed(self, images) -> np.ndarray:
        """Images (N, 28, 28) uint8 or file paths → embeddings (N, D) float32, unit norm (cosine = dot product).

        The same vectors `embedfm eval` saves, `embedfm index` indexes and `embedfm search` queries with
        (`inference.embed_images`)."""
        from embedfm.inference import embed_images

        x = as_images(images, self._format, self.config.resize)
        if len(x) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return embed_images(self.network, np.ascontiguousarray(x), progress=False)

    def outputs(self, images) -> Outputs:
        """Images → Outputs(logits (N, C), embeddings (N, D)) in one pass (`inference.embed`); the logits average
        the image's and its mirror's where the run was trained with tta_flip, as `embedfm eval`'s do."""
        import torch

        from embedfm.inference import embed

        x = as_images(images, self._format, self.config.resize)
        if len(x) == 0:
            return Outputs(np.zeros((0, self.num_classes), np.float32), np.zeros((0, self.embedding_dim), np.float32))
        out = embed(
            self.network,
            torch.from_numpy(np.ascontiguousarray(x)),
            self.device,
            tta_flip=self.config.tta_flip,
            tta_shift=self.config.tta_shift,
        )
        return Outputs(out.logits.numpy(), out.emb.numpy())

    # ------------------------------------------------------------------------------------------ classify

    def predict(self, images, classifier: str = "softmax", k: int = 10, metric: str = "cosine") -> np.ndarray:
        """Images → predicted class ids (N,) int64.

        classifier="softmax": the network's head (argmax of `outputs().logits`), `embedfm eval`'s pred_softmax.
        classifier="knn": majority vote of the k nearest train-split embeddings (`reference()`), ties to the
        nearest tied class, `embedfm eval`'s pred_knn (metric "cosine" or "l2")."""
        _check_classifier(classifier)
        if classifier == "softmax":
            return self.outputs(images).logits.argmax(1).astype(np.int64)
        emb = self.embed(images)
        if len(emb) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.knn(k, metric).predict(emb)

    def predict_proba(self, images, classifier: str = "softmax", k: int = 10, metric: str = "cosine") -> np.ndarray:
        """Images → class probabilities (N, C) float32, rows summing to 1.

        softmax: the softmax of the logits. knn: the share of the k nearest train-split embeddings in each
        class (a tie between classes is broken by `predict`, not here)."""
        _check_classifier(classifier)
        if classifier == "softmax":
            logits = self.outputs(images).logits
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        emb = self.embed(images)
        if len(emb) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        knn = self.knn(k, metric)
        _, idx = knn.kneighbors(emb)  # (N, k)
        votes = knn.labels[idx]
        counts = np.stack([(votes == c).sum(axis=1) for c in range(self.num_classes)], axis=1)
        return (counts / k).astype(np.float32)

    def knn(self, k: int = 10, metric: str = "cosine"):
        """The fitted `knn.KNNClassifier` over `reference()` that `predict(..., classifier="knn")` uses (cached)."""
        from embedfm.knn import KNNClassifier

        if (k, metric) not in self._knn:
            emb, labels = self.reference()
            self._knn[k, metric] = KNNClassifier(k=k, metric=metric, num_classes=self.num_classes).fit(emb, labels)
        return self._knn[k, metric]

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The kNN references: the run's train-split embeddings (N, D) float32 and labels (N,) int64.

        Read from the run's `embeddings.npz` (written by `embedfm eval`) when it is there and newer than the
        checkpoint, else the train split is embedded once (seconds on a CPU) and kept on this object.
        `reference_source` says which."""
        if self._reference is None:
            saved = self._saved_reference()
            if saved is not None:
                self._reference, self.reference_source = saved, rundir.EMBEDDINGS
            else:
                images, labels = self.split("train")
                self._reference, self.reference_source = (self.embed(images), labels), "embedded"
        return self._reference

    def _saved_reference(self) -> tuple[np.ndarray, np.ndarray] | None:
        path = self.run_dir / rundir.EMBEDDINGS
        try:
            if path.stat().st_mtime < self.run.path.stat().st_mtime:
                return None  # evaluated before the checkpoint changed: stale
            with np.load(path, allow_pickle=False) as z:
                emb, labels = z["train_embeddings"], z["train_labels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, EmbedfmError):
            return None
        n_train = self.run.splits.get("n_train", len(emb))
        if emb.ndim != 2 or emb.shape != (n_train, self.embedding_dim) or labels.shape != (n_train,):
            return None
        return emb.astype(np.float32), labels.astype(np.int64)

    # ------------------------------------------------------------------------------------------ data

    def split(self, name: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """The run's own data split: images (N, 28, 28) uint8 (its set's shape) and labels (N,) int64.

        "train" is what the run trained on (after its --limit), "val" its validation split, "test" the test set:
        the splits `embedfm train` and `embedfm eval` use. Fails if the data differ from what the run saw."""
        if name not in SPLITS:
            raise EmbedfmError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        if self._splits is None:
            from embedfm.sampling import make_splits

            data = self.run.load_data(self.data_dir, progress=False)
            self._splits = make_splits(
                data, self.config.val_size, self.config.limit, holdout=self.config.holdout_classes
            )
        x, y = getattr(self._splits, f"{name}_x"), getattr(self._splits, f"{name}_y")
        return x.numpy(), y.numpy().astype(np.int64)

    # ------------------------------------------------------------------------------------------ search

    def search(
        self,
        images,
        index_dir: str | os.PathLike | None = None,
        k: int = 10,
        nprobe: int | None = None,
        ef_search: int | None = None,
        classes=None,
    ) -> SearchResult:
        """The k nearest catalogue items of each query image in an index built by `embedfm index`
        (default RUN/index), as `embedfm search` and `embedfm serve` find them (`live.LiveIndex.search`, with
        the items added and removed since the build). Returns a SearchResult of (Q, k) arrays.

        `nprobe` / `ef_search` override the index's saved search breadth (IVF / HNSW) for this call; `classes`
        (class ids) keeps only items of those classes."""
        from embedfm.live import LiveIndex

        d = Path(index_dir) if index_dir is not None else self.run_dir / "index"
        key = d.resolve()
        if key not in self._indexes:
            self._indexes[key] = LiveIndex.open(d)  # checked once: checksum, a child-process read, the catalogue
        live = self._indexes[key]
        if live.dim != self.embedding_dim:
            raise EmbedfmError(
                f"{d}: the index holds {live.dim}-d embeddings but this run makes {self.embedding_dim}-d ones; "
                "rebuild the index with this run"
            )
        hits = live.search(self.embed(images), k, classes=classes, nprobe=nprobe, ef_search=ef_search)
        return SearchResult(hits.similarities, hits.ids, hits.labels, hits.sources, live.images(hits.slots))


def _check_classifier(classifier: str) -> None:
    if classifier not in CLASSIFIERS:
        raise EmbedfmError(f"unknown classifier {classifier!r}; choose from {', '.join(CLASSIFIERS)}")
