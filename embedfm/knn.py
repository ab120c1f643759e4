"""FAISS kNN classifier over embeddings.

Exact search by default (`IndexFlatIP` on unit-norm embeddings = cosine similarity, `IndexFlatL2`
for the "l2" metric); any faiss factory string can be given instead. When the faiss build has GPU
support and a GPU is visible, a copy of the index goes to this process's GPU (`gpu_device`: torch's current
CUDA device, torchrun's LOCAL_RANK); searches for more neighbours than faiss's GPU k-selection allows
(`GPU_MAX_K`) use the CPU index. Which faiss wheels give GPU support with which torch: docs/distributed.md.

Voting: majority of the k nearest labels. A tie goes, by default, to the tied class whose nearest
member ranks highest (so k=1 and "no tie" behave as expected, and the result is deterministic);
`ties="smallest"` gives it to the smallest class id instead, scikit-learn's rule, for like-for-like
comparisons. The smallest-id rule always favours T-shirt/top over Shirt, whatever the distances say;
`scripts/bench --only knn` measures how often each rule is right on the tied queries.
"""

from __future__ import annotations

import os
import sys

import faiss
import numpy as np

from embedfm.errors import EmbedfmError

METRICS = ("cosine", "l2")
TIE_RULES = ("nearest", "smallest")


# faiss's GPU k-selection handles k up to 2048 (GPU_MAX_SELECTION_K in faiss/gpu/utils/DeviceDefs.cuh, CUDA
# builds); a search for more neighbours raises there, so it runs on the CPU copy of the index instead
GPU_MAX_K = 2048
# the distributions that install the `faiss` package: two of them in one environment overwrite each other's files
FAISS_WHEELS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12", "faiss-gpu-cuvs")
_gpu_resources: dict[int, object] = {}  # one StandardGpuResources per GPU and process (it reserves scratch memory)
_said: set[str] = set()


def faiss_wheels() -> list[str]:
    """The installed distributions of the `faiss` package, as "name==version"."""
    from importlib import metadata

    found = []
    for name in FAISS_WHEELS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def gpu_status() -> tuple[bool, str]:
    """(whether kNN searches run on a GPU, one line saying why or why not). Never raises: a faiss without GPU
    support, or whose GPU query fails, means CPU search."""
    if not hasattr(faiss, "StandardGpuResources"):
        wheels = faiss_wheels()
        if len(wheels) > 1:
            return False, f"{' and '.join(wheels)} are both installed and overwrite each other's files"
        return False, f"faiss {faiss.__version__} is a CPU build ({', '.join(wheels) or 'not from a wheel'})"
    try:
        n = faiss.get_num_gpus()
    except Exception as e:  # a driver too old for the CUDA runtime faiss links, ...
        return False, f"faiss {faiss.__version__} has GPU support but cannot query GPUs ({e})"
    if n < 1:
        return False, f"faiss {faiss.__version__} has GPU support but sees no GPU"
    return True, f"faiss {faiss.__version__} with GPU support, {n} GPU(s)"


def gpu_available() -> bool:
    """Whether build_index puts its index on a GPU. Where torch sees a GPU but faiss cannot use it, says why once
    on stderr (kNN then runs on the CPU, correctly but slower)."""
    ok, why = gpu_status()
    torch = sys.modules.get("torch")
    if not ok and torch is not None and torch.cuda.is_available() and why not in _said:
        _said.add(why)
        print(f"embedfm: kNN search runs on the CPU: {why} (GPU faiss: docs/distributed.md)", file=sys.stderr)
    return ok


def gpu_device() -> int:
    """The GPU this process computes on: torch's current CUDA device once torch has started CUDA (torchrun ranks
    set theirs), else torchrun's LOCAL_RANK (0 without torchrun). Both count GPUs as faiss does (CUDA's order)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.current_device()
    return int(os.environ.get("LOCAL_RANK", "0"))


def on_gpu(index, device: int | None = None):
    """A copy of a CPU index on GPU `device` (default `gpu_device()`), or the index itself where faiss does not
    see that GPU."""
    device = gpu_device() if device is None else device
    if not 0 <= device < faiss.get_num_gpus():
        return index
    if device not in _gpu_resources:
        _gpu_resources[device] = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_gpu_resources[device], device, index)


def build_index(reference: np.ndarray, metric: str = "cosine", factory: str = "Flat", use_gpu: bool | None = None):
    """A faiss index holding `reference` (N, D) float32. Cosine expects unit-norm rows. Trained and filled on
    the CPU; with use_gpu (default: `gpu_available()`) a copy on this process's GPU (`on_gpu`)."""
    if metric not in METRICS:
        raise EmbedfmError(f"unknown kNN metric {metric!r}; choose from {', '.join(METRICS)}")
    x = np.ascontiguousarray(reference, dtype=np.float32)
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    index = faiss.index_factory(x.shape[1], factory, faiss_metric)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    return on_gpu(index) if (use_gpu if use_gpu is not None else gpu_available()) else index


def _check_tie_rule(ties: str) -> None:
    if ties not in TIE_RULES:
        raise EmbedfmError(f"unknown kNN tie rule {ties!r}; choose from {', '.join(TIE_RULES)}")


def vote(neighbor_labels: np.ndarray, num_classes: int, ties: str = "nearest") -> np.ndarray:
    """Majority vote over (Q, k) labels ordered nearest first; ties → nearest tied class, or the
    smallest tied class id with ties="smallest"."""
    _check_tie_rule(ties)
    Q, k = neighbor_labels.shape
    counts = np.zeros((Q, num_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(Q), k), neighbor_labels.ravel()), 1)
    if ties == "smallest":
        return counts.argmax(axis=1)  # argmax returns the first (smallest) of equal maxima
    # first rank at which each class appears (k if absent): the tie-breaker
    first = np.full((Q, num_classes), k, dtype=np.int64)
    ranks = np.broadcast_to(np.arange(k), (Q, k))
    np.minimum.at(first, (np.repeat(np.arange(Q), k), neighbor_labels.ravel()), ranks.ravel())
    score = counts * (k + 1) - first  # more votes wins; among equal votes, smaller first rank wins
    return score.argmax(axis=1)


class KNNClassifier:
    """fit(reference, labels) then predict(queries) — a FAISS index plus a vote."""

    def __init__(
        self, k: int = 10, metric: str = "cosine", factory: str = "Flat", num_classes: int = 10, ties: str = "nearest"
    ):
        if k < 1:
            raise EmbedfmError(f"k must be at least 1, got {k}")
        _check_tie_rule(ties)
        self.k, self.metric, self.factory, self.num_classes, self.ties = k, metric, factory, num_classes, ties

    def fit(self, reference: np.ndarray, labels: np.ndarray) -> KNNClassifier:
        if self.k > len(reference):
            raise EmbedfmError(f"k={self.k} is larger than the number of reference embeddings ({len(reference)})")
        self.cpu_index = build_index(reference, self.metric, self.factory, use_gpu=False)
        # a GPU copy where faiss can use a GPU; the CPU index stays for searches beyond GPU_MAX_K neighbours
        self.index = on_gpu(self.cpu_index) if gpu_available() else self.cpu_index
        self.labels = np.asarray(labels, dtype=np.int64)
        return self

    def kneighbors(self, queries: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), indices (Q, k)), nearest first; scores are similarities for cosine.
        One faiss call for all queries: splitting them into 1024-row calls measured 2.6× slower
        (`scripts/bench --only knn`, 2026-11-24), so faiss's own blocking is left to do its job."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = k or self.k
        return (self.index if k <= GPU_MAX_K else self.cpu_index).search(q, k)

    def predict(self, queries: np.ndarray) -> np.ndarray:
        _, idx = self.kneighbors(queries)
        return vote(self.labels[idx], self.num_classes, self.ties)
