"""Catalogue indexes: `embedfm index RUN` embeds a catalogue with a run's model and saves a FAISS index.

A catalogue is the train set (default), the test set, a folder of images (PNG / JPEG / ..., labels
from the sub-folder name when it is a class name or id), or an IDX image file (labels from an
optional IDX label file). The index dir (default `RUN/index/`) holds:

    index.faiss    the FAISS index (inner product on unit-norm embeddings = cosine similarity)
    catalogue.npz  id → label (-1 = unknown), source ("train:123", a file path), 28×28 image
    index.json     what was built: factory string, run, catalogue, sizes, build time, search defaults

Index types are faiss factory strings: "Flat" (exact), "IVF<nlist>,Flat", "HNSW<M>", and compressed
"IVF<nlist>,PQ<m>" (m bytes per vector); `nprobe` / `efSearch` trade recall for speed at search time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import faiss
import numpy as np

from embedfm import CLASS_NAMES
from embedfm.data import IMAGE_SUFFIXES, load_fashion_mnist, load_image, read_idx
from embedfm.errors import DataError, EmbedfmError
from embedfm.fileio import atomic_save_npz, atomic_write_bytes, atomic_write_json
from embedfm.inference import embed_images, load_run_model

INDEX_FILE, CATALOGUE_FILE, META_FILE = "index.faiss", "catalogue.npz", "index.json"


# ----------------------------------------------------------------------------------------------
# catalogues: (images (N, 28, 28) uint8, labels (N,) int64, sources (N,) str)


def catalogue_from(source: str, data_dir: str | None = None, labels_file: str | None = None):
    if source in ("train", "test"):
        data = load_fashion_mnist(data_dir)
        images = (data.train_images if source == "train" else data.test_images).numpy()
        labels = (data.train_labels if source == "train" else data.test_labels).numpy().astype(np.int64)
        return images, labels, np.array([f"{source}:{i}" for i in range(len(labels))])
    p = Path(source)
    if p.is_dir():
        return folder_catalogue(p)
    if p.is_file():
        images = read_idx(p)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{p}: expected an IDX file of 28×28 images, got shape {images.shape}")
        labels = np.full(len(images), -1, dtype=np.int64)
        if labels_file:
            labels = read_idx(Path(labels_file)).astype(np.int64)
            if labels.shape != (len(images),):
                raise DataError(f"{labels_file}: {len(labels)} labels for {len(images)} images")
        return images.copy(), labels, np.array([f"{p.name}:{i}" for i in range(len(images))])
    raise DataError(f"catalogue {source!r}: not 'train', 'test', a folder of images or an IDX file")


def folder_catalogue(root: Path):
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    by_name = {n.lower(): i for i, n in enumerate(CLASS_NAMES)} | {str(i): i for i in range(len(CLASS_NAMES))}
    images = np.stack([load_image(f) for f in files])
    labels = np.array([by_name.get(f.parent.name.lower(), -1) for f in files], dtype=np.int64)
    return images, labels, np.array([str(f) for f in files])


# ----------------------------------------------------------------------------------------------
# faiss


def make_index(embeddings: np.ndarray, factory: str = "Flat", threads: int | None = None, seed: int = 0):
    """Build and fill a faiss index from a factory string over unit-norm (N, D) embeddings."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if threads:
        faiss.omp_set_num_threads(threads)
    index = empty_index(factory, x.shape[1], len(x))
    ivf = _ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed  # k-means initialisation: reproducible builds
    if not index.is_trained:
        index.train(x)
    index.add(x)
    return index


def empty_index(factory: str, dim: int, n: int):
    """The untrained index a factory string describes, or one line saying why it cannot hold n × dim."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise EmbedfmError(
            f"faiss cannot build index {factory!r} for {dim}-d vectors ({_first_line(e)}); "
            "try Flat, IVF1024,Flat, HNSW32 or IVF1024,PQ16"
        ) from None
    ivf = _ivf(index)
    if ivf is not None and ivf.nlist > n:
        raise EmbedfmError(f"{factory}: {ivf.nlist} lists need at least as many catalogue items (have {n})")
    return index


def _ivf(index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def set_search_params(index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """nprobe (IVF lists visited) and efSearch (HNSW candidate list) where the index has them."""
    if nprobe is not None and _ivf(index) is not None:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    if ef_search is not None and "HNSW" in type(faiss.downcast_index(index)).__name__:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", ef_search)


def index_bytes(index) -> int:
    return int(faiss.serialize_index(index).size)


# ----------------------------------------------------------------------------------------------
# the command


def build(
    run_dir: str,
    catalogue: str = "train",
    factory: str = "Flat",
    out: str | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    threads: int | None = None,
    data_dir: str | None = None,
    labels_file: str | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Embed `catalogue` with the run's model, build the index, save it. Returns index.json's dict."""
    model, ckpt = load_run_model(run_dir)  # a bad run or index type fails before minutes of embedding
    out = Path(out) if out else Path(run_dir) / "index"
    images, labels, sources = catalogue_from(catalogue, data_dir, labels_file)
    empty_index(factory, ckpt["model_args"]["embedding_dim"], len(images))
    t0 = time.perf_counter()
    emb = embed_images(model, images, progress, desc="embed catalogue")  # (N, D)
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = make_index(emb, factory, threads)
    t_build = time.perf_counter() - t0
    meta = {
        "run_dir": str(run_dir),
        "catalogue": catalogue,
        "factory": factory,
        "metric": "inner_product",
        "n": int(index.ntotal),
        "dim": int(emb.shape[1]),
        "index_bytes": index_bytes(index),
        "embed_seconds": round(t_embed, 2),
        "build_seconds": round(t_build, 2),
        "nprobe": nprobe,
        "ef_search": ef_search,
        "faiss_version": faiss.__version__,
    }
    save(out, index, images, labels, sources, meta)
    log(
        f"index {factory} of {meta['n']} items × {meta['dim']}-d ({meta['index_bytes'] / 2**20:.1f} MiB) → {out} "
        f"(embed {t_embed:.1f} s, build {t_build:.1f} s)"
    )
    return meta


def save(out: Path, index, images, labels, sources, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / INDEX_FILE, faiss.serialize_index(index).tobytes())
    atomic_save_npz(out / CATALOGUE_FILE, {"images": images, "labels": labels, "sources": sources})
    atomic_write_json(out / META_FILE, meta)  # written last: its presence means a complete index


def load(index_dir: str | Path):
    """(faiss index, catalogue dict, meta) from an index dir, or one clear error."""
    d = Path(index_dir)
    if not (d / META_FILE).is_file():
        raise EmbedfmError(f"{d}: no index here; build one with `embedfm index RUN`")
    try:
        meta = json.loads((d / META_FILE).read_text())
        index = faiss.deserialize_index(np.fromfile(d / INDEX_FILE, dtype=np.uint8))
        with np.load(d / CATALOGUE_FILE) as z:
            catalogue = {k: z[k] for k in z.files}
    except (OSError, ValueError, RuntimeError) as e:
        raise EmbedfmError(f"{d}: unreadable index ({_first_line(e)}); rebuild it with `embedfm index`") from None
    set_search_params(index, meta.get("nprobe"), meta.get("ef_search"))
    return index, catalogue, meta
