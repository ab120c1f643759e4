"""train.py pieces: the learning-rate schedule at any step count."""

import pytest
import torch

from embedfm.config import TrainConfig
from embedfm.train import make_optimizer


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 7, 12, 642])
def test_schedule_steps_through_any_length(steps):
    model = torch.nn.Linear(3, 2)
    cfg = TrainConfig()
    opt, sched = make_optimizer(model, cfg, steps)
    lrs = []
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert all(0 < lr <= cfg.lr for lr in lrs)
    if steps >= 12:  # a real one-cycle: warms up to the peak, ends far below it
        assert max(lrs) == pytest.approx(cfg.lr, rel=0.05) and lrs[-1] < cfg.lr / 10
