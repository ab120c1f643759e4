"""Checkpoints: a run's state after an epoch, saved in a format that cannot run code, and loaded back with one
clear line for each way it can be unusable.

A checkpoint is one file, `RUN/checkpoint.safetensors` (see `rundir.py` for the rest of a run dir), written
atomically (`fileio.py`). Its tensors are the weights (`model/<name>`), the optimizer's state tensors
(`optim/<param index>/<key>`) and the torch random-number states (`rng/torch`, `rng/data`, `rng/cuda/<i>`); its
safetensors metadata holds one JSON document (`embedfm`) with everything else: format version, the `model_args`
that rebuild the network alone, the resolved config, epoch, history, data fingerprint, split sizes, the
optimizer's param groups and non-tensor state, the scheduler's state and the Python / NumPy RNG states.
Reading it parses a JSON header and copies tensor bytes: no pickle, nothing in the file is executed. That is
what lets a run dir from a stranger be evaluated safely.

Run dirs from before this format hold a pickled `last.pt`, which can run arbitrary code when loaded: they are
refused with a line saying how to convert them (`embedfm convert RUN`), which loads the old file with torch's
restricted `weights_only` unpickler only. embedfm never runs the full unpickler on anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from embedfm.errors import CheckpointError
from embedfm.fileio import atomic_write_bytes
from embedfm.rundir import CHECKPOINT, LEGACY_CHECKPOINT

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions only: importing this module stays cheap for torch-free callers.

FORMAT_VERSION = 2
META_KEY = "embedfm"


def save_checkpoint(run_dir: str | Path, state: dict) -> None:
    """`state` holds model_args, model (a state dict) and config; for resuming also optimizer, scheduler (state
    dicts), epoch, history, rng ({"python", "numpy", "torch", "data", optionally "cuda"}), data, splits."""
    from safetensors.torch import save

    tensors = {f"model/{k}": _cpu(v) for k, v in state["model"].items()}
    meta = {k: v for k, v in state.items() if k not in ("model", "optimizer", "rng")}
    meta["format_version"] = FORMAT_VERSION
    if "optimizer" in state:
        opt_tensors, meta["optimizer"] = _split_optimizer(state["optimizer"])
        tensors.update(opt_tensors)
    if "rng" in state:
        rng = state["rng"]
        tensors["rng/torch"], tensors["rng/data"] = _cpu(rng["torch"]), _cpu(rng["data"])
        tensors.update({f"rng/cuda/{i}": _cpu(s) for i, s in enumerate(rng.get("cuda", []))})
        version, mt, gauss = rng["python"]
        name, keys, pos, has_gauss, cached = rng["numpy"]
        meta["rng"] = {"python": [version, list(mt), gauss],
                       "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]}  # fmt: skip
    data = save(tensors, metadata={META_KEY: json.dumps(meta)})
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, data)


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def _split_optimizer(sd: dict) -> tuple[dict, dict]:
    """An optimizer state dict → (its tensors by name, the rest as JSON-able data)."""
    import torch

    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = _cpu(value)
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, per_param in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(per_param)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def checkpoint_path(run_dir: str | Path) -> Path:
    """RUN/checkpoint.safetensors, or one line saying why there is none to read (never loads a pickle)."""
    p = Path(run_dir)
    if p.is_file() and p.suffix == ".safetensors":
        return p
    if not p.exists():
        raise CheckpointError(f"{run_dir}: no such run dir")
    if not p.is_dir():
        raise CheckpointError(f"{run_dir}: not a run dir")
    if (p / CHECKPOINT).is_file():
        return p / CHECKPOINT
    if (p / LEGACY_CHECKPOINT).exists():
        raise CheckpointError(
            f"{p}: holds an old-format checkpoint ({LEGACY_CHECKPOINT}, a pickle, which can run code when loaded); "
            f"convert it with `embedfm convert {p}`"
        )
    raise CheckpointError(f"{p}: no checkpoint ({CHECKPOINT}) in this run dir; train it first")


def read_meta(run_dir: str | Path) -> dict:
    """The checkpoint's JSON document alone (config, model_args, epoch, history, data fingerprint, splits), read from
    the safetensors header without the tensors: what describing a run needs (`run.Run`). Checked as `load_checkpoint`
    checks it; damage to the tensors shows when they are loaded."""
    p = checkpoint_path(run_dir)
    try:
        with p.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            # a hostile length must not become an allocation: it is bounded by the file and by safetensors' own limit
            if len(head) < 8 or not 0 < n <= min(p.stat().st_size - 8, HEADER_LIMIT):
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = json.loads((header.get("__metadata__") or {}).get(META_KEY, "null"))
    except (OSError, ValueError, UnicodeDecodeError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{p}: corrupt or unreadable checkpoint ({_first_line(e)})") from None
    return _checked_meta(meta, p)


def load_checkpoint(run_dir: str | Path) -> dict:
    """Load a run's checkpoint into the dict `save_checkpoint` was given, with one clear line for each way it
    can be unusable: missing, old format, truncated or corrupt, newer than this embedfm, or missing keys."""
    from safetensors.torch import load

    p = checkpoint_path(run_dir)
    try:
        raw = p.read_bytes()
        tensors = load(raw)
        meta = json.loads(_metadata(raw).get(META_KEY, "null"))
    except (OSError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: corrupt or unreadable checkpoint ({_first_line(e)})") from None
    except Exception as e:  # safetensors raises its own SafetensorError for a damaged file
        raise CheckpointError(f"{p}: corrupt or unreadable checkpoint ({type(e).__name__})") from None
    ckpt = dict(_checked_meta(meta, p))
    ckpt["model"] = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        if "optimizer" in meta:
            ckpt["optimizer"] = _join_optimizer(tensors, meta["optimizer"])
        if "rng" in meta:
            ckpt["rng"] = _join_rng(tensors, meta["rng"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"{p}: checkpoint's training state is malformed ({_first_line(e)})") from None
    return ckpt


HEADER_LIMIT = 100_000_000  # bytes: the largest safetensors header safetensors itself reads


def _checked_meta(meta, p: Path) -> dict:
    """The checkpoint's JSON document, or one line: not embedfm's, a format newer than this embedfm, keys missing."""
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise CheckpointError(f"{p}: not an embedfm checkpoint")
    version = meta["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format {version!r} is newer than this embedfm reads ({FORMAT_VERSION}); upgrade embedfm"
            if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
            else f"{p}: checkpoint format {version!r} is not a format version; not an embedfm checkpoint"
        )
    for key, kind in (("model_args", dict), ("config", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{p}: checkpoint lacks {key!r}")
    return meta


def _metadata(raw: bytes) -> dict:
    """The safetensors header's __metadata__ (the header is 8 bytes of little-endian length, then JSON)."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]).get("__metadata__") or {}


def _join_rng(tensors: dict, meta: dict) -> dict:
    import numpy as np

    version, mt, gauss = meta["python"]
    name, keys, pos, has_gauss, cached = meta["numpy"]
    # the ranges random.setstate / np.random.set_state accept, checked here so a damaged state is one line
    if not (len(mt) == 625 and all(isinstance(x, int) and 0 <= x < 2**32 for x in mt[:624]) and 0 <= mt[624] <= 624):
        raise ValueError("Python RNG state out of range")
    if not (len(keys) == 624 and all(isinstance(k, int) and 0 <= k < 2**32 for k in keys) and 0 <= pos <= 624):
        raise ValueError("NumPy RNG state out of range")
    if not (isinstance(version, int) and isinstance(has_gauss, int) and (gauss is None or isinstance(gauss, float))):
        raise ValueError("RNG state has the wrong types")
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k[9:]))]
    return {"python": (int(version), tuple(int(x) for x in mt), gauss),
            "numpy": (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)),
            "torch": tensors["rng/torch"], "data": tensors["rng/data"], "cuda": cuda}  # fmt: skip


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def model_args(meta: dict, where: str | Path) -> dict:
    """The checkpoint's arguments of `models.build_model`, checked (a known backbone — built-in or tv:<torchvision
    model> —, sizes in range, only --widths as backbone arguments, in_channels and image_size [H, W] in range, a
    weights path as a string) and ready to pass; one line if they are not. A checkpoint without in_channels /
    image_size (all before them) is 1×28×28: build_model's defaults."""
    from embedfm.config import BACKBONES

    args = meta["model_args"]
    try:
        backbone = args.get("backbone")
        if isinstance(backbone, str) and backbone.startswith("tv:"):
            from embedfm import tvbackbones

            if backbone[3:] not in tvbackbones.names():
                raise ValueError(f"unknown torchvision backbone {backbone}")
        elif backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}")
        if set(args) - {
            "backbone",
            "embedding_dim",
            "num_classes",
            "backbone_kwargs",
            "in_channels",
            "image_size",
            "weights",
            "norm",
            "frozen_stem",
        }:
            raise ValueError(f"unknown model arguments {args}")
        channels, size = args.get("in_channels", 1), args.get("image_size", [28, 28])
        if not (
            type(channels) is int
            and 1 <= channels <= 64
            and isinstance(size, (list, tuple))
            and len(size) == 2
            and all(type(s) is int and 1 <= s <= 8192 for s in size)
        ):
            raise ValueError(f"in_channels / image_size out of range: {channels!r}, {size!r}")
        if "image_size" in args:
            args = {**args, "image_size": tuple(size)}
        norm = args.get("norm", {"mean": [0.5], "std": [0.5]})
        if (
            not (
                isinstance(norm, dict)
                and set(norm) == {"mean", "std"}
                and all(isinstance(norm[k], list) and len(norm[k]) == channels for k in norm)
                and all(_is_number(v) and 0 <= v <= 1 for v in norm["mean"])
                and all(_is_number(v) and 0 < v <= 1 for v in norm["std"])
            )
            and "norm" in args
        ):
            raise ValueError(f"norm must be per-channel mean and std in [0, 1]: {norm!r}")
        if not isinstance(args.get("weights", ""), (str, type(None))):
            raise ValueError(f"weights is not a path: {args['weights']!r}")
        if "backbone_kwargs" in args:  # only --widths (three channel counts) and --pool-first
            kw = args["backbone_kwargs"] if isinstance(args["backbone_kwargs"], dict) else {}
            widths = kw.get("widths", [1, 1, 1])
            if not (
                kw
                and set(kw) <= {"widths", "pool_first"}
                and isinstance(widths, list)
                and len(widths) == 3
                and all(type(w) is int and 1 <= w <= 1024 for w in widths)
                and kw.get("pool_first", True) is True
            ):
                raise ValueError(f"unknown backbone arguments {args['backbone_kwargs']}")
            args = {**args, "backbone_kwargs": {**kw, **({"widths": tuple(widths)} if "widths" in kw else {})}}
        sizes = [args.get(k, 10) for k in ("embedding_dim", "num_classes")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= 4096 for n in sizes):
            raise ValueError(f"model sizes out of range: {args}")
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: checkpoint does not match its model config ({_first_line(e)})") from None
    return args


def build_network(ckpt: dict, where: str | Path, device: str | torch.device = "cpu"):
    """The network of a loaded checkpoint, its weights in, in eval mode on `device`; one line if they do not fit."""
    from embedfm.models import build_model

    args = model_args(ckpt, where)
    try:
        model = build_model(**args)
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{where}: checkpoint does not match its model config ({_first_line(e)})") from None
    return model.to(device).eval()


def load_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the network from the checkpoint alone; returns (model in eval mode, checkpoint)."""
    ckpt = load_checkpoint(run_dir)
    return build_network(ckpt, run_dir, device), ckpt


# ----------------------------------------------------------------------------------------------
# old format


def _numpy_globals() -> list:
    """What a pickled NumPy RNG state needs under torch's weights_only unpickler: array reconstruction only."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def convert(run_dir: str | Path, log=print) -> Path:
    """Rewrite a run's old `last.pt` as `checkpoint.safetensors`. The old file is read with torch's restricted
    unpickler (`weights_only=True`, NumPy's array reconstruction allowed), which runs no code from the file and
    reads every checkpoint an older embedfm wrote. A file that needs more is refused: embedfm does not run code
    from files. The old file is left in place."""
    import torch

    run = Path(run_dir)
    old = run / LEGACY_CHECKPOINT
    if not old.is_file():
        raise CheckpointError(f"{run}: no old-format checkpoint ({LEGACY_CHECKPOINT}) to convert")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            ckpt = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as e:  # any refusal or damage: one line, and never a fall-back to the full unpickler
        raise CheckpointError(
            f"{old}: cannot be read without running code from it ({_first_line(e)}); embedfm does not do that. "
            "Only if you trust its source: load it yourself with torch.load's full unpickler and pass the "
            "dict to embedfm.checkpoint.save_checkpoint(run_dir, ckpt)"
        ) from None
    if not isinstance(ckpt, dict) or not {"model_args", "model", "config"} <= set(ckpt):
        raise CheckpointError(f"{old}: not an embedfm checkpoint")
    save_checkpoint(run, {k: v for k, v in ckpt.items() if k != "format_version"})
    load_model(run)  # the converted checkpoint rebuilds its network
    log(f"{old} (read with torch's weights-only unpickler) → {run / CHECKPOINT}")
    return run / CHECKPOINT
