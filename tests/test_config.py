import dataclasses
import json

import pytest

from embedfm.config import TrainConfig, resolve
from embedfm.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "--epochs must be positive"),
        ({"lr": -1.0}, "--lr must be positive"),
        ({"loss": "arcface"}, "--loss 'arcface' is not one of ce, triplet"),
        ({"backbone": "resnet9000"}, "--backbone 'resnet9000' is not one of"),
        ({"focus_classes": (0, 12)}, "--focus-classes must be class ids in 0-9"),
        ({"loss": "triplet", "batch_size": 40, "m_per_class": 8}, "too small for the balanced sampler"),
    ],
)
def test_validation_messages(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_resolve_order(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 3, "lr": 0.01, "focus_classes": [0, 6]}))
    c = resolve(str(f), {"lr": 0.02, "seed": None})
    assert (c.epochs, c.lr, c.focus_classes, c.seed) == (3, 0.02, (0, 6), 0)


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochz": 3}))
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve(str(f), {})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3


def _flags(command: str) -> set[str]:
    from embedfm.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {o for a in sub._actions for o in a.option_strings}


@pytest.mark.parametrize("module, command", [("config", "train"), ("tune", "tune")])
def test_every_validation_message_names_a_flag_that_exists(module, command):
    """Walk the source of every message in config.py / tune.py: each --flag it names is a flag of the command."""
    import re
    from pathlib import Path

    import embedfm

    src = (Path(embedfm.__file__).parent / f"{module}.py").read_text()
    named = set(re.findall(r"--[a-z][a-z-]*[a-z]", src))
    assert named, "no flag found in messages"
    assert named <= _flags(command), named - _flags(command)


def test_every_config_field_is_a_train_flag_with_help():
    from embedfm.cli import build_parser
    from embedfm.config import FIELDS, flag

    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    by_dest = {a.dest: a for a in train._actions}
    for name, f in FIELDS.items():
        assert "--" + flag(name) in by_dest[name].option_strings
        assert f.metadata["help"] and f.metadata["help"] in by_dest[name].help
        if f.default is not None:  # the default a run uses is the one --help shows
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default).lower()
            assert f"[{shown}]" in by_dest[name].help.lower()
