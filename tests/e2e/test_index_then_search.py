"""`embedfm index` then `embedfm search` through the command line: the printed neighbours are the index's own, a
compressed type builds from the same command."""

import json

import numpy as np
import pytest
from PIL import Image

from embedfm.cli import main
from embedfm.index import load


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
