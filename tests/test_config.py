import dataclasses
import json
import runpy
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from fuzzing import SEED, _json_mutations, fuzz, one_line_error

from embedfm import rundir
from embedfm.config import FIELDS, RECIPES, TrainConfig, resolve, with_recipe
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


@pytest.mark.parametrize("module, command", [("config", "train"), ("losstable", "train"), ("tune", "tune")])
def test_every_validation_message_names_a_flag_that_exists(module, command):
    """Walk the source of every message in config.py / tune.py: each --flag it names is a flag of the command."""
    import re

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


# ---------------------------------------------------------------------------------------------- the loss table

# the search spaces as they were before they were derived from the loss table: a study's draws depend on the ranges
# and on the order the parameters are drawn in, so these must not move (existing studies stay reproducible)
RECORDED_SPACE = [
    ("lr", ("log", 1e-3, 2e-2)),
    ("weight_decay", ("log", 1e-3, 0.3)),
    ("label_smoothing", ("float", 0.0, 0.2)),
    ("triplet_weight", ("log", 0.1, 4.0)),
    ("margin", ("float", 0.05, 0.5)),
    ("embedding_dim", ("choice", [32, 64, 128])),
    ("m_per_class", ("choice", [4, 8, 12])),
    ("miner_cutoff", ("float", 0.2, 0.8)),
    ("miner_nonzero_loss_cutoff", ("float", 1.0, 1.6)),
    ("focus_oversample", ("float", 1.0, 2.5)),
]
RECORDED_LOSS_SPACE = {
    "beta": ("float", 0.8, 1.6),
    "pos_margin": ("float", 0.0, 0.5),
    "neg_margin": ("float", 0.6, 1.6),
    "ms_alpha": ("log", 0.5, 10.0),
    "ms_beta": ("log", 10.0, 100.0),
    "ms_base": ("float", 0.3, 0.8),
    "ms_epsilon": ("float", 0.01, 0.3),
    "temperature": ("log", 0.03, 0.5),
    "proxy_margin": ("float", 0.0, 0.3),
    "proxy_alpha": ("log", 4.0, 64.0),
    "arcface_margin": ("float", 10.0, 45.0),
    "arcface_scale": ("log", 8.0, 64.0),
    "proxy_lr_mult": ("log", 1.0, 100.0),
}
_CE = ("lr", "weight_decay", "label_smoothing")
_METRIC = (*_CE, "triplet_weight", "embedding_dim", "m_per_class", "focus_oversample")
_SPACE = tuple(name for name, _ in RECORDED_SPACE)
RECORDED_PARAMS = [
    ("ce", _CE),
    ("ce-balanced", (*_CE, "m_per_class", "focus_oversample")),
    ("triplet", _SPACE),
    ("margin", (*_SPACE, "beta")),
    ("contrastive", (*_METRIC, "miner_cutoff", "miner_nonzero_loss_cutoff", "pos_margin", "neg_margin")),
    ("multisimilarity", (*_METRIC, "ms_alpha", "ms_beta", "ms_base", "ms_epsilon")),
    ("supcon", (*_METRIC, "temperature")),
    ("proxyanchor", (*_METRIC, "proxy_margin", "proxy_alpha", "proxy_lr_mult")),
    ("arcface", (*_METRIC, "arcface_margin", "arcface_scale", "proxy_lr_mult")),
]


def test_search_spaces_derived_from_the_loss_table_are_the_recorded_ones():
    from embedfm.tune import LOSS_SPACE, MINER_PARAMS, PARAMS, SPACE

    assert list(SPACE.items()) == RECORDED_SPACE
    assert LOSS_SPACE == RECORDED_LOSS_SPACE
    assert list(PARAMS.items()) == RECORDED_PARAMS  # the draw order too
    assert MINER_PARAMS == {
        "distance": ("miner_cutoff", "miner_nonzero_loss_cutoff"),
        "multisimilarity": ("ms_epsilon",),
    }


def test_every_loss_of_the_table_reaches_config_tune_the_study_and_the_docs():

    from conftest import ROOT

    from embedfm import config
    from embedfm.losstable import SETTINGS, SPECS
    from embedfm.tune import LOSS_SPACE, MINER_PARAMS, PARAMS, SPACE, loss_params

    assert config.METRIC_LOSSES == tuple(SPECS) == config.FIELDS["metric_loss"].metadata["choices"]
    methods = _loss_comparison_methods()
    docs = (Path(ROOT) / "docs" / "losses.md").read_text().splitlines()
    for name, spec in SPECS.items():
        assert spec.auto_miner in config.MINERS and spec.auto_miner != "auto", name
        cfg = config.TrainConfig(loss="triplet", metric_loss=name)
        assert config.AUTO_MINER[name] == cfg.resolved_miner == spec.auto_miner
        assert (name in config.PARAMETRIC_LOSSES) == spec.parametric
        assert spec.help in config.FIELDS["metric_loss"].metadata["help"]
        for setting_name, s in spec.settings.items():
            f = config.FIELDS[setting_name]  # a config field and flag of the metric group, with the loss's default
            assert (f.default, f.metadata["help"], f.metadata["group"]) == (s.default, s.help, "metric"), setting_name
            assert {**SPACE, **LOSS_SPACE}[setting_name] == s.search, setting_name
            kind, low, high = s.search
            assert kind in ("float", "log") and low <= s.default <= high, setting_name  # trial 0 lies in the space
        # tune searches the loss's settings and its miner's, the same set in whatever order its studies draw
        assert set(PARAMS[name]) == set(loss_params(spec)) >= {*spec.settings, *MINER_PARAMS.get(spec.auto_miner, ())}
        assert methods[name] == {"loss": "triplet", "metric_loss": name}
        row = next((line for line in docs if line.startswith(f"| `{name}`")), None)
        assert row is not None, f"docs/losses.md has no row for {name}"
        assert all(f"--{config.flag(n)}" in row for n in spec.settings), row
    assert set(SETTINGS) <= set(config.FIELDS)
    assert set(methods) == {"ce", "ce-balanced", *SPECS}


def _loss_comparison_methods() -> dict:
    """The loss comparison's methods: its study definition (studies/losses.py), or the script it was before."""
    from conftest import ROOT

    definition = ROOT / "studies" / "losses.py"
    return runpy.run_path(str(definition))["METHODS"] if definition.is_file() else load_script("loss_study").METHODS


def test_train_config_fields_keep_their_order():
    """--help, config.json and the flag table of docs/usage.md list the fields in this order: the loss settings the
    class body places stay where they were."""
    metric = [n for n, f in config_fields().items() if f.metadata["group"] == "metric"]
    assert metric == [
        "margin", "triplet_weight", "ce_weight", "metric_loss", "miner", "beta", "mining", "miner_cutoff",
        "miner_nonzero_loss_cutoff", "pos_margin", "neg_margin", "ms_alpha", "ms_beta", "ms_base", "ms_epsilon",
        "temperature", "proxy_margin", "proxy_alpha", "arcface_margin", "arcface_scale", "proxy_lr_mult",
    ]  # fmt: skip
    assert list(config_fields())[:5] == ["recipe", "loss", "backbone", "embedding_dim", "widths"]
    assert list(config_fields())[-4:] == ["threads", "procs", "compile", "deterministic"]


def config_fields():
    from embedfm.config import FIELDS

    return FIELDS


def test_a_new_loss_setting_becomes_a_field_at_the_end_of_the_metric_group():
    """What adding a loss with a setting of its own does to TrainConfig, on a small class: the setting no line
    places is appended to the metric group, with its loss's default and help, and validated by its loss's check."""
    from dataclasses import dataclass

    from embedfm.config import setting, with_loss_settings
    from embedfm.losstable import Setting

    settings = {
        "placed": Setting(1.0, "placed by the class", ("float", 0.0, 2.0)),
        "new_knob": Setting(3, "a new loss's knob", ("float", 1.0, 5.0)),
    }

    @dataclass(frozen=True)
    @with_loss_settings(settings)
    class Small:
        loss: str = setting("ce", "loss", "model")
        placed: float = setting(1.0, "placed by the class", "metric")
        sampler: str = setting("auto", "sampler", "batches")

    fields = {f.name: f for f in dataclasses.fields(Small)}
    assert list(fields) == ["loss", "placed", "new_knob", "sampler"]
    assert (fields["new_knob"].type, fields["new_knob"].default) == ("int", 3)
    assert fields["new_knob"].metadata["help"] == "a new loss's knob" and Small().new_knob == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": 0.0}, "--beta must be positive, got 0.0"),
        ({"margin": -0.1}, "--margin must be non-negative, got -0.1"),
        ({"ms_base": 1.0}, r"--ms-base must be a cosine similarity in \(-1, 1\), got 1.0"),
        ({"proxy_margin": 1.0}, r"--proxy-margin must be in \[0, 1\), got 1.0"),
        ({"arcface_margin": 90.0}, r"--arcface-margin must be in \[0, 90\) degrees, got 90.0"),
        ({"proxy_lr_mult": 0.0}, "--proxy-lr-mult must be positive, got 0.0"),
        ({"pos_margin": 0.5, "neg_margin": 0.4}, "--pos-margin and --neg-margin must satisfy 0 <= pos < neg <= 2"),
        ({"metric_loss": "x"}, "--metric-loss 'x' is not one of triplet, margin, contrastive, multisimilarity"),
    ],
)
def test_loss_setting_checks_come_from_the_table(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(loss="triplet", **kwargs)


def test_ce_weight_settings_are_checked():
    with pytest.raises(ConfigError, match="--ce-weight and --triplet-weight are both 0"):
        TrainConfig(loss="triplet", ce_weight=0, triplet_weight=0)
    with pytest.raises(ConfigError, match="--ce-weight must be non-negative"):
        TrainConfig(loss="triplet", ce_weight=-1)
    with pytest.raises(ConfigError, match="--metric-loss 'npair' is not one of triplet, margin"):
        TrainConfig(loss="triplet", metric_loss="npair")
    with pytest.raises(ConfigError, match="--pos-margin and --neg-margin"):
        TrainConfig(loss="triplet", metric_loss="contrastive", pos_margin=0.8, neg_margin=0.5)
    assert TrainConfig(metric_loss="supcon").resolved_miner == "none"
    assert TrainConfig(metric_loss="multisimilarity").resolved_miner == "multisimilarity"
    assert TrainConfig(metric_loss="supcon", miner="distance").resolved_miner == "distance"


_TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(float(v)),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "tuple[int, ...]": lambda v: (
        isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ),
}


@pytest.mark.usefixtures("no_hang")
def test_fuzzed_config_resolves_to_a_well_typed_config_or_fails_in_one_line(tmp_path, tiny):
    """220 mutations of a run's config.json (as `train --config` reads it): 150 field deletions / type changes,
    70 byte mutations. A config that resolves has every field of its declared type."""
    path = tmp_path / "config.json"
    text = (tiny[0] / rundir.CONFIG).read_bytes()

    def attempt(data):
        path.write_bytes(data)
        cfg = resolve(str(path), {})
        assert isinstance(cfg, TrainConfig)
        for name, f in FIELDS.items():
            v = getattr(cfg, name)
            assert (v is None and "None" in f.type) or _TYPES[f.type.replace(" | None", "")](v), (name, v)

    mutate = _json_mutations(json.loads(text), 7, text)
    fuzz(220, np.random.default_rng(SEED), mutate, attempt)


@pytest.mark.parametrize(
    "config",
    [
        {"loss": "triplet", "batch_size": 10**400},  # class_counts: too large for a float
        {"epochs": True},
        {"lr": "0.1"},
        {"focus_classes": "0246"},
        {"focus_classes": [0, "x"]},
        {"focus_classes": {"0": 1}},
        {"limit": 1.5},
        {"data_dir": 5},
        {"margin": float("nan")},
        {"nonsense\nkey": 1},
    ],
)
@pytest.mark.usefixtures("no_hang")
def test_config_values_of_the_wrong_type_are_one_line(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    one_line_error(resolve, str(path), {})


@pytest.mark.parametrize("doc", ["[]", '"x"', "3", "null", "[1, 2]"])
@pytest.mark.usefixtures("no_hang")
def test_a_config_file_that_is_not_an_object_is_one_line(tmp_path, doc):
    (tmp_path / "config.json").write_text(doc)
    assert "JSON object" in one_line_error(resolve, str(tmp_path / "config.json"), {})


@pytest.mark.usefixtures("no_hang")
def test_a_config_path_that_is_a_directory_is_one_line(tmp_path):
    one_line_error(resolve, str(tmp_path), {})


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"loss": "triplet", "m_per_class": 2**31}, id="m_per_class-2**31"),
        pytest.param({"loss": "triplet", "focus_oversample": 1e12}, id="focus_oversample-1e12"),
        pytest.param({"loss": "triplet", "focus_oversample": 1e308}, id="focus_oversample-1e308"),
    ],
)
@pytest.mark.usefixtures("no_hang")
def test_a_balanced_batch_that_cannot_be_filled_is_refused_at_once(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    signal.alarm(1)  # a check that does not loop answers in microseconds
    one_line_error(resolve, str(tmp_path / "config.json"), {})


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


@pytest.mark.parametrize("bad", [(8, 16), (0, 8, 16), (8, 16, 2000)])
def test_widths_are_checked(bad):
    with pytest.raises(ConfigError, match="--widths"):
        TrainConfig(widths=bad)
    with pytest.raises(ConfigError, match="--widths applies to"):
        TrainConfig(widths=(8, 16, 32), backbone="lenet")
