"""embedfm.trajectory: validation points at fractions of an epoch, a time budget, the test figure."""

import pytest

from embedfm.config import TrainConfig


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


def test_the_unit_is_timed_once_per_process(tmp_path, fake_data_dir, monkeypatch):
    """unit_line: one demo-recipe epoch timed and written with the machine; the same process asking again gets that
    line back without training; another process (another id or start time) times its own."""
    import json
    import os

    from embedfm import trajectory
    from embedfm.config import TrainConfig

    path = tmp_path / "ablation.jsonl"
    cfg = TrainConfig(epochs=1, limit=200, val_size=50, batch_size=50, threads=1, data_dir=str(fake_data_dir))
    first = trajectory.unit_line(path, os.getpid(), cfg=cfg, log=lambda *a: None)
    assert first["unit"] == "E" and first["E_s"] > 0 and "cpu_model" in first["machine"]
    real_run = trajectory.run
    monkeypatch.setattr(trajectory, "run", lambda *a, **k: pytest.fail("timed again"))
    assert trajectory.unit_line(path, os.getpid(), cfg=cfg) == first
    monkeypatch.setattr(trajectory, "run", real_run)
    monkeypatch.setattr(trajectory, "process_key", lambda pid: "another")
    second = trajectory.unit_line(path, os.getpid(), cfg=cfg, log=lambda *a: None)
    lines = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert [ln["process"] for ln in lines] == [first["process"], "another"] and second == lines[1]


def test_the_second_speedrun_study_declares_valid_rows():
    import runpy

    from conftest import ROOT

    study = runpy.run_path(str(ROOT / "studies" / "speedrun2.py"))
    for row in study["SETTINGS"]:
        cfg = study["config"](None, type("R", (), {"method": row, "seed": 1})())
        assert cfg.seed == 1 and cfg.epochs in (4, 6, 10)
    assert study["SETTINGS"]["best4"]["pool_first"] and study["SETTINGS"]["best4"]["epochs"] == 4
