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
    from embedfm.inference import embed
    from embedfm.models import build_model

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
            x = to_float(images[i : i + 1])
            lg, em = model(x)
            lg_m, em_m = model(x.flip(3))
            torch.testing.assert_close(out.logits[i], ((lg + lg_m) / 2)[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                out.emb_flip[i], torch.nn.functional.normalize(em + em_m, dim=1)[0], atol=1e-5, rtol=1e-4
            )
    assert torch.allclose(out.emb_flip.norm(dim=1), torch.ones(5))


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path, fake_data_dir):
    """--compile changes speed, not the run: same losses (to float tolerance) as eager, and the
    checkpoint holds the plain model's keys, so eval/resume need no compiler."""
    from embedfm import checkpoint as ckpt_io
    from embedfm.train import train

    def run(name, compiled):
        cfg = TrainConfig(
            backbone="linear",
            loss="triplet",
            epochs=1,
            batch_size=100,
            limit=200,
            val_size=50,
            data_dir=str(fake_data_dir),
            out=str(tmp_path / name),
            compile=compiled,
        )
        return train(cfg, progress=False, log=lambda *a: None)["history"][0]

    eager, compiled = run("eager", False), run("compiled", True)
    for key in ("train_loss", "triplet", "val_loss"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-4)
    state = ckpt_io.load_checkpoint(tmp_path / "compiled")["model"]
    assert state.keys() == ckpt_io.load_checkpoint(tmp_path / "eager")["model"].keys()
