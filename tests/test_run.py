"""run.py: a run dir read back as one object, and each consistency check of runs, with its one message."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_fake_dataset

from embedfm import checkpoint, rundir
from embedfm.cli import main
from embedfm.config import TrainConfig
from embedfm.data import load_fashion_mnist
from embedfm.errors import EmbedfmError
from embedfm.evaluate import save_embeddings
from embedfm.run import EvaluatedRuns, Run, check_comparable, check_same_data, check_same_images

OLD_RUN = Path(__file__).parent / "data" / "old_run"  # written by embedfm before run.py existed
SAME_DATA = "trained on different data"
SAME_IMAGES = "were evaluated on different test images and cannot be compared"


def test_run_open_gives_the_checkpoints_parts_by_name(fake_run):
    run_dir, data_dir = fake_run
    run = Run.open(run_dir)
    saved = checkpoint.load_checkpoint(run_dir)  # the independent reading: the dict save_checkpoint was given
    assert run.dir == run_dir and run.name == "run" and run.path == run_dir / rundir.CHECKPOINT
    assert isinstance(run.config, TrainConfig) and run.config.to_dict() == {**saved["config"]}
    assert run.model_args == saved["model_args"] and run.embedding_dim == 64 and run.num_classes == 10
    assert run.history == saved["history"] and len(run.history) == 1 and run.epoch == 0
    assert run.data_fingerprint == load_fashion_mnist(data_dir).fingerprint()
    assert run.splits == saved["splits"]
    assert Run.open(run_dir / rundir.CHECKPOINT).dir == run_dir  # the checkpoint file names its run too
    net = run.model("cpu")
    assert not net.training
    for k, v in saved["model"].items():
        assert torch.equal(net.state_dict()[k], v), k


def test_describing_a_run_loads_no_weights(fake_run, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the whole checkpoint was read")

    monkeypatch.setattr(checkpoint, "load_checkpoint", refuse)
    run = Run.open(fake_run[0])
    assert run.config.epochs == 1 and run.history and run.data_fingerprint and run.model_args


def test_the_training_state_is_there_for_resuming(fake_run):
    run = Run.open(fake_run[0]).load()
    assert {"param_groups", "state"} <= set(run.optimizer_state())
    assert {"python", "numpy", "torch", "data"} <= set(run.rng_state())
    assert run.scheduler_state() and run.weights().keys() == run.model().state_dict().keys()


def test_a_run_trained_on_other_data_is_one_line(fake_run, tmp_path):
    other = load_fashion_mnist(make_fake_dataset(tmp_path / "other", n_train=300, n_test=50, seed=7))
    run = Run.open(fake_run[0])
    run.check_data(load_fashion_mnist(fake_run[1]))  # its own data: nothing to say
    with pytest.raises(EmbedfmError, match=SAME_DATA) as e:
        run.check_data(other)
    assert str(fake_run[0]) in str(e.value) and "--data-dir" in str(e.value) and "\n" not in str(e.value)


def test_the_api_and_eval_give_the_same_message_for_other_data(fake_run, tmp_path, capsys):
    import embedfm

    other = make_fake_dataset(tmp_path / "other", n_train=300, n_test=50, seed=7)
    with pytest.raises(EmbedfmError, match=SAME_DATA):
        embedfm.load(fake_run[0], device="cpu", data_dir=other).split("test")
    capsys.readouterr()
    assert (
        main(["eval", str(fake_run[0]), "--data-dir", str(other), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    )
    assert SAME_DATA in capsys.readouterr().err


def _fake_run_with(meta_data: dict | None) -> Run:
    return Run(Path("x") / rundir.CHECKPOINT, {"config": {}, "model_args": {}, "data": meta_data})


def test_runs_trained_on_different_data_are_not_compared():
    a, b = _fake_run_with({"sha1": "a"}), _fake_run_with({"sha1": "b"})
    check_same_data([a, _fake_run_with({"sha1": "a"})])
    with pytest.raises(EmbedfmError, match="these runs were trained on different data and cannot be compared: A, B"):
        check_same_data([a, b], ["A", "B"])


def _evaluated(d: Path, test_labels, train_labels=tuple(range(10))) -> Path:
    n, m = len(test_labels), len(train_labels)
    save_embeddings(d, {"test_labels": np.asarray(test_labels), "train_labels": np.asarray(train_labels),
                        "pred_softmax": np.asarray(test_labels), "test_probs": np.full((n, 10), 0.1, np.float32),
                        "train_embeddings": np.eye(m, 4, dtype=np.float32),
                        "test_embeddings": np.eye(n, 4, dtype=np.float32)})  # fmt: skip
    return d


def test_runs_evaluated_on_different_images_are_not_compared(tmp_path):
    a = _evaluated(tmp_path / "a", np.arange(10))
    b = _evaluated(tmp_path / "b", np.arange(10))
    c = _evaluated(tmp_path / "c", np.arange(10)[::-1])
    d = _evaluated(tmp_path / "d", np.arange(10), train_labels=np.arange(10)[::-1])
    runs = EvaluatedRuns.open([a, b], ("test_embeddings",))
    assert len(runs) == 2 and np.array_equal(runs.labels, np.arange(10))
    with pytest.raises(EmbedfmError, match=f"{a} and {c} {SAME_IMAGES}"):
        EvaluatedRuns.open([a, c], ("test_embeddings",))
    EvaluatedRuns.open([a, d], ("test_embeddings",))  # the train images only matter where they are references
    with pytest.raises(EmbedfmError, match="were evaluated on different train images and cannot be compared"):
        EvaluatedRuns.open([a, d], ("train_embeddings",), references=True)
    with pytest.raises(EmbedfmError, match=SAME_IMAGES):
        check_same_images(["x", "y"], [np.arange(3), np.arange(4)])  # a different number of images


@pytest.mark.parametrize("command", ["ensemble", "floor", "floor --crossfit-only"])
def test_every_command_comparing_runs_says_the_one_message(tmp_path, command, capsys):
    a = _evaluated(tmp_path / "a", np.arange(10))
    c = _evaluated(tmp_path / "c", np.arange(10)[::-1])
    for d, labels in ((a, np.arange(10)), (c, np.arange(10)[::-1])):
        (d / rundir.HISTORY).write_text(json.dumps([{"val_acc": 0.5}]))
        (d / rundir.CONFIG).write_text(json.dumps({"focus_classes": [0, 2, 4, 6]}))
        digits = "".join(map(str, labels))
        entry = {"per_image": {"labels": digits, "softmax": digits}}
        (d / rundir.REPORT).write_text(json.dumps({"runs": {d.name: entry}}))
    capsys.readouterr()
    assert main([*command.split(), str(a), str(c), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert SAME_IMAGES in err and len(err.strip().splitlines()) == 1, err


def test_evaluated_runs_with_checkpoints_are_checked_for_the_same_data(fake_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(fake_run[0], d)
    check_comparable([a, b], [np.arange(3)] * 2)
    ckpt = checkpoint.load_checkpoint(b)
    ckpt["data"] = {**ckpt["data"], "sha1": "0" * 40}  # the same run, said to be trained on other data
    checkpoint.save_checkpoint(b, {k: v for k, v in ckpt.items() if k != "format_version"})
    with pytest.raises(EmbedfmError, match="these runs were trained on different data"):
        check_comparable([a, b], [np.arange(3)] * 2)


def test_a_run_dir_written_before_run_py_still_loads_and_evaluates(tmp_path, capsys):
    """tests/data/old_run: a linear 8-d run on make_fake_dataset(n_train=300, n_test=50), trained and evaluated by
    the embedfm of before this module."""
    data_dir = make_fake_dataset(tmp_path / "data", n_train=300, n_test=50)
    old = tmp_path / "old_run"
    shutil.copytree(OLD_RUN, old)
    committed = dict(np.load(OLD_RUN / rundir.EMBEDDINGS))
    run = Run.open(old)
    assert (run.config.backbone, run.embedding_dim, run.epoch, len(run.history)) == ("linear", 8, 0, 1)
    run.check_data(load_fashion_mnist(data_dir))  # the same fake data it was trained on
    assert run.load().optimizer_state()["param_groups"]
    assert main(["eval", str(old), "--data-dir", str(data_dir), "--no-progress"]) == 0
    fresh = np.load(old / rundir.EMBEDDINGS)
    assert np.array_equal(fresh["test_labels"], committed["test_labels"])
    # the same weights on the same images: equal up to float kernels' rounding
    np.testing.assert_allclose(fresh["test_embeddings"], committed["test_embeddings"], atol=1e-4)
    report = json.loads((old / rundir.REPORT).read_text())["runs"]["old_run"]
    assert report["config"]["backbone"] == "linear" and report["epochs"] == 1


@pytest.mark.slow
def test_runs_on_different_data_are_not_compared(tmp_path, fake_run, capsys):
    src, _ = fake_run
    other_data = make_fake_dataset(tmp_path / "other", n_train=300, n_test=50, seed=7)
    other = tmp_path / "other_run"
    assert main(["train", "--out", str(other), "--data-dir", str(other_data), "--epochs", "1", *TINY]) == 0
    capsys.readouterr()
    assert main(["eval", str(src), str(other), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "trained on different data" in err, err
