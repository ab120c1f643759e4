"""embedfm.commands: what `embedfm train` says when Ctrl-C stops it before its first epoch ends."""

from conftest import TINY

from embedfm.cli import main


def test_ctrl_c_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path, fake_data_dir, monkeypatch, capsys):
    import embedfm.train as train_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "run_epoch", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data-dir", str(fake_data_dir), "--epochs", "1", *TINY]) == 130
    err = capsys.readouterr().err
    assert "no epoch had finished, nothing was saved" in err and "--resume" not in err
