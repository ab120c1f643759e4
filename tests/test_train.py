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


def test_embed_flip_tta_matches_a_per_image_loop():
    """embed(tta_flip=True): logits = mean over image and mirror, emb = the image's own, emb_flip =
    normalize(emb(image) + emb(mirror)); checked one image at a time against the unfused model."""
    from embedfm.models import build_model
    from embedfm.train import embed

    torch.manual_seed(0)
    model = build_model(backbone="fastcnn", embedding_dim=8).eval()
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    plain = embed(model, images, torch.device("cpu"), batch_size=2)
    out = embed(model, images, torch.device("cpu"), batch_size=2, tta_flip=True)
    assert plain.emb_flip is None and out.emb_flip.shape == (5, 8)
    torch.testing.assert_close(out.emb, plain.emb)
    from embedfm.data import to_float
    with torch.no_grad():
        for i in range(5):
            x = to_float(images[i:i + 1])
            lg, em = model(x)
            lg_m, em_m = model(x.flip(3))
            torch.testing.assert_close(out.logits[i], ((lg + lg_m) / 2)[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out.emb_flip[i], torch.nn.functional.normalize(em + em_m, dim=1)[0],
                                       atol=1e-5, rtol=1e-4)
    assert torch.allclose(out.emb_flip.norm(dim=1), torch.ones(5))
