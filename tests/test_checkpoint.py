"""embedfm.checkpoint: safetensors checkpoints, their metadata document, old-format conversion; every damaged or
crafted checkpoint gives one line or a correct model (hand-made cases, then seeded fuzzing)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_stderr as _one_line_error
from fuzzing import (
    CKPT,
    DEEP,
    SEED,
    _at,
    _header,
    _resave,
    _with_header,
    byte_mutation,
    fuzz,
    json_mutation,
    one_line_error,
    run_copy,
)
from safetensors.torch import load, save

from embedfm import checkpoint, rundir
from embedfm import checkpoint as ckpt_io
from embedfm.cli import main
from embedfm.errors import CheckpointError


@pytest.mark.usefixtures("no_hang")
def test_fuzzed_checkpoints_load_a_correct_model_or_fail_in_one_line(tmp_path, tiny):
    """250 mutations: 150 of the bytes (half in the header), 60 of the embedfm metadata document (model args,
    config, optimizer, RNG states), 40 of the safetensors header's tensor entries (dtype, shape, offsets)."""
    raw = (tiny[0] / CKPT).read_bytes()
    header, n = _header(raw)
    meta = json.loads(header["__metadata__"][checkpoint.META_KEY])
    tensors = load(raw)
    shapes = {k: v.shape for k, v in checkpoint.load_model(tiny[0])[0].state_dict().items()}
    run = tmp_path / "run"
    run.mkdir()
    count = iter(range(10**9))

    def mutate(rng):
        i = next(count) % 25
        if i < 15:
            return byte_mutation(raw, rng, [(0, 8 + n)])
        if i < 21:
            desc, doc = json_mutation(meta, rng)
            return f"metadata {desc}", save(tensors, metadata={checkpoint.META_KEY: json.dumps(doc)})
        entries = {k: v for k, v in header.items() if k != "__metadata__"}
        desc, doc = json_mutation(entries, rng)
        if not isinstance(doc, dict):
            doc = {"x": doc}
        return f"header {desc}", _with_header(raw, {**doc, "__metadata__": header["__metadata__"]})

    def attempt(data: bytes):
        (run / CKPT).write_bytes(data)
        model, ckpt = checkpoint.load_model(run)
        assert {k: v.shape for k, v in model.state_dict().items()} == shapes
        logits, emb = model(torch.zeros(2, 1, 28, 28))
        assert logits.shape == (2, 10) and emb.shape == (2, 8)
        assert isinstance(ckpt["config"], dict) and isinstance(ckpt["model_args"], dict)

    fuzz(250, np.random.default_rng(SEED), mutate, attempt)


@pytest.mark.usefixtures("no_hang")
def test_deeply_nested_checkpoint_metadata_is_one_line(tmp_path, tiny):
    run = run_copy(tiny, tmp_path / "run")
    (run / CKPT).write_bytes(save(load((run / CKPT).read_bytes()), metadata={checkpoint.META_KEY: DEEP}))
    one_line_error(checkpoint.load_model, run)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_at("rng", "numpy", 2, value=float("inf")), id="numpy-pos-Infinity"),
        pytest.param(_at("rng", "python", 0, value=float("inf")), id="python-version-Infinity"),
        pytest.param(_at("rng", "numpy", 1, 0, value=2**33), id="numpy-key-over-uint32"),
    ],
)
@pytest.mark.usefixtures("no_hang")
def test_rng_state_out_of_range_is_one_line(tmp_path, tiny, change):
    run = run_copy(tiny, tmp_path / "run")
    _resave(run, change)
    one_line_error(checkpoint.load_model, run)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_at("history", value="abc"), id="history-str"),
        pytest.param(_at("history", value=[1]), id="history-ints"),
        pytest.param(lambda m: m["history"][-1].update(train_seconds="x"), id="train-seconds-str"),
        pytest.param(_at("config", value=[1]), id="config-list"),
        pytest.param(lambda m: m["config"].update(epochs="3"), id="config-epochs-str"),
        pytest.param(lambda m: m["config"].update(nonsense=1), id="config-unknown-key"),
    ],
)
@pytest.mark.usefixtures("no_hang")
def test_eval_of_a_checkpoint_with_malformed_metadata_is_one_line(tmp_path, tiny, capsys, change):
    run = run_copy(tiny, tmp_path / "run")
    _resave(run, change)
    capsys.readouterr()
    assert main(["eval", str(run), "--data-dir", str(tiny[1]), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def _rewritten(src, dst, change):
    """A copy of src's checkpoint with `change(meta)` applied to its JSON metadata, saved the way embedfm saves."""
    from safetensors.torch import load, save

    raw = (src / rundir.CHECKPOINT).read_bytes()
    meta = json.loads(ckpt_io._metadata(raw)[ckpt_io.META_KEY])
    change(meta)
    dst.mkdir()
    (dst / rundir.CHECKPOINT).write_bytes(save(load(raw), metadata={ckpt_io.META_KEY: json.dumps(meta)}))
    return dst


def test_newer_checkpoint_format_is_refused(tmp_path, fake_run):
    src, _ = fake_run
    new = _rewritten(src, tmp_path / "new", lambda m: m.update(format_version=ckpt_io.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer than this embedfm reads"):
        ckpt_io.load_checkpoint(new)


def test_checkpoint_with_incompatible_config(tmp_path, fake_run, capsys):
    src, data = fake_run
    _rewritten(src, tmp_path / "bad", lambda m: m["model_args"].update(embedding_dim=32))  # weights are 64-d
    assert main(["eval", str(tmp_path / "bad"), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "does not match its model config" in err and len(err.strip().splitlines()) == 1, err


def _old_format_copy(src: Path, dst: Path) -> Path:
    """What an older embedfm wrote: the same checkpoint, pickled by torch.save into last.pt."""
    shutil.copytree(src, dst)
    ckpt = checkpoint.load_checkpoint(dst)
    (dst / rundir.CHECKPOINT).unlink()
    torch.save({**ckpt, "format_version": 1}, dst / rundir.LEGACY_CHECKPOINT)
    return dst


def test_old_format_is_refused_with_how_to_convert_then_converts_safely(tmp_path, fake_run, capsys):
    src, data = fake_run
    old = _old_format_copy(src, tmp_path / "old")
    assert main(["eval", str(old), "--data-dir", str(data), "--no-progress"]) == 2
    assert f"embedfm convert {old}" in _one_line_error(capsys)
    assert main(["convert", str(old)]) == 0  # numpy RNG arrays pass the weights-only unpickler
    assert "weights-only unpickler" in capsys.readouterr().out
    a, b = checkpoint.load_checkpoint(src), checkpoint.load_checkpoint(old)
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["rng"]["python"] == b["rng"]["python"] and torch.equal(a["rng"]["data"], b["rng"]["data"])
    assert main(["eval", str(old), "--data-dir", str(data), "--no-progress"]) == 0
