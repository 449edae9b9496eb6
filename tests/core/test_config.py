from pathlib import Path

import pytest

from pneumoscan.core.config import load_config, trainable_blocks
from pneumoscan.core.errors import ConfigError
from pneumoscan.core.labels import Task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["binary.yaml", "three_class.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.model.arch == "efficientnet-lite0"
    assert config.data.task in (Task.BINARY, Task.THREE_CLASS)


def test_overrides_are_typed():
    config = load_config(
        CONFIGS / "binary.yaml",
        ["train.epochs=3", "model.dropout=[0.1, 0.2]", "data.task=three-class"],
    )
    assert config.train.epochs == 3
    assert config.model.dropout == (0.1, 0.2)
    assert config.data.task is Task.THREE_CLASS


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown config key train.epoch"),
        ("train.epochs=many", "train.epochs: expected an integer"),
        ("model.strategy=half", "finetune-last-N"),
        ("data.task=four_class", "unknown task"),
        ("epochs", "section.key=value"),
    ],
)
def test_bad_config_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "binary.yaml", [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=nan", r"train.lr: out of range, got 'nan'; allowed: a finite number > 0$"),
        ("train.lr=.nan", r"train.lr: out of range, got nan; allowed: a finite number > 0$"),
        ("train.lr=.inf", "train.lr: out of range.*a finite number > 0"),
        ("train.lr=true", r"train.lr: expected a number, got True; allowed: a finite number > 0$"),
        ("train.lr=0", "train.lr: out of range, got 0"),
        ("train.weight_decay=-0.1", "train.weight_decay: out of range.*>= 0"),
        ("train.label_smoothing=1", "train.label_smoothing: out of range.*>= 0 and < 1"),
        ("train.finish_epochs=-1", "train.finish_epochs: out of range.*an integer >= 0"),
        ("train.distill_weight=1.5", "train.distill_weight: out of range.*>= 0 and <= 1"),
        ("train.epochs=true", "train.epochs: expected an integer, got True"),
        ("train.finish_lr=-1", "train.finish_lr: out of range.*> 0 or null"),
        ("model.dropout=[0.1, 1.5]", "model.dropout: out of range, got 1.5"),
        ("train.augment=maybe", "train.augment: expected true or false"),
    ],
)
def test_values_out_of_range_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(CONFIGS / "binary.yaml", [override])
    assert "\n" not in str(caught.value)


def test_numbers_as_yaml_text_and_flags_still_convert():
    config = load_config(
        CONFIGS / "binary.yaml",
        ["train.lr=1e-3", "train.augment=yes", "train.devices=0,1", "model.dropout=0.25"],
    )
    assert config.train.lr == 0.001 and config.train.augment is True
    assert config.train.devices == "0,1" and config.model.dropout == (0.25,)


def test_config_is_frozen_and_round_trips(tmp_path):
    import dataclasses

    from pneumoscan.core.config import save_config

    config = load_config(CONFIGS / "binary.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr = 1.0  # type: ignore[misc]
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_strategies():
    assert trainable_blocks("full") is None
    assert trainable_blocks("frozen") == 0
    assert trainable_blocks("finetune-last-5") == 5
