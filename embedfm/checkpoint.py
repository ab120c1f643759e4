"""Run-dir files: atomic writes, self-describing checkpoints, and loading them back with checks.

A run dir holds:
    config.json    the resolved TrainConfig
    last.pt        checkpoint after the latest finished epoch (see `save_checkpoint`)
    history.json   per-epoch figures; summary.csv the same as a table
    DONE           written last, when training finished: marks the run complete

Every file is written to a temporary file in the same dir, flushed, fsynced and `os.replace`d into
place, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from embedfm.errors import CheckpointError

if TYPE_CHECKING:
    import torch

# torch is imported inside the checkpoint functions only: the atomic writers serve torch-free callers
# too (`embedfm tune --help`, scripts), and importing torch costs ~3 s.

FORMAT_VERSION = 1
CHECKPOINT = "last.pt"
DONE = "DONE"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """A matplotlib figure to PNG, written like every other file here (never half a PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_csv(path: str | Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


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
        raise CheckpointError(f"{p}: checkpoint format {ckpt['format_version']} is newer than this embedfm "
                              f"reads ({FORMAT_VERSION}); upgrade embedfm")
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


def is_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / DONE).is_file()
