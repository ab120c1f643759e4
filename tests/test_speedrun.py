"""The speed recipe's pieces: --recipe presets, --widths, multi-view test-time augmentation, trajectories."""

import json
import runpy
from pathlib import Path

import pytest
import torch
from conftest import TINY, load_script

from embedfm.checkpoint import load_model
from embedfm.cli import main
from embedfm.config import RECIPES, TrainConfig, from_dict, resolve, with_recipe
from embedfm.data import to_float
from embedfm.errors import ConfigError
from embedfm.inference import embed, shifted
from embedfm.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_recipe_sits_between_defaults_and_file_and_flags(tmp_path):
    fast = RECIPES["fast"]
    assert fast, "the fast recipe sets something"
    cfg = resolve(None, {"recipe": "fast"})
    assert all(getattr(cfg, k) == (tuple(v) if isinstance(v, list) else v) for k, v in fast.items())
    # a config file beats the preset, a flag beats the file
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"recipe": "fast", "epochs": 2}))
    assert resolve(str(f), {}).epochs == 2
    assert resolve(str(f), {"epochs": 5}).epochs == 5
    assert resolve(None, {}).recipe == "default" and resolve(None, {}).epochs == TrainConfig().epochs


def test_unknown_recipe_is_one_line():
    with pytest.raises(ConfigError, match="--recipe 'turbo' is not one of default, fast"):
        resolve(None, {"recipe": "turbo"})
    assert with_recipe({"recipe": 3}) == {"recipe": 3}  # a bad type is left for from_dict to name


def test_ablation_rows_add_up_to_the_recipe_and_the_race_runs_it():
    speedrun, bench = runpy.run_path(str(ROOT / "studies" / "speedrun.py")), load_script("bench")
    rows = [(name, what, speedrun["SETTINGS"][name]) for name, what, _, _ in speedrun["ROWS"]]
    assert rows[0][0] == "demo" and rows[0][2] == {}
    without_name = lambda d: {k: v for k, v in from_dict(with_recipe(d)).to_dict().items() if k != "recipe"}
    recipe_row = next(settings for name, _, settings in rows if name == speedrun["RECIPE_ROW"])
    assert without_name(recipe_row) == without_name({"recipe": "fast", **speedrun["SHORT"]})
    race = {name: settings for name, _, settings, _, _ in bench.RACE}
    assert race["fast"] == {"recipe": "fast"} and race["fast_short"] == {"recipe": "fast", **speedrun["SHORT"]}
    assert race["demo"] == {}


@pytest.mark.parametrize("bad", [(8, 16), (0, 8, 16), (8, 16, 2000)])
def test_widths_are_checked(bad):
    with pytest.raises(ConfigError, match="--widths"):
        TrainConfig(widths=bad)
    with pytest.raises(ConfigError, match="--widths applies to"):
        TrainConfig(widths=(8, 16, 32), backbone="lenet")


def test_widths_are_trained_saved_and_rebuilt(tmp_path, fake_data_dir):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data-dir", str(fake_data_dir), "--epochs", "1",
                 "--widths", "8,16,24", *TINY]) == 0  # fmt: skip
    model, ckpt = load_model(out)
    assert ckpt["config"]["widths"] == [8, 16, 24]
    assert model.backbone.out_features == 2 * 24  # fastcnn: mean and max pooled
    assert json.loads((out / "config.json").read_text())["widths"] == [8, 16, 24]


def test_shifted_moves_pixels_and_brings_in_zeros():
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 4, 4)
    zeros = lambda *s: torch.zeros(*s, dtype=torch.uint8)
    down = shifted(x, 1, 0)
    assert torch.equal(down[0, 0], zeros(4)) and torch.equal(down[0, 1:], x[0, :3])
    left = shifted(x, 0, -2)
    assert torch.equal(left[0, :, :2], x[0, :, 2:]) and torch.equal(left[0, :, 2:], zeros(4, 2))
    assert torch.equal(shifted(x, 0, 0), x)


@pytest.mark.numeric
def test_embed_shift_tta_matches_a_per_view_loop():
    torch.manual_seed(0)
    model = build_model("fastcnn", 8, 10, {"widths": (4, 8, 8)}).eval()
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    views = [to_float(images)] + [to_float(shifted(images, dy, dx)) for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2))]
    views += [v.flip(3) for v in views]
    with torch.no_grad():
        expected = torch.stack([model(v)[0] for v in views]).mean(0)
    out = embed(model, images, torch.device("cpu"), tta_flip=True, tta_shift=2)
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=1e-4)
    plain = embed(model, images, torch.device("cpu"), tta_flip=True)
    torch.testing.assert_close(out.emb, plain.emb)  # embeddings are the unshifted image's
    with pytest.raises(ConfigError, match="--tta-shift"):
        TrainConfig(tta_shift=9)


def test_trajectory_points_budget_and_test(fake_data_dir):
    from embedfm.data import load_fashion_mnist
    from embedfm.trajectory import run

    data = load_fashion_mnist(fake_data_dir)
    cfg = TrainConfig(epochs=2, limit=200, val_size=50, batch_size=50, data_dir=str(fake_data_dir))
    traj = run(cfg, data, checks=2, test=True)
    epochs = [p["epoch"] for p in traj.points]
    assert len(epochs) == 4 and epochs[1] == 1.0 and epochs[3] == 2.0 and epochs == sorted(epochs)
    assert all(0 <= p["val_acc"] <= 1 for p in traj.points) and not traj.stopped
    assert traj.test_acc is not None and traj.train_seconds >= traj.points[-1]["train_s"] - 0.01  # points: 2 decimals
    assert traj.time_to(0.0) == {"epoch": epochs[0], "train_s": traj.points[0]["train_s"]}
    assert traj.time_to(1.01) is None
    stopped = run(cfg, data, checks=2, budget_s=0.0, test=True)
    assert stopped.stopped and len(stopped.points) == 1 and stopped.test_acc is None
    assert set(traj.to_dict((0.5,))["time_to"]) == {"0.50"}


def test_race_writes_its_json_and_plot_and_resumes(fake_data_dir, tmp_path):
    bench = load_script("bench")
    tiny = {"epochs": 1, "limit": 200, "val_size": 50, "batch_size": 50}
    plan = [("a", "tiny", {**tiny}, (0, 1), None), ("b", "tiny, stopped", {**tiny, "epochs": 2}, (0,), 0.0)]
    results = {"date": "2026-01-01", "cpu": {"cpu_model": "test", "cores": 2, "speed_flags": []}}
    out = tmp_path / "ref"
    out.mkdir()
    done = {"name": "a", "seed": 1, "trajectory": {"train_s": 1.0, "val_acc": 0.5, "test_acc": 0.4, "stopped": False,
            "time_to": {"0.92": None, "0.93": None, "0.94": None}, "points": [{"epoch": 1.0, "train_s": 1.0,
            "val_acc": 0.5}]}}  # fmt: skip
    (out / "speedrun.partial.jsonl").write_text(json.dumps(done) + "\n")  # seed 1 of "a" finished before
    bench.speedrun_section(results, out, quick=False, data_dir=str(fake_data_dir), race_plan=plan)
    race = json.loads((out / "speedrun.json").read_text())
    a, b = race["entries"]
    assert set(a["seeds"]) == {"0", "1"} and a["seeds"]["1"] == done["trajectory"]
    assert a["seeds"]["0"]["test_acc"] is not None and b["seeds"]["0"]["stopped"]
    assert (out / "speedrun.png").stat().st_size > 0 and not (out / "speedrun.partial.jsonl").exists()
