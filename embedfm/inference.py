"""Inference: device choice, autocast, batched embedding of uint8 images, and loading a run's model.

Everything that runs a trained network forwards lives here, so evaluation, validation, indexing, search and
the benchmarks share one path: BN folded into the convolutions, channels-last tensors, optional flip
test-time augmentation, bf16 autocast on CUDA.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from embedfm import distributed
from embedfm.data import to_float
from embedfm.errors import EmbedfmError
from embedfm.models import device_of, fuse_for_inference, norm_of


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise EmbedfmError("--device cuda was asked for but no CUDA device is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        rank, n = distributed.from_env().local_rank, torch.cuda.device_count()
        if rank >= n:
            raise EmbedfmError(f"LOCAL_RANK {rank} has no GPU of its own: {n} visible (one per torchrun process)")
        return torch.device("cuda", rank)  # one GPU per torchrun process
    return torch.device("cpu")


def uses_bf16(device: torch.device, precision: str = "default") -> bool:
    """Whether the forward passes run under bf16 autocast (`--precision`): default: on CUDA (tensor cores; no loss
    scaling needed), not on the CPU (what embedfm always did); auto: on CUDA and on CPUs that compute bf16 natively
    (AMX, AVX-512 BF16; elsewhere bf16 is emulated and slower than fp32); fp32: never; bf16: on CUDA and the CPU."""
    if device.type not in ("cuda", "cpu") or precision == "fp32":
        return False
    if device.type == "cuda" or precision == "bf16":
        return True
    from embedfm.machine import native_bf16

    return precision == "auto" and native_bf16()


def autocast(device: torch.device, precision: str = "default"):
    """bf16 autocast of the forward pass where `uses_bf16` says so; a no-op elsewhere (torch.autocast refuses device
    types it does not know, even disabled). Convolutions and matmuls run in bf16; BatchNorm, the losses (the
    objectives cast logits and embeddings to fp32), the optimizer step and every metric stay fp32; BatchNorm's weights
    and running statistics stay fp32 (autocast never changes a parameter's dtype) and PyTorch's kernel accumulates its
    batch statistics in fp32."""
    on = uses_bf16(device, precision)
    return torch.autocast(device.type if device.type in ("cuda", "cpu") else "cpu", dtype=torch.bfloat16, enabled=on)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """A uint8 batch (B, H, W) moved dy pixels down and dx right, zeros (the background) coming in, as the training
    crops pad."""
    H, W = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    xp = F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
    return xp[..., p - dy : p - dy + H, p - dx : p - dx + W]


class Embedded(NamedTuple):
    logits: torch.Tensor  # (N, C); with tta_flip / tta_shift the mean over the views
    emb: torch.Tensor  # (N, D) unit norm, of the image itself (what kNN references, UMAP, retrieval use)
    emb_flip: torch.Tensor | None  # (N, D) unit norm, normalize(emb + mirror's emb); only with tta_flip


@torch.no_grad()
def embed(
    model,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    tta_flip: bool = False,
    progress: bool = False,
    desc: str = "embed",
    tta_shift: int = 0,
    precision: str = "default",
) -> Embedded:
    """uint8 images (N, 28, 28) → Embedded(logits, embeddings, flip-averaged embeddings) on the CPU, fp32.

    With `tta_flip` the model also sees each image's mirror: the logits average the two, and
    `emb_flip` holds the two embeddings' normalised mean (for kNN queries; `emb` stays the image's own,
    so UMAP and retrieval see exactly what the model maps the image to). The mirror pass is needed for
    the logits anyway, so `emb_flip` costs nothing extra. With `tta_shift` = s > 0 the logits also average the
    image (and with tta_flip its mirror) moved s pixels up, down, left and right: 5× the views (airbench's
    multi-crop test-time augmentation); the embeddings stay those of the unshifted views.
    """
    shifts = [(0, 0)] + ([(tta_shift, 0), (-tta_shift, 0), (0, tta_shift), (0, -tta_shift)] if tta_shift else [])
    # BN folded into the convs, channels-last: both ~1.3x faster inference on CPU (scripts/bench)
    norm = norm_of(model)  # the set's pixel statistics the model was trained with
    model = fuse_for_inference(model).to(memory_format=torch.channels_last)
    logits, embs, flips = [], [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        x = to_float(images[i : i + batch_size], *norm).to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            lg, em = model(x)
            if tta_flip:
                lg_m, em_m = model(x.flip(3))
                # summed in fp32: under bf16 autocast (CUDA) a bf16 sum would round near-ties differently from
                # the CPU's fp32 figures; on the CPU the casts are no-ops
                lg = (lg.float() + lg_m.float()) / 2
                flips.append(F.normalize(em.float() + em_m.float(), dim=1).cpu())
            if len(shifts) > 1:  # (B, C) sums over the shifted views, then the mean over all views
                lg = lg.float() * (2 if tta_flip else 1)
                for dy, dx in shifts[1:]:
                    xs = to_float(shifted(images[i : i + batch_size], dy, dx), *norm).to(device)
                    xs = xs.contiguous(memory_format=torch.channels_last)  # (B, 1, 28, 28)
                    lg = lg + model(xs)[0].float() + (model(xs.flip(3))[0].float() if tta_flip else 0)
                lg = lg / (len(shifts) * (2 if tta_flip else 1))
        logits.append(lg.float().cpu())
        embs.append(em.float().cpu())
    return Embedded(torch.cat(logits), torch.cat(embs), torch.cat(flips) if tta_flip else None)


def embed_images(model, images: np.ndarray, progress: bool = True, desc: str = "embed") -> np.ndarray:
    """uint8 images (N, 28, 28) → unit-norm embeddings (N, D), float32, on the model's device."""
    device = device_of(model)
    return embed(model, torch.from_numpy(images), device, progress=progress, desc=desc).emb.numpy()
