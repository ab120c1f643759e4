"""Hostile files and seeded fuzzing: the helpers the tests of every module that reads a file share.

Byte mutations (truncations, bit flips, inserted / deleted / appended bytes), JSON field deletions and type
changes, crafted pickles (whose unpickling would `touch` a marker file), npz files damaged at the zip level, and
`fuzz`, which runs an attempt per mutation: each must give one `EmbedfmError` line or a correct result. The tiny
run they start from is conftest's `tiny` fixture (built with TINY_RUN); conftest's `no_hang` fixture fails a test
that hangs.
"""

import copy
import io
import json
import os
import pickle
import shlex
import shutil
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load, save

from embedfm import checkpoint, rundir
from embedfm.errors import DataError, EmbedfmError


def one_line_error(fn, *args, error: type[Exception] = EmbedfmError) -> str:
    """fn(*args) must raise `error` (an EmbedfmError unless told) with a one-line message; returns it."""
    with pytest.raises(error) as e:
        fn(*args)
    msg = str(e.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def one_line_data_error(fn, *args) -> str:
    """fn(*args) must raise DataError with a one-line message; returns it."""
    return one_line_error(fn, *args, error=DataError)


N_MUTATIONS = 220  # per format through the single-file reader; the data-set loader adds more per IDX format


def mutate(data: bytes, rng) -> tuple[bytes, str]:
    """One random byte-level defect: truncation, bit flips, a byte set, bytes inserted, deleted or appended."""
    n = len(data)
    kind = str(rng.choice(["truncate", "flip", "set", "insert", "delete", "append"]))
    b = bytearray(data)
    if kind == "truncate":
        i = int(rng.integers(0, n))
        b = b[:i]
    elif kind == "flip":
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, n))
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "set":
        i = int(rng.integers(0, n))
        b[i] = int(rng.integers(0, 256))
    elif kind == "insert":
        i = int(rng.integers(0, n + 1))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 17))).astype(np.uint8).tobytes()
    elif kind == "delete":
        i = int(rng.integers(0, n))
        del b[i : i + int(rng.integers(1, 17))]
    else:
        i = n
        b += rng.integers(0, 256, int(rng.integers(1, 65))).astype(np.uint8).tobytes()
    return bytes(b), f"{kind}@{i}"


SEED = 20261126


TINY_RUN = ["--backbone", "linear", "--embedding-dim", "8", "--limit", "100", "--val-size", "20", "--epochs", "1",
            "--batch-size", "50", "--no-progress"]  # fmt: skip


class Hang(BaseException):
    """Raised by an alarm in a test that runs too long (a BaseException: no `except Exception` turns it into a
    refusal)."""


def _hang(*_):
    raise Hang("still running: a hang")


def _steady(doc, root: Path):
    """doc with timings set to 1 and `root` in strings replaced by /hostile."""
    if isinstance(doc, dict):
        timing = lambda k, v: k.endswith(("_seconds", "_per_s")) and isinstance(v, (int, float))
        return {k: 1.0 if timing(k, v) else _steady(v, root) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_steady(v, root) for v in doc]
    return doc.replace(str(root), "/hostile") if isinstance(doc, str) else doc


def run_copy(tiny, dst: Path) -> Path:
    shutil.copytree(tiny[0], dst)
    return dst


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, ("touch " + shlex.quote(self.marker),))


def crafted_pickle(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def crafted_npz(marker: Path, keys) -> bytes:
    """An npz whose every array is an object array holding the payload (np.save with allow_pickle=True)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for key in keys:
            member = io.BytesIO()
            np.save(member, np.array([Payload(marker)], dtype=object), allow_pickle=True)
            z.writestr(f"{key}.npy", member.getvalue())
    return buf.getvalue()


EMB_KEYS = ["train_embeddings", "train_labels", "test_embeddings", "test_labels"]


CAT_KEYS = ["images", "labels", "sources"]


CKPT, LEGACY = rundir.CHECKPOINT, rundir.LEGACY_CHECKPOINT


def byte_mutation(data: bytes, rng, hot: list[tuple[int, int]]) -> tuple[str, bytes]:
    """Truncation, 1-3 bit flips, an inserted or deleted run of bytes, or appended junk; half the offsets fall in
    the `hot` ranges (headers, where a change means most)."""

    def offset() -> int:
        if hot and rng.random() < 0.5:
            lo, hi = hot[rng.integers(len(hot))]
            return int(rng.integers(lo, max(lo + 1, min(hi, len(data)))))
        return int(rng.integers(len(data)))

    kind = ("truncate", "flip", "insert", "delete", "append")[rng.integers(5)]
    if kind == "truncate":
        pos = offset()
        return f"truncate at {pos}", data[:pos]
    if kind == "flip":
        out = bytearray(data)
        bits = sorted({(offset(), int(rng.integers(8))) for _ in range(rng.integers(1, 4))})
        for pos, bit in bits:
            out[pos] ^= 1 << bit
        return f"flip bits {bits}", bytes(out)
    if kind == "insert":
        pos, junk = offset(), rng.bytes(int(rng.integers(1, 9)))
        return f"insert {junk!r} at {pos}", data[:pos] + junk + data[pos:]
    if kind == "delete":
        pos, n = offset(), int(rng.integers(1, 9))
        return f"delete {n} at {pos}", data[:pos] + data[pos + n :]
    junk = rng.bytes(int(rng.integers(1, 64)))
    return f"append {junk!r}", data + junk


HOSTILE_VALUES = [None, True, False, 0, -1, 1.5, 10**30, float("nan"), float("inf"), "", "x", "7", "a\nb", [], [None],
                  [1, 2], {}, {"x": 1}]  # fmt: skip


def _paths(doc, prefix=()):
    """Every place in a JSON document (a list's first two and last element stand for the rest)."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i in sorted({0, 1, len(doc) - 1} & set(range(len(doc)))):
            yield from _paths(doc[i], (*prefix, i))


def json_mutation(doc, rng) -> tuple[str, object]:
    """One field deleted or given a value of another type (the whole document replaced, now and then)."""
    doc = copy.deepcopy(doc)
    places = list(_paths(doc))
    path = places[rng.integers(len(places))]
    value = copy.deepcopy(HOSTILE_VALUES[rng.integers(len(HOSTILE_VALUES))])
    if not path:
        return f"document := {value!r}", value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.3:
        del parent[path[-1]]
        return f"delete {path}", doc
    parent[path[-1]] = value
    return f"{path} := {value!r}", doc


def fuzz(n: int, rng, mutate, attempt, loads: bool | None = True, known: tuple = ()) -> None:
    """Run `attempt(mutated)` for n mutations: each must give one EmbedfmError line or a result `attempt` accepts.
    Fails listing the mutations that did neither; and, as a check on the fuzzer itself, unless both outcomes
    occurred (only refusals where `loads` is false; no such check where it is None).

    `known`: (exception type, function) pairs of defects in modules this file's author could not fix, each
    reproduced by a strict xfail test below; an exception of that type raised through that function is
    counted as refused here, so that the fuzzer keeps guarding everything else meanwhile."""
    failures, refused = [], 0
    for i in range(n):
        desc, mutated = mutate(rng)
        try:
            attempt(mutated)
        except EmbedfmError as e:
            refused += 1
            if not str(e) or "\n" in str(e):
                failures.append(f"#{i} {desc}: error not one line: {str(e)!r}")
        except Exception as e:  # anything else is a defect: say which mutation gave it
            functions = {f.name for f in traceback.extract_tb(e.__traceback__)}
            if any(isinstance(e, kind) and where in functions for kind, where in known):
                refused += 1
                continue
            failures.append(f"#{i} {desc}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    assert not failures, f"{len(failures)} of {n} mutations misbehaved:\n" + "\n".join(failures[:15])
    assert loads is None or (refused > 0 and (refused < n) == loads), f"{refused} of {n} mutations refused"


def _json_mutations(doc, n_json: int, text: bytes):
    """A mutator: json_mutation for the first n_json draws of each ten, byte mutations of `text` otherwise."""
    count = iter(range(10**9))

    def mutate(rng):
        if next(count) % 10 < n_json:
            desc, d = json_mutation(doc, rng)
            return desc, json.dumps(d).encode()
        return byte_mutation(text, rng, [(0, len(text))])

    return mutate


def _header(raw: bytes) -> tuple[dict, int]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), n


def _with_header(raw: bytes, header: dict) -> bytes:
    _, n = _header(raw)
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + raw[8 + n :]


def _npz_hot(data: bytes) -> list[tuple[int, int]]:
    """Where an npz's structure lies: each member's local header and npy header, and the central directory."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
    hot = [(i.header_offset, i.header_offset + 30 + len(i.filename) + 160) for i in infos]
    end = max(i.header_offset + 30 + len(i.filename) + i.compress_size for i in infos)
    return [*hot, (end, len(data))]


def _npy_claiming(shape, dtype="|u1") -> bytes:
    """An .npy header that claims a huge array, followed by a few bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(64)


def _zip_variant(raw: bytes, how: str) -> bytes:
    """An npz changed at the zip level: every member's compression method (deflate, bzip2, lzma, 99 = unknown)
    or encryption flag set in its local and central headers; or "huge": members whose npy headers claim 10^13
    entries."""
    if how == "huge":
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            names = z.namelist()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name in names:
                dtype = "|u1" if name == "images.npy" else "<U10" if name == "sources.npy" else "<f4"
                shape = (10**13, 28, 28) if name == "images.npy" else (10**13, 8) if "embeddings" in name else (10**13,)
                z.writestr(name, _npy_claiming(shape, dtype))
        return buf.getvalue()
    out = bytearray(raw)
    for sig, flags, method in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):  # local, central headers
        i = out.find(sig)
        while i >= 0:
            if how == "encrypted":
                out[i + flags] |= 1
            else:
                out[i + method : i + method + 2] = {"deflate": 8, "bzip2": 12, "lzma": 14, "unknown": 99}[how].to_bytes(
                    2, "little"
                )
            i = out.find(sig, i + 1)
    return bytes(out)


ZIP_VARIANTS = ["deflate", "bzip2", "lzma", "unknown", "encrypted", "huge"]


DEEP = "[" * 100_000  # json.loads raises RecursionError on it


def _resave(run: Path, change=lambda meta: None, tensors=lambda t: None) -> None:
    raw = (run / CKPT).read_bytes()
    meta = json.loads(_header(raw)[0]["__metadata__"][checkpoint.META_KEY])
    t = load(raw)
    change(meta)
    tensors(t)
    (run / CKPT).write_bytes(save(t, metadata={checkpoint.META_KEY: json.dumps(meta)}))


def _at(*path, value):
    def change(meta):
        d = meta
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value

    return change
