"""embedfm.trajectory: validation points at fractions of an epoch, a time budget, the test figure."""

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
