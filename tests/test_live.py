"""embedfm.live: adds and removals without a rebuild, the log, snapshots, crashes; the index add / remove
commands."""

import numpy as np
import pytest
from PIL import Image

from embedfm.cli import main
from embedfm.errors import EmbedfmError
from embedfm.live import LiveIndex


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(live: LiveIndex, x: np.ndarray, k: int, classes=None) -> np.ndarray:
    """Exact top-k ids over the live items, from the index's own vectors (an independent computation)."""
    slots = np.array(sorted(live.slot_of.values()))
    if classes is not None:
        slots = slots[np.isin(live.labels.view[slots], classes)]
    vecs = np.stack([live.index.reconstruct(int(s)) for s in slots])
    order = np.argsort(-(x @ vecs.T), axis=1, kind="stable")[:, :k]
    return live.ids.view[slots][order]


def test_adds_and_removals_survive_reopening_and_match_brute_force(index_dir):
    rng = np.random.default_rng(0)
    with LiveIndex.open(index_dir, writable=True) as live:
        new = unit(rng, 5, live.dim)
        live.add([1000 + i for i in range(5)], new, np.zeros((5, 28, 28), np.uint8), [6] * 5, ["a"] * 5)
        live.remove([0, 1, 1002])
        q = np.concatenate([new, unit(rng, 3, live.dim)])
        before = live.search(q, 4)
        assert np.array_equal(before.ids, brute(live, q, 4))
        only = live.search(q, 3, classes=[6])
        assert np.array_equal(only.ids, brute(live, q, 3, classes=[6])) and (only.labels == 6).all()
        with pytest.raises(EmbedfmError, match="already in the index"):
            live.add([1000], new[:1], np.zeros((1, 28, 28), np.uint8))
        with pytest.raises(EmbedfmError, match="no item with id 1002"):
            live.remove([1002])
        size = live.size
    assert size == 300 + 5 - 3
    again = LiveIndex.open(index_dir)  # the snapshot the close folded the log into
    assert again.size == size and again.meta["generation"] == 2
    assert np.array_equal(again.search(q, 4).ids, before.ids)
    names = sorted(p.name for p in index_dir.iterdir())
    assert not any(n in names for n in ("index.faiss", "catalogue.npz")), names  # the build's files are gone


def test_a_class_filter_searches_after_faiss_torch_utils_wraps_index_search(index_dir):
    """pytorch-metric-learning's inference utilities import faiss.contrib.torch_utils, which replaces every faiss
    Index.search with a wrapper that takes no search parameters; a filtered search must still work after it."""
    import faiss.contrib.torch_utils  # noqa: F401  (the import is the point: it patches faiss for this process)

    rng = np.random.default_rng(2)
    live = LiveIndex.open(index_dir)
    q = unit(rng, 3, live.dim)
    only = live.search(q, 3, classes=[6])
    assert np.array_equal(only.ids, brute(live, q, 3, classes=[6])) and (only.labels == 6).all()


def test_a_torn_last_record_is_dropped_and_damage_before_whole_records_is_one_line(index_dir):
    rng = np.random.default_rng(1)
    live = LiveIndex.open(index_dir, writable=True)
    live.add([500], unit(rng, 1, live.dim), np.zeros((1, 28, 28), np.uint8))
    live.add([501], unit(rng, 1, live.dim), np.zeros((1, 28, 28), np.uint8))
    log = live._log_path()
    live.close(fold=False)  # as a crash leaves it: the log not folded
    whole = log.read_bytes()
    log.write_bytes(whole[:-7])  # the second add cut short: it was never acknowledged
    torn = LiveIndex.open(index_dir, writable=True)
    assert 500 in torn.slot_of and 501 not in torn.slot_of
    torn.close(fold=False)
    assert log.read_bytes() == whole[: len(whole) // 2]  # the writer cut the torn record off
    damaged = bytearray(whole)
    damaged[30] ^= 0xFF  # inside the first record, a whole one after it
    log.write_bytes(bytes(damaged))
    with pytest.raises(EmbedfmError, match="damaged at byte 0"):
        LiveIndex.open(index_dir)


def test_index_add_and_remove_from_the_command_line_reach_the_api(tmp_path, fake_run, index_dir, capsys):
    import embedfm

    run, data = fake_run
    folder = tmp_path / "new" / "Shirt"
    folder.mkdir(parents=True)
    blob = np.zeros((40, 30), np.uint8)
    blob[5:35, 5:25] = 220
    Image.fromarray(blob).save(folder / "s.png")
    assert main(["index", str(run), "--out", str(index_dir), "--add", str(folder.parent), "--ids", "4242"]) == 0
    m = embedfm.load(run, device="cpu", data_dir=data)
    hits = m.search([str(folder / "s.png")], index_dir=index_dir, k=3)
    assert hits.ids[0, 0] == 4242 and hits.labels[0, 0] == 6 and hits.similarities[0, 0] > 0.999
    assert main(["index", str(run), "--out", str(index_dir), "--remove", "4242,7"]) == 0
    fresh = embedfm.load(run, device="cpu", data_dir=data).search([str(folder / "s.png")], index_dir=index_dir, k=5)
    assert 4242 not in fresh.ids and 7 not in fresh.ids
    assert main(["index", str(run), "--out", str(index_dir), "--remove", "4242"]) == 2
    assert "no item with id 4242" in capsys.readouterr().err


def test_a_second_writer_is_refused(index_dir):
    with LiveIndex.open(index_dir, writable=True), pytest.raises(EmbedfmError, match="is being written by PID"):
        LiveIndex.open(index_dir, writable=True)
