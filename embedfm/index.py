"""Catalogue indexes: `embedfm index RUN` embeds a catalogue with a run's model and saves a FAISS index.

A catalogue is the train set (default), the test set, a folder of images (PNG / JPEG / ..., labels
from the sub-folder name when it is a class name or id), or an IDX image file (labels from an
optional IDX label file). The index dir (default `RUN/index/`) holds:

    index.faiss    the FAISS index (inner product on unit-norm embeddings = cosine similarity)
    catalogue.npz  id → label (-1 = unknown), source ("train:123", a file path), image in the run's format
                   (28×28 grey for Fashion-MNIST; others' (H, W) or (3, H, W), recorded as index.json's image_shape)
    index.json     what was built: factory string, run, catalogue, sizes, build time, search defaults
    items-*.log    items added and removed since (`live.py`), folded into `index-*.faiss` / `catalogue-*.npz`
                   snapshots that index.json then names

Index types are faiss factory strings: "Flat" (exact), "IVF<nlist>,Flat", "HNSW<M>", and compressed
"IVF<nlist>,PQ<m>" (m bytes per vector); `nprobe` / `efSearch` trade recall for speed at search time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from embedfm import CLASS_NAMES, rundir
from embedfm.data import read_idx
from embedfm.errors import DataError, EmbedfmError
from embedfm.fileio import atomic_save_npz, atomic_write_bytes, atomic_write_json, read_json, read_npz
from embedfm.images import IMAGE_SUFFIXES, load_image_as, run_format
from embedfm.inference import embed_images, select_device
from embedfm.run import Run

INDEX_FILE, CATALOGUE_FILE, META_FILE = "index.faiss", "catalogue.npz", "index.json"
# the files of one state of an index dir, as index.json names them (never a path: a hostile index.json cannot point
# outside its dir): a build's or a snapshot's, and the log of what changed since
NAMES = {
    "index_file": re.compile(r"^index(-\d{1,9}-[0-9a-f]{8})?\.faiss$"),
    "catalogue_file": re.compile(r"^catalogue(-\d{1,9}-[0-9a-f]{8})?\.npz$"),
    "log": re.compile(r"^items-\d{1,9}-[0-9a-f]{8}\.log$"),
}


def state_names(generation: int, snapshot: bool) -> dict:
    """Fresh file names for state `generation` of an index dir: a build keeps index.faiss / catalogue.npz, a
    snapshot gets its own pair; each state starts an empty log of its own, so a stale log is never replayed."""
    tag = f"{generation}-{secrets.token_hex(4)}"
    files = (f"index-{tag}.faiss", f"catalogue-{tag}.npz") if snapshot else (INDEX_FILE, CATALOGUE_FILE)
    return {"generation": generation, "index_file": files[0], "catalogue_file": files[1], "log": f"items-{tag}.log"}


def remove_stale(d: Path, meta: dict) -> None:
    """Delete the state files index.json does not name (an older state, or a snapshot a crash left unfinished).
    Only the dir's lock holder calls this."""
    keep = {meta.get(key, default) for key, default in FILE_DEFAULTS.items()}
    for f in d.iterdir():
        if f.name not in keep and any(rx.match(f.name) for rx in NAMES.values()):
            f.unlink(missing_ok=True)


FILE_DEFAULTS = {"index_file": INDEX_FILE, "catalogue_file": CATALOGUE_FILE, "log": None}


# ----------------------------------------------------------------------------------------------
# catalogues: (images (N, 28, 28) uint8 (the run's format: (N, H, W) or (N, 3, H, W)), labels (N,) int64,
# sources (N,) str)

FASHION_SHAPE = (28, 28)


def image_shape(meta: dict) -> tuple[int, ...]:
    """The shape of one catalogue image of an index (index.json's image_shape; 28 × 28 for indexes without one)."""
    shape = meta.get("image_shape", list(FASHION_SHAPE))
    return tuple(shape) if isinstance(shape, list) else FASHION_SHAPE


def item_shape(run: Run | None) -> tuple[int, ...]:
    """The shape of one image of a run's format as stored: (H, W) grey, (3, H, W) colour."""
    fmt = run_format(run) if run is not None else None
    if fmt is None:
        return FASHION_SHAPE
    return fmt[1:] if fmt[0] == 1 else fmt


def catalogue_from(source: str, data_dir: str | None = None, labels_file: str | None = None, run: Run | None = None):
    """A catalogue in `run`'s image format (Fashion-MNIST's where no run is given)."""
    if source in ("train", "test"):
        if run is None:
            from embedfm.data import load_fashion_mnist

            data = load_fashion_mnist(data_dir)
        else:
            data = run.load_data(data_dir, progress=False)
        images = (data.train_images if source == "train" else data.test_images).numpy()
        labels = (data.train_labels if source == "train" else data.test_labels).numpy().astype(np.int64)
        return images, labels, np.array([f"{source}:{i}" for i in range(len(labels))])
    p = Path(source)
    if p.is_dir():
        return folder_catalogue(p, run)
    if p.is_file():
        shape = item_shape(run)
        images = read_idx(p, None)
        if images.shape[1:] != shape:
            want = "×".join(map(str, shape))
            raise DataError(f"{p}: expected an IDX file of {want} images (the run's), got shape {images.shape}")
        labels = np.full(len(images), -1, dtype=np.int64)
        if labels_file:
            labels = read_idx(Path(labels_file)).astype(np.int64)
            if labels.shape != (len(images),):
                raise DataError(f"{labels_file}: {len(labels)} labels for {len(images)} images")
        return images.copy(), labels, np.array([f"{p.name}:{i}" for i in range(len(images))])
    raise DataError(f"catalogue {source!r}: not 'train', 'test', a folder of images or an IDX file")


def folder_catalogue(root: Path, run: Run | None = None):
    """The images under `root` in `run`'s format (`images.load_image_as`), labelled by their folder's name where it
    is one of the run's class names or ids (Fashion-MNIST's without a run)."""
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise DataError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    names = run.class_names if run is not None else CLASS_NAMES
    by_name = {str(i): i for i in range(len(names))} | {n.lower(): i for i, n in enumerate(names)}
    fmt, mode = (run_format(run), run.config.resize) if run is not None else (None, "crop")
    images = np.stack([load_image_as(f, fmt, mode) for f in files])
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
    run = Run.open(run_dir)  # a bad run or index type fails before minutes of embedding
    model = run.model(select_device("auto"))
    out = Path(out) if out else Path(run_dir) / "index"
    images, labels, sources = catalogue_from(catalogue, data_dir, labels_file, run)
    empty_index(factory, run.embedding_dim, len(images))
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
    if images.shape[1:] != FASHION_SHAPE:  # 28 × 28 grey indexes as ever; others say what their images are
        meta["image_shape"] = list(images.shape[1:])
    with rundir.lock(out, "index", log):  # one writer per index dir
        meta.update(state_names(_generation(out) + 1, snapshot=False))
        save(out, index, {"images": images, "labels": labels, "sources": sources}, meta)
        remove_stale(out, meta)  # the previous index's snapshots and log: no longer this dir's state
    log(
        f"index {factory} of {meta['n']} items × {meta['dim']}-d ({meta['index_bytes'] / 2**20:.1f} MiB) → {out} "
        f"(embed {t_embed:.1f} s, build {t_build:.1f} s)"
    )
    return meta


def save(out: Path, index, catalogue: dict, meta: dict) -> dict:
    """Write an index dir's state: the index and catalogue files `meta` names, then index.json. Returns the meta
    written. `catalogue`: images, labels, sources and, once items were added or removed, ids and alive."""
    out.mkdir(parents=True, exist_ok=True)
    blob = faiss.serialize_index(index).tobytes()
    atomic_write_bytes(out / meta.get("index_file", INDEX_FILE), blob)
    atomic_save_npz(out / meta.get("catalogue_file", CATALOGUE_FILE), catalogue)
    # written last: its presence means a complete index; the checksum ties the index file to it, and replacing it
    # is the one step that moves the dir from one state to the next
    meta = {**meta, "index_sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write_json(out / META_FILE, meta)
    return meta


def _generation(d: Path) -> int:
    try:
        g = read_json(d / META_FILE).get("generation", 0)
        return g if isinstance(g, int) and 0 <= g < 10**8 else 0
    except (EmbedfmError, AttributeError):
        return 0


def load(index_dir: str | Path):
    """(faiss index, catalogue dict, meta) from an index dir, or one clear error.

    Every file is checked before it is trusted: index.json's fields and types; index.faiss against the SHA-256
    that index.json records, then read once in a child process (faiss parses native data: a damaged or hostile
    file may crash the reader, and only the child would go down); catalogue.npz without pickles, its arrays'
    dtypes and shapes, and sizes that agree with the index.
    """
    d = Path(index_dir)
    if not (d / META_FILE).is_file():
        raise EmbedfmError(f"{d}: no index here; build one with `embedfm index RUN`")
    for attempt in range(3):
        meta = _read_meta(d)
        index_file = d / meta.get("index_file", INDEX_FILE)
        try:
            blob = index_file.read_bytes()
            break
        except FileNotFoundError:  # a service folded its log into a new snapshot between the two reads: again
            if attempt == 2 or _read_meta(d) == meta:
                raise EmbedfmError(f"{index_file}: missing; rebuild it with `embedfm index`") from None
        except OSError as e:
            why = e.strerror or e
            raise EmbedfmError(f"{index_file}: unreadable ({why}); rebuild it with `embedfm index`") from None
    if hashlib.sha256(blob).hexdigest() != meta["index_sha256"]:
        raise EmbedfmError(f"{index_file}: does not match its index.json (damaged or replaced); rebuild it "
                           "with `embedfm index`")  # fmt: skip
    _probe_in_child(index_file)
    try:
        index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
    except RuntimeError as e:
        raise EmbedfmError(f"{d}: unreadable index ({_first_line(e)}); rebuild it with `embedfm index`") from None
    catalogue = _read_catalogue(d / meta.get("catalogue_file", CATALOGUE_FILE), image_shape(meta))
    if index.ntotal != meta["n"] or index.d != meta["dim"] or len(catalogue["labels"]) != index.ntotal:
        sizes = f"index {index.ntotal} × {index.d}, index.json {meta['n']} × {meta['dim']}"
        raise EmbedfmError(f"{d}: {sizes} and catalogue {len(catalogue['labels'])} items disagree; rebuild it")
    set_search_params(index, meta.get("nprobe"), meta.get("ef_search"))
    return index, catalogue, meta


META_FIELDS = {"factory": str, "n": int, "dim": int, "index_sha256": str}


def _read_meta(d: Path) -> dict:
    meta = read_json(d / META_FILE, "rebuild it with `embedfm index`")
    if not isinstance(meta, dict):
        raise EmbedfmError(f"{d / META_FILE}: not an embedfm index description; rebuild it with `embedfm index`")
    if "index_sha256" not in meta and "n" in meta:
        raise EmbedfmError(f"{d}: built by an older embedfm (no checksum); rebuild it with `embedfm index`")
    for key, kind in META_FIELDS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise EmbedfmError(f"{d / META_FILE}: field {key!r} missing or not a {kind.__name__}; rebuild it with "
                               "`embedfm index`")  # fmt: skip
    for key in ("nprobe", "ef_search"):
        v = meta.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1_000_000):
            raise EmbedfmError(f"{d / META_FILE}: {key} {v!r} is not a positive int")
    if not (0 < meta["n"] <= 10**9 and 0 < meta["dim"] <= 4096):
        raise EmbedfmError(f"{d / META_FILE}: implausible size {meta['n']} × {meta['dim']}")
    for key, rx in NAMES.items():
        if key in meta and not (isinstance(meta[key], str) and rx.match(meta[key])):
            raise EmbedfmError(f"{d / META_FILE}: {key} {str(meta[key])[:80]!r} is not a file name of an index dir")
    shape = meta.get("image_shape", list(FASHION_SHAPE))
    if not (isinstance(shape, list) and len(shape) in (2, 3) and all(type(v) is int and 1 <= v <= 4096 for v in shape)
            and (len(shape) == 2 or shape[0] == 3)):  # fmt: skip
        raise EmbedfmError(f"{d / META_FILE}: image_shape {str(shape)[:40]} is not (H, W) or (3, H, W)")
    g = meta.get("generation", 0)
    if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < 10**9:
        raise EmbedfmError(f"{d / META_FILE}: generation {str(g)[:40]!r} is not a non-negative int")
    return meta


def _probe_in_child(path: Path, timeout: float = 120.0) -> None:
    """Deserialize the index once in a child process: a file faiss cannot parse safely takes the child down,
    not this process, and costs one line."""
    code = "import sys, faiss; faiss.read_index(sys.argv[1])"
    try:
        r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EmbedfmError(f"{path}: reading the index did not finish in {timeout:.0f} s; rebuild it") from None
    if r.returncode != 0:
        why = _first_line(RuntimeError(r.stderr)) if r.stderr.strip() else f"reader exited with {r.returncode}"
        raise EmbedfmError(f"{path}: unreadable index ({why}); rebuild it with `embedfm index`")


def _read_catalogue(path: Path, shape: tuple[int, ...] = FASHION_SHAPE) -> dict:
    """images, labels, sources and the ids and alive mask of every slot of the index (a built index's ids are its
    rows, all alive; items added and removed since change that: `live.py`)."""
    cat = read_npz(path, ("images", "labels", "sources"), "rebuild it with `embedfm index`", optional=("ids", "alive"))
    images, labels, sources = cat["images"], cat["labels"], cat["sources"]
    n = len(labels)
    ids = cat.setdefault("ids", np.arange(n, dtype=np.int64))
    alive = cat.setdefault("alive", np.ones(n, dtype=bool))
    ok = (images.dtype == np.uint8 and images.shape[1:] == shape
          and labels.ndim == 1 and labels.dtype.kind == "i" and sources.ndim == 1 and sources.dtype.kind in "U"
          and ids.ndim == 1 and ids.dtype == np.int64 and alive.ndim == 1 and alive.dtype == np.bool_
          and len(images) == n == len(sources) == len(ids) == len(alive))  # fmt: skip
    if ok and n:
        live_ids = ids[alive]
        ok = bool(ids.min() >= 0) and len(np.unique(live_ids)) == len(live_ids)
    if not ok:
        raise EmbedfmError(f"{path}: catalogue arrays have the wrong types or shapes; rebuild it with `embedfm index`")
    cat["labels"] = labels.astype(np.int64, copy=False)
    return cat
