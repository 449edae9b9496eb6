"""`calibrate`'s fitting rules on synthetic logits whose right answer is known: the conformal
scores come from calibrations fitted on other patients' films, and `--prevalence` moves the
calibrated probabilities to the site's class shares (Saerens et al. 2002)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumoscan.core.dataset import Sample
from pneumoscan.core.decision import calibrated_probabilities, decide
from pneumoscan.core.errors import DatasetError
from pneumoscan.evaluation import calibration as cal
from pneumoscan.evaluation.scoring import FilmScores
from pneumoscan.site.calibrate import Request, crossfit_conformal, fit_operating
from pneumoscan.site.validate import Operating

BINARY = ("normal", "pneumonia")
THREE = ("normal", "bacteria", "virus")
BEFORE = Operating(1.0, None, 0.5, None, None)


def _films(logits: np.ndarray, targets: np.ndarray, films_per_patient: int = 3) -> FilmScores:
    """FilmScores of synthetic films, `films_per_patient` consecutive films of one class per
    patient (targets are sorted by class so that a patient never mixes classes)."""
    order = np.argsort(targets, kind="stable")
    targets, logits = targets[order], logits[order]
    patients = [f"{t}-{i // films_per_patient}" for i, t in enumerate(targets)]
    samples = [
        Sample(Path(f"film{i}.png"), "site", "PNEUMONIA" if t else "NORMAL", None, p, False)
        for i, (t, p) in enumerate(zip(targets, patients))
    ]
    return FilmScores(samples, targets, logits, None, [])


def _binary_site(films: int, pneumonia_share: float, separation: float, seed: int):
    """Films whose true log-odds of pneumonia are known: x ~ N(+-separation, 1) given the class,
    so log P(x|pneumonia) / P(x|normal) = 2 separation x. The 'network' is overconfident and
    offset (logit 3 x the log-likelihood ratio + 1.5), for the calibration to undo."""
    rng = np.random.default_rng(seed)
    targets = (rng.random(films) < pneumonia_share).astype(np.int64)
    x = rng.normal(np.where(targets == 1, separation, -separation), 1.0)
    return _network_logits(x, separation), targets


def _network_logits(x: np.ndarray, separation: float) -> np.ndarray:
    return np.stack([np.zeros_like(x), 3.0 * 2 * separation * x + 1.5], axis=1)


def test_conformal_scores_come_from_calibrations_fitted_on_other_patients():
    scores = _films(*_binary_site(300, 0.5, 1.0, seed=1))
    logits, targets = scores.logits, scores.targets
    request = Request(rule="cost", seed=3)
    operating = fit_operating(scores, BEFORE, request, BINARY)
    _, fold_of = crossfit_conformal(scores, request, BINARY)
    patients = np.asarray(scores.patients)
    # Every film's score comes from a calibration fitted without any film of its patient.
    expected = np.zeros(len(targets))
    for fold in np.unique(fold_of):
        held, rest = fold_of == fold, fold_of != fold
        assert not set(patients[held]) & set(patients[rest])
        fitted = cal.fit(logits[rest], targets[rest], None, bias=True)
        probabilities = calibrated_probabilities(logits[held], fitted.temperature, fitted.bias)
        expected[held] = 1.0 - probabilities[np.arange(held.sum()), targets[held]]
    assert len(np.unique(fold_of)) >= 2
    assert operating.conformal.scores == pytest.approx(np.sort(expected), rel=1e-6, abs=1e-12)
    for index in range(2):
        assert operating.conformal.class_scores[index] == pytest.approx(
            np.sort(expected[targets == index]), rel=1e-6, abs=1e-12
        )
    # ... not from the calibration fitted on all of them (what the written model carries).
    in_sample = calibrated_probabilities(logits, operating.temperature, operating.bias)
    in_sample_scores = np.sort(1.0 - in_sample[np.arange(len(targets)), targets])
    assert not np.allclose(operating.conformal.scores, in_sample_scores, rtol=1e-4)


def test_prevalence_shifts_the_calibrated_log_odds_by_the_prior_ratio():
    logits, targets = _binary_site(4000, 0.5, 1.0, seed=2)
    plain = cal.fit(logits, targets, None, bias=True)
    shifted = cal.fit(logits, targets, None, bias=True, prevalence=(0.9, 0.1))
    share = targets.mean()
    expected = np.log(0.1 / 0.9) - np.log(share / (1 - share))
    assert shifted.temperature == plain.temperature
    assert (shifted.bias[1] - shifted.bias[0]) - (plain.bias[1] - plain.bias[0]) == pytest.approx(
        expected, abs=1e-12
    )
    # The known answer: at 10% prevalence, P(pneumonia | x) = sigmoid(2 x + log(0.1 / 0.9)).
    x = np.linspace(-2.5, 2.5, 51)
    truth = 1.0 / (1.0 + np.exp(-(2.0 * x + np.log(0.1 / 0.9))))
    calibrated = calibrated_probabilities(
        _network_logits(x, 1.0), shifted.temperature, shifted.bias
    )
    uncorrected = calibrated_probabilities(_network_logits(x, 1.0), plain.temperature, plain.bias)
    assert np.abs(calibrated[:, 1] - truth).max() < 0.03
    assert np.abs(uncorrected[:, 1] - truth).max() > 0.3  # the 50/50 calibration set's answer


def test_prevalence_keeps_roc_rules_on_the_same_films_and_moves_the_balanced_threshold():
    logits, targets = _binary_site(600, 0.5, 1.0, seed=4)
    for rule in ("sensitivity", "youden"):
        plain = cal.fit(logits, targets, rule, 0.95, bias=True)
        shifted = cal.fit(logits, targets, rule, 0.95, bias=True, prevalence=(0.8, 0.2))
        calls = [
            decide(calibrated_probabilities(logits, c.temperature, c.bias), c.threshold)
            for c in (plain, shifted)
        ]
        assert (calls[0] == calls[1]).all() and shifted.threshold < plain.threshold
    assert cal.fit(logits, targets, "balanced", prevalence=(0.8, 0.2)).threshold == 0.2
    assert cal.fit(logits, targets, "cost", cost_fn=3.0, prevalence=(0.8, 0.2)).threshold == 0.25


def test_three_class_prevalence_gives_the_known_posterior():
    rng = np.random.default_rng(5)
    means = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # one 2-D Gaussian per class
    targets = rng.integers(0, 3, 6000)
    points = means[targets] + rng.normal(size=(len(targets), 2))
    logits = 2.5 * (points @ means.T - 0.5 * (means**2).sum(axis=1))  # overconfident LLRs
    prevalence = (0.6, 0.25, 0.15)
    fitted = cal.fit(logits, targets, None, bias=True, prevalence=prevalence)
    grid = rng.normal(1.0, 1.5, size=(200, 2))
    true_logits = grid @ means.T - 0.5 * (means**2).sum(axis=1) + np.log(prevalence)
    truth = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    network = 2.5 * (grid @ means.T - 0.5 * (means**2).sum(axis=1))
    calibrated = calibrated_probabilities(network, fitted.temperature, fitted.bias)
    assert np.abs(calibrated - truth).max() < 0.04


def test_prevalence_must_fit_the_model():
    assert Request(prevalence=(0.2,)).shares(BINARY) == pytest.approx((0.8, 0.2))
    assert Request(prevalence=(0.6, 0.3, 0.1)).shares(THREE) == (0.6, 0.3, 0.1)
    with pytest.raises(DatasetError, match="one share per class of the model"):
        Request(prevalence=(0.2,)).shares(THREE)
    with pytest.raises(DatasetError, match="sum to 1"):
        Request(prevalence=(0.5, 0.3, 0.1)).shares(THREE)
    with pytest.raises(DatasetError, match="strictly between 0 and 1"):
        Request(prevalence=(1.0,)).shares(BINARY)


def test_a_class_on_one_patient_cannot_be_cross_fitted():
    logits, targets = _binary_site(40, 0.5, 1.0, seed=1)
    targets[:] = 0
    targets[:2] = 1  # both pneumonia films belong to one patient (two films a patient)
    scores = _films(logits, targets, films_per_patient=2)
    with pytest.raises(DatasetError, match="at least two patients of every class"):
        fit_operating(scores, BEFORE, Request(rule="cost", prevalence=(0.2,)), BINARY)
