"""A run dir from a stranger can be read, never run: crafted pickles (whose unpickling would `touch` a marker
file) in place of every file each command reads; every command refuses with one line (exit 2) and the marker never
appears."""

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzing import CAT_KEYS, CKPT, EMB_KEYS, LEGACY, Payload, crafted_npz, crafted_pickle, run_copy

from embedfm import rundir, summarize
from embedfm.cli import main


@pytest.mark.usefixtures("no_hang")
def test_the_payload_is_live(tmp_path):
    """The check below means something: unpickling the crafted bytes does run the command."""
    marker = tmp_path / "PWNED"
    pickle.loads(crafted_pickle(marker))
    assert marker.exists()
    marker.unlink()
    with np.load(io.BytesIO(crafted_npz(marker, ["a"])), allow_pickle=True) as z:
        z["a"]
    assert marker.exists()


# (command, file replaced by a crafted one (relative to the run dir), how: pickle / npz / torch / only (the run dir
# holds nothing but the crafted file), what the error line says)
COMMANDS = [
    (["eval", "{run}", "--data-dir", "{data}", "--no-progress"], CKPT, "pickle", "corrupt or unreadable checkpoint"),
    (["eval", "{run}", "--data-dir", "{data}", "--no-progress"], LEGACY, "only", "embedfm convert"),
    (["viz", "{run}"], CKPT, "pickle", "corrupt or unreadable checkpoint"),
    (["viz", "{run}"], rundir.EMBEDDINGS, "pickle", "unreadable embeddings file"),
    (["viz", "{run}"], rundir.EMBEDDINGS, "npz", "unreadable embeddings file"),
    (["index", "{run}", "--data-dir", "{data}", "--out", "{tmp}/idx", "--no-progress"], CKPT, "pickle", "corrupt"),
    (["search", "{run}", "test:0", "--data-dir", "{data}"], CKPT, "pickle", "corrupt or unreadable checkpoint"),
    (["search", "{run}", "test:0", "--data-dir", "{data}"], "index/index.faiss", "pickle", "does not match"),
    (["search", "{run}", "test:0", "--data-dir", "{data}"], "index/index.json", "pickle", "index.json: unreadable"),
    (["train", "--resume", "{run}"], CKPT, "pickle", "corrupt or unreadable checkpoint"),
    (["train", "--resume", "{run}"], LEGACY, "only", "embedfm convert"),
    (["summarize", "{run}"], rundir.REPORT, "pickle", "report.json"),
    (["summarize", "{run}"], rundir.HISTORY, "pickle", "history.json"),
    (["summarize", "{run}"], summarize.PIXELS, "pickle", "pixels.json"),
    (["convert", "{run}"], LEGACY, "only", "cannot be read without running code"),
    (["convert", "{run}"], LEGACY, "torch", "cannot be read without running code"),
    (["train", "--config", "{run}/config.json", "--out", "{tmp}/new"], rundir.CONFIG, "pickle", "not valid JSON"),
]


# these read index.faiss through the child-process probe first (a subprocess each)
SLOW_COMMANDS = [
    (
        ["search", "{run}", "test:0", "--data-dir", "{data}"],
        "index/catalogue.npz",
        "pickle",
        "npz: unreadable",
    ),
    (["search", "{run}", "test:0", "--data-dir", "{data}"], "index/catalogue.npz", "npz", "npz: unreadable"),
]


def _plant(run: Path, name: str, how: str, marker: Path) -> None:
    if how == "only":  # a run dir that holds nothing but the crafted old-format checkpoint
        for f in run.iterdir():
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    if how == "torch":  # the old format as torch.save wrote it: a zip holding the pickle
        (run / CKPT).unlink()
        torch.save({"model": Payload(marker)}, run / name)
        return
    if how == "npz":
        data = crafted_npz(marker, CAT_KEYS if "catalogue" in name else EMB_KEYS)
    else:
        data = crafted_pickle(marker)
    (run / name).write_bytes(data)


def _refused(tmp_path, tiny, capsys, argv, name, how, message) -> None:
    run, data = run_copy(tiny, tmp_path / "run"), tiny[1]
    marker = tmp_path / "PWNED"
    _plant(run, name, how, marker)
    capsys.readouterr()
    assert main([a.format(run=run, data=data, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert not marker.exists(), f"{argv[0]} ran code from a crafted {name}"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("argv, name, how, message", COMMANDS, ids=[f"{c[0][0]}-{c[1]}-{c[2]}" for c in COMMANDS])
@pytest.mark.usefixtures("no_hang")
def test_a_crafted_file_is_refused_in_one_line_and_never_run(tmp_path, tiny, capsys, argv, name, how, message):
    _refused(tmp_path, tiny, capsys, argv, name, how, message)


@pytest.mark.slow
@pytest.mark.parametrize("argv, name, how, message", SLOW_COMMANDS, ids=[f"{c[1]}-{c[2]}" for c in SLOW_COMMANDS])
@pytest.mark.usefixtures("no_hang")
def test_a_crafted_catalogue_is_refused_after_the_index_probe(tmp_path, tiny, capsys, argv, name, how, message):
    _refused(tmp_path, tiny, capsys, argv, name, how, message)
