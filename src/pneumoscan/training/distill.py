"""Knowledge distillation: an ensemble's probabilities on the training films, as targets for one
student network.

    pneumoscan distill-targets MODEL.pt MODEL.pt MODEL.pt --out teacher.csv
    pneumoscan train --config configs/three_class_fov.yaml train.distill_targets=teacher.csv

The teacher averages its members' logits on each film as stored (no augmentation), so a student
trained with zoom-in crops and other augmentation learns the clean film's answer for every view
of it. A film's key is its last three path parts (split/LABEL/name), so the CSV travels with the
data set between machines.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pneumoscan.core import dataset as ds
from pneumoscan.core.errors import ConfigError
from pneumoscan.core.fileio import atomic_write_json, atomic_write_text
from pneumoscan.training.runs import (
    default_cache_dir,
    film_key,
    teacher_record,
    teacher_record_path,
)


def teacher_logits(
    model_files: list[Path], samples: list[ds.Sample]
) -> tuple[np.ndarray, list[int]]:
    """Mean logits of the members over `samples` (films that fail to decode are left out)."""
    from pneumoscan.training.loaders import ImageTensorDataset, decode_images
    from pneumoscan.training.model_file import load_model_file
    from pneumoscan.training.networks import predict_logits

    total, kept = None, None
    for model_file in model_files:
        model, info = load_model_file(Path(model_file))
        decoded = decode_images(samples, info.preprocess.size, cache_dir=default_cache_dir())
        images = ImageTensorDataset(decoded.pixels, np.zeros(len(decoded.kept)), info.preprocess)
        logits = predict_logits(
            model.to(memory_format=torch.channels_last), DataLoader(images, batch_size=64)
        ).numpy()
        if kept is not None and list(decoded.kept) != kept:
            raise ConfigError(f"{model_file}: decoded a different set of films than the others")
        kept = list(decoded.kept)
        total = logits if total is None else total + logits
    return total / len(model_files), kept


def write_teacher_targets(
    model_files: list[Path], data_root: Path, out: Path, task: str = "three_class"
) -> Path:
    """Softmax of the members' mean logits for every film of the training pool -> CSV."""
    from pneumoscan.core.labels import CLASS_NAMES, Task

    samples, _ = ds.targets_for(ds.training_pool(data_root), Task(task))
    logits, kept = teacher_logits(model_files, samples)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    names = CLASS_NAMES[Task(task)]
    lines = [",".join(["path", *names])]
    lines += [
        ",".join([film_key(samples[i].path), *(f"{p:.6f}" for p in row)])
        for i, row in zip(kept, probabilities)
    ]
    atomic_write_text(Path(out), "\n".join(lines) + "\n")
    atomic_write_json(teacher_record_path(out), teacher_record(model_files, len(kept), task))
    return Path(out)


def soft_targets(
    samples: list[ds.Sample], labels: np.ndarray, table: Path, num_classes: int, weight: float
) -> np.ndarray:
    """(films, classes): weight x teacher probabilities + (1 - weight) x one-hot labels."""
    teacher: dict[str, np.ndarray] = {}
    with Path(table).open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if len(header) != num_classes + 1:
            raise ConfigError(
                f"{table}: {len(header) - 1} teacher classes, the run has {num_classes}"
            )
        for row in reader:
            teacher[row[0]] = np.asarray(row[1:], dtype=np.float32)
    missing = [s.path for s in samples if film_key(s.path) not in teacher]
    if missing:
        raise ConfigError(
            f"{table}: no teacher probabilities for {len(missing)} training films "
            f"(first: {missing[0]}); write them with `pneumoscan distill-targets`."
        )
    probabilities = np.stack([teacher[film_key(s.path)] for s in samples])
    one_hot = np.eye(num_classes, dtype=np.float32)[labels]
    return weight * probabilities + (1.0 - weight) * one_hot
