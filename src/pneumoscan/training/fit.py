"""`fit(config, out_dir)`: train a model and write one self-describing model file.

    pneumoscan train --config configs/binary.yaml --out runs/binary
    pneumoscan train --config configs/binary.yaml --out runs/binary --resume   # after a crash
    pneumoscan train --config configs/binary.yaml --out runs/binary --devices 2 --strategy ddp

Run folder: config.yaml (resolved), split.csv (patient-grouped), phase-*/ (Lightning checkpoints,
metrics.csv), model.pt (the result), val_metrics.json. CPU-efficient by design: images are decoded
once, a frozen backbone's features are computed once and cached, and `train.train_size` trains at
a lower resolution before `train.finish_epochs` at full resolution.

Under DDP every process runs `fit` (Lightning's launcher reruns the command for the other local
ranks; torchrun and srun start them all at once). Rank zero alone checks and creates the run
folder and writes the split, checkpoints, logs, the model file and the reports; every rank
prepares the same data and split (the decode and feature caches are shared under a file lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import time
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks.weight_averaging import EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from pneumoscan.core import dataset as ds
from pneumoscan.core.config import (
    Config,
    TrainConfig,
    config_to_dict,
    load_config,
    save_config,
    trainable_blocks,
)
from pneumoscan.core.decision import calibrated_probabilities
from pneumoscan.core.errors import ConfigError
from pneumoscan.core.fileio import atomic_write, atomic_write_json, atomic_write_text
from pneumoscan.core.labels import CLASS_NAMES, Task
from pneumoscan.core.preprocess import PreprocessSpec
from pneumoscan.core.shipped import resolve_model
from pneumoscan.evaluation.calibration import BINARY_GROUPS
from pneumoscan.evaluation.calibration import fit as fit_calibration
from pneumoscan.evaluation.metrics import compute_metrics
from pneumoscan.training.gate import fit_gate, gate_features, texture_taps
from pneumoscan.training.lit import LitClassifier, monitor_metric
from pneumoscan.training.loaders import (
    ChestXrayDataModule,
    ImageTensorDataset,
    cache_lock,
    decode_images,
    on_cuda,
    scoring_batches,
)
from pneumoscan.training.model_file import (
    ModelInfo,
    load_model_file,
    package_versions,
    save_model_file,
)
from pneumoscan.training.networks import (
    SIZE_DEPENDENT_HEADS,
    Classifier,
    GroupedClassifier,
    create_model,
    get_architecture,
    predict_logits,
    scoring_device,
)
from pneumoscan.training.runs import MODEL_FILE, TIMING_FILE, default_cache_dir, write_timing

logger = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


@dataclass(frozen=True)
class Launch:
    """Where this process stands in the run: `world_size` processes in all, `processes_per_node`
    of them on this machine, this one `global_rank`."""

    world_size: int
    global_rank: int
    processes_per_node: int
    gpu: bool = False  # Lightning resolved the accelerator to CUDA GPUs

    @property
    def is_rank_zero(self) -> bool:
        return self.global_rank == 0


LAUNCH_FLAGS = ("accelerator", "devices", "num_nodes", "strategy")


def launch_flags(train: TrainConfig) -> dict:
    """The TrainConfig fields that say where a run trains, not what it trains."""
    return {name: getattr(train, name) for name in LAUNCH_FLAGS}


def launch_of(train: TrainConfig) -> Launch:
    """Lightning's own reading of the device flags and of the launcher's environment (LOCAL_RANK
    and NODE_RANK from its launcher, RANK from torchrun, SLURM_PROCID from srun), from a Trainer
    that is built and never fitted. Bad flags fail here, before any folder is created."""
    try:
        trainer = L.Trainer(
            accelerator=train.accelerator,
            devices=train.devices,
            num_nodes=train.num_nodes,
            strategy=train.strategy,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        raise ConfigError(
            f"train.accelerator={train.accelerator} train.devices={train.devices} "
            f"train.num_nodes={train.num_nodes} train.strategy={train.strategy}: {error}"
        ) from None
    return Launch(
        trainer.world_size, trainer.global_rank, trainer.num_devices, on_cuda(trainer.accelerator)
    )


def device_flags(launch: Launch) -> dict:
    """Trainer arguments that depend on the devices: batch-norm statistics synchronised across
    DDP processes on GPUs (each GPU's share of a batch is small; CPU DDP keeps per-process
    statistics, as SyncBatchNorm needs GPUs)."""
    return {"sync_batchnorm": True} if launch.gpu and launch.world_size > 1 else {}


@dataclass(frozen=True)
class RunData:
    samples: list[ds.Sample]
    targets: np.ndarray
    split: ds.PatientSplit
    pixels: dict[int, np.ndarray]  # decoded uint8 squares per image size


def prepare_run_data(config: Config, sizes: set[int]) -> RunData:
    """Scan the training pool, label it, decode it once per size, and split it by patient."""
    data = config.data
    samples, targets = ds.targets_for(ds.training_pool(data.root, data.allow_outside), data.task)
    patients = [sample.patient for sample in samples]
    if data.max_patients is not None:
        chosen = ds.subset_patients(targets, patients, data.max_patients, config.train.seed)
        samples, targets = [samples[i] for i in chosen], targets[chosen]
    cache_dir = Path(data.cache_dir) if data.cache_dir else default_cache_dir()
    pixels: dict[int, np.ndarray] = {}
    kept = None
    for size in sorted(sizes, reverse=True):
        decoded = decode_images(samples, size, strict=data.strict, cache_dir=cache_dir)
        pixels[size] = decoded.pixels
        kept = decoded.kept
    samples, targets = [samples[i] for i in kept], targets[kept]
    split_seed = config.train.seed if data.split_seed is None else data.split_seed
    split = ds.split_by_patient(
        targets, [s.patient for s in samples], data.val_fraction, data.fold, split_seed
    )
    return RunData(samples, targets, split, pixels)


def write_split(run_data: RunData, path: Path) -> None:
    role = np.empty(len(run_data.samples), dtype=object)
    role[run_data.split.train] = "train"
    role[run_data.split.val] = "val"
    ds.write_split(path, run_data.samples, run_data.targets, list(role))


def class_weights(targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 (pneumonia outnumbers normal 3:1)."""
    counts = np.maximum(ds.class_counts(targets, num_classes), 1)
    weights = counts.sum() / (num_classes * counts)
    return torch.tensor(weights, dtype=torch.float32)


def _feature_cache(
    model: Classifier, pixels: np.ndarray, spec: PreprocessSpec, pooled: bool, cache_file: Path
) -> torch.Tensor:
    """Backbone features of every image, computed once (the backbone is frozen and deterministic).

    Under a lock: DDP ranks started together compute them once, the others wait and read the file.
    """
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache_file):
        if cache_file.is_file():
            return torch.load(cache_file, weights_only=True)
        return _compute_features(model, pixels, spec, pooled, cache_file)


def _compute_features(
    model: Classifier, pixels: np.ndarray, spec: PreprocessSpec, pooled: bool, cache_file: Path
) -> torch.Tensor:
    images = ImageTensorDataset(pixels, np.zeros(len(pixels)), spec)
    outputs = []
    model.eval()
    with torch.no_grad():
        for index, (batch, _) in enumerate(DataLoader(images, batch_size=64)):
            features = model.forward_features(batch.contiguous(memory_format=torch.channels_last))
            if pooled:
                features = features.mean(dim=(2, 3), keepdim=True)
            outputs.append(features.half())
            logger.info(
                "backbone features: %d / %d images", min((index + 1) * 64, len(pixels)), len(pixels)
            )
    features = torch.cat(outputs)
    atomic_write(cache_file, lambda tmp: torch.save(features, tmp))
    return features


def _phases(config: Config, spec: PreprocessSpec) -> list[tuple[str, int, int]]:
    """(name, image size, epochs): a low-resolution phase, then an optional full-resolution finish."""
    train = config.train
    if train.train_size and train.train_size != spec.size:
        phases = [("phase-1", train.train_size, train.epochs)]
        if train.finish_epochs:
            phases.append(("phase-2", spec.size, train.finish_epochs))
        return phases
    return [("phase-1", spec.size, train.epochs)]


def fit(
    config: Config,
    out_dir: Path,
    resume: bool = False,
    callbacks: list[Callback] = (),
    progress: bool = True,
) -> Path:
    """Train per `config` into `out_dir`; return the model file path (rank zero writes it).
    Resumable, on one process or under DDP."""
    out_dir = Path(out_dir)
    launch = launch_of(config.train)
    config = open_run_folder(with_init(config), out_dir, resume, launch.is_rank_zero)
    started = time.time()
    _set_threads(config.train, launch)
    L.seed_everything(config.train.seed, workers=True)

    task, model_config, train_config = config.data.task, config.model, config.train
    class_names = CLASS_NAMES[task]
    spec, head = _spec_and_head(model_config, train_config)
    frozen = trainable_blocks(model_config.strategy) == 0
    phases = _phases(config, spec)
    run_data = prepare_run_data(config, {size for _, size, _ in phases})
    if launch.is_rank_zero:
        write_split(run_data, out_dir / ds.SPLIT_FILE)
    train_index, val_index = run_data.split.train, run_data.split.val
    logger.info(
        "patient-grouped split: %d train images, %d validation images",
        len(train_index),
        len(val_index),
    )

    model = _network(model_config, task, head, spec)
    if launch.world_size > 1:
        # Same initial weights everywhere (seeded above; DDP also broadcasts rank zero's), then each
        # rank its own augmentation and dropout draws: with one seed, rank r's k-th film would get
        # the same random transform as rank zero's k-th film.
        L.seed_everything(config.train.seed + launch.global_rank, workers=True, verbose=False)
    targets = run_data.targets
    weights = class_weights(targets[train_index], len(class_names))

    features = None
    if frozen:
        features = _features(config, model, run_data, spec, head)
        phases = [("phase-1", spec.size, train_config.epochs)]

    train_targets = _train_targets(train_config, run_data, train_index, len(class_names))
    monitor = monitor_metric(len(class_names))
    shipped = None
    for name, size, epochs in phases:
        phase_dir = out_dir / name
        if (phase_dir / "done.json").is_file():
            best = json.loads((phase_dir / "done.json").read_text())["best_checkpoint"]
            state, shipped = _load_checkpoint(Path(best), name)
            model.load_state_dict(state)
            continue
        datamodule = _phase_data(
            train_config, run_data, spec, size, features, train_targets, weights
        )
        phase_config = train_config
        if name == "phase-2":
            phase_config = replace(train_config, lr=train_config.finish_lr or train_config.lr / 10)
        lit = LitClassifier(
            model,
            len(class_names),
            phase_config,
            class_weights=weights if train_config.class_balance == "weights" else None,
            head_only=frozen,
            max_epochs=epochs,
        )
        checkpoint, trainer = _phase_trainer(
            train_config, name, phase_dir, epochs, monitor, callbacks, progress, resume, launch
        )
        last = phase_dir / "last.ckpt"
        with _weights_only(last):
            trainer.fit(
                lit,
                datamodule=datamodule,
                ckpt_path=str(last) if resume and last.is_file() else None,
                weights_only=True,  # --resume unpickles no code from the run folder
            )
        if not launch.is_rank_zero:
            # The next phase starts from rank zero's chosen weights: DDP broadcasts them when it
            # wraps the model, so the other ranks need not read rank zero's checkpoint files.
            continue
        shipped = _keep_selected(model, checkpoint, train_config.select, phase_dir)

    if not launch.is_rank_zero:
        return out_dir / MODEL_FILE
    model_path = finalize(
        config, model, run_data, features if frozen else None, spec, out_dir, shipped
    )
    write_timing(out_dir, resume, started, launch)
    return model_path


def _keep_selected(model, checkpoint: ModelCheckpoint, select: str, phase_dir: Path) -> dict:
    """Load the phase's selected weights into `model`, mark the phase done, and return where in
    training they were saved. `last` keeps selection off the validation films, which then stay
    out-of-sample for calibration and reporting; `best` picks the epoch with the best
    validation score."""
    chosen = select == "best" and checkpoint.best_model_path
    selected = Path(checkpoint.best_model_path) if chosen else phase_dir / "last.ckpt"
    state, shipped = _load_checkpoint(selected, phase_dir.name)
    model.load_state_dict(state)
    done = {"best_checkpoint": str(selected), "best_score": _score(checkpoint), **shipped}
    atomic_write_text(phase_dir / "done.json", json.dumps(done, indent=2))
    return shipped


def _set_threads(train_config, launch) -> None:
    """torch's CPU threads: train.threads, or the cores shared among this node's processes."""
    threads = train_config.threads or max(1, (os.cpu_count() or 1) // launch.processes_per_node)
    torch.set_num_threads(threads)
    if launch.world_size > 1:
        # Lightning's launcher sets torch's thread count from OMP_NUM_THREADS, or to cores /
        # processes when it is unset; setting it keeps train.threads in force on every rank.
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _spec_and_head(model_config, train_config):
    """The network's preprocessing at the configured size and intensity, and its head."""
    architecture = get_architecture(model_config.arch)
    spec = architecture.preprocess.with_size(
        model_config.image_size or architecture.preprocess.size
    ).with_intensity(model_config.intensity)
    head = model_config.head or architecture.default_head
    if head in SIZE_DEPENDENT_HEADS and train_config.train_size not in (None, spec.size):
        raise ConfigError(
            f"head {head!r} flattens a fixed-size feature map, so it cannot train at "
            f"train.train_size={train_config.train_size} and finish at {spec.size}; "
            "use the linear head or drop train.train_size."
        )
    return spec, head


def _network(model_config, task: str, head: str, spec):
    """The initial network (from `model.init`, or a fresh one), trainable blocks set."""
    class_names = CLASS_NAMES[task]
    if model_config.init:
        model = initial_network(model_config.init, task)
    else:
        model = create_model(
            model_config.arch,
            len(class_names),
            head=head,
            dropout=model_config.dropout,
            pretrained=model_config.pretrained,
            image_size=spec.size,
        )
    model.set_trainable_blocks(trainable_blocks(model_config.strategy))
    model = model.to(memory_format=torch.channels_last)
    return model


def _features(config, model, run_data, spec, head):
    """A frozen backbone's features of every film, cached on disk by what they depend on."""
    pixels = run_data.pixels[spec.size]
    key = feature_cache_key(model, pixels, spec, head)
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()
    features = _feature_cache(
        model,
        pixels,
        spec,
        pooled=head not in SIZE_DEPENDENT_HEADS,
        cache_file=cache_dir / f"features-{key}.pt",
    )
    return features


def feature_cache_key(
    model: Classifier | GroupedClassifier, pixels: np.ndarray, spec: PreprocessSpec, head: str
) -> str:
    """What a frozen backbone's features depend on: the backbone's own weights (not the
    architecture's name: `--init` starts from trained weights that ImageNet's never give), the
    preprocessing, whether the head pools, and the pixels."""
    digest = hashlib.sha256(f"{spec}|{head in SIZE_DEPENDENT_HEADS}|".encode())
    source = model.source if isinstance(model, GroupedClassifier) else model
    for name, tensor in sorted(source.backbone.state_dict().items()):
        # Bytes of the contiguous copy: a channels_last backbone hashes like its plain copy.
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    digest.update(pixels.tobytes())
    return digest.hexdigest()[:16]


def _train_targets(train_config, run_data, train_index, n_classes: int):
    """The training films' targets: the labels, or soft targets mixed with a teacher's."""
    train_targets = run_data.targets[train_index]
    if train_config.distill_targets:
        from pneumoscan.training.distill import soft_targets

        train_targets = soft_targets(
            [run_data.samples[i] for i in train_index],
            train_targets,
            Path(train_config.distill_targets),
            n_classes,
            train_config.distill_weight,
        )
    return train_targets


def _phase_data(train_config, run_data, spec, size, features, train_targets, weights):
    """The phase's datasets and data module: cached features when frozen, pixels otherwise."""
    frozen = features is not None
    targets, train_index, val_index = run_data.targets, run_data.split.train, run_data.split.val
    if frozen:
        train_set = TensorDataset(features[train_index], torch.from_numpy(targets[train_index]))
        val_set = TensorDataset(features[val_index], torch.from_numpy(targets[val_index]))
    else:
        phase_spec = spec.with_size(size)
        pixels = run_data.pixels[size]
        train_set = ImageTensorDataset(
            pixels[train_index],
            train_targets,
            phase_spec,
            augment=train_config.augment_policy if train_config.augment else False,
        )
        val_set = ImageTensorDataset(pixels[val_index], targets[val_index], phase_spec)
    sampler_weights = None
    if train_config.class_balance == "sampler":
        sampler_weights = weights.numpy()[targets[train_index]]
    datamodule = ChestXrayDataModule(
        train_set,
        val_set,
        train_config.batch_size,
        sampler_weights,
        seed=train_config.seed,
        workers=0 if frozen else train_config.loader_workers,  # cached features need none
    )
    return datamodule


def _phase_trainer(
    train_config, name, phase_dir, epochs, monitor, callbacks, progress, resume, launch
):
    """The phase's checkpoints, callbacks and Lightning trainer."""
    checkpoint = ModelCheckpoint(
        dirpath=phase_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        enable_version_counter=False,
    )
    # Every epoch's weights, in a checkpoint of their own: Lightning's `save_last` writes
    # last.ckpt only in an epoch whose score improved, which left `select: last` with the best
    # epoch's weights and made --resume repeat the epochs after it.
    every_epoch = ModelCheckpoint(
        dirpath=phase_dir, filename="last", monitor=None, enable_version_counter=False
    )
    phase_callbacks: list[Callback] = [checkpoint, every_epoch, *callbacks]
    if train_config.ema_decay is not None and name == "phase-1":
        # The averaged weights replace the live ones for validation, in checkpoints and at the
        # end, so `last.ckpt` holds the average. Not in the short full-resolution finish: an
        # average there mixes batch-norm statistics of two resolutions (it cost 3 points of
        # validation accuracy when tried).
        phase_callbacks.append(EMAWeightAveraging(decay=train_config.ema_decay))
    if train_config.early_stopping_patience:
        phase_callbacks.append(
            EarlyStopping(
                monitor=monitor, mode="max", patience=train_config.early_stopping_patience
            )
        )
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        phase_callbacks.append(RichProgressBar())
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=train_config.accelerator,
        devices=train_config.devices,
        strategy=train_config.strategy,
        callbacks=phase_callbacks,
        logger=_csv_logger(phase_dir, keep_history=resume, rank_zero=launch.is_rank_zero),
        enable_progress_bar=progress,
        num_nodes=train_config.num_nodes,
        # ChestXrayDataModule gives each rank its own share of the films (DistributedSampler).
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
        default_root_dir=phase_dir,
        **device_flags(launch),
    )
    return checkpoint, trainer


def with_init(config: Config) -> Config:
    """With `model.init`, the model keys of the network it names: fine-tuning keeps the starting
    model's architecture, head and preprocessing."""
    if not config.model.init:
        return config
    _, info = load_model_file(resolve_model(config.model.init))
    return replace(
        config,
        model=replace(
            config.model,
            arch=info.arch,
            head=info.head,
            dropout=tuple(info.dropout),
            image_size=info.preprocess.size,
            intensity=info.preprocess.intensity,
        ),
    )


def initial_network(reference: str, task: Task) -> Classifier | GroupedClassifier:
    """The trained network `pneumoscan train --init` starts from, read in `task`'s classes: as
    it is, its three-class source (a shipped binary model is the three-class network read as
    binary), or a three-class network read as binary (P(pneumonia) = P(bacteria) + P(virus))."""
    network, info = load_model_file(resolve_model(reference))
    wanted = CLASS_NAMES[task]
    if tuple(info.class_names) == wanted:
        return network
    source = network.source if isinstance(network, GroupedClassifier) else network
    derived = info.derived_from
    source_names = tuple(derived["class_names"]) if derived else tuple(info.class_names)
    if source_names == wanted:
        return source
    if task is Task.BINARY and source_names == CLASS_NAMES[Task.THREE_CLASS]:
        temperature = derived["temperature"] if derived else info.temperature
        return GroupedClassifier(source, temperature, BINARY_GROUPS)
    raise ConfigError(
        f"--init {reference}: a {', '.join(info.class_names)} model cannot start a "
        f"{task.value} run; use data.task={info.task}."
    )


def open_run_folder(config: Config, out_dir: Path, resume: bool, rank_zero: bool) -> Config:
    """The run's config; a new run folder is checked and created by rank zero alone.

    The other ranks join the run rank zero opened: Lightning's launcher starts them only once rank
    zero reaches training, and under torchrun or srun a refusal on rank zero stops them all. On
    `--resume` every rank reads the saved config, so all train the same recipe, on the devices
    this launch asked for.
    """
    config_file = out_dir / "config.yaml"
    if resume:
        if not config_file.is_file():
            raise ConfigError(
                f"{out_dir}: nothing to resume (no config.yaml); start without --resume."
            )
        saved = load_config(config_file)
        # The devices are this launch's (a preempted 4-GPU job may come back on 2); the recipe is
        # the saved one.
        return replace(saved, train=replace(saved.train, **launch_flags(config.train)))
    if not rank_zero:
        return config
    get_architecture(config.model.arch)  # a bad architecture or data folder fails before mkdir
    ds.training_pool(config.data.root, config.data.allow_outside)
    if any((out_dir / name).exists() for name in ("config.yaml", MODEL_FILE)):
        raise ConfigError(
            f"{out_dir}: already holds a run; pass --resume to continue it or choose another --out."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, config_file)
    return config


def _csv_logger(phase_dir: Path, keep_history: bool, rank_zero: bool = True) -> CSVLogger:
    """Lightning's CSV logger, keeping the rows of the interrupted run when resuming.

    Lightning deletes an existing metrics.csv when its writer starts; we put the old rows back,
    and its next save appends to them. Only rank zero starts the writer: another rank's would
    delete rank zero's file.
    """
    csv_logger = CSVLogger(phase_dir, name="", version="logs")
    if not rank_zero:
        return csv_logger
    metrics_file = phase_dir / "logs" / "metrics.csv"
    history = metrics_file.read_text() if keep_history and metrics_file.is_file() else None
    writer = csv_logger.experiment  # creating the writer removes the old file
    if history:
        atomic_write_text(metrics_file, history)
        writer.metrics_keys = sorted(history.splitlines()[0].split(","))
    return csv_logger


def _score(checkpoint: ModelCheckpoint) -> float | None:
    score = checkpoint.best_model_score
    return None if score is None else float(score)


@contextlib.contextmanager
def _weights_only(path: Path):
    """A checkpoint that holds more than tensors and plain data (code to run when unpickled: not
    one this run wrote) is a one-line ConfigError, never loaded."""
    try:
        yield
    except pickle.UnpicklingError:
        raise ConfigError(
            f"{path}: holds objects other than weights and plain data, which pneumoscan does not "
            "unpickle (was it written by another program?); start the run afresh in a new --out."
        ) from None


def _load_checkpoint(path: Path, phase: str) -> tuple[dict, dict]:
    """The Classifier's weights from a Lightning checkpoint of LitClassifier, and where in
    training they were saved: {phase, epoch (counted from 1), global_step (optimizer steps in
    the phase)}, what the model file records of the weights it ships."""
    with _weights_only(path):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "model."
    weights = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    # Lightning stores the 0-based index of the epoch that wrote the checkpoint (as metrics.csv
    # numbers them); a person reads "the weights after epoch 3 of 3".
    position = {
        "phase": phase,
        "epoch": int(checkpoint["epoch"]) + 1,
        "global_step": int(checkpoint["global_step"]),
    }
    return weights, position


def finalize(
    config: Config,
    model: Classifier,
    run_data: RunData,
    features: torch.Tensor | None,
    spec: PreprocessSpec,
    out_dir: Path,
    shipped: dict | None = None,
) -> Path:
    """Calibrate and choose the threshold on validation, then write the model file (with
    `shipped`, the phase, epoch and global step its weights come from)."""
    class_names = CLASS_NAMES[config.data.task]
    val_index = run_data.split.val
    val_targets = run_data.targets[val_index]
    device = scoring_device(config.train.accelerator)
    model.to(device)
    if features is not None:
        val_features = TensorDataset(features[val_index], torch.from_numpy(val_targets))
        logits = predict_logits(model, scoring_batches(val_features, device, 256), head_only=True)
    else:
        val_set = ImageTensorDataset(run_data.pixels[spec.size][val_index], val_targets, spec)
        logits = predict_logits(model, scoring_batches(val_set, device))
    logits = logits.numpy()
    sensitivity = config.train.threshold_sensitivity
    rule = "youden" if sensitivity is None else "sensitivity"
    calibration = fit_calibration(logits, val_targets, rule, sensitivity or 0.98)
    temperature, threshold = calibration.temperature, calibration.threshold
    probabilities = calibrated_probabilities(logits, temperature)
    patients = [run_data.samples[i].patient for i in val_index]
    val_metrics = compute_metrics(
        probabilities, val_targets, class_names, threshold, groups=patients
    )
    val_metrics["temperature"] = temperature
    train_index = run_data.split.train
    if features is not None:
        # The frozen strategy's cached feature maps: the content part alone, no second pass.
        gate = fit_gate(features[train_index].float().mean(dim=(2, 3)).numpy())
    else:
        train_set = ImageTensorDataset(
            run_data.pixels[spec.size][train_index], run_data.targets[train_index], spec
        )
        taps = texture_taps(model, spec.size, spec.channels)
        train_features = gate_features(model, scoring_batches(train_set, device), taps)
        gate = fit_gate(train_features, taps)
    atomic_write_json(out_dir / "val_metrics.json", val_metrics)
    info = ModelInfo(
        arch=config.model.arch,
        head=config.model.head or get_architecture(config.model.arch).default_head,
        dropout=config.model.dropout,
        task=config.data.task.value,
        class_names=class_names,
        preprocess=spec,
        threshold=threshold,
        temperature=temperature,
        config=config_to_dict(config),
        val_metrics=val_metrics,
        versions=package_versions(),
        name=config.name,
        ood=gate,
        **(shipped or {}),
        derived_from=model.derived_from(CLASS_NAMES[Task.THREE_CLASS])
        if isinstance(model, GroupedClassifier)
        else None,
    )
    model_path = out_dir / MODEL_FILE
    save_model_file(model_path, model.to("cpu", memory_format=torch.contiguous_format), info)
    logger.info("wrote %s", model_path)
    return model_path


def with_overrides(config: Config, **sections) -> Config:
    """Copy of `config` with some fields of its sections replaced (for tests and experiments)."""
    return replace(
        config,
        **{name: replace(getattr(config, name), **values) for name, values in sections.items()},
    )


def cross_validate(config: Config, out_dir: Path, folds: list[int], progress: bool = True) -> dict:
    """Train one model per patient-grouped fold (out_dir/fold-K) and summarise validation metrics.

    A finished fold is skipped and an interrupted one resumes, so rerunning the same command
    completes the study. Writes cv_summary.json and cv_summary.md with per-fold values, mean and
    standard deviation.
    """
    out_dir = Path(out_dir)
    per_fold = {}
    for fold in folds:
        fold_dir = out_dir / f"fold-{fold}"
        if not (fold_dir / MODEL_FILE).is_file():
            fold_config = with_overrides(config, data={"fold": fold})
            fit(
                fold_config,
                fold_dir,
                resume=(fold_dir / "config.yaml").is_file(),
                progress=progress,
            )
        per_fold[fold] = json.loads((fold_dir / "val_metrics.json").read_text())
    keys = ["accuracy", "macro_f1", "roc_auc", "ece"]
    if config.data.task.value == "binary":
        keys += ["sensitivity", "specificity"]
    else:
        keys += ["virus_recall"]
        for metrics in per_fold.values():
            metrics["virus_recall"] = metrics["per_class"]["virus"]["recall"]
    summary = {
        "folds": {
            str(fold): {key: metrics[key] for key in keys} for fold, metrics in per_fold.items()
        },
        "mean": {key: float(np.mean([m[key] for m in per_fold.values()])) for key in keys},
        "std": {
            key: float(np.std([m[key] for m in per_fold.values()], ddof=1))
            if len(per_fold) > 1
            else 0.0
            for key in keys
        },
    }
    atomic_write_json(out_dir / "cv_summary.json", summary)
    lines = ["| fold | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for fold, metrics in summary["folds"].items():
        lines.append(f"| {fold} | " + " | ".join(f"{metrics[k]:.4f}" for k in keys) + " |")
    lines.append(
        "| mean ± sd | "
        + " | ".join(f"{summary['mean'][k]:.4f} ± {summary['std'][k]:.4f}" for k in keys)
        + " |"
    )
    atomic_write_text(out_dir / "cv_summary.md", "\n".join(lines) + "\n")
    return summary


def restore_run(model_file: Path, out_dir: Path) -> Path:
    """A run folder for a model file whose run folder is gone (a shipped model): the model file
    and its split.csv, redrawn from the config it recorded. The split depends only on the data,
    data.fold, data.val_fraction, data.max_patients and data.split_seed (or train.seed), so it
    is the run's own."""
    import shutil

    from pneumoscan.core.config import config_from_dict

    _, info = load_model_file(Path(model_file))
    if not info.config:
        raise ConfigError(f"{model_file}: records no training config; its split cannot be redrawn")
    config = config_from_dict(info.config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_data = prepare_run_data(config, {info.preprocess.size})
    write_split(run_data, out_dir / ds.SPLIT_FILE)
    shutil.copyfile(model_file, out_dir / "model.pt")
    record = info.record or {}
    if record.get("training_minutes") is not None:
        # The training time and hardware the model file recorded when it was shipped, so a
        # re-ship's card keeps them.
        timing = {
            "hardware": record.get("training_hardware"),
            "wall_seconds": 60 * record["training_minutes"],
            "restored_from": str(model_file),
        }
        atomic_write_json(out_dir / TIMING_FILE, timing)
    return out_dir
