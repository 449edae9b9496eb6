"""Calibration and decision rules, fitted on one set of patients and reported on another.

Validation on this data saturates: a threshold and a temperature chosen on the same films whose
figures are then reported look better than they are. `crossfit` splits the validation patients
into folds, fits the temperature (and the binary threshold) on all folds but one, and scores the
held-out fold with them, so every reported film was scored by a calibration that never saw it.
The shipped calibration is then fitted once on all validation films.

Threshold rules for the binary decision on the calibrated P(pneumonia):
- `balanced` (shipped): pneumonia when the calibrated odds exceed the calibration films' prior
  odds. It is set by the class balance, not by the few films at the edge of a saturated ROC
  curve, so it is the same in every calibration fold, and it sits high enough on the probability
  scale that normal films pushed toward pneumonia by acquisition shift keep room below it. In the
  stress benchmark it had the best worst-case accuracy of the rules (docs/experiments.md).
- `youden`: the ROC point maximising sensitivity + specificity - 1. On a saturated ROC curve this
  is decided by a handful of films at its edge (the first release chose 0.13 this way).
- `sensitivity`: the highest threshold reaching a target sensitivity on the calibration films.
- `half`: 0.5, the accuracy-optimal decision at the calibration films' own prevalence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumoscan.metrics import (
    calibrated_probabilities,
    compute_metrics,
    fit_temperature,
    threshold_at_sensitivity,
    youden_threshold,
)

THRESHOLD_RULES = ("balanced", "youden", "sensitivity", "half")
BINARY_GROUPS = ((0,), (1, 2))  # normal; bacteria + virus -> the binary task's classes


@dataclass(frozen=True)
class Calibration:
    temperature: float
    threshold: float | None  # binary only
    rule: str | None
    films: int


def choose_threshold(
    rule: str, targets: np.ndarray, scores: np.ndarray, sensitivity: float = 0.98
) -> float:
    """A binary threshold on calibrated P(pneumonia) by one of THRESHOLD_RULES."""
    if rule == "balanced":
        prevalence = float(np.mean(targets == 1))
        return prevalence
    if rule == "youden":
        return youden_threshold(targets, scores)
    if rule == "sensitivity":
        return threshold_at_sensitivity(targets, scores, sensitivity)
    if rule == "half":
        return 0.5
    raise ValueError(f"threshold rule {rule!r}: choose one of {', '.join(THRESHOLD_RULES)}")


def grouped_log_probabilities(probabilities: np.ndarray, groups) -> np.ndarray:
    """Fine-class probabilities summed into groups, as log-probabilities (GroupedClassifier's output)."""
    summed = np.stack([probabilities[:, list(members)].sum(axis=1) for members in groups], axis=1)
    return np.log(np.clip(summed, 1e-12, None))


def fit(
    logits: np.ndarray, targets: np.ndarray, rule: str | None, sensitivity: float = 0.98
) -> Calibration:
    """Temperature by NLL and, for two classes, a threshold by `rule`."""
    temperature = fit_temperature(logits, targets)
    threshold = None
    if logits.shape[1] == 2 and rule is not None:
        scores = calibrated_probabilities(logits, temperature)[:, 1]
        threshold = choose_threshold(rule, targets, scores, sensitivity)
    return Calibration(temperature, threshold, rule, len(targets))


def coarse_targets(targets: np.ndarray, groups) -> np.ndarray:
    """Fine class indices mapped to the index of the group that holds them."""
    lookup = {member: row for row, members in enumerate(groups) for member in members}
    return np.asarray([lookup[int(t)] for t in targets], dtype=np.int64)


def fit_grouped(
    logits: np.ndarray, targets: np.ndarray, groups, rule: str | None, sensitivity: float = 0.98
) -> tuple[float, Calibration]:
    """A model read in coarser classes (GroupedClassifier): the fine temperature, fitted on the
    fine labels, then the coarse temperature and threshold on the grouped log-probabilities."""
    source_temperature = fit_temperature(logits, targets)
    grouped = grouped_log_probabilities(
        calibrated_probabilities(logits, source_temperature), groups
    )
    return source_temperature, fit(grouped, coarse_targets(targets, groups), rule, sensitivity)


def patient_folds(
    targets: np.ndarray, patients: list[str], folds: int, seed: int
) -> list[np.ndarray]:
    """Stratified patient-grouped folds of the validation films (indices of each)."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(targets)), targets, patients)]


@dataclass(frozen=True)
class CrossFit:
    probabilities: np.ndarray  # out-of-sample calibrated probabilities, one row per film
    targets: np.ndarray  # the class each film belongs to, in the scored (coarse) classes
    thresholds: list[float | None]  # the threshold each fold's calibration chose
    temperatures: list[float]
    per_fold: list[dict]  # metrics of each held-out fold


def crossfit(
    logits: np.ndarray,
    targets: np.ndarray,
    patients: list[str],
    rule: str | None,
    folds: int = 5,
    seed: int = 0,
    sensitivity: float = 0.98,
    class_names: tuple[str, ...] = (),
    groups=None,
) -> CrossFit:
    """Calibrate on all folds but one, score that fold; every film is scored out-of-sample.

    With `groups`, the fine logits are read in coarser classes as the shipped GroupedClassifier
    reads them (`fit_grouped`), and folds are stratified on the coarse classes.
    """
    scored = coarse_targets(targets, groups) if groups else targets
    out = np.zeros((len(targets), len(groups) if groups else logits.shape[1]))
    thresholds, temperatures, per_fold = [], [], []
    for held in patient_folds(scored, patients, folds, seed):
        rest = np.setdiff1d(np.arange(len(targets)), held)
        if groups:
            source, calibration = fit_grouped(
                logits[rest], targets[rest], groups, rule, sensitivity
            )
            held_logits = grouped_log_probabilities(
                calibrated_probabilities(logits[held], source), groups
            )
        else:
            calibration = fit(logits[rest], targets[rest], rule, sensitivity)
            held_logits = logits[held]
        out[held] = calibrated_probabilities(held_logits, calibration.temperature)
        thresholds.append(calibration.threshold)
        temperatures.append(calibration.temperature)
        per_fold.append(
            compute_metrics(
                out[held], scored[held], class_names, calibration.threshold, bootstrap=0
            )
        )
    return CrossFit(out, scored, thresholds, temperatures, per_fold)


def crossfit_metrics(
    fit_result: CrossFit, patients: list[str], class_names: tuple[str, ...], bootstrap: int = 1000
) -> dict:
    """Metrics of the pooled out-of-sample scores, decided at the median of the folds' thresholds
    (the per-fold figures in `calibration_folds` use each fold's own)."""
    thresholds = [t for t in fit_result.thresholds if t is not None]
    threshold = float(np.median(thresholds)) if thresholds else None
    metrics = compute_metrics(
        fit_result.probabilities, fit_result.targets, class_names, threshold, patients, bootstrap
    )
    keys = ["accuracy", "macro_f1", "roc_auc", "ece"]
    keys += ["sensitivity", "specificity"] if len(class_names) == 2 else []
    folds = fit_result.per_fold
    metrics["calibration_folds"] = {
        "count": len(folds),
        "mean": {k: float(np.mean([m[k] for m in folds])) for k in keys},
        "std": {k: float(np.std([m[k] for m in folds], ddof=1)) for k in keys},
        "thresholds": fit_result.thresholds,
        "temperatures": fit_result.temperatures,
    }
    return metrics
