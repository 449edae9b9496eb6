"""One config object per run: frozen pydantic v2 dataclasses, loaded from YAML, overridden from
the CLI.

Every key of a `configs/*.yaml` file is a field here; unknown keys, wrong types and values out of
a field's range are one-line errors that name the key (and the allowed range), so a typo never
silently trains the default and `train.lr=nan` never trains at all.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from pneumoscan.core.errors import ConfigError
from pneumoscan.core.labels import Task

AUGMENT_POLICIES = (
    "basic",
    "acquisition",
    "framing",
    "fov",
)  # perturb.AUGMENTATION_FAMILIES: what each covers


def _not_bool(value):
    """YAML's true/false is not a number: `train.lr=true` is an error, not 1.0."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    return value


def _integer(value):
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    return value


def _number(value):
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as text
        try:
            return float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    return _not_bool(value)


def _flag(value):
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _task(value):
    if isinstance(value, Task):
        return value
    try:
        return Task(str(value).replace("-", "_"))
    except ValueError:
        choices = ", ".join(task.value for task in Task)
        raise ValueError(f"unknown task {value!r}; choose one of {choices}") from None


def _text(value):
    if isinstance(value, (dict, list, bool)):
        raise ValueError("expected text")
    return str(value)


def Number(**bounds):  # noqa: N802 (a type)
    """A finite float within `bounds` (gt, ge, lt, le)."""
    return Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False, **bounds)]


def Integer(**bounds):  # noqa: N802 (a type)
    """An int within `bounds`; numeric text such as "3" converts, booleans do not."""
    return Annotated[int, BeforeValidator(_integer), Field(**bounds)]


Flag = Annotated[bool, BeforeValidator(_flag)]
Text = Annotated[str, BeforeValidator(_text)]
TaskName = Annotated[Task, BeforeValidator(_task)]
Dropout = Annotated[
    tuple[Number(ge=0, lt=1), ...],
    BeforeValidator(lambda value: value if isinstance(value, (list, tuple)) else [value]),
]
_STRICT_KEYS = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_STRICT_KEYS)
class DataConfig:
    root: Text = "../shared/data/chest_xray"
    task: TaskName = Task.BINARY
    val_fraction: Number(gt=0, lt=1) = 0.2
    fold: Integer(ge=0) = (
        0  # which of the round(1 / val_fraction) patient-grouped folds is validation
    )
    split_seed: Integer() | None = (
        None  # the patient folds' shuffle; None: train.seed. Ensemble members share one
    )
    max_patients: Integer(ge=1) | None = None  # a patient-grouped subset, for quick runs and tests
    strict: Flag = False  # fail on unreadable files instead of skipping them
    allow_outside: Flag = False  # a site CSV's paths may leave the CSV's folder
    cache_dir: Text | None = None  # where decoded images and backbone features are cached


@dataclass(frozen=True, config=_STRICT_KEYS)
class ModelConfig:
    arch: Text = "efficientnet-lite0"
    head: Text | None = None  # None: the architecture's default head
    strategy: Text = "full"  # full | frozen | finetune-last-N
    pretrained: Flag = True
    dropout: Dropout = (0.2,)
    image_size: Integer(ge=1) | None = (
        None  # final (evaluation) resolution; None: the architecture's
    )
    intensity: Text = "none"  # none | equalize: grey-level standardisation in preprocess.py
    # Start from a trained model's network (binary-fast or a .pt file) instead of
    # ImageNet weights; its architecture, head and preprocessing replace the keys above.
    init: Text | None = None


@dataclass(frozen=True, config=_STRICT_KEYS)
class TrainConfig:
    epochs: Integer(ge=1) = 10
    batch_size: Integer(ge=1) = 32
    optimizer: Text = "adamw"  # adam | adamw
    lr: Number(gt=0) = 1e-3
    weight_decay: Number(ge=0) = 1e-4
    scheduler: Text = "plateau"  # plateau | cosine | none
    plateau_patience: Integer(ge=0) = 3
    early_stopping_patience: Integer(ge=0) | None = 6
    label_smoothing: Number(ge=0, lt=1) = 0.0
    class_balance: Text = "weights"  # weights | sampler | none
    augment: Flag = True
    augment_policy: Text = "basic"  # one of AUGMENT_POLICIES (see data.radiograph_augmentation)
    ema_decay: Number(gt=0, lt=1) | None = (
        None  # EMA of the weights per step, in the first (low-res) phase
    )
    select: Text = "best"  # best: the checkpoint with the best validation score; last: the final
    train_size: Integer(ge=1) | None = (
        None  # train at a lower resolution than image_size, then finish at it
    )
    finish_epochs: Integer(ge=0) = 0  # epochs at full resolution after the low-resolution phase
    finish_lr: Number(gt=0) | None = (
        None  # learning rate of the full-resolution phase; None: lr / 10
    )
    threshold_sensitivity: Number(gt=0, lt=1) | None = (
        None  # binary: threshold for this sensitivity, else Youden's J
    )
    threads: Integer(ge=1) | None = None
    # DataLoader worker processes per training process (0: load in it). Single-threaded, they
    # augment beside the model step; in the training process, per-film augmentation with two
    # torch threads ran at 30 films/s on busy cores instead of 530 with one.
    loader_workers: Integer(ge=0) = 1
    seed: Integer() = 42
    # Knowledge distillation: a CSV of teacher probabilities per training film (`path` plus one
    # column per class, as `pneumoscan distill-targets` writes it). Each training film's target
    # becomes distill_weight x the teacher's probabilities + (1 - distill_weight) x its label.
    distill_targets: Text | None = None
    distill_weight: Number(ge=0, le=1) = 0.5
    # Lightning's device flags (docs/scale.md). batch_size and lr are per
    # process: the global batch is batch_size x devices x num_nodes.
    accelerator: Text = "cpu"
    devices: Integer() | Text = 1  # per node: a count, "auto", or GPU ids such as "0,1"
    num_nodes: Integer() = 1  # checked in validate(), with the --num-nodes flag's message
    strategy: Text = "auto"  # auto (DDP when there are several devices), ddp, ...


@dataclass(frozen=True, config=_STRICT_KEYS)
class Config:
    name: Text = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _build(cls, values: dict, prefix: str):
    """A config section from its YAML mapping; the first problem as a one-line ConfigError."""
    hints = typing.get_type_hints(cls, include_extras=True)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{sorted(unknown)[0]}; valid keys under "
            f"{prefix or 'the top level'}: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a section of keys, got {value!r}")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValidationError as error:
        raise ConfigError(_one_line(error, cls, prefix)) from None


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _allowed(cls, name: str) -> str:
    """What a field accepts, from its annotation: "a finite number > 0", "an integer >= 0"..."""
    hint = typing.get_type_hints(cls, include_extras=True)[name]
    words, bounds = [], []
    for option in typing.get_args(hint) if typing.get_origin(hint) is not Annotated else (hint,):
        if option is type(None):
            continue
        base = typing.get_args(option)[0] if typing.get_origin(option) is Annotated else option
        word = _WORDS.get(base, getattr(base, "__name__", str(base)))
        if base is float:
            word = "a finite number"
        elif typing.get_origin(base) is tuple:
            word, option = "a list of finite numbers", typing.get_args(base)[0]
        for meta in getattr(option, "__metadata__", ()):
            for item in getattr(meta, "metadata", ()):
                for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                    if getattr(item, attr, None) is not None:
                        bounds.append(f"{sign} {getattr(item, attr)}")
        words.append(word + (" " + " and ".join(bounds) if bounds else ""))
        bounds = []
    if type(None) in typing.get_args(hint):
        words.append("null")
    return " or ".join(words)


_OUT_OF_RANGE = (
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "finite_number",
)


def _one_line(error: ValidationError, cls, prefix: str) -> str:
    """`train.lr: out of range, got nan; allowed: a finite number > 0`."""
    first = error.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    value = first.get("input")
    if first["type"] in ("int_parsing", "int_from_float", "int_type"):
        message = "expected an integer"
    elif first["type"] in ("float_parsing", "float_type"):
        message = "expected a number"
    elif first["type"] in _OUT_OF_RANGE:
        message = "out of range"
    else:
        message = first["msg"].removeprefix("Value error, ")
    text = f"{prefix}{name}: {message}, got {value!r}"
    if name and "choose" not in message:
        text += f"; allowed: {_allowed(cls, name)}"
    return text


def config_from_dict(values: dict) -> Config:
    config = _build(Config, values, "")
    validate(config)
    return config


def config_to_dict(config: Config) -> dict:
    def plain(value):
        if isinstance(value, Task):
            return value.value
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(dataclasses.asdict(config))


# The short recipe `pneumoscan train --init MODEL` starts from when no --config is given: a few
# epochs at a low learning rate on a site's few hundred films, the robust recipe's augmentation,
# and the last weights kept (no epoch chosen on the site's validation films).
FINETUNE_RECIPE = (
    "name=finetuned",
    "train.epochs=3",
    "train.batch_size=16",
    "train.lr=0.0001",
    "train.scheduler=cosine",
    "train.label_smoothing=0.1",
    "train.augment_policy=framing",
    "train.early_stopping_patience=null",
    "train.select=last",
)


def load_config(path: Path | str | None, overrides: list[str] = ()) -> Config:
    """Load a YAML config (or the defaults when path is None) and apply `key.sub=value` overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"{path}: config file not found; see configs/ for the shipped recipes."
            )
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error}).") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level.")
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {override!r}: write it as section.key=value, e.g. train.epochs=3"
            )
        target = values
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {override!r}: {parent} is not a section")
        target[leaf] = yaml.safe_load(raw) if raw.strip() else None
    return config_from_dict(values)


def save_config(config: Config, path: Path) -> None:
    from pneumoscan.core.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def validate(config: Config) -> None:
    """What one field's constraints cannot say: choices of text, and keys that depend on others."""
    data, model, train = config.data, config.model, config.train
    folds = round(1 / data.val_fraction)
    if not 0 <= data.fold < folds:
        raise ConfigError(
            f"data.fold must be in 0..{folds - 1} for val_fraction {data.val_fraction}"
        )
    strategy = model.strategy
    if strategy not in ("full", "frozen") and not _is_finetune_last(strategy):
        raise ConfigError(
            f"model.strategy {strategy!r}: choose full, frozen or finetune-last-N (e.g. finetune-last-5)"
        )
    if train.optimizer not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"train.optimizer {train.optimizer!r}: choose adam, adamw or sgd")
    if train.scheduler not in ("plateau", "cosine", "none"):
        raise ConfigError(f"train.scheduler {train.scheduler!r}: choose plateau, cosine or none")
    if train.class_balance not in ("weights", "sampler", "none"):
        raise ConfigError(
            f"train.class_balance {train.class_balance!r}: choose weights, sampler or none"
        )
    if model.intensity not in ("none", "equalize"):
        raise ConfigError(f"model.intensity {model.intensity!r}: choose none or equalize")
    if train.augment_policy not in AUGMENT_POLICIES:
        raise ConfigError(
            f"train.augment_policy {train.augment_policy!r}: choose one of "
            + ", ".join(AUGMENT_POLICIES)
        )
    if train.select not in ("best", "last"):
        raise ConfigError(f"train.select {train.select!r}: choose best or last")
    if train.num_nodes < 1:
        raise ConfigError(f"train.num_nodes must be at least 1, got {train.num_nodes}")
    if isinstance(train.devices, int) and train.devices < 1 and train.devices != -1:
        raise ConfigError(
            f"train.devices {train.devices}: give a count of 1 or more, -1 or auto for all, "
            "or GPU ids such as 0,1"
        )


def _is_finetune_last(strategy: str) -> bool:
    prefix = "finetune-last-"
    return strategy.startswith(prefix) and strategy[len(prefix) :].isdigit()


def trainable_blocks(strategy: str) -> int | None:
    """How many final backbone blocks train: None for all (full), 0 for frozen, N for finetune-last-N."""
    if strategy == "full":
        return None
    if strategy == "frozen":
        return 0
    return int(strategy.rsplit("-", 1)[1])
