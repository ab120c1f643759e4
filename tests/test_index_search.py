"""embedfm index / search: exact search equals brute force, approximate types build and load, images
are converted the way Fashion-MNIST's were, bad input gives one line."""

import json

import numpy as np
import pytest
from PIL import Image

from embedfm.cli import main
from embedfm.images import to_fashion_mnist
from embedfm.index import load, make_index, set_search_params


def unit(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_equals_brute_force_top_k():
    ref, q = unit(500, 16), unit(20, 16, seed=1)
    sims, ids = make_index(ref, "Flat").search(q, 5)
    brute = np.argsort(-(q @ ref.T), axis=1, kind="stable")[:, :5]  # (20, 5) by a loop-free brute force
    assert (ids == brute).all()
    assert np.allclose(sims, np.take_along_axis(q @ ref.T, brute, axis=1), atol=1e-5)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW8", "IVF8,PQ8x4"])
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


def test_photo_on_white_becomes_a_centred_bright_garment():
    photo = np.full((300, 200), 255, dtype=np.uint8)  # white background, portrait
    photo[50:250, 60:140] = 40  # a dark garment, 200 tall × 80 wide
    a = to_fashion_mnist(Image.fromarray(photo).convert("RGB"))
    assert a.shape == (28, 28) and a.dtype == np.uint8
    assert a[:, 0].max() == 0 and a.max() >= 200  # black background, bright garment (inverted)
    rows, cols = np.nonzero(a > 128)
    assert rows.min() == 0 and rows.max() == 27  # longest side fills 28 pixels
    assert abs((cols.min() + cols.max()) / 2 - 13.5) <= 1  # centred horizontally
    assert 9 <= cols.max() - cols.min() + 1 <= 13  # aspect kept: 80/200 × 28 ≈ 11


@pytest.mark.slow
def test_index_then_search_through_the_cli(tmp_path, fake_run, capsys):
    run, data = fake_run
    idx = tmp_path / "idx"
    assert main(["index", str(run), "--data-dir", str(data), "--out", str(idx), "--no-progress"]) == 0
    meta = json.loads((idx / "index.json").read_text())
    assert meta["n"] == 300 and meta["factory"] == "Flat" and meta["dim"] == 64

    Image.fromarray(np.full((40, 30), 200, dtype=np.uint8)).save(tmp_path / "q.png")
    capsys.readouterr()
    assert (
        main(
            [
                "search",
                str(run),
                "test:3",
                str(tmp_path / "q.png"),
                "--index",
                str(idx),
                "--k",
                "4",
                "--data-dir",
                str(data),
                "--out",
                str(tmp_path / "grid.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "query test:3 (label: Dress)" in out and f"query {tmp_path / 'q.png'} (label: ?)" in out
    assert (tmp_path / "grid.png").stat().st_size > 0

    # the printed neighbours of test:3 are the index's own top 4
    index, cat, _ = load(idx)
    assert cat["labels"].shape == (300,) and cat["images"].shape == (300, 28, 28)
    first = [line.split()[1] for line in out.splitlines()[2:6]]
    from embedfm.inference import embed_images
    from embedfm.run import Run
    from embedfm.search import load_queries

    q = embed_images(Run.open(run).model(), load_queries(["test:3"], str(data))[0], progress=False)
    assert first == [str(i) for i in index.search(q, 4)[1][0]]

    # a compressed type builds from the same command
    assert (
        main(
            [
                "index",
                str(run),
                "--data-dir",
                str(data),
                "--out",
                str(tmp_path / "pq"),
                "--type",
                "IVF4,PQ8x4",  # 4-bit codes: trained in under a second from 300 items (8-bit PQ8: ten)
                "--nprobe",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "pq" / "index.json").read_text())["nprobe"] == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "{run}", "test:0", "--index", "{tmp}/none"], "no index here"),
        (["index", "{run}", "--type", "Nonsense12", "--out", "{tmp}/x"], "faiss cannot build index"),
        (["index", "{run}", "--type", "IVF4096,Flat", "--out", "{tmp}/x"], "need at least as many catalogue items"),
        (["index", "{run}", "--catalogue", "{tmp}/missing", "--out", "{tmp}/x"], "not 'train', 'test', a folder"),
        (["search", "{run}", "test:99999", "--index", "{idx}"], "the test set has 50 images"),
        (["search", "{run}", "test:x", "--index", "{idx}"], "expected test:N"),
        (["search", "{run}", "{tmp}/nope.png", "--index", "{idx}"], "image file not found"),
        (["search", "{run}", "test:0", "--index", "{idx}", "--k", "0"], "--k must be in 1..300"),
    ],
)
@pytest.mark.slow
def test_bad_index_and_search_input_is_one_line(tmp_path, fake_run, capsys, args, message):
    run, data = fake_run
    idx = tmp_path / "idx"
    assert main(["index", str(run), "--data-dir", str(data), "--out", str(idx), "--no-progress"]) == 0
    capsys.readouterr()
    argv = [a.format(run=run, tmp=tmp_path, idx=idx) for a in args] + ["--data-dir", str(data)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
