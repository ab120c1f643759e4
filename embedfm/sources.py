"""Where a run's images come from: `--data fashion-mnist | idx:DIR | folder:DIR | csv:FILE` → one `ImageSet`.

What this module owns:
- parsing a data spec and loading it as an `data.ImageSet` (uint8 images, labels, class names, train and test
  splits, the training split's pixel statistics, a fingerprint);
- `folder:DIR` (`DIR/<class>/<image>`, or `DIR/train/<class>/…` and `DIR/test/<class>/…`) and `csv:FILE`
  (`path,label[,split]` rows, paths relative to the file): listing the files, checking them, decoding each once
  (a progress bar) to grey or RGB at one size, and a uint8 cache of the result keyed by the files' names, sizes
  and modification times (a changed, added or removed file is noticed and the set decoded again);
- a seeded, stratified test split where the set has none (`--test-frac`), recorded in `ImageSet.notes`;
- what a stranger's files can hold: a corrupt, truncated, empty or non-image file, a decompression bomb, a
  symlink loop, an empty class folder, a class too small to split, grey and colour mixed, images of different
  sizes, CSV rows with a missing path, an unknown split or bad encoding: each is one `DataError` line naming the
  file and the fix; `--skip-bad` skips unreadable images instead and records which (`notes["skipped"]`). Images
  found in both the training and the test split are counted and reported (`notes["duplicates"]`): leakage.
  A set that would not fit in half the machine's memory is refused with its size before any pixel is decoded.

Fashion-MNIST (`fashion-mnist`, the default) and `idx:DIR` are `data.py`'s IDX reader; the rest of the package sees
only the `ImageSet`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from embedfm.data import CLASS_NAMES, ImageSet, load_fashion_mnist, load_idx, pixel_stats
from embedfm.errors import DataError, one_line
from embedfm.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, open_checked, pixels, resize

KINDS = ("fashion-mnist", "idx", "folder", "csv")
SPLITS = ("train", "test")
RESIZE_MODES = ("crop", "pad")
CHANNELS = ("auto", "1", "3")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedfm" / "sets"
CACHE_VERSION = 1  # bumped whenever decoding changes what a cached set would hold
SPLIT_SEED = 0  # the test split's seed: fixed, so every run of a set meets the same test images


@dataclass(frozen=True)
class Options:
    """How a set is read (the config's data settings; see `config.TrainConfig`). `image_size` None: the images'
    own size, which must then be one size; `channels` "auto": grey if every image is grey, RGB if every one is
    colour (mixed is refused: pass "1" or "3")."""

    data_dir: str | None = None  # where Fashion-MNIST is (fashion-mnist only)
    image_size: int | None = None
    resize: str = "crop"
    channels: str = "auto"
    test_frac: float = 0.2
    class_names: tuple[str, ...] | None = None  # idx: names of labels 0..K-1 (else DIR/classes.txt, else "0".."K-1")
    skip_bad: bool = False
    cache_dir: Path | None = None  # default CACHE_DIR; the cache is skipped when it cannot be written
    progress: bool = True


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """'folder:photos' → ("folder", Path("photos")); 'fashion-mnist' → ("fashion-mnist", None)."""
    if spec == "fashion-mnist":
        return spec, None
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS[1:] or not path:
        raise DataError(f"--data {spec!r}: expected fashion-mnist, idx:DIR, folder:DIR or csv:FILE")
    return kind, Path(path).expanduser()


def load(spec: str = "fashion-mnist", opts: Options | None = None) -> ImageSet:
    """The image set a spec names, read and checked (see the module doc)."""
    opts = opts or Options()
    kind, path = parse_spec(spec)
    if kind == "fashion-mnist":
        return load_fashion_mnist(opts.data_dir)
    if not path.exists():
        raise DataError(f"{path}: not found (--data {spec})")
    if kind == "idx":
        if not path.is_dir():
            raise DataError(f"{path}: --data idx: needs a directory holding the four IDX files")
        return load_idx(path, image_size=None, class_names=opts.class_names or _names_file(path))
    entries = folder_entries(path) if kind == "folder" else csv_entries(path)
    order = _names_file(path if kind == "folder" else path.parent) or opts.class_names
    return _decoded(spec, path, entries, replace(opts, class_names=order))


def options_for(cfg, data_dir: str | None = None, progress: bool = True) -> Options:
    """The reading options a `config.TrainConfig` sets (`data_dir`: where Fashion-MNIST is, over the config's)."""
    names = tuple(n.strip() for n in cfg.class_names.split(",")) if getattr(cfg, "class_names", None) else None
    return Options(data_dir=data_dir or cfg.data_dir, image_size=cfg.image_size, resize=cfg.resize,
                   channels=cfg.channels, test_frac=cfg.test_frac, class_names=names, skip_bad=cfg.skip_bad,
                   progress=progress)  # fmt: skip


def for_config(cfg, data_dir: str | None = None, progress: bool = True) -> ImageSet:
    """The image set a run's config names (a run's own `Run.config`: the set it was trained on)."""
    return load(cfg.data, options_for(cfg, data_dir, progress))


def fit_config(cfg, data: ImageSet):
    """`cfg` with --focus resolved to class ids (names, or all), and its class ids checked against the set's
    classes (one line each); checks that need the class count (the balanced batch) run again with it. On a set of
    fewer than 25,000 training images other than Fashion-MNIST, the default --val-size (Fashion-MNIST's 5,000)
    becomes a tenth of the training split."""
    from embedfm.config import FIELDS, class_counts

    default_val = FIELDS["val_size"].default
    k, names = data.num_classes, data.class_names
    n_train = len(data.train_labels)
    if cfg.data != "fashion-mnist" and cfg.val_size == default_val and n_train < 5 * default_val:
        cfg = replace(cfg, val_size=max(10, round(n_train / 10)))  # the default is Fashion-MNIST's: 1/10 of a set
    if cfg.val_size >= n_train:
        raise DataError(f"--val-size {cfg.val_size} leaves no training images of this set's {n_train}; lower it")
    if cfg.focus and cfg.focus.startswith("auto"):
        if cfg.focus_run is None:  # `embedfm train` (commands.train) runs the quick CE run that resolves it
            raise DataError(f"--focus {cfg.focus}: resolved by `embedfm train` (confusions.auto_focus) before training")
    elif cfg.focus:
        if cfg.focus.strip() == "all":
            ids = tuple(range(k))
        else:
            wanted = [n.strip() for n in cfg.focus.split(",") if n.strip()]
            unknown = [n for n in wanted if n not in names]
            if unknown:
                raise DataError(f"--focus {unknown[0]!r} is not a class of this set ({', '.join(names)})")
            ids = tuple(sorted(names.index(n) for n in wanted))
        cfg = replace(cfg, focus_classes=ids)
    for flag, ids in (("--focus-classes", cfg.focus_classes), ("--holdout-classes", cfg.holdout_classes)):
        bad = [c for c in ids if c >= k]
        if bad:
            hint = " (the Fashion-MNIST default; pass --focus NAMES or all)" if flag == "--focus-classes" else ""
            raise DataError(f"{flag} {','.join(map(str, ids))}{hint}: this set has {k} classes, ids 0-{k - 1}")
    if k - len(cfg.holdout_classes) < 2:
        raise DataError("--holdout-classes must leave at least two classes to train on")
    if cfg.resolved_sampler == "balanced":
        counts = class_counts(cfg.batch_size, cfg.focus_classes, cfg.focus_oversample, k, cfg.holdout_classes)
        least = min(n for c, n in enumerate(counts) if c not in cfg.holdout_classes)
        if least < cfg.m_per_class:
            raise DataError(
                f"--batch-size {cfg.batch_size} is too small for the balanced sampler: it must hold "
                f"{cfg.m_per_class} images of each of {k} classes; raise it or lower --m-per-class"
            )
    return cfg


def run_meta(data: ImageSet) -> dict:
    """What a checkpoint records of a set that is not Fashion-MNIST: its class names and what reading it found
    (`Run.class_names`, `Run.data_notes`). Nothing for Fashion-MNIST, whose checkpoints stay as they were."""
    if data.class_names == CLASS_NAMES and not data.notes:
        return {}
    return {"classes": list(data.class_names), "data_notes": data.notes}


# ----------------------------------------------------------------------------------------------
# listing: (file, class name, split or None) for every image


@dataclass(frozen=True)
class Entry:
    path: Path
    label: str
    split: str | None  # "train" / "test", or None: the test split is made here


def _names_file(d: Path) -> tuple[str, ...] | None:
    """Class names from DIR/classes.txt (one per line, in label order), if there is one."""
    f = d / "classes.txt"
    if not f.is_file():
        return None
    names = tuple(line.strip() for line in _text(f).splitlines() if line.strip())
    return names or None


def _text(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{f}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"{f}: cannot read ({one_line(e)})") from None


def _images_in(d: Path) -> list[Path]:
    """The image files under `d` (any depth), sorted; symlinks to files are followed, symlinked dirs are not (a
    loop cannot trap the walk). Hidden files are skipped; other files are refused by suffix here and by content
    later."""
    found = []
    for root, dirs, files in os.walk(d, onerror=_walk_error):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        found += [Path(root) / f for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def _walk_error(e: OSError):
    raise DataError(f"{e.filename}: cannot list ({e.strerror}); check its permissions")


def folder_entries(root: Path) -> list[Entry]:
    """`root/<class>/*` (the test split made later), or `root/train/<class>/*` and `root/test/<class>/*`.

    Within a split, images are in file-name order across classes (so a set written out in its own order, as
    `write_folder` does, reads back in that order). A `root/classes.txt` (one class name per line) fixes the
    classes' order and their names (a folder is named as `folder_name` writes its name: '/' becomes '-');
    without it classes are in folder-name order."""
    if not root.is_dir():
        raise DataError(f"{root}: --data folder: needs a directory of class folders")
    given = (root / "train").is_dir() and (root / "test").is_dir()
    out = []
    for split in SPLITS if given else (None,):
        base = root / split if split else root
        classes = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataError(f"{base}: no class folders (expected {base}/<class>/<image>)")
        for c in classes:
            files = _images_in(c)
            if not files:
                raise DataError(f"{c}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)}); remove it")
            out += [Entry(f, c.name, split) for f in files]
    out.sort(key=lambda e: (SPLITS.index(e.split) if e.split else 0, e.path.name, e.label))
    named = _names_file(root)
    if named:
        by_folder = {folder_name(n): n for n in named}
        unknown = sorted({e.label for e in out} - set(by_folder))
        if unknown:
            raise DataError(f"{root}/{unknown[0]}: folder not named in {root}/classes.txt; add it there")
        out = [replace(e, label=by_folder[e.label]) for e in out]
    if given:
        train = {e.label for e in out if e.split == "train"}
        extra = sorted({e.label for e in out if e.split == "test"} - train)
        if extra:
            raise DataError(f"{root}/test/{extra[0]}: class not in {root}/train/; add its training images")
    return out


def csv_entries(f: Path) -> list[Entry]:
    """Rows `path,label[,split]` (a header row naming `path` is skipped); paths relative to the CSV's folder."""
    if not f.is_file():
        raise DataError(f"{f}: --data csv: needs a CSV file of path,label[,split] rows")
    rows = list(csv.reader(_text(f).splitlines()))
    if rows and rows[0] and rows[0][0].strip().lower() == "path":
        rows, first = rows[1:], 2
    else:
        first = 1
    out = []
    for n, row in enumerate(rows, start=first):
        if not any(c.strip() for c in row):
            continue
        if len(row) not in (2, 3):
            raise DataError(f"{f}:{n}: expected path,label[,split], got {len(row)} fields")
        path, label = row[0].strip(), row[1].strip()
        split = row[2].strip().lower() if len(row) == 3 and row[2].strip() else None
        if split is not None and split not in SPLITS:
            raise DataError(f"{f}:{n}: unknown split {row[2]!r} (train or test; validation is carved from train)")
        if not label:
            raise DataError(f"{f}:{n}: empty label")
        p = (f.parent / path).resolve() if not Path(path).is_absolute() else Path(path)
        if not p.exists():
            raise DataError(f"{f}:{n}: {path}: file not found (paths are relative to {f.parent})")
        out.append(Entry(p, label, split))
    if not out:
        raise DataError(f"{f}: no rows (expected path,label[,split])")
    splits = {e.split for e in out}
    if None in splits and len(splits) > 1:
        raise DataError(f"{f}: some rows name a split and some do not; give every row one, or none")
    return out


# ----------------------------------------------------------------------------------------------
# decoding, with a cache


def _cache_key(spec_path: Path, entries: list[Entry], opts: Options) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([CACHE_VERSION, str(spec_path.resolve()), opts.image_size, opts.resize, opts.channels,
                         opts.test_frac, opts.skip_bad]).encode())  # fmt: skip
    for e in entries:
        try:
            st = e.path.stat()
            h.update(f"{e.path}\0{e.label}\0{e.split}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # a broken link: decoding says so (or skips it)
            h.update(f"{e.path}\0missing\n".encode())
    return h.hexdigest()[:20]


def _read_cache(f: Path) -> dict | None:
    """A cached set (npz of plain arrays, read without pickle), or None if absent or unreadable."""
    try:
        with np.load(f, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        d["meta"] = json.loads(str(d["meta"]))
        return d
    except Exception:  # absent, half-written by a killed process, from another version: decode again
        return None


def _write_cache(f: Path, arrays: dict, meta: dict) -> None:
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, f)
    except OSError:  # a read-only home: the set is decoded again next time, nothing else lost
        pass


def _memory_limit() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 1 << 34


def _headers(entries: list[Entry], opts: Options) -> list[tuple[int, int]]:
    """Each image's declared (width, height), read from its header alone; a bad file is one line (or skipped)."""
    sizes = []
    for e in entries:
        try:
            sizes.append(_open(e.path, lambda img: img.size, load=False))
        except DataError:
            if not opts.skip_bad:
                raise
            sizes.append(None)
    return sizes


def _open(path: Path, convert, load: bool = True):
    if not path.exists():
        what = "broken or looping symlink" if path.is_symlink() else "file not found"
        raise DataError(f"{path}: {what}; remove it or pass --skip-bad true")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file; remove it or pass --skip-bad true")
    try:
        return open_checked(path, str(path), MAX_IMAGE_PIXELS, convert, load)
    except DataError as e:
        raise DataError(f"{e}; remove it or pass --skip-bad true") from None


def _decoded(spec: str, root: Path, entries: list[Entry], opts: Options) -> ImageSet:
    cache = (opts.cache_dir or CACHE_DIR) / f"{_cache_key(root, entries, opts)}.npz"
    got = _read_cache(cache)
    if got is None:
        got = _decode(entries, opts)
        _write_cache(cache, {k: v for k, v in got.items() if k != "meta"}, got["meta"])
    meta = got["meta"]
    x, y, is_test = torch.from_numpy(got["images"]), torch.from_numpy(got["labels"]), torch.from_numpy(got["test"])
    train_x, train_y = x[~is_test], y[~is_test]
    return ImageSet(
        train_x.contiguous(),
        train_y.contiguous(),
        x[is_test].contiguous(),
        y[is_test].contiguous(),
        source=str(root),
        class_names=tuple(meta["class_names"]),
        notes=meta["notes"],
        **pixel_stats(train_x),
    )


def _decode(entries: list[Entry], opts: Options) -> dict:
    """Decode every entry → {"images": uint8 (N, H, W) or (N, 3, H, W), "labels", "test" (bool), "meta"}."""
    from tqdm import tqdm

    sizes = _headers(entries, opts)
    skipped = [str(e.path) for e, s in zip(entries, sizes) if s is None]
    keep = [(e, s) for e, s in zip(entries, sizes) if s is not None]
    if opts.image_size is None:
        distinct = sorted({s for _, s in keep})
        if len(distinct) > 1:
            common = max(distinct, key=lambda s: sum(t == s for _, t in keep))
            odd = next(e for e, s in keep if s != common)
            w, h = _open(odd.path, lambda img: img.size, load=False)
            raise DataError(
                f"{odd.path}: {w}x{h} pixels, but most images are {common[0]}x{common[1]} ({len(distinct)} sizes "
                "in all); pass --image-size N to resize every image to NxN"
            )
        w, h = distinct[0] if distinct else (0, 0)
    else:
        w = h = opts.image_size
    need = len(keep) * h * w * (1 if opts.channels == "1" else 3) * 2  # decoded + stacked copies, worst case RGB
    if need > _memory_limit():
        raise DataError(f"{len(keep):,} images of {w}x{h} need about {need / 2**30:.1f} GiB, over half of this "
                        "machine's memory; pass a smaller --image-size or use a subset")  # fmt: skip
    arrays, labels, tests = [], [], []
    for e, _ in tqdm(keep, desc="decoding images", unit="img", disable=not opts.progress, leave=False):
        try:
            a = _open(e.path, pixels)
        except DataError:
            if not opts.skip_bad:
                raise
            skipped.append(str(e.path))
            continue
        if opts.image_size is not None:
            a = resize(a, opts.image_size, opts.resize)
        arrays.append((e, a))
    if not arrays:
        raise DataError("no readable images left (every file was skipped)")
    images = _channels([a for _, a in arrays], [e for e, _ in arrays], opts.channels)
    names = _class_names([e.label for e, _ in arrays], opts.class_names)
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index[e.label] for e, _ in arrays], dtype=np.uint8 if len(names) <= 256 else np.int64)
    given = arrays[0][0].split is not None
    tests = (np.array([e.split == "test" for e, _ in arrays]) if given
             else _test_split(labels, opts.test_frac, names, [e for e, _ in arrays]))  # fmt: skip
    notes = {"test_split": "given" if given else f"stratified, {opts.test_frac:g} of each class, seed {SPLIT_SEED}",
             "skipped": skipped, "duplicates": _duplicates(images, tests, [e for e, _ in arrays]),
             "resize": None if opts.image_size is None else f"{opts.resize} to {opts.image_size}"}  # fmt: skip
    if notes["duplicates"]["count"]:
        print(f"warning: {notes['duplicates']['count']} test images also appear in the training split "
              f"(e.g. {notes['duplicates']['examples'][0]}): leakage inflates test figures")  # fmt: skip
    if skipped:
        print(f"skipped {len(skipped)} unreadable image file(s) (--skip-bad), e.g. {skipped[0]}")
    meta = {"class_names": list(names), "notes": notes}
    return {"images": images, "labels": labels, "test": tests, "meta": meta}


def _channels(arrays: list[np.ndarray], entries: list[Entry], channels: str) -> np.ndarray:
    """Stack (H, W) grey and (H, W, 3) colour arrays as uint8 (N, H, W) or (N, 3, H, W)."""
    grey = [a.ndim == 2 for a in arrays]
    if channels == "auto":
        if all(grey):
            channels = "1"
        elif not any(grey):
            channels = "3"
        else:
            odd = entries[grey.index(sum(grey) < len(grey) / 2)]  # one of the fewer kind
            kind = "grey" if sum(grey) < len(grey) / 2 else "colour"
            raise DataError(f"{odd.path}: a {kind} image in a set of mostly {'colour' if kind == 'grey' else 'grey'} "
                            f"ones ({sum(grey)} grey, {len(grey) - sum(grey)} colour); pass --channels 3 (grey "
                            "repeated) or --channels 1 (colour to grey)")  # fmt: skip
    if channels == "1":
        return np.stack([a if a.ndim == 2 else _to_grey(a) for a in arrays])
    return np.stack([np.repeat(a[None], 3, 0) if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays])


def _to_grey(a: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a).convert("L"), dtype=np.uint8)  # ITU-R 601-2 luma, as PIL converts


def _class_names(labels: list[str], given: tuple[str, ...] | None) -> tuple[str, ...]:
    """`given` (classes.txt, --class-names) in its order, else sorted; all-integer names sorted as numbers."""
    names = set(labels)
    if given:
        unknown = sorted(names - set(given))
        if unknown:
            raise DataError(f"class {unknown[0]!r} is not among the class names given ({', '.join(given)})")
        return tuple(given)
    if all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _test_split(labels: np.ndarray, frac: float, names: tuple[str, ...], entries: list[Entry]) -> np.ndarray:
    """A seeded, stratified test split: round(frac · n) images of each class (at least one), the rest training."""
    if not 0 < frac < 1:
        raise DataError(f"--test-frac must be between 0 and 1, got {frac}")
    g = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(len(names)):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(frac * len(idx)))
        if len(idx) - k < 2:
            where = entries[idx[0]].path.parent if len(idx) else names[c]
            raise DataError(f"{where}: class {names[c]!r} has {len(idx)} image(s), too few to split into training "
                            "(≥ 2) and test (≥ 1); add images or remove the class")  # fmt: skip
        test[g.permutation(idx)[:k]] = True
    return test


def _duplicates(images: np.ndarray, test: np.ndarray, entries: list[Entry]) -> dict:
    """Test images whose pixels equal a training image's (after decoding and resizing)."""
    seen = {}
    for i in np.flatnonzero(~test):
        seen.setdefault(hashlib.sha1(images[i].tobytes()).digest(), i)
    pairs = [(i, seen[d]) for i in np.flatnonzero(test) if (d := hashlib.sha1(images[i].tobytes()).digest()) in seen]
    return {"count": len(pairs), "examples": [f"{entries[i].path} = {entries[j].path}" for i, j in pairs[:5]]}


# ----------------------------------------------------------------------------------------------
# writing a set out (parity checks, worked examples)


@dataclass(frozen=True)
class Written:
    root: Path
    files: list[Path] = field(default_factory=list)


def write_folder(data: ImageSet, root: Path, fmt: str = "png", limit: int | None = None) -> Path:
    """`data` as `root/train/<class>/<i>.png` and `root/test/<class>/<i>.png` with `root/classes.txt`: the layout
    `--data folder:` reads back as the same set (same splits, order, classes). `limit`: the first N of each split."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(n + "\n" for n in data.class_names), encoding="utf-8")
    for split, x, y in (("train", data.train_images, data.train_labels), ("test", data.test_images, data.test_labels)):
        n = len(y) if limit is None else min(limit, len(y))
        for i in range(n):
            d = root / split / folder_name(data.class_names[int(y[i])])
            d.mkdir(parents=True, exist_ok=True)
            a = x[i].numpy()
            Image.fromarray(a if a.ndim == 2 else a.transpose(1, 2, 0)).save(d / f"{i:06d}.{fmt}")
    return root


def folder_name(name: str) -> str:
    return name.replace("/", "-").replace(os.sep, "-")


def subset(data: ImageSet, n_train: int, n_test: int) -> ImageSet:
    """The first n_train / n_test images of each split (tests and worked examples)."""
    return replace(
        data,
        train_images=data.train_images[:n_train],
        train_labels=data.train_labels[:n_train],
        test_images=data.test_images[:n_test],
        test_labels=data.test_labels[:n_test],
    )


__all__ = ["CLASS_NAMES", "KINDS", "Options", "load", "parse_spec", "subset", "write_folder"]
