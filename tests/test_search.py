"""embedfm.search (and the index command it reads): bad queries, flags and index dirs give one line, exit 2."""

import pytest

from embedfm.cli import main


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
