"""`embedfm export`: TensorBoard projector files that parse and agree with each other and with the run; an ONNX
model that onnx.checker accepts and onnxruntime runs to torch's outputs within 1e-5 at any batch size; the npz
eval writes; bad flags give one line."""

import math
import re

import numpy as np
import pytest
from PIL import Image

from embedfm.cli import build_parser, main
from embedfm.export import FORMATS, export, projector_config, sprite_grid

# ---------------------------------------------------------------------------------------------- fast


def test_sprite_grid_is_square_row_major_and_padded_black():
    images = np.arange(5 * 28 * 28, dtype=np.int64).reshape(5, 28, 28).astype(np.uint8)
    images[:, 0, 0] = np.arange(1, 6) * 40  # tell them apart
    grid = sprite_grid(images)
    assert grid.shape == (3 * 28, 3 * 28) and grid.dtype == np.uint8
    for i, img in enumerate(images):
        r, c = divmod(i, 3)
        assert np.array_equal(grid[r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28], img)
    assert not grid[56:, 56:].any() and not grid[28:56, 56:].any()  # cells 5..8: black
    assert sprite_grid(images[:1]).shape == (28, 28)


def test_projector_config_names_the_files_and_thumbnail_size():
    text = projector_config('run "a" test')
    assert re.search(r'tensor_path: "tensors.tsv"', text) and re.search(r'metadata_path: "metadata.tsv"', text)
    assert re.search(r'image_path: "sprite.png"', text)
    assert re.findall(r"single_image_dim: (\d+)", text) == ["28", "28"]
    assert 'tensor_name: "run \\"a\\" test"' in text
    assert text.count("{") == text.count("}") == 2


def test_cli_formats_are_the_modules():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["export"]
    fmt = next(a for a in sub._actions if a.dest == "fmt")
    assert tuple(fmt.choices) == FORMATS and fmt.required


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "onnx", "--split", "train"], "tensorboard only"),
        (["--format", "npz", "--max-points", "5"], "tensorboard only"),
        (["--format", "tensorboard", "--max-points", "0"], "--max-points must be in"),
        (["--format", "tensorboard", "--max-points", "100000"], "sprite limit"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, capsys, args, message):
    assert main(["export", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--format", "npz"]) == 2
    assert "no such run dir" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- on a run


def read_tsv(path):
    return [line.split("\t") for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_tensorboard_files_parse_and_agree(fake_run, tmp_path):
    import embedfm

    run, _ = fake_run
    out = tmp_path / "tb"
    assert main(["export", str(run), "--format", "tensorboard", "--max-points", "30", "--out", str(out)]) == 0
    tensors = np.loadtxt(out / "tensors.tsv", delimiter="\t", ndmin=2)
    meta = read_tsv(out / "metadata.tsv")
    assert meta[0] == ["source", "label", "class", "predicted", "correct"]
    rows = meta[1:]
    assert tensors.shape == (30, 64) and len(rows) == 30
    assert np.allclose(np.linalg.norm(tensors, axis=1), 1, atol=1e-4)

    m = embedfm.load(run, device="cpu")
    images, labels = m.split("test")
    idx = np.array([int(r[0].removeprefix("test:")) for r in rows])
    assert len(set(idx)) == 30 and np.all(np.diff(idx) > 0)  # a subset, in test-set order
    assert [int(r[1]) for r in rows] == labels[idx].tolist()
    assert [r[2] for r in rows] == [m.class_names[y] for y in labels[idx]]
    pred = m.predict(images[idx])
    assert [r[3] for r in rows] == [m.class_names[p] for p in pred]
    assert [r[4] for r in rows] == ["yes" if p == y else "no" for p, y in zip(pred, labels[idx])]
    assert np.allclose(tensors, m.embed(images[idx]), atol=1e-5)

    sprite = np.asarray(Image.open(out / "sprite.png"))
    side = math.ceil(math.sqrt(30))
    assert sprite.shape == (side * 28, side * 28)
    assert np.array_equal(sprite, sprite_grid(images[idx]))  # thumbnail i is point i

    config = (out / "projector_config.pbtxt").read_text()
    for name in re.findall(r'(?:tensor_path|metadata_path|image_path): "([^"]+)"', config):
        assert (out / name).is_file(), name
    assert re.findall(r"single_image_dim: (\d+)", config) == ["28", "28"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))  # atomic writes left nothing behind


@pytest.mark.numeric
@pytest.mark.slow
def test_onnx_runtime_equals_torch(fake_run, tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    from embedfm.data import to_float
    from embedfm.inference import embed
    from embedfm.run import Run

    run, _ = fake_run
    (path,) = export(run, "onnx", out=tmp_path, log=lambda *a: None)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits", "embedding"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]  # dynamic batch
    assert {p.key for p in proto.metadata_props} >= {"embedfm_version", "normalisation"}

    network = Run.open(run).model("cpu")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for n in (1, 7, 300):
        images = torch.from_numpy(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        want = embed(network, images, torch.device("cpu"))  # embedfm's torch path, fp32
        with torch.no_grad():
            plain_logits, plain_emb = network(to_float(images))  # the unfused network
        logits, emb = session.run(None, {"images": to_float(images).numpy()})
        assert logits.shape == (n, 10) and emb.shape == (n, 64)
        assert np.abs(logits - want.logits.numpy()).max() < 1e-5
        assert np.abs(emb - want.emb.numpy()).max() < 1e-5
        assert np.abs(logits - plain_logits.numpy()).max() < 1e-5 and np.abs(emb - plain_emb.numpy()).max() < 1e-5


@pytest.mark.slow
def test_npz_holds_what_eval_writes(fake_run, tmp_path):
    run, data = fake_run
    (path,) = export(run, "npz", out=tmp_path, data_dir=data, progress=False, log=lambda *a: None)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert set(arrays) == {
        "train_embeddings",
        "train_labels",
        "test_embeddings",
        "test_labels",
        "pred_softmax",
        "pred_knn",
        "pred_knn_flip",  # the run uses flip TTA (the default)
        "test_probs",  # the softmax head's class probabilities
    }
    assert arrays["train_embeddings"].shape == (200, 64) and arrays["test_embeddings"].shape == (50, 64)
    assert arrays["test_probs"].shape == (50, 10)
    assert arrays["train_labels"].shape == (200,)
    assert all(arrays[k].shape == (50,) for k in ("test_labels", "pred_softmax", "pred_knn", "pred_knn_flip"))
    assert not (run / "embeddings.npz").exists()  # the run dir is left alone
