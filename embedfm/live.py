"""Live indexes: an index dir searched while items are added and removed, without a rebuild, and the search itself.

`LiveIndex` is the one search path: `embedfm search`, `embedfm.load(run).search` and `embedfm serve` all call
`LiveIndex.search`. An index dir built by `embedfm index` (`index.py`) is its starting state; on top of it:

    items-<tag>.log   an append-only log of adds (ids, labels, sources, images, embeddings) and removals, one
                      checksummed record per call, fsynced before the call returns: an acknowledged change
                      survives a crash or a `kill -9`
    index-<tag>.faiss, catalogue-<tag>.npz
                      snapshots: the log folded into a new index and catalogue, written atomically, then
                      index.json is replaced to name them and a fresh, empty log; the old state's files go last

A crash at any point leaves index.json naming a complete state and the log of what changed since; opening the
dir replays that log (a record torn by the crash was never acknowledged and is dropped). The index keeps one slot
per item ever added: a removed item's slot stays in the faiss index, masked out of every search (an HNSW graph
cannot drop nodes); `embedfm index RUN` rebuilds without them.

Readers never see a half-applied change: searches hold a shared lock, adds and removals an exclusive one for the
moment they touch the index. One writer per index dir, as for runs: a writable LiveIndex holds `rundir.lock`.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from embedfm import rundir
from embedfm.errors import EmbedfmError, StorageError
from embedfm.index import META_FILE, load, remove_stale, save, state_names
from embedfm.knn import vote

MAX_K = 1000  # neighbours one query may ask for
FOLD_RECORDS = 10_000  # log records (calls) before the log is folded into a snapshot
FOLD_BYTES = 256 << 20  # or log bytes
RECORD = struct.Struct("<4sII")  # tag, payload length, CRC-32 of the payload
TAG = b"EFM1"
MAX_RECORD = 1 << 30


class Hits(NamedTuple):
    """The k nearest live items of Q queries, nearest first; a slot an approximate index left empty holds
    id -1, label -1, similarity -inf, source ""."""

    similarities: np.ndarray  # (Q, k) float32, cosine similarity
    ids: np.ndarray  # (Q, k) int64, item ids
    labels: np.ndarray  # (Q, k) int64, class id (-1 = unknown)
    sources: np.ndarray  # (Q, k) str
    slots: np.ndarray  # (Q, k) int64, rows of the catalogue arrays (-1 = none): `LiveIndex.images`


class RWLock:
    """Many readers or one writer; a waiting writer holds back new readers, so a stream of searches cannot starve
    an add."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Grow:
    """A numpy array that grows by doubling: appending one item to a million is not a million-row copy."""

    def __init__(self, a: np.ndarray):
        self.a, self.n = a, len(a)

    def append(self, x: np.ndarray) -> None:
        if self.n + len(x) > len(self.a):
            bigger = np.zeros((max(2 * len(self.a), self.n + len(x), 16), *self.a.shape[1:]), dtype=self.a.dtype)
            bigger[: self.n] = self.a[: self.n]
            self.a = bigger
        self.a[self.n : self.n + len(x)] = x
        self.n += len(x)

    @property
    def view(self) -> np.ndarray:
        return self.a[: self.n]


class LiveIndex:
    """An index dir opened for searching (`open(d)`) or for searching and changing (`open(d, writable=True)`)."""

    def __init__(self, d: Path, index, cat: dict, meta: dict):
        self.dir, self.index, self.meta = d, index, meta
        self.dim = int(index.d)
        self.ids, self.labels = _Grow(cat["ids"].astype(np.int64)), _Grow(cat["labels"].astype(np.int64))
        self.alive, self.image_rows = _Grow(cat["alive"].astype(bool)), _Grow(cat["images"])
        self.image_shape = tuple(cat["images"].shape[1:])  # (28, 28) for Fashion-MNIST; (H, W) or (3, H, W)
        self.sources = [str(s) for s in cat["sources"]]
        self.slot_of = {int(i): s for s, i in enumerate(self.ids.view) if self.alive.a[s]}
        self.nprobe, self.ef_search = _search_params(index)
        self.lock = RWLock()
        self._writer = threading.Lock()  # one change at a time: log order = apply order
        self._dir_lock = None
        self._log = None
        self._log_records = self._log_bytes = 0
        self._selector = None  # (bitmap, IDSelectorBitmap) of the live slots, when some are removed
        self._refresh_selector()

    # ------------------------------------------------------------------------------------------ open / close

    @classmethod
    def open(cls, index_dir: str | Path, writable: bool = False, command: str = "index", log=print) -> LiveIndex:
        """The index dir's current state: its snapshot (checked by `index.load`) plus its log replayed.

        writable: take the dir's lock (a second writer fails at once, naming the first), cut a record a crash
        left half-written, drop files of unfinished snapshots, and open the log for appending."""
        d = Path(index_dir)
        lock = rundir.lock(d, command, log) if writable else nullcontext()
        if writable:
            if not (d / META_FILE).is_file():  # rundir.lock would make the dir: fail first
                raise EmbedfmError(f"{d}: no index here; build one with `embedfm index RUN`")
            lock.__enter__()
        try:
            index, cat, meta = load(d)
            live = cls(d, index, cat, meta)
            good = live._replay()
            if writable:
                live._dir_lock = lock
                live._open_log(good)
        except BaseException:
            if writable:
                lock.__exit__(None, None, None)
            raise
        return live

    def close(self, fold: bool = True) -> None:
        """Fold the log into a snapshot (when it holds anything) and release the dir."""
        if self._dir_lock is None:
            return
        try:
            if fold and self._log_records:
                self.snapshot()
        finally:
            if self._log is not None:
                os.close(self._log)
                self._log = None
            lock, self._dir_lock = self._dir_lock, None
            lock.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------------ read

    @property
    def size(self) -> int:
        return len(self.slot_of)

    def info(self) -> dict:
        with self.lock.read():
            return {
                "dir": str(self.dir),
                "factory": self.meta["factory"],
                "dim": self.dim,
                "size": self.size,
                "slots": int(self.index.ntotal),
                "generation": self.meta.get("generation", 0),
                "log_records": self._log_records,
                "nprobe": self.nprobe,
                "ef_search": self.ef_search,
            }

    def search(
        self,
        embeddings: np.ndarray,
        k: int = 10,
        classes=None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> Hits:
        """The k nearest live items of each (Q, D) unit-norm embedding, optionally only items of `classes`."""
        k = _check_int("k", k, 1, MAX_K)
        for name, v in (("nprobe", nprobe), ("ef_search", ef_search)):
            if v is not None:
                _check_int(name, v, 1, 1_000_000)
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise EmbedfmError(
                f"the index holds {self.dim}-d embeddings but the queries are {x.shape[1:]}-d; rebuild the index "
                "with this run"
            )
        with self.lock.read():
            if k > self.size:
                raise EmbedfmError(f"k must be in 1..{self.size} (items in the index), got {k}")
            selector = self._selector
            if classes is not None:
                wanted = np.isin(self.labels.view, np.asarray(list(classes), dtype=np.int64)) & self.alive.view
                selector = _bitmap_selector(wanted)
            params = self._params(selector, nprobe, ef_search)
            sims, slots = _faiss_search(self.index, x, k, params)
            found = slots >= 0
            safe = np.where(found, slots, 0)
            sources = [[self.sources[s] if s >= 0 else "" for s in row] for row in slots.tolist()]
            return Hits(
                similarities=np.where(found, sims, -np.inf).astype(np.float32),
                ids=np.where(found, self.ids.view[safe], -1).astype(np.int64),
                labels=np.where(found, self.labels.view[safe], -1).astype(np.int64),
                sources=np.array(sources, dtype=str).reshape(slots.shape),
                slots=np.where(found, slots, -1).astype(np.int64),
            )

    def images(self, slots: np.ndarray) -> np.ndarray:
        """The catalogue images of `slots` (..., *image_shape) uint8; black where a slot is -1."""
        with self.lock.read():
            safe = np.where(slots >= 0, slots, 0)
            mask = (slots >= 0).reshape(slots.shape + (1,) * len(self.image_shape))
            return np.where(mask, self.image_rows.view[safe], 0).astype(np.uint8)

    def item(self, item_id: int) -> tuple[np.ndarray, int, str]:
        """(image, label, source) of a live item, or one line saying there is none."""
        with self.lock.read():
            slot = self.slot_of.get(int(item_id))
            if slot is None:
                raise UnknownItem(f"no item with id {item_id} in the index")
            return self.image_rows.a[slot].copy(), int(self.labels.a[slot]), self.sources[slot]

    def _params(self, selector, nprobe, ef_search):
        kind = type(faiss.downcast_index(self.index)).__name__
        sel = None if selector is None else selector[1]
        if "HNSW" in kind:
            ef = self.ef_search if ef_search is None else ef_search
            return faiss.SearchParametersHNSW(sel=sel, efSearch=ef) if (sel is not None or ef_search) else None
        if "IVF" in kind:
            probe = self.nprobe if nprobe is None else nprobe
            return faiss.SearchParametersIVF(sel=sel, nprobe=probe) if (sel is not None or nprobe) else None
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    # ------------------------------------------------------------------------------------------ change

    def check_add(self, ids, labels=None) -> tuple[np.ndarray, np.ndarray]:
        """ids and labels of items to add, checked: ints, ids ≥ 0 and new, labels -1 (unknown) or a class."""
        ids = np.asarray([_check_int("id", i, 0, 2**62) for i in ids], dtype=np.int64)
        labels = np.full(len(ids), -1, np.int64) if labels is None else np.asarray(labels)
        if len(labels) != len(ids):
            raise EmbedfmError(f"{len(labels)} labels for {len(ids)} items")
        labels = np.asarray([_check_int("label", c, -1, 2**31) for c in labels], dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            raise DuplicateItem("the same id is given twice")
        taken = [int(i) for i in ids if int(i) in self.slot_of]
        if taken:
            raise DuplicateItem(f"id {taken[0]} is already in the index (remove it first to replace it)")
        return ids, labels

    def add(self, ids, embeddings: np.ndarray, images: np.ndarray, labels=None, sources=None) -> list[int]:
        """Add items; durable (logged and fsynced) when this returns. Returns their ids."""
        self._need_writable()
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != self.dim or images.shape != (len(x), *self.image_shape):
            shape = ", ".join(map(str, self.image_shape))
            raise EmbedfmError(f"expected (N, {self.dim}) embeddings and (N, {shape}) images, got {x.shape}, "
                               f"{images.shape}")  # fmt: skip
        sources = [""] * len(x) if sources is None else [str(s) for s in sources]
        with self._writer:
            ids, labels = self.check_add(ids, labels)
            if len(ids) != len(x) or len(sources) != len(x):
                raise EmbedfmError(f"{len(ids)} ids and {len(sources)} sources for {len(x)} items")
            items = [{"id": int(i), "label": int(c), "source": s} for i, c, s in zip(ids, labels, sources)]
            self._append({"op": "add", "items": items}, images.tobytes() + x.tobytes())
            with self.lock.write():
                self._apply_add(ids, labels, sources, images, x)
            self._maybe_fold()
        return [int(i) for i in ids]

    def remove(self, ids) -> list[int]:
        """Remove items by id; durable when this returns. An unknown id fails the whole call."""
        self._need_writable()
        ids = [_check_int("id", i, 0, 2**62) for i in ids]
        with self._writer:
            missing = [i for i in ids if i not in self.slot_of]
            if missing:
                raise UnknownItem(f"no item with id {missing[0]} in the index")
            if len(set(ids)) != len(ids):
                raise DuplicateItem("the same id is given twice")
            self._append({"op": "remove", "ids": ids}, b"")
            with self.lock.write():
                self._apply_remove(ids)
            self._maybe_fold()
        return ids

    def snapshot(self) -> None:
        """Fold the log into a new snapshot; index.json names it (atomically), then the old state's files go."""
        self._need_writable()
        with self._writer:
            self._snapshot()

    def _snapshot(self) -> None:
        # the caller holds the writer lock: nothing changes the index or the arrays meanwhile, and searches,
        # which only read them, go on
        cat = {
            "images": self.image_rows.view,
            "labels": self.labels.view,
            "sources": np.asarray(self.sources, dtype=str),
            "ids": self.ids.view,
            "alive": self.alive.view,
        }
        meta = {**self.meta, **state_names(self.meta.get("generation", 0) + 1, snapshot=True)}
        meta.update(n=int(self.index.ntotal), size=self.size, snapshot_time=time.strftime("%Y-%m-%d %H:%M:%S"))
        meta.pop("index_sha256", None)
        self.meta = save(self.dir, self.index, cat, meta)
        os.close(self._log)
        self._log = None
        self._log_records = 0
        remove_stale(self.dir, self.meta)
        self._open_log(0)

    # ------------------------------------------------------------------------------------------ log

    def _need_writable(self) -> None:
        if self._log is None:
            raise EmbedfmError(f"{self.dir}: opened for searching only")

    def _log_path(self) -> Path | None:
        name = self.meta.get("log")
        return None if name is None else self.dir / name

    def _open_log(self, good_bytes: int) -> None:
        """Open the log for appending after its last whole record; an index dir from before logs gets a log name
        (index.json rewritten, same files)."""
        if self.meta.get("log") is None:
            names = state_names(self.meta.get("generation", 0), snapshot=True)
            self.meta = {**self.meta, "log": names["log"]}
            from embedfm.fileio import atomic_write_json

            atomic_write_json(self.dir / META_FILE, self.meta)
        remove_stale(self.dir, self.meta)
        path = self._log_path()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            if os.fstat(fd).st_size > good_bytes:
                os.ftruncate(fd, good_bytes)  # a record a crash cut short: never acknowledged
            os.fsync(fd)
            _fsync_dir(self.dir)
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror or e}") from None
        self._log = fd
        self._log_bytes = good_bytes

    def _append(self, header: dict, blob: bytes) -> None:
        payload = json.dumps(header).encode() + b"\n" + blob
        record = RECORD.pack(TAG, len(payload), zlib.crc32(payload)) + payload
        try:
            os.write(self._log, record)
            os.fsync(self._log)
        except OSError as e:
            # the record may be half there: cut it, so the log stays a sequence of whole records
            with suppress(OSError):
                os.ftruncate(self._log, self._log_bytes)
            raise StorageError(f"cannot write {self._log_path()}: {e.strerror or e}; nothing was changed") from None
        self._log_records += 1
        self._log_bytes += len(record)

    def _maybe_fold(self) -> None:
        if self._log_records >= FOLD_RECORDS or self._log_bytes >= FOLD_BYTES:
            self._snapshot()

    def _replay(self) -> int:
        """Apply the log's whole records; returns the byte length they span."""
        path = self._log_path()
        if path is None or not path.is_file():
            return 0
        try:
            data = path.read_bytes()
        except OSError as e:
            raise EmbedfmError(f"{path}: unreadable ({e.strerror or e})") from None
        pos = 0
        while pos < len(data):
            if len(data) - pos < RECORD.size:
                break  # torn
            tag, length, crc = RECORD.unpack_from(data, pos)
            end = pos + RECORD.size + length
            payload = data[pos + RECORD.size : end]
            if tag != TAG or length > MAX_RECORD or end > len(data) or zlib.crc32(payload) != crc:
                # the last record, cut short (or zero-filled) by a crash, was never acknowledged: dropped. Damage
                # with whole records after it is not a crash's doing
                if (tag == TAG and end >= len(data)) or not data[pos:].strip(b"\0"):
                    break
                raise EmbedfmError(f"{path}: damaged at byte {pos} with data after it; rebuild the index "
                                   "with `embedfm index`")  # fmt: skip
            try:
                self._apply_record(payload)
            except (ValueError, KeyError, TypeError, EmbedfmError) as e:
                raise EmbedfmError(f"{path}: record at byte {pos} is not a valid change ({e})") from None
            self._log_records += 1
            pos = end
        return pos

    def _apply_record(self, payload: bytes) -> None:
        head, _, blob = payload.partition(b"\n")
        rec = json.loads(head)
        if rec["op"] == "add":
            items = rec["items"]
            n = len(items)
            size = int(np.prod(self.image_shape))  # 784 for Fashion-MNIST's
            if len(blob) != n * (size + 4 * self.dim):
                raise ValueError(f"{len(blob)} bytes for {n} items")
            images = np.frombuffer(blob[: n * size], dtype=np.uint8).reshape(n, *self.image_shape)
            x = np.frombuffer(blob[n * size :], dtype=np.float32).reshape(n, self.dim)
            ids, labels = self.check_add([it["id"] for it in items], [it["label"] for it in items])
            sources = [str(it["source"]) for it in items]
            self._apply_add(ids, labels, sources, images, x)
        elif rec["op"] == "remove":
            ids = [_check_int("id", i, 0, 2**62) for i in rec["ids"]]
            if any(i not in self.slot_of for i in ids):
                raise ValueError("removes an id that is not there")
            self._apply_remove(ids)
        else:
            raise ValueError(f"unknown op {str(rec['op'])[:20]!r}")

    # ------------------------------------------------------------------------------------------ apply

    def _apply_add(self, ids, labels, sources, images, x) -> None:
        first = int(self.index.ntotal)
        self.index.add(np.ascontiguousarray(x, dtype=np.float32))
        self.ids.append(ids)
        self.labels.append(labels)
        self.alive.append(np.ones(len(ids), dtype=bool))
        self.image_rows.append(images)
        self.sources.extend(sources)
        for j, i in enumerate(ids):
            self.slot_of[int(i)] = first + j
        if self._selector is not None:
            self._refresh_selector()

    def _apply_remove(self, ids) -> None:
        for i in ids:
            self.alive.a[self.slot_of.pop(int(i))] = False
        self._refresh_selector()

    def _refresh_selector(self) -> None:
        alive = self.alive.view
        self._selector = None if alive.all() else _bitmap_selector(alive)


class UnknownItem(EmbedfmError):
    """No live item has this id."""


class DuplicateItem(EmbedfmError):
    """An item with this id is already in the index."""


def _faiss_search(index, x: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
    """index.search on NumPy queries, with search parameters where given. faiss.contrib.torch_utils (imported by
    pytorch-metric-learning's inference utilities) replaces Index.search with a wrapper that takes no `params`
    and keeps the original as `search_numpy`: call that one where it is there."""
    search = getattr(index, "search_numpy", index.search)
    return search(x, k, params=params) if params is not None else search(x, k)


def _bitmap_selector(mask: np.ndarray):
    """(bitmap, faiss selector) admitting the slots where `mask` is True; the bitmap must outlive the selector."""
    bits = np.packbits(mask, bitorder="little")
    return bits, faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))


def _search_params(index) -> tuple[int | None, int | None]:
    """(nprobe, efSearch) an index searches with now (None where it has no such setting)."""
    try:
        nprobe = int(faiss.extract_index_ivf(index).nprobe)
    except RuntimeError:
        nprobe = None
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    return nprobe, None if hnsw is None else int(hnsw.efSearch)


def _check_int(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise EmbedfmError(f"{name} must be in {lo}..{hi}, got {str(v)[:40]!r}")
    return int(v)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def class_vote(labels: np.ndarray, num_classes: int) -> list[dict | None]:
    """The kNN vote of each query's hits (Q, k), nearest first: {"label", "share"} over the hits with a known
    label (ties to the nearest tied class, as `knn.vote`), None where no hit has one."""
    out = []
    for row in labels:
        known = row[(row >= 0) & (row < num_classes)]
        if not len(known):
            out.append(None)
            continue
        winner = int(vote(known[None], num_classes)[0])
        out.append({"label": winner, "share": float((known == winner).mean())})
    return out


# ----------------------------------------------------------------------------------------------
# `embedfm index RUN --add / --remove`: the same log and snapshots from the command line


def add_files(run_dir: str, paths: list[str], index_dir: str | None = None, ids=None, label=None, log=print) -> list:
    """Embed image files (a folder: its images, labels from sub-folder names) with the run's model and add them.
    ids: one per image (default: after the largest id there is). Returns the ids added."""
    from embedfm.images import load_image_as, run_format
    from embedfm.index import folder_catalogue
    from embedfm.inference import embed_images, select_device
    from embedfm.run import Run

    run = Run.open(run_dir)
    network = run.model(select_device("auto"))
    fmt = run_format(run)
    images, labels, sources = [], [], []
    for p in map(Path, paths):
        if p.is_dir():
            im, lab, src = folder_catalogue(p, run)
        else:
            im, lab, src = load_image_as(p, fmt, run.config.resize)[None], np.array([-1]), np.array([str(p)])
        images.append(im)
        labels.append(lab)
        sources.extend(src.tolist())
    x, y = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    if label is not None:
        y[:] = label
    d = Path(index_dir) if index_dir else Path(run_dir) / "index"
    with LiveIndex.open(d, writable=True, log=log) as live:
        if ids is None:
            start = int(live.ids.view.max()) + 1 if live.ids.n else 0
            ids = list(range(start, start + len(x)))
        elif len(ids) != len(x):
            raise EmbedfmError(f"--ids gives {len(ids)} ids for {len(x)} images")
        live.check_add(ids, y)
        added = live.add(ids, embed_images(network, x, progress=False), x, y, sources)
        log(f"added {len(added)} items (ids {added[0]}..{added[-1]}) to {d}: {live.size:,} items")
    return added


def remove_items(index_dir: str | Path, ids: list[int], log=print) -> None:
    with LiveIndex.open(index_dir, writable=True, log=log) as live:
        live.remove(ids)
        log(f"removed {len(ids)} items from {index_dir}: {live.size:,} items")
