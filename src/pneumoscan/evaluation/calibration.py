"""Calibration and decision rules, fitted on one set of patients and reported on another.

Validation on this data saturates: a threshold and a temperature chosen on the same films whose
figures are then reported look better than they are. `crossfit` splits the validation patients
into folds, fits the temperature (and the binary threshold) on all folds but one, and scores the
held-out fold with them, so every reported film was scored by a calibration that never saw it.
The shipped calibration is then fitted once on all validation films.

The binary decision's threshold rules (`balanced`, shipped; `youden`, `sensitivity`, `half`,
`cost`) are the registry in `evaluation.rules`, whose classes say what each one does and why.

Prevalence. A calibration fitted by likelihood reproduces the class shares of the films it is
fitted on: P(pneumonia | film) is right for a population with that prevalence. With `prevalence`
(the expected class shares where the model is used), `fit` applies the prior-shift correction of
Saerens, Latinne & Decaestecker (2002): log(prevalence / calibration share) is added to each
class's calibrated logit, i.e. to the per-class bias, so the model file, the runtime and every
report turn logits into probabilities through `core.decision.calibrated_probabilities` as before.
For two classes this adds log(P / (1 - P)) - log(p0 / (1 - p0)) to the pneumonia logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from pneumoscan.core.decision import calibrated_probabilities, decide
from pneumoscan.evaluation.metrics import compute_metrics
from pneumoscan.evaluation.rules import (
    THRESHOLD_RULES,  # noqa: F401 (the registry, re-exported)
    ThresholdRule,
    make_rule,
)

BINARY_GROUPS = ((0,), (1, 2))  # normal; bacteria + virus -> the binary task's classes


@dataclass(frozen=True)
class Calibration:
    temperature: float
    threshold: float | None  # binary only
    rule: str | ThresholdRule | None
    films: int
    bias: tuple[float, ...] | None = None  # per-class logit bias (bias-corrected scaling)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature T minimising the negative log-likelihood of softmax(logits / T) (Guo et al. 2017)."""
    targets = np.asarray(targets)

    def nll(log_temperature: float) -> float:
        scaled = log_softmax(logits / np.exp(log_temperature), axis=1)
        return -float(np.mean(scaled[np.arange(len(targets)), targets]))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def fit_bias_corrected(logits: np.ndarray, targets: np.ndarray) -> tuple[float, tuple[float, ...]]:
    """Temperature and per-class bias (the first class's fixed at 0) minimising the NLL of
    softmax(logits / T + b): bias-corrected temperature scaling (Alexandari et al. 2020). The bias
    absorbs what a temperature cannot: a site whose films sit on one side of the old boundary."""
    from scipy.optimize import minimize

    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    classes = logits.shape[1]

    def nll(params: np.ndarray) -> float:
        bias = np.concatenate([[0.0], params[1:]])
        scaled = log_softmax(logits / np.exp(params[0]) + bias, axis=1)
        return -float(np.mean(scaled[np.arange(len(targets)), targets]))

    start = np.concatenate([[np.log(fit_temperature(logits, targets))], np.zeros(classes - 1)])
    bounds = [(np.log(0.05), np.log(20.0))] + [(-10.0, 10.0)] * (classes - 1)
    result = minimize(nll, start, method="L-BFGS-B", bounds=bounds)
    return float(np.exp(result.x[0])), (0.0, *(float(b) for b in result.x[1:]))


def choose_threshold(
    rule: str | ThresholdRule,
    targets: np.ndarray,
    scores: np.ndarray,
    sensitivity: float = 0.98,
    cost_fn: float = 1.0,
    prevalence: float | None = None,
) -> float:
    """A binary threshold on calibrated P(pneumonia) by a rule of THRESHOLD_RULES (by name, with
    `sensitivity` or `cost_fn` its parameter, or a rule object); `prevalence` is the pneumonia
    share the probabilities were shifted to, else the films' share."""
    if isinstance(rule, str):
        rule = make_rule(rule, target_sensitivity=sensitivity, cost_fn=cost_fn)
    prior = float(np.mean(targets == 1)) if prevalence is None else float(prevalence)
    return rule.choose(targets, scores, prior)


def grouped_log_probabilities(probabilities: np.ndarray, groups) -> np.ndarray:
    """Fine-class probabilities summed into groups, as log-probabilities (GroupedClassifier's output)."""
    summed = np.stack([probabilities[:, list(members)].sum(axis=1) for members in groups], axis=1)
    return np.log(np.clip(summed, 1e-12, None))


def fit(
    logits: np.ndarray,
    targets: np.ndarray,
    rule: str | ThresholdRule | None,
    sensitivity: float = 0.98,
    cost_fn: float = 1.0,
    bias: bool = False,
    prevalence: tuple[float, ...] | None = None,
) -> Calibration:
    """Temperature (and with `bias`, per-class biases) by NLL and, for two classes, a threshold by
    `rule` on the calibrated probabilities. With `prevalence` (one share per class), the
    probabilities are shifted from the films' class shares to it (the module docstring) before the
    threshold is chosen: `youden` and `sensitivity` then call the same films as without it,
    `half` and `cost` decide on the probabilities at the new prevalence, `balanced` sits at it."""
    if bias:
        temperature, class_bias = fit_bias_corrected(logits, targets)
    else:
        temperature, class_bias = fit_temperature(logits, targets), None
    shares = class_shares(targets, logits.shape[1])
    if prevalence is not None:
        shift = prior_shift(shares, prevalence)
        class_bias = tuple(float(b + s) for b, s in zip(class_bias or np.zeros(len(shift)), shift))
    prior = shares if prevalence is None else tuple(float(p) for p in prevalence)
    threshold = None
    if logits.shape[1] == 2 and rule is not None:
        scores = calibrated_probabilities(logits, temperature, class_bias)[:, 1]
        threshold = choose_threshold(rule, targets, scores, sensitivity, cost_fn, prior[1])
    return Calibration(temperature, threshold, rule, len(targets), class_bias)


def class_shares(targets: np.ndarray, classes: int) -> tuple[float, ...]:
    """Each class's share of the films, in class order."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=classes)
    return tuple(float(c) for c in counts / counts.sum())


def prior_shift(calibration_shares, prevalence) -> np.ndarray:
    """log(prevalence) - log(calibration share) per class: what moves calibrated logits from the
    calibration films' class shares to the site's (Saerens et al. 2002)."""
    calibration_shares = np.asarray(calibration_shares, dtype=np.float64)
    prevalence = np.asarray(prevalence, dtype=np.float64)
    if (
        prevalence.shape != calibration_shares.shape
        or not (prevalence > 0).all()
        or abs(prevalence.sum() - 1.0) > 1e-6
    ):
        raise ValueError(
            f"prevalence {prevalence.tolist()}: give one positive share per class "
            f"({len(calibration_shares)}), summing to 1"
        )
    if not (calibration_shares > 0).all():
        raise ValueError("a class has no calibration films: its share cannot be shifted")
    return np.log(prevalence) - np.log(calibration_shares)


def coarse_targets(targets: np.ndarray, groups) -> np.ndarray:
    """Fine class indices mapped to the index of the group that holds them."""
    lookup = {member: row for row, members in enumerate(groups) for member in members}
    return np.asarray([lookup[int(t)] for t in targets], dtype=np.int64)


def fit_grouped(
    logits: np.ndarray,
    targets: np.ndarray,
    groups,
    rule: str | ThresholdRule | None,
    sensitivity: float = 0.98,
    cost_fn: float = 1.0,
) -> tuple[float, Calibration]:
    """A model read in coarser classes (GroupedClassifier): the fine temperature, fitted on the
    fine labels, then the coarse temperature and threshold on the grouped log-probabilities."""
    source_temperature = fit_temperature(logits, targets)
    grouped = grouped_log_probabilities(
        calibrated_probabilities(logits, source_temperature), groups
    )
    coarse = coarse_targets(targets, groups)
    return source_temperature, fit(grouped, coarse, rule, sensitivity, cost_fn)


def crossfit_folds(targets: np.ndarray, patients: list[str], most: int = 5) -> int:
    """As many folds as the smallest class has patients for: at least 2, at most `most`."""
    smallest = min(
        len({p for p, t in zip(patients, targets) if t == c}) for c in np.unique(targets)
    )
    return max(2, min(most, smallest))


def conformal_crossval(
    probabilities: np.ndarray,
    targets: np.ndarray,
    patients: list[str],
    coverage: float,
    class_names: tuple[str, ...],
    seed: int = 0,
    method: str = "lac",
    decided: np.ndarray | None = None,
    classwise: bool = True,
) -> dict:
    """Empirical coverage and set size of split-conformal sets, each patient fold's sets built
    from the scores of the other folds' films (`probabilities` should be out-of-sample already).
    `decided` is the label each film is given (forced into its set; the most probable class when
    None); the report gives coverage before forcing too. Class-conditional (Mondrian) quantiles
    with `classwise`."""
    from pneumoscan.core.conformal import (
        classwise_quantiles,
        conformity_scores,
        coverage_report,
        prediction_sets,
        quantile,
    )

    members = np.zeros(probabilities.shape, dtype=bool)
    unforced = np.zeros(probabilities.shape, dtype=bool)
    folds = patient_folds(targets, patients, crossfit_folds(targets, patients), seed)
    for held in folds:
        rest = np.setdiff1d(np.arange(len(targets)), held)
        scores = conformity_scores(probabilities[rest], targets[rest], method)
        q = (
            classwise_quantiles(scores, targets[rest], probabilities.shape[1], coverage)
            if classwise
            else quantile(scores, coverage)
        )
        chosen = decided[held] if decided is not None else None
        members[held] = prediction_sets(probabilities[held], q, method, chosen)
        unforced[held] = prediction_sets(probabilities[held], q, method, force=False)
    return {
        "level": coverage,
        "method": method,
        "classwise": classwise,
        "folds": len(folds),
        **coverage_report(members, targets, class_names, unforced),
    }


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
    predictions: np.ndarray  # each film's label, decided at its own fold's threshold
    folds: np.ndarray  # the index of the fold each film was held out in


def crossfit(
    logits: np.ndarray,
    targets: np.ndarray,
    patients: list[str],
    rule: str | ThresholdRule | None,
    folds: int = 5,
    seed: int = 0,
    sensitivity: float = 0.98,
    class_names: tuple[str, ...] = (),
    groups=None,
    bias: bool = False,
    cost_fn: float = 1.0,
) -> CrossFit:
    """Calibrate on all folds but one, score that fold; every film is scored out-of-sample.

    With `groups`, the fine logits are read in coarser classes as the shipped GroupedClassifier
    reads them (`fit_grouped`), and folds are stratified on the coarse classes. With `bias`, each
    fold's calibration also fits per-class logit biases (bias-corrected temperature scaling).
    """
    scored = coarse_targets(targets, groups) if groups else targets
    out = np.zeros((len(targets), len(groups) if groups else logits.shape[1]))
    thresholds, temperatures, per_fold = [], [], []
    predictions = np.zeros(len(targets), dtype=np.int64)
    fold_of = np.full(len(targets), -1, dtype=np.int64)
    for fold, held in enumerate(patient_folds(scored, patients, folds, seed)):
        fold_of[held] = fold
        rest = np.setdiff1d(np.arange(len(targets)), held)
        if groups:
            source, calibration = fit_grouped(
                logits[rest], targets[rest], groups, rule, sensitivity, cost_fn
            )
            held_logits = grouped_log_probabilities(
                calibrated_probabilities(logits[held], source), groups
            )
        else:
            calibration = fit(logits[rest], targets[rest], rule, sensitivity, cost_fn, bias=bias)
            held_logits = logits[held]
        out[held] = calibrated_probabilities(held_logits, calibration.temperature, calibration.bias)
        predictions[held] = decide(out[held], calibration.threshold)
        thresholds.append(calibration.threshold)
        temperatures.append(calibration.temperature)
        per_fold.append(
            compute_metrics(
                out[held], scored[held], class_names, calibration.threshold, bootstrap=0
            )
        )
    return CrossFit(out, scored, thresholds, temperatures, per_fold, predictions, fold_of)


def crossfit_metrics(
    fit_result: CrossFit, patients: list[str], class_names: tuple[str, ...], bootstrap: int = 1000
) -> dict:
    """Metrics of the pooled out-of-sample scores: each held-out fold decided at the threshold
    its own calibration chose, then pooled (so sensitivity and specificity are what the
    procedure delivers on unseen patients). `threshold` reports the folds' median, for reference
    only."""
    thresholds = [t for t in fit_result.thresholds if t is not None]
    threshold = float(np.median(thresholds)) if thresholds else None
    metrics = compute_metrics(
        fit_result.probabilities,
        fit_result.targets,
        class_names,
        threshold,
        patients,
        bootstrap,
        predictions=fit_result.predictions,
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
