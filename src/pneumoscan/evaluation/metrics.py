"""Metric functions: probabilities and labels in, numbers out (scikit-learn, numpy).

Choosing the temperature and the binary threshold on validation lives in `calibration`; applying
them (`calibrated_probabilities`, the decision rule) lives in `core.decision`, so evaluation and
the runtime apply them identically.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from pneumoscan.core.decision import decide

__all__ = ["compute_metrics", "expected_calibration_error", "predict_labels"]

ECE_BINS = 15


def predict_labels(probabilities: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class indices for an (N, classes) array, by the one decision rule in `decision.decide`."""
    return np.asarray(decide(np.asarray(probabilities), threshold), dtype=np.int64)


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Binary: calibration of P(pneumonia); multiclass: top-label ECE. 15 equal-width bins.

    Sum over bins of |observed frequency - mean confidence| x the bin's share of films. Bins are
    closed on the left ([0, 1/15), ..., a confidence of exactly 1 in a bin of its own), as
    torchmetrics bins them; this is the same figure in float64 without torch.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets)
    if probabilities.shape[1] == 2:
        confidences = probabilities[:, 1]
        outcomes = (targets == 1).astype(np.float64)
    else:
        confidences = probabilities.max(axis=1)
        outcomes = (probabilities.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bins = np.searchsorted(edges, confidences, side="right") - 1
    gaps = np.bincount(bins, weights=outcomes - confidences, minlength=len(edges))
    return float(np.abs(gaps).sum() / len(confidences))


def roc_auc(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary AUC of P(class 1), or macro one-vs-rest AUC; NaN when a class is missing."""
    present = np.unique(targets)
    if len(present) < probabilities.shape[1]:
        return float("nan")
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(targets, probabilities[:, 1]))
    return float(roc_auc_score(targets, probabilities, multi_class="ovr", average="macro"))


def _headline(targets: np.ndarray, probabilities: np.ndarray, predictions: np.ndarray) -> dict:
    labels = list(range(probabilities.shape[1]))
    values = {
        "accuracy": float(accuracy_score(targets, predictions)),
        "macro_f1": float(
            f1_score(targets, predictions, labels=labels, average="macro", zero_division=0)
        ),
        "roc_auc": roc_auc(targets, probabilities),
    }
    if len(labels) == 2:  # nan when a resample holds no film of the class
        for key, cls in (("sensitivity", 1), ("specificity", 0)):
            own = targets == cls
            values[key] = float((predictions[own] == cls).mean()) if own.any() else float("nan")
    return values


def bootstrap_intervals(
    targets: np.ndarray,
    probabilities: np.ndarray,
    predictions: np.ndarray,
    groups: list[str],
    repeats: int = 1000,
    seed: int = 0,
) -> dict[str, list[float]]:
    """95% percentile intervals, resampling patients (a patient's films move together)."""
    rng = np.random.default_rng(seed)
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(group_index == g) for g in range(group_index.max() + 1)]
    draws: dict[str, list[float]] = {}
    for _ in range(repeats):
        chosen = rng.integers(0, len(members), size=len(members))
        index = np.concatenate([members[g] for g in chosen])
        values = _headline(targets[index], probabilities[index], predictions[index])
        for key, value in values.items():
            draws.setdefault(key, []).append(value)
    intervals = {}
    for key, values in draws.items():
        finite = np.asarray(values)[np.isfinite(values)]
        intervals[key] = (
            [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]
            if len(finite)
            else [float("nan"), float("nan")]
        )
    return intervals


def compute_metrics(
    probabilities: np.ndarray,
    targets: np.ndarray,
    class_names: tuple[str, ...],
    threshold: float | None = None,
    groups: list[str] | None = None,
    bootstrap: int = 1000,
    predictions: np.ndarray | None = None,
) -> dict:
    """Everything `metrics.json` reports, for binary or multiclass probabilities. `predictions`
    overrides the labels decided at `threshold` (cross-fitting decides each fold at its own).
    With `groups`, 95% patient-bootstrap intervals (`<key>_ci`) for accuracy, macro F1, ROC AUC
    and, binary, sensitivity and specificity."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if predictions is None:
        predictions = predict_labels(probabilities, threshold)
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = list(range(len(class_names)))
    result = {
        "task": "binary" if len(class_names) == 2 else "three_class",
        "n": int(len(targets)),
        **_headline(targets, probabilities, predictions),
    }
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=labels, zero_division=0
    )
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    }
    matrix = confusion_matrix(targets, predictions, labels=labels)
    result["confusion_matrix"] = matrix.tolist()
    if len(class_names) == 2:
        result["threshold"] = threshold if threshold is not None else 0.5
        result["sensitivity"] = float(recall[1])
        result["specificity"] = float(recall[0])
    result["ece"] = expected_calibration_error(probabilities, targets)
    if groups is not None and bootstrap > 0:
        for key, interval in bootstrap_intervals(
            targets, probabilities, predictions, groups, repeats=bootstrap
        ).items():
            result[f"{key}_ci"] = interval
    return result
