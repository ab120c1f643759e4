"""The shadow device of tests/shadow.py fails where CUDA fails: the device tests mean something."""

from __future__ import annotations

import pytest
import torch
from shadow import IGNORE_META_COPY, SHADOW, Shadow, ShadowDevice


@pytest.mark.device
@pytest.mark.filterwarnings(IGNORE_META_COPY)
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
