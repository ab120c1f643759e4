"""embedfm.machine and --precision: which forward passes run under bf16 autocast, with the CPU's flags faked."""

from __future__ import annotations

import pytest
import torch

from embedfm import machine
from embedfm.inference import autocast, uses_bf16

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}
AMX = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def test_native_bf16_reads_amx_or_avx512_bf16():
    assert not machine.native_bf16(AVX2_ONLY)
    assert machine.native_bf16(AMX) and machine.native_bf16(AVX2_ONLY | {"avx512_bf16"})
    assert isinstance(machine.cpu_flags(), set)


@pytest.mark.parametrize(
    "flags, precision, device, on",
    [
        (AVX2_ONLY, "auto", CPU, False),  # auto picks fp32 on an AVX2-only CPU
        (AMX, "auto", CPU, True),
        (AMX, "default", CPU, False),  # the default is what embedfm always did: fp32 on the CPU
        (AMX, "fp32", CPU, False),
        (AVX2_ONLY, "bf16", CPU, True),  # asked for: emulated, slower, but honoured
        (AVX2_ONLY, "default", CUDA, True),
        (AVX2_ONLY, "auto", CUDA, True),
        (AMX, "fp32", CUDA, False),
    ],
)
def test_which_passes_run_in_bf16(monkeypatch, flags, precision, device, on):
    monkeypatch.setattr(machine, "cpu_flags", lambda: set(flags))
    assert uses_bf16(device, precision) == on


def test_the_cpu_autocast_runs_convolutions_in_bf16_and_leaves_parameters_fp32():
    conv = torch.nn.Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 8, 8)
    with autocast(CPU, "bf16"):
        y = conv(x)
    assert y.dtype == torch.bfloat16 and conv.weight.dtype == torch.float32
    with autocast(CPU, "fp32"):
        assert conv(x).dtype == torch.float32


def test_a_bf16_run_trains_and_records_its_precision(tmp_path):
    """--precision bf16 on the CPU (emulated where the CPU lacks bf16): the run trains, its losses are finite, its
    weights stay fp32 and its config records the precision eval then uses."""
    import math

    from conftest import make_fake_dataset

    from embedfm.config import TrainConfig
    from embedfm.run import Run
    from embedfm.train import train

    data = make_fake_dataset(tmp_path / "data")
    cfg = TrainConfig(precision="bf16", epochs=1, limit=200, val_size=50, batch_size=50, threads=1, device="cpu",
                      data_dir=str(data), out=str(tmp_path / "run"))  # fmt: skip
    result = train(cfg, progress=False, log=lambda *a, **k: None)
    assert math.isfinite(result["history"][-1]["train_loss"])
    run = Run.open(tmp_path / "run")
    assert run.config.precision == "bf16"
    assert all(t.dtype == torch.float32 for t in run.load().weights().values() if t.is_floating_point())
