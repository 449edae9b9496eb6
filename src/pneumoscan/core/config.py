"""One config object per run: frozen dataclasses, loaded from YAML, overridden from the CLI.

Every key of a `configs/*.yaml` file is a field here; unknown keys and wrong types are errors
that name the key, so a typo never silently trains the default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pneumoscan.core.errors import ConfigError
from pneumoscan.core.labels import Task

AUGMENT_POLICIES = (
    "basic",
    "acquisition",
    "framing",
    "fov",
)  # perturb.AUGMENTATION_FAMILIES: what each covers


@dataclass(frozen=True)
class DataConfig:
    root: str = "../shared/data/chest_xray"
    task: Task = Task.BINARY
    val_fraction: float = 0.2
    fold: int = 0  # which of the round(1 / val_fraction) patient-grouped folds is validation
    max_patients: int | None = None  # a patient-grouped subset, for quick runs and tests
    strict: bool = False  # fail on unreadable files instead of skipping them
    cache_dir: str | None = None  # where decoded images and backbone features are cached


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "efficientnet-lite0"
    head: str | None = None  # None: the architecture's default head
    strategy: str = "full"  # full | frozen | finetune-last-N
    pretrained: bool = True
    dropout: tuple[float, ...] = (0.2,)
    image_size: int | None = None  # final (evaluation) resolution; None: the architecture's
    intensity: str = "none"  # none | equalize: grey-level standardisation in preprocess.py
    # Start from a trained model's network (binary, three-class or a .pt file) instead of
    # ImageNet weights; its architecture, head and preprocessing replace the keys above.
    init: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "plateau"  # plateau | cosine | none
    plateau_patience: int = 3
    early_stopping_patience: int | None = 6
    label_smoothing: float = 0.0
    class_balance: str = "weights"  # weights | sampler | none
    augment: bool = True
    augment_policy: str = "basic"  # one of AUGMENT_POLICIES (see data.radiograph_augmentation)
    ema_decay: float | None = None  # EMA of the weights per step, in the first (low-res) phase
    select: str = "best"  # best: the checkpoint with the best validation score; last: the final
    train_size: int | None = None  # train at a lower resolution than image_size, then finish at it
    finish_epochs: int = 0  # epochs at full resolution after the low-resolution phase
    finish_lr: float | None = None  # learning rate of the full-resolution phase; None: lr / 10
    threshold_sensitivity: float | None = (
        None  # binary: threshold for this sensitivity, else Youden's J
    )
    threads: int | None = None
    # DataLoader worker processes per training process (0: load in it). Single-threaded, they
    # augment beside the model step; in the training process, per-film augmentation with two
    # torch threads ran at 30 films/s on busy cores instead of 530 with one.
    loader_workers: int = 1
    seed: int = 42
    # Knowledge distillation: a CSV of teacher probabilities per training film (`path` plus one
    # column per class, as `pneumoscan distill-targets` writes it). Each training film's target
    # becomes distill_weight x the teacher's probabilities + (1 - distill_weight) x its label.
    distill_targets: str | None = None
    distill_weight: float = 0.5
    # Lightning's device flags (README, "Several devices and machines"). batch_size and lr are per
    # process: the global batch is batch_size x devices x num_nodes.
    accelerator: str = "cpu"
    devices: int | str = 1  # per node: a count, "auto", or GPU ids such as "0,1"
    num_nodes: int = 1
    strategy: str = "auto"  # auto (DDP when there are several devices), ddp, ...


@dataclass(frozen=True)
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _coerce(value, annotation, key: str):
    """Check and convert a YAML value to the field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        (item_type, _ellipsis) = typing.get_args(annotation)
        return tuple(_coerce(item, item_type, key) for item in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is Task:
        try:
            return Task(str(value).replace("-", "_"))
        except ValueError:
            choices = ", ".join(task.value for task in Task)
            raise ConfigError(f"{key}: unknown task {value!r}; choose one of {choices}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected text, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {annotation}")  # pragma: no cover


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
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
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


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
    data, model, train = config.data, config.model, config.train
    if not 0.0 < data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {data.val_fraction}")
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
    if train.ema_decay is not None and not 0.0 < train.ema_decay < 1.0:
        raise ConfigError("train.ema_decay must be between 0 and 1 (e.g. 0.99)")
    if train.epochs < 1 or train.batch_size < 1:
        raise ConfigError("train.epochs and train.batch_size must be at least 1")
    if train.threshold_sensitivity is not None and not 0 < train.threshold_sensitivity < 1:
        raise ConfigError("train.threshold_sensitivity must be between 0 and 1")
    if not 0.0 <= train.distill_weight <= 1.0:
        raise ConfigError(
            f"train.distill_weight must be between 0 and 1, got {train.distill_weight}"
        )
    if train.loader_workers < 0:
        raise ConfigError(f"train.loader_workers must be 0 or more, got {train.loader_workers}")
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
