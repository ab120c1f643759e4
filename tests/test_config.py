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
        ({"loss": "arcface"}, "unknown loss"),
        ({"backbone": "resnet9000"}, "unknown backbone"),
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
