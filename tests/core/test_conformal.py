"""Split-conformal prediction sets: the finite-sample quantile, the set rules and the coverage
they promise, on probabilities drawn from a known model (so the truth is known)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pneumoscan.core.conformal import (
    METHODS,
    ConformalCalibration,
    conformity_scores,
    coverage_report,
    prediction_sets,
    quantile,
)
from pneumoscan.evaluation.calibration import conformal_crossval, crossfit_folds, patient_folds

CLASSES = ("normal", "bacteria", "virus")


def _world(n: int, seed: int, sharpness: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities and labels drawn from them: P(y | x) is exactly the row."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, sharpness, size=(n, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(3, p=row) for row in probabilities])
    return probabilities, targets


def test_quantile_is_the_finite_sample_rank_and_infinite_when_too_few():
    scores = np.arange(1, 20) / 20.0  # 19 scores 0.05 .. 0.95
    # ceil((19 + 1) * 0.9) = 18th smallest
    assert quantile(scores, 0.9) == pytest.approx(0.9)
    assert math.isinf(quantile(scores[:5], 0.9))  # ceil(6 * 0.9) = 6 > 5 scores
    with pytest.raises(ValueError, match="between 0 and 1"):
        quantile(scores, 1.0)


def test_scores_of_each_method():
    probabilities = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    targets = np.array([0, 2])
    np.testing.assert_allclose(conformity_scores(probabilities, targets, "lac"), [0.4, 0.9])
    np.testing.assert_allclose(conformity_scores(probabilities, targets, "aps"), [0.6, 1.0])
    with pytest.raises(ValueError, match="lac, aps"):
        conformity_scores(probabilities, targets, "raps?")


@pytest.mark.parametrize("method", METHODS)
def test_sets_are_never_empty_and_grow_with_the_threshold(method):
    probabilities, _ = _world(500, seed=1)
    small = prediction_sets(probabilities, 0.05, method)
    large = prediction_sets(probabilities, 0.8, method)
    assert small.sum(axis=1).min() == 1 and large.sum(axis=1).min() >= 1
    assert (large | ~small).all()  # every small set is inside the large one
    top = probabilities.argmax(axis=1)
    assert small[np.arange(len(top)), top].all()
    one = prediction_sets(probabilities[0], 0.8, method)  # one film: a 1-D membership
    np.testing.assert_array_equal(one, large[0])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_held_out_coverage_is_at_least_the_level(method, level):
    """Calibrate on 1,000 films, check on 5,000 others from the same world. The guarantee is
    coverage >= level on average over calibration sets; the tolerance is 3 sd of the sampling
    error of both the 1,000 calibration and the 5,000 test films."""
    probabilities, targets = _world(6000, seed=2)
    conformal = ConformalCalibration.fit(probabilities[:1000], targets[:1000], "test", method)
    members = conformal.sets(probabilities[1000:], level)
    report = coverage_report(members, targets[1000:], CLASSES)
    assert report["coverage"] >= level - 3 * math.sqrt(level * (1 - level) * (1 / 1000 + 1 / 5000))
    if method == "lac":  # lac is nearly exact: it does not overshoot by much either
        assert report["coverage"] <= level + 0.03


def test_lac_sets_are_smaller_than_aps_at_the_same_coverage():
    probabilities, targets = _world(4000, seed=3)
    sizes = {}
    for method in METHODS:
        conformal = ConformalCalibration.fit(probabilities[:2000], targets[:2000], "t", method)
        sizes[method] = conformal.sets(probabilities[2000:], 0.9).sum(axis=1).mean()
    assert sizes["lac"] < sizes["aps"]


def test_calibration_round_trips_through_its_dict():
    probabilities, targets = _world(50, seed=4)
    conformal = ConformalCalibration.fit(probabilities, targets, "50 films", "aps")
    again = ConformalCalibration.from_dict(conformal.to_dict())
    assert again == conformal and again.films == 50
    assert ConformalCalibration.from_dict(None) is None
    with pytest.raises(ValueError, match="conformal method"):
        ConformalCalibration.from_dict({**conformal.to_dict(), "method": "unknown"})


def test_cross_validated_coverage_groups_patients():
    probabilities, targets = _world(600, seed=5)
    patients = [f"p{i // 2}" for i in range(600)]  # two films per patient
    report = conformal_crossval(probabilities, targets, patients, 0.9, CLASSES)
    assert report["n"] == 600 and report["folds"] >= 2
    # the folds it builds sets on keep each patient's films on one side
    folds = patient_folds(targets, patients, crossfit_folds(targets, patients), 0)
    assert len(folds) == report["folds"]
    side = {}
    for index, held in enumerate(folds):
        for film in held:
            assert side.setdefault(patients[film], index) == index, patients[film]
    assert sorted(np.concatenate(folds)) == list(range(600))
    assert abs(report["coverage"] - 0.9) < 0.05
    assert set(report["coverage_by_class"]) == set(CLASSES)


def _binary_world(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated binary probabilities with wide overlap, labels drawn from them."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.5, size=n)))
    targets = (rng.random(n) < p).astype(np.int64)
    return np.column_stack([1.0 - p, p]), targets


def test_binary_set_holds_the_thresholded_label():
    """Golden case of issue 18: P(pneumonia) = 0.60 is labelled normal at the threshold 0.742;
    its set must hold normal, whatever the marginal quantile says."""
    probabilities, targets = _binary_world(2000, seed=6)
    conformal = ConformalCalibration.fit(probabilities, targets, "t")
    film = np.array([0.40, 0.60])
    decided = int(film[1] >= 0.742)  # 0: normal
    for level in (0.9, 0.95):
        members = conformal.sets(film, level, decided=decided)
        assert members[0], f"{level}: the set {members} excludes the label normal"


def test_uncertain_binary_film_gets_both_classes():
    """Where the calibration films of both classes overlap, a film near the threshold holds both
    classes, and the decided label is in every set whichever way the threshold puts it."""
    probabilities, targets = _binary_world(2000, seed=7)
    conformal = ConformalCalibration.fit(probabilities, targets, "t")
    film = np.array([0.40, 0.60])
    assert conformal.sets(film, 0.9, force=False).all()
    grid = np.linspace(0.0, 1.0, 101)
    films = np.column_stack([1.0 - grid, grid])
    for threshold in (0.3, 0.5, 0.742):
        decided = (grid >= threshold).astype(np.int64)
        members = conformal.sets(films, 0.95, decided=decided)
        assert members[np.arange(len(grid)), decided].all()
    # the confident ends hold one class only
    ends = conformal.sets(np.array([[1.0, 0.0], [0.0, 1.0]]), 0.9)
    np.testing.assert_array_equal(ends, [[True, False], [False, True]])


def test_mondrian_sets_cover_each_class_and_round_trip():
    probabilities, targets = _world(6000, seed=8)
    conformal = ConformalCalibration.fit(probabilities[:2000], targets[:2000], "t")
    assert conformal.classwise and ConformalCalibration.from_dict(conformal.to_dict()) == conformal
    held = probabilities[2000:]
    members = conformal.sets(held, 0.9, force=False)
    report = coverage_report(members, targets[2000:], CLASSES)
    for name, covered in report["coverage_by_class"].items():
        assert covered >= 0.9 - 0.03, (name, covered)


def test_coverage_report_gives_coverage_before_forcing():
    probabilities = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    targets = np.array([1, 1, 1])
    unforced = prediction_sets(probabilities, 0.1, force=False)  # p >= 0.9 only
    forced = prediction_sets(probabilities, 0.1, decided=np.array([1, 0, 1]))
    report = coverage_report(forced, targets, ("normal", "pneumonia"), unforced)
    assert report["coverage_unforced"] == pytest.approx(0.0)
    assert report["coverage"] == pytest.approx(2 / 3)
    assert report["empty_unforced"] == 2 and report["changed_by_forcing"] == 2
