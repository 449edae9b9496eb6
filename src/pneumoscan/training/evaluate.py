"""`evaluate_model`: run a model file (.pt) on one split with torch and write an honest report.

The report is `evaluation.report`'s (an exported .onnx model is evaluated without torch by
`evaluation.evaluate`). The threshold and temperature come from the model file, where training
put them after choosing them on validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pneumoscan.core import dataset as ds
from pneumoscan.core.decision import calibrated_probabilities
from pneumoscan.core.labels import Task
from pneumoscan.core.shipped import resolve_model
from pneumoscan.evaluation.report import SplitEvaluation
from pneumoscan.training.loaders import ImageTensorDataset, decode_images, scoring_batches
from pneumoscan.training.model_file import ModelInfo, load_model_file
from pneumoscan.training.networks import predict_logits, recorded_accelerator, scoring_device

logger = logging.getLogger(__name__)


def evaluate_model(model_ref: str | Path, evaluation: SplitEvaluation) -> dict:
    """Evaluate a model file (or shipped model name) on one split of a data folder."""
    model_path = resolve_model(model_ref)
    model, info = load_model_file(model_path)
    samples, targets = evaluation.labelled(Task(info.task))
    return evaluate_samples(model, info, samples, targets, evaluation, source=str(model_path))


def evaluate_samples(
    model,
    info: ModelInfo,
    samples: list[ds.Sample],
    targets: np.ndarray,
    evaluation: SplitEvaluation,
    source: str,
) -> dict:
    """Metrics, predictions, plots and report for a model on a list of labelled samples."""
    decoded = decode_images(samples, info.preprocess.size, strict=evaluation.strict)
    samples = [samples[i] for i in decoded.kept]
    targets = targets[decoded.kept]
    images = ImageTensorDataset(decoded.pixels, targets, info.preprocess)
    logger.info("evaluating %s on %d %s images", source, len(samples), evaluation.split)
    device = scoring_device(recorded_accelerator(info.config))
    logits = predict_logits(
        model.to(device, memory_format=torch.channels_last), scoring_batches(images, device)
    )
    probabilities = calibrated_probabilities(logits.numpy(), info.temperature, info.class_bias)
    return evaluation.report(
        probabilities,
        samples,
        targets,
        info.class_names,
        info.threshold,
        model=source,
        model_name=info.name,
        temperature=info.temperature,
        skipped_files=decoded.failed,
    )
