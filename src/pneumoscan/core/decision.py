"""The decision rule, written once: calibration, the class decision, the gate's quantile and the
model-file metadata key.

Training (threshold and temperature chosen on validation), export (metadata written into the ONNX
file), evaluation and the runtime all import these, so the rule a model was validated with is the
rule it is served with. numpy only: the lean runtime imports this module too.
"""

from __future__ import annotations

import numpy as np

# The ONNX metadata entry that holds pneumoscan's JSON metadata, and the format it is written in.
METADATA_KEY = "pneumoscan"
ONNX_METADATA_FORMAT = "pneumoscan-onnx/1"
# Keys the runtime cannot work without; the rest (name, version, gate threshold...) are optional.
REQUIRED_METADATA_KEYS = ("class_names", "preprocess")
# The gate's threshold: this quantile of the scores of the films it is fitted on (the training
# films; a site's films when `calibrate --refit-gate` widens it). The gate itself is fitted in
# `training.gate` and scored inside the ONNX graph. With a gate in several feature spaces, each
# space's false refusals add up: at 0.995 a prototype refused 7.5% of validation films under a
# 20% black border; at 0.997 the shipped gate refuses at most 3.5% under any stress perturbation
# and still every benchmark non-radiograph (docs/ood.md, docs/stress/).
GATE_QUANTILE = 0.997


def calibrated_probabilities(
    logits: np.ndarray, temperature: float, bias: list[float] | tuple[float, ...] | None = None
) -> np.ndarray:
    """softmax(logits / T + b) in float64, row by row: temperature scaling (Guo et al. 2017) and,
    with a per-class `bias` (a site recalibration), bias-corrected temperature scaling
    (Alexandari et al. 2020), which also absorbs a change in class prevalence."""
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    if bias is not None:
        scaled = scaled + np.asarray(bias, dtype=np.float64)
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def decide(
    probabilities: np.ndarray, threshold: float | None, class_names: tuple[str, ...] | None = None
) -> int | np.ndarray:
    """The class index for one probability row, or an index array for an (N, classes) batch.

    Binary with a threshold: class 1 when P(class 1) >= threshold (the threshold was chosen on
    validation for the calibrated probability). Otherwise the most probable class.
    """
    probabilities = np.asarray(probabilities)
    classes = probabilities.shape[-1]
    if class_names is not None and len(class_names) != classes:
        raise ValueError(f"{classes} probabilities for {len(class_names)} class names")
    if threshold is not None and classes == 2:
        chosen = (probabilities[..., 1] >= threshold).astype(np.int64)
    else:
        chosen = probabilities.argmax(axis=-1)
    return int(chosen) if probabilities.ndim == 1 else chosen


def is_indeterminate(probabilities: np.ndarray, threshold: float | None, margin: float) -> bool:
    """Binary only: P(class 1) within `margin` of the threshold, too close to call."""
    return (
        margin > 0
        and threshold is not None
        and len(probabilities) == 2
        and abs(float(probabilities[1]) - threshold) < margin
    )
