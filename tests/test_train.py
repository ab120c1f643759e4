"""train.py pieces: the learning-rate schedule at any step count, the state a probe drives `run_epoch` with."""

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


@pytest.mark.numeric
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


@pytest.mark.numeric
@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path, fake_data_dir):
    """--compile changes speed, not the run: same losses (to float tolerance) as eager, and the
    checkpoint holds the plain model's keys, so eval/resume need no compiler. `make test-isa` reruns it under
    ATEN_CPU_CAPABILITY=avx2 after `make test` compiled it at the CPU's default: on an AVX-512 CPU the two must not
    share inductor's cached kernels (`train.compile_model`)."""
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


@pytest.mark.numeric
def test_compile_model_keys_inductors_cache_by_the_vector_isa_it_uses(monkeypatch):
    """Inductor's FX-graph cache key leaves out the vector ISA it generates for (the CPU's best, or
    ATEN_CPU_CAPABILITY's): pinned as cpp.simdlen, which is in the key, kernels for one width are never served to a
    process using another (docs/usage.md, after the flags)."""
    from torch._inductor import config as inductor_config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    from embedfm.train import compile_model

    monkeypatch.setattr(inductor_config.cpp, "simdlen", None)
    picked = str(pick_vec_isa())
    compile_model(torch.nn.Linear(3, 2))  # lazy: nothing is compiled before the first call
    assert inductor_config.cpp.simdlen == pick_vec_isa().bit_width()
    assert str(pick_vec_isa()) == picked  # the same ISA inductor picked unpinned
    monkeypatch.setattr(inductor_config.cpp, "simdlen", 128)  # a user's own setting is left alone
    compile_model(torch.nn.Linear(3, 2))
    assert inductor_config.cpp.simdlen == 128


# ------------------------------------------------------------------------------------------------ non-finite


def _poison(what):
    """An on_step hook: after the last step of epoch 2, a NaN in the first conv weight ("weight") or a negative
    running variance ("running_var": finite, but eval-mode BatchNorm, hence validation, turns it into NaN)."""

    def hook(s):
        if s.epoch == 1 and s.step == s.steps - 1:
            with torch.no_grad():
                if what == "weight":
                    next(p for p in s.net.parameters() if p.ndim == 4).view(-1)[0] = float("nan")
                else:
                    next(b for n, b in s.net.named_buffers() if n.endswith("running_var")).fill_(-1.0)

    return hook


def _nonfinite_cfg(data, out) -> TrainConfig:
    return TrainConfig(loss="triplet", epochs=3, limit=200, val_size=50, batch_size=50, m_per_class=4,
                       data_dir=str(data), out=str(out))  # fmt: skip


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """(data dir, history of the uninterrupted run) that both poisoned runs resume into: trained once."""
    from conftest import make_fake_dataset

    from embedfm.train import train

    root = tmp_path_factory.mktemp("nonfinite")
    data = make_fake_dataset(root / "fmnist")
    return data, train(_nonfinite_cfg(data, root / "straight"), progress=False, log=lambda *a: None)["history"]


@pytest.mark.parametrize(
    "what, message",
    [
        ("weight", r"non-finite weights \(\S+\.weight\) after epoch 2; stopped, the last good checkpoint is kept"),
        ("running_var", "non-finite logits or embeddings in validation after epoch 2; stopped"),
    ],
)
def test_a_non_finite_network_stops_the_run_in_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path, straight_run, what, message
):
    from embedfm import checkpoint as ckpt_io
    from embedfm.errors import EmbedfmError
    from embedfm.train import Hooks, train

    data, straight = straight_run
    cfg = lambda name: _nonfinite_cfg(data, tmp_path / name)
    quiet = {"progress": False, "log": lambda *a: None}
    with pytest.raises(EmbedfmError, match=message) as e:
        train(cfg("run"), hooks=Hooks(on_step=_poison(what)), **quiet)
    assert "\n" not in str(e.value)
    saved = ckpt_io.load_checkpoint(tmp_path / "run")
    assert saved["epoch"] == 0 and len(saved["history"]) == 1  # epoch 2 was not saved
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())
    # the kept checkpoint resumes into the run an uninterrupted one is
    resumed = train(cfg("run"), resume=True, **quiet)["history"]
    drop = ("train_seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in straight
    ]


def test_the_probe_refuses_a_non_finite_embedding_in_one_line():
    """Before the distance-weighted miner, whose own failure on NaN distances is a traceback."""
    from embedfm import diagnostics
    from embedfm.errors import EmbedfmError
    from embedfm.objectives import build_objective

    class NaNNet(torch.nn.Module):
        def forward(self, x):
            emb = torch.nn.functional.normalize(x.flatten(1)[:, :8].float() + 1, dim=1)
            emb[3, 0] = float("nan")
            return torch.zeros(len(x), 10), emb

    cfg = TrainConfig(loss="triplet")
    images = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8)
    batches = torch.arange(100).view(2, 50)
    with pytest.raises(EmbedfmError, match=r"^non-finite embeddings in the diagnostics probe$"):
        diagnostics.probe(NaNNet(), images, torch.arange(100) % 10, batches, cfg, torch.device("cpu"),
                          build_objective(cfg))  # fmt: skip


def test_a_state_built_outside_the_loop_trains_the_loops_epoch(tmp_path, fake_data_dir):
    """How a probe drives the loop's pieces: `TrainState.start` + `run_epoch` on the same config give the weights
    `train` checkpoints after its first epoch, bit for bit (same process, same kernels)."""
    from embedfm import checkpoint as ckpt_io
    from embedfm.data import load_fashion_mnist
    from embedfm.sampling import make_splits
    from embedfm.train import TrainState, run_epoch, steps_per_epoch, train

    cfg = TrainConfig(loss="triplet", epochs=2, limit=200, val_size=50, batch_size=50, m_per_class=4,
                      data_dir=str(fake_data_dir), out=str(tmp_path / "run"))  # fmt: skip
    steps_seen = []
    with pytest.raises(KeyboardInterrupt):  # stopped after epoch 1's checkpoint
        train(cfg, progress=False, log=lambda *a: None, hooks=_stop_after_epoch_1(steps_seen))
    splits = make_splits(load_fashion_mnist(cfg.data_dir), cfg.val_size, cfg.limit)
    state = TrainState.start(cfg, splits, steps_per_epoch(cfg, len(splits.train_y)), torch.device("cpu"))
    stats = run_epoch(state, cfg, 0)
    saved = ckpt_io.load_checkpoint(tmp_path / "run")
    assert saved["epoch"] == 0 and stats["train_loss"] == saved["history"][0]["train_loss"]
    assert len(steps_seen) == 3  # 150 train images, batches of 50
    weights = state.net.state_dict()
    assert weights.keys() == saved["model"].keys()
    assert all(torch.equal(weights[k], saved["model"][k]) for k in weights)


def _stop_after_epoch_1(steps_seen):
    from embedfm.train import Hooks

    def stop(row):
        raise KeyboardInterrupt

    return Hooks(on_step=lambda s: steps_seen.append(s.step), on_epoch=stop)
