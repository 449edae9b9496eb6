"""`evaluate_onnx`: an exported model (.onnx) on one split of a data folder, without torch.

The same request and report as a model file's evaluation (`evaluation.report.SplitEvaluation`), from the films as the runtime
reads them: every film decoded and prepared as `predict` prepares it, the temperature, threshold
and class bias from the model's metadata. Needs the [eval] extra on top of the lean install.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pneumoscan.core.decision import calibrated_probabilities
from pneumoscan.core.errors import ModelFileError
from pneumoscan.core.labels import Task
from pneumoscan.evaluation.report import SplitEvaluation
from pneumoscan.evaluation.scoring import score_films
from pneumoscan.runtime.model import load_runtime_model

logger = logging.getLogger(__name__)


def evaluate_onnx(model_ref: str | Path, evaluation: SplitEvaluation) -> dict:
    """Evaluate an exported model (an .onnx path, or a shipped name's .onnx) on one split."""
    model = load_runtime_model(model_ref, gate=False)
    task = next((task for task in Task if task.class_names == model.class_names), None)
    if task is None:
        raise ModelFileError(
            f"{model.path}: classes {', '.join(model.class_names)} are neither task's; "
            "evaluate reads binary and three-class models."
        )
    samples, targets = evaluation.labelled(task)
    logger.info("evaluating %s on %d %s images", model.path, len(samples), evaluation.split)
    scores = score_films(model, samples, targets, strict=evaluation.strict)
    probabilities = calibrated_probabilities(scores.logits, model.temperature, model.class_bias)
    return evaluation.report(
        probabilities,
        scores.samples,
        scores.targets,
        model.class_names,
        model.threshold,
        model=str(model.path),
        model_name=model.name,
        temperature=model.temperature,
        skipped_files=scores.failed,
    )
