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

The device tests (marked `device`, in the test file of each module they exercise) take conftest's `device` fixture:
the shadow device everywhere, and with CUDA present `cuda:0` as well (`scripts/gpu_check.py` runs `pytest -m device`
there); figures are then compared with tolerances, or not at all, instead of bit for bit.
"""

from __future__ import annotations

import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

# PyTorch warns that a state dict copied into a `meta` parameter is a no-op; into a shadow parameter it is a real copy:
# the device tests that load one ignore it
IGNORE_META_COPY = "ignore:for .* copying from a non-meta parameter:UserWarning"
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


def exact(device: torch.device) -> bool:
    """Whether figures on `device` must equal the CPU's bit for bit (the shadow device computes on the CPU)."""
    return device.type == "meta"
