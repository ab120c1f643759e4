"""Device plumbing, checked without a GPU: training, validation, resume, eval's embedding and the kNN run with the
model and data on a second device, and every op that mixes it with the CPU fails as it would on CUDA.

The second device is a *shadow* device: `ShadowDevice()` makes `torch.device("meta")` behave as a GPU whose tensors
really hold data. A `Shadow` tensor reports device `meta` but keeps a CPU tensor inside, so every op computes real
numbers (mining, `.item()`, `nonzero`, faiss all work, and a run gives the CPU run's figures bit for bit), while
`__torch_dispatch__` applies CUDA's device rules first: an op given a shadow tensor and a CPU tensor that is not
a 0-dim scalar raises "Expected all tensors to be on the same device" (CPU index tensors into a device tensor are
allowed, as on CUDA), a CPU `torch.Generator` drawing for the device raises, and `.numpy()` of a shadow tensor
raises. Factory calls with `device=meta` and `.to(meta)` make shadow tensors; `.cpu()` makes plain ones. The code
under test sees `device.type == "meta"`: everything that holds for "not the CPU" is exercised; what is CUDA-only
(bf16 autocast, the per-step CUDA seed, NCCL) is not, and is run by `scripts/gpu_check.py` on a GPU.

With CUDA present, the same tests also run on `cuda:0` (the GPU check script runs this file there); figures are
then compared with tolerances, or not at all, instead of bit for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from embedfm.config import TrainConfig
from embedfm.errors import EmbedfmError

# PyTorch warns that a state dict copied into a `meta` parameter is a no-op; into a shadow parameter it is a real copy
pytestmark = pytest.mark.filterwarnings("ignore:for .* copying from a non-meta parameter:UserWarning")
SHADOW = torch.device("meta")
aten = torch.ops.aten
# ops whose index tensors may stay on the CPU for a device tensor (CUDA moves them): checked on their other tensors
INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
COPY_OPS = {aten.copy_.default, aten._to_copy.default, aten.lift_fresh.default}  # the device-to-device transfers


class Shadow(torch.Tensor):
    """A tensor on the shadow device: reports `meta`, computes on the CPU tensor `elem` it wraps."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=SHADOW,
            requires_grad=elem.requires_grad,
        )
        r.elem = elem
        return r

    def __repr__(self):
        return f"Shadow({self.elem!r})"

    @property
    def data(self):
        return torch.Tensor.data.__get__(self)

    @data.setter
    def data(self, new: Shadow):  # Module.to(...) of a model already on the device: `param.data = moved`
        torch.Tensor.data.__set__(self, new)
        self.elem = new.elem

    def tolist(self):  # CUDA tensors have it (a copy to the host); the subclass machinery does not
        return self.elem.tolist()

    def numpy(self, *, force: bool = False):
        raise TypeError(
            "can't convert shadow (device) tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first."
        )

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _device_kwarg(kwargs: dict) -> torch.device | None:
    d = kwargs.get("device")
    return None if d is None else torch.device(d)


def _check(func, args, kwargs, shadows: bool, target: torch.device | None) -> None:
    """CUDA's rules for one op that involves the device: raise as CUDA would on a mix with the CPU."""
    flat, _ = tree_flatten((args, kwargs))
    if any(isinstance(a, torch.Generator) and a.device.type == "cpu" for a in flat):
        raise RuntimeError(f"Expected a 'meta' device type for generator but found 'cpu' ({func})")
    if func in COPY_OPS:
        return
    if func in INDEX_OPS:  # self (and values) must be on the device; the indices may be CPU tensors
        if not isinstance(args[0], Shadow) and any(isinstance(t, Shadow) for t in tree_flatten(args[1])[0]):
            raise RuntimeError(f"indices should be either on cpu or on the same device as the indexed tensor ({func})")
        flat, _ = tree_flatten([a for i, a in enumerate(args) if i != 1])
    cpu = [a for a in flat if isinstance(a, torch.Tensor) and not isinstance(a, Shadow) and a.dim() > 0]
    if cpu and (shadows or (target is not None and target.type == "meta")):
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found at least two devices, meta and cpu! ({func})"
        )


def _dispatch(func, args, kwargs):
    """One op: plain CPU ops run as they are; one on the device is checked against CUDA's rules, computed on the CPU
    tensors inside, and its new results wrapped (in-place results are their shadow argument; `.cpu()` stays plain)."""
    flat, _ = tree_flatten((args, kwargs))
    shadows = any(isinstance(a, Shadow) for a in flat)
    target = _device_kwarg(kwargs)
    if not shadows and (target is None or target.type != "meta"):
        return func(*args, **kwargs)  # a plain CPU op
    _check(func, args, kwargs, shadows, target)
    originals = {id(a.elem): a for a in flat if isinstance(a, Shadow)}
    unwrap = lambda a: a.elem if isinstance(a, Shadow) else a
    args, kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
    if target is not None and target.type == "meta":
        kwargs = {**kwargs, "device": torch.device("cpu")}
    out = func(*args, **kwargs)
    to_cpu = target is not None and target.type == "cpu"

    def wrap(o):
        if not isinstance(o, torch.Tensor):
            return o
        if id(o) in originals:  # an in-place op returns its (shadow) argument
            return originals[id(o)]
        return o if to_cpu or any(o is a for a in tree_flatten((args, kwargs))[0]) else Shadow(o)

    return tree_map(wrap, out)


class ShadowDevice(TorchDispatchMode):
    """While active, `meta` is the shadow device (factory calls and `.to(meta)` make `Shadow` tensors)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


DEVICES = ["shadow", *(["cuda"] if torch.cuda.is_available() else [])]
if torch.cuda.is_available():  # cuBLAS reads it when it starts: before this process's first CUDA work
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture(params=DEVICES)
def device(request):
    """The device under test: the shadow device everywhere, and cuda:0 where CUDA is present."""
    if request.param == "cuda":
        yield torch.device("cuda", 0)
        return
    with ShadowDevice():
        yield SHADOW


def exact(device: torch.device) -> bool:
    """Whether figures on `device` must equal the CPU's bit for bit (the shadow device computes on the CPU)."""
    return device.type == "meta"


# ----------------------------------------------------------------------------------------------
# the shadow device itself


def test_the_shadow_device_fails_where_cuda_fails():
    with ShadowDevice():
        x = torch.ones(4, 3).to(SHADOW)
        assert isinstance(x, Shadow) and x.device == SHADOW
        assert isinstance(torch.zeros(2, device=SHADOW), Shadow)
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(4, 3)  # a CPU tensor into a device op
        with pytest.raises(RuntimeError, match="same device"):
            torch.isin(torch.arange(4).to(SHADOW), torch.tensor([0, 2]))
        with pytest.raises(RuntimeError, match="generator"):
            torch.randint(0, 5, (3,), generator=torch.Generator(), device=SHADOW)
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        y = x * torch.tensor(2.0) + 1  # CPU 0-dim scalars mix, as on CUDA
        assert isinstance(y, Shadow) and y.sum().item() == 36.0
        assert isinstance(x[torch.tensor([0, 2])], Shadow)  # CPU indices into a device tensor, as on CUDA
        back = y.cpu()
        assert not isinstance(back, Shadow) and back.device.type == "cpu" and back.numpy().sum() == 36.0
        w = torch.nn.Linear(3, 2).to(SHADOW)
        w(x).sum().backward()
        assert isinstance(w.weight.grad, Shadow)


# ----------------------------------------------------------------------------------------------
# the pieces each defect was in


def test_count_macs_runs_on_the_models_device(device):
    """Defect 1: `count_macs` fed the model a CPU tensor, after `train` had moved the model to the GPU."""
    from embedfm.models import build_model, count_macs

    torch.manual_seed(0)
    expected = count_macs(build_model())
    assert count_macs(build_model().to(device)) == expected


def test_focus_mining_on_the_device(device):
    """Defect 2: with --mining focus the objective's focus ids stayed on the CPU beside device labels."""
    from embedfm.models import build_model
    from embedfm.objectives import build_objective

    torch.manual_seed(0)
    model = build_model(backbone="linear", embedding_dim=8).to(device)
    x = torch.randn(40, 1, 28, 28).to(device)
    y = (torch.arange(40) % 10).to(device)
    loss, stats = build_objective(TrainConfig(loss="triplet", mining="focus"))(*model(x), y)
    loss.backward()
    assert stats["triplets"].item() > 0 and torch.isfinite(loss).item()


def _tiny(out: Path, data: Path, **kw) -> TrainConfig:
    base = dict(
        out=str(out),
        data_dir=str(data),
        loss="triplet",
        mining="focus",
        crop_pad=2,
        limit=100,  # 2 steps of 40 an epoch: every op runs through the shadow device's Python dispatch
        val_size=20,
        batch_size=40,
        m_per_class=2,
        epochs=1,
        knn_k=3,
    )
    return TrainConfig(**{**base, **kw})


def _figures(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("train_seconds", "images_per_s")} for row in history]


def _train(cfg: TrainConfig, device: torch.device, monkeypatch, **kw) -> dict:
    import embedfm.train as train_mod

    with monkeypatch.context() as m:
        m.setattr(train_mod, "select_device", lambda name: device)
        return train_mod.train(cfg, progress=False, log=lambda *a: None, **kw)


def test_training_validation_and_eval_run_on_the_device(tmp_path, fake_data_dir, device, monkeypatch):
    """`train` (data held and augmented on the device, focus mining, validation with its kNN) and eval's embedding
    and kNN on the device; on the shadow device both equal the CPU run's figures bit for bit."""
    import embedfm.evaluate as evaluate_mod

    cpu = _train(_tiny(tmp_path / "cpu", fake_data_dir), torch.device("cpu"), monkeypatch)
    dev = _train(_tiny(tmp_path / "dev", fake_data_dir), device, monkeypatch)
    assert len(dev["history"]) == 1 and all(np.isfinite(v) for v in _figures(dev["history"])[0].values())
    if exact(device):
        assert _figures(dev["history"]) == _figures(cpu["history"])

    entry_cpu, arrays_cpu = evaluate_mod.evaluate_run(tmp_path / "cpu", k=3, progress=False)
    with monkeypatch.context() as m:
        m.setattr(evaluate_mod, "select_device", lambda name: device)
        entry_dev, arrays_dev = evaluate_mod.evaluate_run(tmp_path / "cpu", k=3, progress=False)
    assert arrays_dev["test_embeddings"].dtype == np.float32
    if exact(device):
        assert entry_dev["classifiers"] == entry_cpu["classifiers"] and entry_dev["retrieval"] == entry_cpu["retrieval"]
        for key, a in arrays_cpu.items():
            np.testing.assert_array_equal(arrays_dev[key], a)
    else:  # bf16 autocast on CUDA: the embeddings agree to bf16 precision (predictions of this 1-epoch model on
        # random images are near ties, so they are not compared)
        np.testing.assert_allclose(arrays_dev["test_embeddings"], arrays_cpu["test_embeddings"], atol=0.05)


def test_resume_on_the_device_equals_an_uninterrupted_run(tmp_path, fake_data_dir, device, monkeypatch):
    """A run stopped after epoch 1 and resumed on the device ends with the uninterrupted run's weights, bit for
    bit: on CUDA with --deterministic (the per-step CUDA seed makes the miner's draws resumable)."""
    from embedfm import checkpoint
    from embedfm.train import Hooks

    det = device.type == "cuda"
    # the MLP: what resume moves to the device (weights, optimizer state) does not depend on the backbone
    cfg = lambda name: _tiny(tmp_path / name, fake_data_dir, backbone="mlp", epochs=2, deterministic=det)
    straight = _train(cfg("straight"), device, monkeypatch)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(cfg("resumed"), device, monkeypatch, hooks=Hooks(on_epoch=stop))
    resumed = _train(TrainConfig(out=str(tmp_path / "resumed")), device, monkeypatch, resume=True)
    try:
        assert _figures(resumed["history"]) == _figures(straight["history"])
        a = checkpoint.load_checkpoint(tmp_path / "straight")["model"]
        b = checkpoint.load_checkpoint(tmp_path / "resumed")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        torch.use_deterministic_algorithms(False)


def test_deterministic_setting_is_a_flag_and_sets_torch_and_cublas(tmp_path, fake_data_dir, monkeypatch):
    """--deterministic turns on PyTorch's deterministic algorithms and the cuBLAS workspace before CUDA work;
    a CPU run under it trains (no op in the step lacks a deterministic kernel on the CPU)."""
    from embedfm.cli import build_parser
    from embedfm.train import set_deterministic, step_seed

    assert build_parser().parse_args(["train", "--deterministic", "true"]).deterministic is True
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        _train(_tiny(tmp_path / "det", fake_data_dir, deterministic=True), torch.device("cpu"), monkeypatch)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        set_deterministic(False)  # what the next run of the process does first, unless it asks for determinism
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    seeds = {step_seed(0, e, s, r) for e in range(3) for s in range(50) for r in range(4)}
    assert len(seeds) == 600 and step_seed(0, 1, 2, 3) == step_seed(0, 1, 2, 3)


class FakeGpuIndex:
    """faiss's GPU index as far as the kNN uses it: remembers its GPU, refuses k above GPU_MAX_K."""

    def __init__(self, device: int, index):
        self.device, self.index = device, index

    def search(self, q, k):
        if k > 2048:
            raise RuntimeError("Error: 'k > 0 && k <= GPU_MAX_SELECTION_K' failed")
        return self.index.search(q, k)


def test_knn_goes_to_this_process_gpu_and_large_k_searches_on_the_cpu(monkeypatch):
    """Defect 6: the index went to GPU 0 whatever the process's GPU, and k > 2048 failed on the GPU. faiss's GPU
    API is faked here (this faiss may be a CPU build)."""
    import faiss

    from embedfm import knn

    made = []
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, d, index: made.append(d) or FakeGpuIndex(d, index),
                        raising=False)  # fmt: skip
    monkeypatch.setattr(knn, "_gpu_resources", {})
    monkeypatch.setenv("LOCAL_RANK", "1")
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3000, 8)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    labels, queries = rng.integers(0, 10, 3000), ref[:20] + 0.01

    clf = knn.KNNClassifier(k=10).fit(ref, labels)
    assert made == [1] and clf.index.device == 1  # torchrun's LOCAL_RANK 1: GPU 1
    cpu_clf = knn.KNNClassifier(k=10)
    cpu_clf.index = cpu_clf.cpu_index = knn.build_index(ref, use_gpu=False)
    cpu_clf.labels = labels
    np.testing.assert_array_equal(clf.kneighbors(queries)[1], cpu_clf.kneighbors(queries)[1])
    np.testing.assert_array_equal(clf.kneighbors(queries, k=2500)[1], cpu_clf.kneighbors(queries, k=2500)[1])

    monkeypatch.setenv("LOCAL_RANK", "5")  # a GPU faiss does not see: the CPU index
    assert not isinstance(knn.build_index(ref), FakeGpuIndex)


def test_gpu_status_never_raises(monkeypatch):
    import faiss

    from embedfm import knn

    ok, why = knn.gpu_status()
    assert isinstance(ok, bool) and why
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)

    def broken():
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(faiss, "get_num_gpus", broken)
    ok, why = knn.gpu_status()
    assert not ok and "insufficient" in why and not knn.gpu_available()


def test_tune_refuses_torchrun_in_one_line(tmp_path, monkeypatch):
    """Defect 5: under torchrun only rank 0 pruned a trial and the others hung in a collective; tune refuses."""
    from embedfm.tune import TuneConfig, tune

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(EmbedfmError, match=r"not run under torchrun \(WORLD_SIZE=2\)") as e:
        tune(TuneConfig(out=str(tmp_path / "study")), log=lambda *a: None)
    assert "\n" not in str(e.value) and not (tmp_path / "study").exists()


# ----------------------------------------------------------------------------------------------
# the GPU check script's CPU mode


@pytest.mark.slow
def test_gpu_check_without_cuda_runs_its_cpu_equivalents(tmp_path, monkeypatch, capsys):
    """scripts/gpu_check.py's CPU mode: one line saying there is no CUDA, each recipe for an epoch on a small
    subset, the kNN check, the JSON (the device tests are this file, so they are not run twice here)."""
    from conftest import load_script, make_fake_dataset

    if torch.cuda.is_available():
        pytest.skip("with CUDA the script runs the real GPU check (minutes)")
    data = make_fake_dataset(tmp_path / "data", n_train=400, n_test=100)
    out = tmp_path / "gpu.json"
    gpu_check = load_script("gpu_check")  # in this process: no second interpreter importing torch
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # the script sets it: restored afterwards
    code = gpu_check.main(["--out", str(out), "--data-dir", str(data), "--no-device-tests"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-3000:]
    assert stdout.splitlines()[0].startswith("gpu_check: no CUDA device")
    report = json.loads(out.read_text())
    assert report["cuda"] is False and report["ok"] is True and "cpu_model" in report["machine"]
    assert {r["recipe"] for r in report["recipes"]} == {"default", "best"}
    assert all(r["images_per_s"] > 0 and r["precision"] == "fp32" for r in report["recipes"])
    assert report["knn"]["same_predictions"] is True and report["torchrun"] == {"skipped": "no CUDA"}
