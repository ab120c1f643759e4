"""embedfm.index: exact search equals brute force, approximate types find most neighbours; a damaged index dir
(index.faiss, its catalogue, index.json) gives one line or a correct index (seeded fuzzing)."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from fuzzing import (
    CAT_KEYS,
    DEEP,
    SEED,
    ZIP_VARIANTS,
    _json_mutations,
    _npz_hot,
    _zip_variant,
    byte_mutation,
    fuzz,
    one_line_error,
)

from embedfm import index
from embedfm.index import make_index, set_search_params


@pytest.fixture(scope="module")
def pristine_index(tiny):
    """The tiny run's index dir as index.load reads it, its child-process probe included: loaded once."""
    return index.load(tiny[0] / "index")


@pytest.fixture
def index_dir(tmp_path, tiny, pristine_index, monkeypatch):
    """A copy of the tiny run's index dir, and the pristine load of it. The child-process probe is a no-op here:
    these fuzzers leave index.faiss whole (its own fuzzer must never reach the probe)."""
    d = tmp_path / "index"
    shutil.copytree(tiny[0] / "index", d)
    probes = []
    monkeypatch.setattr(index, "_probe_in_child", probes.append)
    return d, pristine_index, probes


def _same_index(got, pristine) -> None:
    (idx, cat, meta), (idx0, cat0, _) = got, pristine
    assert (idx.ntotal, idx.d) == (idx0.ntotal, idx0.d) == (meta["n"], meta["dim"])
    for k in CAT_KEYS:
        assert cat[k].dtype == cat0[k].dtype and cat[k].shape == cat0[k].shape


@pytest.mark.usefixtures("no_hang")
def test_fuzzed_index_faiss_is_refused_by_its_checksum(index_dir):
    d, _, probes = index_dir
    raw = (d / index.INDEX_FILE).read_bytes()

    def attempt(data):
        (d / index.INDEX_FILE).write_bytes(data)
        index.load(d)

    fuzz(220, np.random.default_rng(SEED), lambda rng: byte_mutation(raw, rng, [(0, 200)]), attempt, loads=False)
    assert probes == []  # every one was refused before the child-process probe


@pytest.mark.usefixtures("no_hang")
def test_fuzzed_catalogue_loads_correctly_or_fails_in_one_line(index_dir):
    d, pristine, _ = index_dir
    raw = (d / index.CATALOGUE_FILE).read_bytes()
    hot = _npz_hot(raw)

    def attempt(data):
        (d / index.CATALOGUE_FILE).write_bytes(data)
        _same_index(index.load(d), pristine)

    fuzz(220, np.random.default_rng(SEED), lambda rng: byte_mutation(raw, rng, hot), attempt)


@pytest.mark.usefixtures("no_hang")
def test_fuzzed_index_json_loads_correctly_or_fails_in_one_line(index_dir):
    """220 mutations: 150 field deletions / type changes, 70 byte mutations."""
    d, pristine, _ = index_dir
    text = (d / index.META_FILE).read_bytes()

    def attempt(data):
        (d / index.META_FILE).write_bytes(data)
        _same_index(index.load(d), pristine)

    mutate = _json_mutations(json.loads(text), 7, text)
    fuzz(220, np.random.default_rng(SEED), mutate, attempt)


@pytest.mark.parametrize("how", ZIP_VARIANTS)
@pytest.mark.usefixtures("no_hang")
def test_a_catalogue_damaged_at_the_zip_level_is_one_line(index_dir, how):
    d = index_dir[0]
    (d / index.CATALOGUE_FILE).write_bytes(_zip_variant((d / index.CATALOGUE_FILE).read_bytes(), how))
    one_line_error(index.load, d)


@pytest.mark.usefixtures("no_hang")
def test_deeply_nested_index_json_is_one_line(index_dir):
    d = index_dir[0]
    (d / index.META_FILE).write_text(DEEP)
    one_line_error(index.load, d)


@pytest.mark.slow
@pytest.mark.usefixtures("no_hang")
def test_a_resigned_damaged_index_faiss_is_one_line(tmp_path, tiny):
    """Someone who rewrites index.json's checksum gets past it: the child-process probe (and then faiss's own
    reader) must still turn a damaged index.faiss into one line. Slow: a child process each (8 mutations)."""
    d = tmp_path / "index"
    shutil.copytree(tiny[0] / "index", d)
    raw = (d / index.INDEX_FILE).read_bytes()
    meta = json.loads((d / index.META_FILE).read_text())

    def attempt(data):
        (d / index.INDEX_FILE).write_bytes(data)
        (d / index.META_FILE).write_text(json.dumps({**meta, "index_sha256": hashlib.sha256(data).hexdigest()}))
        got = index.load(d)
        assert got[0].ntotal == meta["n"] and got[0].d == meta["dim"]

    fuzz(8, np.random.default_rng(SEED), lambda rng: byte_mutation(raw, rng, [(0, 120)]), attempt, loads=None)


def unit(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_equals_brute_force_top_k():
    ref, q = unit(500, 16), unit(20, 16, seed=1)
    sims, ids = make_index(ref, "Flat").search(q, 5)
    brute = np.argsort(-(q @ ref.T), axis=1, kind="stable")[:, :5]  # (20, 5) by a loop-free brute force
    assert (ids == brute).all()
    assert np.allclose(sims, np.take_along_axis(q @ ref.T, brute, axis=1), atol=1e-5)


# PQ (a second of training) in the full suite; the fast suite keeps the IVF and HNSW searches
@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW8", pytest.param("IVF8,PQ8x4", marks=pytest.mark.slow)])
def test_approximate_indexes_find_most_true_neighbours_at_full_probe(factory):
    ref, q = unit(2000, 16), unit(50, 16, seed=1)
    exact = make_index(ref, "Flat").search(q, 10)[1]
    index = make_index(ref, factory)
    set_search_params(index, nprobe=8, ef_search=64)  # IVF: every list; HNSW: wide search
    found = index.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    # PQ8x4 on 16-d keeps 8 codes of 4 bits, 4 bytes of 64: lossy by design (4-bit codes train 16 centroids per
    # sub-quantizer, under a second; PQ4's 8-bit codes, as compressed, train 256 each from 2,000 points: seconds)
    assert recall >= (0.3 if "PQ" in factory else 0.95)
