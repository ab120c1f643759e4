"""Exports: `embedfm export RUN --format tensorboard|onnx|npz` writes a run's embeddings or network for other tools.

Into --out (default RUN/export/):

    tensorboard  TensorBoard's Embedding Projector files for one split's images (default the test set, at most
                 --max-points of them, a seeded random subset):
                     tensors.tsv              one embedding per line, D tab-separated floats
                     metadata.tsv             a header, then per point: source (test:N), label, class name, the
                                              softmax prediction's class name, whether it is right
                     sprite.png               the images, 28 × 28 each, row-major in a square grid (another
                                              set's: square, at most 64 pixels a side, in colour if they are)
                     projector_config.pbtxt   names the three files (`single_image_dim: 28, 28`)
                 `tensorboard --logdir RUN/export` then shows them under "Projector".
    onnx         model.onnx: the embedding network (BN folded). Input `images`: float32 (N, 1, 28, 28), uint8
                 pixels normalised as `data.to_float` does, (x / 255 - 0.2860) / 0.3530 (a run on another set:
                 (N, C, H, W) of its images, normalised with its set's per-channel pixel statistics); outputs `logits`
                 (N, C) and `embedding` (N, D, unit norm); N is a dynamic axis. Checked with `onnx.checker`, and against
                 torch with onnxruntime where it is installed. Needs the `export` extra
                 (`pip install 'embedfm[export]'`: onnx, onnxscript, onnxruntime).
    npz          embeddings.npz: what `embedfm eval` saves in the run dir (train and test embeddings and labels,
                 softmax and kNN predictions), computed by eval's own `evaluate_run`.

The module imports neither torch nor the API at import time: `embedfm --help` stays fast.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from embedfm import rundir
from embedfm.errors import EmbedfmError
from embedfm.fileio import atomic_save_npz, atomic_write_bytes, atomic_write_text

FORMATS = ("tensorboard", "onnx", "npz")
SPLITS = ("test", "train")
DEFAULT_SPLIT, DEFAULT_MAX_POINTS = "test", 10_000
THUMB = 28
SPRITE_MAX_PX = 8192  # the Embedding Projector loads sprites up to 8192 × 8192 pixels
MAX_POINTS = (SPRITE_MAX_PX // THUMB) ** 2  # 85 264 thumbnails
TENSORS, METADATA, SPRITE, PROJECTOR_CONFIG = "tensors.tsv", "metadata.tsv", "sprite.png", "projector_config.pbtxt"
ONNX_FILE, NPZ_FILE = "model.onnx", rundir.EMBEDDINGS
ONNX_INPUT, ONNX_OUTPUTS = "images", ("logits", "embedding")
ONNX_TOLERANCE = 1e-4  # onnxruntime vs torch, max abs difference accepted at export (measured ~1e-7)


def export(
    run_dir: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None = None,
    split: str | None = None,
    max_points: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    log=print,
) -> list[Path]:
    """Export `run_dir` in format `fmt` into `out` (default RUN/export); returns the files written.

    `split` and `max_points` choose the tensorboard points and are refused for the other formats."""
    if fmt not in FORMATS:
        raise EmbedfmError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt != "tensorboard" and (split is not None or max_points is not None):
        raise EmbedfmError("--split and --max-points choose the points of --format tensorboard only")
    split = split or DEFAULT_SPLIT
    max_points = DEFAULT_MAX_POINTS if max_points is None else max_points
    if split not in SPLITS:
        raise EmbedfmError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if not 1 <= max_points <= MAX_POINTS:
        raise EmbedfmError(f"--max-points must be in 1..{MAX_POINTS} (the projector's sprite limit), got {max_points}")
    from embedfm import api

    out = Path(out) if out else _run_dir(run_dir) / "export"
    if fmt == "npz":
        model = None
        from embedfm.checkpoint import load_checkpoint

        load_checkpoint(run_dir)  # a bad run fails before the data is read
    else:
        model = api.load(run_dir, device="cpu" if fmt == "onnx" else None, data_dir=data_dir)
    with rundir.lock(out, "export", log):  # one writer per export dir
        if fmt == "tensorboard":
            files = export_tensorboard(model, out, split, max_points, seed)
        elif fmt == "onnx":
            files = [export_onnx(model, out, log=log)]
        else:
            files = [export_npz(run_dir, out, data_dir=data_dir, progress=progress)]
    log(f"{fmt} export of {run_dir} → " + ", ".join(str(f) for f in files))
    if fmt == "tensorboard":
        log(f"view it: tensorboard --logdir {out}  (the Projector tab)")
    return files


def _run_dir(run_dir) -> Path:
    p = Path(run_dir)
    return p.parent if p.is_file() else p


# ---------------------------------------------------------------------------------------------- tensorboard


def export_tensorboard(model, out: Path, split: str = "test", max_points: int = DEFAULT_MAX_POINTS, seed: int = 0):
    """The Embedding Projector's four files for (a seeded random subset of) one split. Returns their paths."""
    import numpy as np

    images, labels = model.split(split)
    idx = np.arange(len(labels))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), max_points, replace=False))
    images, labels = images[idx], labels[idx]
    logits, emb = model.outputs(images)  # (N, C), (N, D)
    pred = logits.argmax(1)
    names = model.class_names
    rows = ["source\tlabel\tclass\tpredicted\tcorrect"]
    rows += [
        f"{split}:{i}\t{y}\t{names[y]}\t{names[p]}\t{'yes' if p == y else 'no'}" for i, y, p in zip(idx, labels, pred)
    ]
    buf = io.StringIO()
    np.savetxt(buf, emb, fmt="%.6g", delimiter="\t")
    run_name = model.run_dir.resolve().name.replace(":", "_")  # the projector reads "name:0" as a tensor's output
    tensor_name = f"{run_name} {split} ({model.config.loss}, {len(idx)} points)"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / TENSORS, buf.getvalue())
    atomic_write_text(out / METADATA, "\n".join(rows) + "\n")
    png, thumb = sprite_png(images)
    atomic_write_bytes(out / SPRITE, png)
    atomic_write_text(out / PROJECTOR_CONFIG, projector_config(tensor_name, thumb))
    return [out / TENSORS, out / METADATA, out / SPRITE, out / PROJECTOR_CONFIG]


def sprite_grid(images):
    """uint8 (N, 28, 28) → one uint8 (S·28, S·28) image, S = ceil(sqrt(N)): image i at row i // S, column i % S,
    the cells after the last image black. The order the Embedding Projector reads a sprite in. Another set's
    images (N, H, W) or (N, 3, H, W) become square thumbnails first (`explore_page.thumbnails`; colour stays)."""
    import numpy as np

    from embedfm.explore_page import thumbnails

    images = thumbnails(images)
    n, thumb, extra = len(images), images.shape[1], images.shape[3:]
    side = max(1, math.ceil(math.sqrt(n)))
    if side * thumb > SPRITE_MAX_PX:
        most = (SPRITE_MAX_PX // thumb) ** 2
        raise EmbedfmError(f"{n} thumbnails of {thumb} pixels exceed the projector's sprite; --max-points {most}")
    grid = np.zeros((side * side, thumb, thumb, *extra), dtype=np.uint8)
    grid[:n] = images
    grid = grid.reshape(side, side, thumb, thumb, *extra).swapaxes(1, 2)
    return grid.reshape(side * thumb, side * thumb, *extra)


def sprite_png(images) -> tuple[bytes, int]:
    """(the sprite as PNG, the side of one thumbnail)."""
    from PIL import Image

    grid = sprite_grid(images)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    return buf.getvalue(), grid.shape[0] // max(1, math.ceil(math.sqrt(len(images))))


def projector_config(tensor_name: str, thumb: int = THUMB) -> str:
    """projector_config.pbtxt (text protobuf of TensorBoard's ProjectorConfig), paths relative to its dir."""
    name = tensor_name.replace("\\", "\\\\").replace('"', '\\"')
    return (
        "embeddings {\n"
        f'  tensor_name: "{name}"\n'
        f'  tensor_path: "{TENSORS}"\n'
        f'  metadata_path: "{METADATA}"\n'
        "  sprite {\n"
        f'    image_path: "{SPRITE}"\n'
        f"    single_image_dim: {thumb}\n"
        f"    single_image_dim: {thumb}\n"
        "  }\n"
        "}\n"
    )


# ---------------------------------------------------------------------------------------------- onnx


def onnx_model(network, run_name: str = ""):
    """The network (BN folded, fp32, CPU) as an onnx ModelProto with a dynamic batch axis, checked by
    `onnx.checker`. Input `images` (N, C, H, W) normalised floats (C, H, W: the run's, (1, 28, 28) for
    Fashion-MNIST's); outputs `logits` (N, C), `embedding` (N, D)."""
    import json
    import warnings

    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as e:
        raise EmbedfmError(f"--format onnx needs {e.name}: pip install 'embedfm[export]'") from None
    import torch

    from embedfm import __version__
    from embedfm.models import fuse_for_inference

    c, h, w = input_shape(network)
    mean, std = norm_text(network)
    net = fuse_for_inference(network).to("cpu", torch.float32).eval()
    example = torch.zeros(2, c, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            net,
            (example,),
            input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS),
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            external_data=False,
            verbose=False,
            dynamo=True,
        )
    proto = program.model_proto
    proto.doc_string = (
        f"embedfm {__version__} embedding network{' of ' + run_name if run_name else ''}. Input '{ONNX_INPUT}': "
        f"float32 (N, {c}, {h}, {w}), uint8 pixels as (x / 255 - {mean}) / {std}. Outputs 'logits' (N, C), "
        "'embedding' (N, D), unit norm."
    )
    meta = {"embedfm_version": __version__, "run": run_name, "normalisation": json.dumps({"mean": mean, "std": std})}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto


def input_shape(network) -> tuple[int, int, int]:
    """(channels, height, width) of a network's input images: the model's own where it records them, else
    Fashion-MNIST's (1, 28, 28)."""
    from embedfm.models import EmbeddingNet

    while not isinstance(network, EmbeddingNet):
        inner = getattr(network, "module", None) or getattr(network, "_orig_mod", None)
        if inner is None:
            return 1, THUMB, THUMB
        network = inner
    c, h, w = getattr(network, "input_shape", (1, THUMB, THUMB))
    return int(c), int(h), int(w)


def norm_text(network) -> tuple:
    """The network's input normalisation (`models.norm_of`): mean and std, plain numbers for one channel (as
    Fashion-MNIST's always read), lists for three."""
    from embedfm.models import norm_of

    mean, std = norm_of(network)
    one = lambda v: v[0] if len(v) == 1 else list(v)
    return one(tuple(mean)), one(tuple(std))


def export_onnx(model, out: Path, log=print) -> Path:
    """model.onnx of an api.Model's network; compared with torch on a batch where onnxruntime is installed."""
    proto = onnx_model(model.network, model.run_dir.resolve().name)
    data = proto.SerializeToString()
    diff = max_difference(model.network, data)
    if diff is not None and diff > ONNX_TOLERANCE:
        raise EmbedfmError(f"the ONNX export differs from torch by {diff:.2g} (> {ONNX_TOLERANCE}); not written")
    atomic_write_bytes(out / ONNX_FILE, data)
    log(
        f"{ONNX_FILE}: {len(data) / 2**20:.1f} MiB; "
        + ("onnxruntime not installed, not compared" if diff is None else f"onnxruntime vs torch: max |Δ| {diff:.1e}")
    )
    return out / ONNX_FILE


def onnx_session(model_bytes: bytes, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def max_difference(network, model_bytes: bytes, n: int = 64, seed: int = 0) -> float | None:
    """Max |onnxruntime − torch| over logits and embeddings of n random uint8 images (None without onnxruntime).
    torch's side is `inference.embed` on the CPU in fp32, the path every embedfm command runs."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    import numpy as np
    import torch

    from embedfm.data import to_float
    from embedfm.inference import embed
    from embedfm.models import fuse_for_inference, norm_of

    c, h, w = input_shape(network)
    shape = (n, h, w) if c == 1 else (n, c, h, w)
    images = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    want = embed(fuse_for_inference(network).to("cpu", torch.float32), images, torch.device("cpu"))
    x = to_float(images, *norm_of(network)).numpy()
    logits, emb = onnx_session(model_bytes).run(None, {ONNX_INPUT: x if c > 1 else x.reshape(n, 1, h, w)})
    return float(max(np.abs(logits - want.logits.numpy()).max(), np.abs(emb - want.emb.numpy()).max()))


# ---------------------------------------------------------------------------------------------- npz


def export_npz(run_dir, out: Path, data_dir=None, progress: bool = True) -> Path:
    """embeddings.npz as `embedfm eval` writes it (eval's `evaluate_run`, k=10, cosine), into `out`."""
    from embedfm.evaluate import evaluate_run
    from embedfm.run import Run

    run = Run.open(run_dir)
    _, arrays = evaluate_run(run_dir, data=run.load_data(data_dir, progress=progress), progress=progress, run=run)
    atomic_save_npz(out / NPZ_FILE, arrays)
    return out / NPZ_FILE
