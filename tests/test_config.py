from pathlib import Path

import pytest

from tfjetflows.config import (
    ConfigError,
    build_from_section,
    config_from_dict,
    config_to_dict,
    default_config_path,
    load_config,
)

CONFIGS = sorted(
    path
    for path in Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.yaml")
    if not path.name.startswith("distill")  # distillation configs: tests/training/test_distill.py
)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.source == str(path)
    assert config.model["kind"] in {"maf", "bnaf"}
    assert config.representation["kind"] in {"hits", "image", "features"}


def test_default_config_is_maf_hits():
    assert default_config_path().name == "maf_hits.yaml"
    assert load_config().model["kind"] == "maf"


@pytest.mark.parametrize(
    "text, key",
    [
        ("data:\n  batch_sise: 3\n", "batch_sise"),
        ("selection:\n  min_hit: 3\n", "min_hit"),
        ("trainig:\n  epochs: 3\n", "trainig"),
        ("representation:\n  hits_per_channel: {}\n", "kind"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_apply_and_validate():
    config = load_config(overrides=["training.epochs=3", "data.conditions=[y, pt]", "seed=7"])
    assert config.training.epochs == 3
    assert config.data.conditions == ["y", "pt"]
    assert config.seed == 7
    with pytest.raises(ConfigError, match="epoch"):
        load_config(overrides=["training.epoch=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["training.epochs"])


def test_round_trip_through_dict():
    config = load_config(overrides=["model.blocks=2"])
    again = config_from_dict(config_to_dict(config))
    assert config_to_dict(again) == config_to_dict(config)


def _factory(*, width: int, depth: int = 2, event_size: int = 0):
    return (width, depth, event_size)


def test_build_from_section_checks_keys():
    registry = {"thing": _factory}
    assert build_from_section(registry, {"kind": "thing", "width": 3}, "f.yaml", event_size=5) == (
        3,
        2,
        5,
    )
    with pytest.raises(ConfigError, match="unknown key 'widht'"):
        build_from_section(registry, {"kind": "thing", "widht": 3}, "f.yaml")
    with pytest.raises(ConfigError, match="unknown kind 'other'"):
        build_from_section(registry, {"kind": "other"}, "f.yaml")
    # derived arguments cannot be set from a file
    with pytest.raises(ConfigError, match="event_size"):
        build_from_section(
            registry, {"kind": "thing", "width": 1, "event_size": 2}, "f.yaml", event_size=5
        )


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs=abc", "'epochs' must be an integer"),
        ("training.epochs=2.5", "'epochs' must be an integer"),
        ("data.conditions=y", "'conditions' must be a list"),
        ("training.jit_compile=3", "'jit_compile' must be true or false"),
        ("training.learning_rate=fast", "'learning_rate' must be a number"),
    ],
)
def test_wrong_types_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_yaml11_exponent_numbers_become_floats():
    # PyYAML reads 1e-4 as a string (YAML 1.1 wants 1.0e-4); a float field takes it as a number
    config = load_config(overrides=["training.learning_rate=1e-4", "selection.energy_min=5"])
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert config.selection.energy_min == 5.0
