import numpy as np
import pytest
from scipy.special import softmax

from pneumoscan.core.decision import calibrated_probabilities
from pneumoscan.evaluation.calibration import fit_temperature
from pneumoscan.evaluation.metrics import compute_metrics, expected_calibration_error
from pneumoscan.evaluation.rules import Sensitivity, Youden

# Hand-checked binary case: 4 normal, 4 pneumonia.
TARGETS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P_PNEUMONIA = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
PROBS = np.stack([1 - P_PNEUMONIA, P_PNEUMONIA], axis=1)


def test_binary_metrics_at_threshold():
    metrics = compute_metrics(PROBS, TARGETS, ("normal", "pneumonia"), threshold=0.5, bootstrap=0)
    # predictions: 0 0 0 1 | 0 1 1 1 -> TN 3, FP 1, FN 1, TP 3
    assert metrics["confusion_matrix"] == [[3, 1], [1, 3]]
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["sensitivity"] == pytest.approx(0.75)
    assert metrics["specificity"] == pytest.approx(0.75)
    assert metrics["macro_f1"] == pytest.approx(0.75)
    # AUC: of 16 (pneumonia, normal) pairs, only (0.4 vs 0.6) is misordered -> 15/16
    assert metrics["roc_auc"] == pytest.approx(15 / 16)
    assert metrics["per_class"]["pneumonia"]["precision"] == pytest.approx(0.75)


def test_threshold_changes_sensitivity_and_specificity():
    metrics = compute_metrics(PROBS, TARGETS, ("normal", "pneumonia"), threshold=0.25, bootstrap=0)
    # 0.1 and 0.2 are called normal; everything else pneumonia
    assert metrics["sensitivity"] == pytest.approx(1.0)
    assert metrics["specificity"] == pytest.approx(0.5)


def test_youden_and_sensitivity_thresholds():
    # Youden's J is maximal (0.75) at threshold 0.7: sensitivity 0.75, specificity 1.0
    assert Youden().choose(TARGETS, P_PNEUMONIA, 0.5) == pytest.approx(0.7)
    assert Sensitivity(1.0).choose(TARGETS, P_PNEUMONIA, 0.5) == pytest.approx(0.4)
    assert Sensitivity(0.5).choose(TARGETS, P_PNEUMONIA, 0.5) == pytest.approx(0.8)


def test_ece_hand_checked():
    # Two predictions in one bin each: confidence 0.9 correct, 0.6 wrong.
    probs = np.array([[0.1, 0.9], [0.4, 0.6]])
    targets = np.array([1, 0])
    # |0.9 - 1| * 1/2 + |0.6 - 0| * 1/2 = 0.35
    assert expected_calibration_error(probs, targets) == pytest.approx(0.35)


@pytest.mark.parametrize("classes", [2, 3])
def test_ece_matches_torchmetrics(classes):
    """The numpy ECE is the figure torchmetrics gave before it (binary and top-label)."""
    torch = pytest.importorskip("torch")
    calibration_error = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(classes)
    probs = softmax(rng.normal(0, 2, size=(500, classes)), axis=1)
    targets = rng.integers(0, classes, size=500)
    labels = torch.as_tensor(targets)
    if classes == 2:
        reference = calibration_error.binary_calibration_error(
            torch.as_tensor(probs[:, 1]), labels, n_bins=15
        )
    else:
        reference = calibration_error.multiclass_calibration_error(
            torch.as_tensor(probs), labels, num_classes=classes, n_bins=15
        )
    assert expected_calibration_error(probs, targets) == pytest.approx(float(reference), abs=1e-6)


def test_three_class_metrics():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    targets = np.array([0, 1, 2, 2])
    metrics = compute_metrics(probs, targets, ("normal", "bacteria", "virus"), bootstrap=0)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["per_class"]["virus"]["recall"] == pytest.approx(0.5)
    assert "sensitivity" not in metrics
    # macro F1: normal 2/3, bacteria 1, virus 2/3
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(4000, 3))
    targets = np.array([rng.choice(3, p=p) for p in softmax(true_logits, axis=1)])
    temperature = fit_temperature(true_logits * 3.0, targets)  # a model 3x overconfident
    assert temperature == pytest.approx(3.0, rel=0.1)
    calibrated = calibrated_probabilities(true_logits * 3.0, temperature)
    assert expected_calibration_error(calibrated, targets) < 0.03


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, 300)
    p = np.clip(targets * 0.6 + rng.normal(0.2, 0.2, 300), 0, 1)
    probs = np.stack([1 - p, p], axis=1)
    groups = [f"patient{i // 2}" for i in range(300)]
    metrics = compute_metrics(
        probs, targets, ("normal", "pneumonia"), 0.5, groups=groups, bootstrap=200
    )
    for key in ("accuracy", "macro_f1", "roc_auc", "sensitivity", "specificity"):
        low, high = metrics[f"{key}_ci"]
        assert 0.0 < high - low < 0.2, key


def test_sensitivity_and_specificity_get_patient_bootstrap_intervals():
    """Specificity 36/50 = 0.72 from 50 normal films of 50 patients: the interval is about as
    wide as the binomial one, 2 x 1.96 x sqrt(0.72 x 0.28 / 50) = 0.25, not shown bare."""
    targets = np.repeat([0, 1], [50, 150])
    wrong = (targets == 0) & (np.arange(200) >= 36)  # normals 36..49 called pneumonia
    p = np.where((targets == 1) | wrong, 0.9, 0.1)
    probs = np.stack([1 - p, p], axis=1)
    groups = [f"patient{i}" for i in range(200)]
    metrics = compute_metrics(probs, targets, ("normal", "pneumonia"), 0.5, groups, bootstrap=400)
    assert metrics["specificity"] == pytest.approx(0.72)
    low, high = metrics["specificity_ci"]
    binomial = 2 * 1.96 * np.sqrt(0.72 * 0.28 / 50)
    assert 0.75 * binomial < high - low < 1.25 * binomial
    assert metrics["sensitivity_ci"] == [1.0, 1.0]  # every pneumonia film right in every resample


def test_crossfit_decides_each_fold_at_its_own_threshold():
    """Two folds whose calibrations chose 0.2 and 0.8: a film of fold 0 at P = 0.5 is pneumonia
    (0.5 >= 0.2) and one of fold 1 at P = 0.5 is normal. The median threshold 0.5 would call
    both pneumonia; the headline must be what each fold's own threshold decided."""
    from pneumoscan.evaluation.calibration import CrossFit, crossfit_metrics

    p = np.array([0.5, 0.5, 0.9, 0.1])
    targets = np.array([1, 0, 1, 0])
    probs = np.stack([1 - p, p], axis=1)
    result = CrossFit(
        probs,
        targets,
        [0.2, 0.8],
        [1.0, 1.0],
        [compute_metrics(probs[:2], targets[:2], ("n", "p"), 0.2, bootstrap=0)] * 2,
        np.array([1, 0, 1, 0]),
        np.array([0, 1, 0, 1]),
    )
    metrics = crossfit_metrics(result, ["a", "b", "c", "d"], ("normal", "pneumonia"), 0)
    assert metrics["sensitivity"] == 1.0 and metrics["specificity"] == 1.0


def test_bootstrap_resamples_patients_not_images():
    """40 patients with 10 films each, every film of a patient right or wrong together: the
    honest interval is as wide as 40 independent units allow. A per-image bootstrap (400 units)
    would give an interval about three times narrower, and this test would fail."""
    rng = np.random.default_rng(3)
    patients, films = 40, 10
    correct_patient = rng.random(patients) < 0.7
    targets = np.tile([0, 1], patients * films // 2)
    right = np.repeat(correct_patient, films)
    p = np.where(right, np.where(targets == 1, 0.9, 0.1), np.where(targets == 1, 0.1, 0.9))
    probs = np.stack([1 - p, p], axis=1)
    groups = [f"patient{i}" for i in np.repeat(np.arange(patients), films)]
    metrics = compute_metrics(probs, targets, ("normal", "pneumonia"), 0.5, groups, bootstrap=400)
    low, high = metrics["accuracy_ci"]
    accuracy = correct_patient.mean()
    patient_width = 2 * 1.96 * np.sqrt(accuracy * (1 - accuracy) / patients)  # about 0.28
    image_width = 2 * 1.96 * np.sqrt(accuracy * (1 - accuracy) / (patients * films))
    assert high - low > 0.7 * patient_width > 2 * image_width


def test_fit_bias_corrected_recovers_a_known_temperature_and_bias():
    """Labels drawn from softmax(z / 2 + (0, 1, -0.5)): the fit must find T = 2 and that bias
    (the first class's fixed at 0), within the sampling error of 20,000 films."""
    from pneumoscan.evaluation.calibration import fit_bias_corrected

    rng = np.random.default_rng(11)
    logits = rng.normal(0.0, 3.0, size=(20000, 3))
    truth = calibrated_probabilities(logits, 2.0, [0.0, 1.0, -0.5])
    targets = np.array([rng.choice(3, p=row) for row in truth])
    temperature, bias = fit_bias_corrected(logits, targets)
    assert temperature == pytest.approx(2.0, rel=0.05)
    assert bias[0] == 0.0
    np.testing.assert_allclose(bias[1:], [1.0, -0.5], atol=0.08)
