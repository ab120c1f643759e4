"""Checkpoints: saving a run's state after an epoch, and loading it back with one clear line per failure.

A checkpoint (`RUN/last.pt`, see `rundir.py` for the rest of a run dir) is self-describing: it holds the
`model_args` that rebuild the network alone, the weights, the resolved config, and for `--resume` the
optimizer, scheduler and RNG states, the history and the data fingerprint. It is written atomically
(`fileio.py`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from embedfm.errors import CheckpointError
from embedfm.fileio import atomic_write_bytes
from embedfm.rundir import CHECKPOINT

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions only: importing this module stays cheap for torch-free callers.

FORMAT_VERSION = 1


def save_checkpoint(run_dir: str | Path, state: dict) -> None:
    """`state` must hold model_args, model, config; usually also optimizer, scheduler, epoch,
    history, rng and data fingerprint. The format version is added here."""
    import torch

    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir: str | Path, map_location="cpu") -> dict:
    """Load `RUN/last.pt` (or a .pt path), with one clear line for each way it can be unusable."""
    import torch

    p = Path(run_dir)
    if p.is_dir():
        p = p / CHECKPOINT
    elif not p.exists():
        raise CheckpointError(f"{run_dir}: no such run dir")
    if not p.is_file():
        raise CheckpointError(f"{p.parent}: no checkpoint ({CHECKPOINT}) in this run dir; train it first")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(f"{p}: corrupt or unreadable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{p}: not an embedfm checkpoint")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format {ckpt['format_version']} is newer than this embedfm "
            f"reads ({FORMAT_VERSION}); upgrade embedfm"
        )
    for key in ("model_args", "model", "config"):
        if key not in ckpt:
            raise CheckpointError(f"{p}: checkpoint lacks {key!r}")
    return ckpt


def load_model(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the network from the checkpoint alone; returns (model in eval mode, checkpoint)."""
    from embedfm.models import build_model

    ckpt = load_checkpoint(run_dir)
    try:
        model = build_model(**ckpt["model_args"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{run_dir}: checkpoint does not match its model config ({first})") from None
    return model.to(device).eval(), ckpt
