"""What machine a measurement ran on: CPU model and the instruction-set flags that decide kernel speed, cores,
torch version and threads. Every benchmark JSON records it, so figures are only compared within one machine."""

from __future__ import annotations

import os
import platform
import subprocess

# the lscpu flags that change which kernels oneDNN / BLAS / faiss run
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


# the flags of a CPU that runs bfloat16 matmuls and convolutions natively (oneDNN's bf16 kernels); without them bf16
# is emulated and slower than fp32 (PyTorch's CPU autocast documentation)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (no subprocess; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU (or one with `flags`) computes bf16 natively: AMX or AVX-512 BF16."""
    return bool(set(BF16_FLAGS) & (cpu_flags() if flags is None else set(flags)))


def lscpu() -> dict:
    """`lscpu`'s fields as a dict ({} where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines()) if v}


def describe() -> dict:
    """{"cpu_model", "cpu_flags" (all of lscpu's), "speed_flags" (the ones above that are present), "cores",
    "arch", "torch", "threads"} — torch fields only where torch is already imported."""
    import sys

    info = lscpu()
    flags = info.get("Flags", "").split()
    d = {
        "cpu_model": info.get("Model name", platform.processor() or "unknown"),
        "speed_flags": [f for f in SPEED_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "cpu_flags": " ".join(flags),
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        d.update(torch=torch.__version__, threads=torch.get_num_threads())
    return d


def summary(d: dict) -> str:
    """One line: 'AMD EPYC (avx2, fma), 2 cores, x86_64, torch 2.x, 2 threads'."""
    torch = f", torch {d['torch']}, {d['threads']} threads" if "torch" in d else ""
    return f"{d['cpu_model']} ({', '.join(d['speed_flags']) or 'no AVX2'}), {d['cores']} cores, {d['arch']}{torch}"
