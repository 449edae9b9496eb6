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


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_strategies():
    assert trainable_blocks("full") is None
    assert trainable_blocks("frozen") == 0
    assert trainable_blocks("finetune-last-5") == 5
