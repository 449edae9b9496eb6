"""Train/serve parity: the shipped ONNX path gives what `evaluate` (torch) gives, on real films.

One preprocessing function (`preprocess.prepare`), one decision rule (`decision`) and one gate,
so the runtime must reproduce evaluation's probabilities to 1e-4 and the gate score must not
depend on the engine (torch or ONNX) or on the weights' storage precision (fp16 or fp32).
"""

import csv
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.core.images import read_image
from pneumoscan.core.preprocess import prepare
from pneumoscan.core.shipped import resolve_model
from pneumoscan.runtime.model import load_runtime_model
from pneumoscan.runtime.predict import predict_many


def _val_films(real_data: Path) -> list[Path]:
    return sorted((real_data / "val").rglob("*.jpeg"))


def _torch_gate_scores(model, gate, batch: np.ndarray) -> np.ndarray:
    import torch

    from pneumoscan.training.gate import model_gate_scores

    return model_gate_scores(model, gate, torch.from_numpy(batch)).numpy()


@pytest.mark.parametrize("name", ["binary-fast"])  # the shipped name with a torch model file
def test_shipped_onnx_reproduces_evaluate_on_validation_films(name, real_data, tmp_path):
    from pneumoscan.evaluation.report import SplitEvaluation
    from pneumoscan.training.evaluate import evaluate_model

    metrics = evaluate_model(
        name, SplitEvaluation(real_data, "val", tmp_path / "eval", bootstrap=0)
    )
    with (tmp_path / "eval" / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["n"] > 0
    runtime = load_runtime_model(name, gate=False)
    results = list(predict_many(runtime, [Path(row["path"]) for row in rows]))
    worst = 0.0
    for row, result in zip(rows, results):
        assert result.status == "ok", result.message
        for class_name in runtime.class_names:
            worst = max(
                worst, abs(float(row[f"p_{class_name}"]) - result.probabilities[class_name])
            )
        assert row["predicted"] == result.label, row["path"]
    assert worst < 1e-4
    # the official val folder is in the training pool, and the report says so
    assert metrics["in_training_pool"] is True
    assert "not out-of-sample" in (tmp_path / "eval" / "report.md").read_text()


def test_gate_score_is_the_same_in_torch_and_onnx(real_data):
    from pneumoscan.training.model_file import load_model_file

    model, info = load_model_file(resolve_model("binary-fast"))
    if info.ood is None:
        pytest.skip("the shipped binary-fast model has no gate")
    runtime = load_runtime_model("binary-fast")
    batch = np.stack([prepare(read_image(f), runtime.spec) for f in _val_films(real_data)])
    onnx_scores = runtime.run(batch)["ood_score"]
    np.testing.assert_allclose(onnx_scores, _torch_gate_scores(model, info.ood, batch), rtol=1e-3)
    assert runtime.ood_threshold == pytest.approx(info.ood.threshold)


def test_gate_score_survives_fp16_weights(tiny_lite_model, real_data, tmp_path):
    """Shipping stores fp16 weights; the gate's threshold was fitted on the fp32 model's scores."""
    from pneumoscan.training.export import export_onnx
    from pneumoscan.training.model_file import load_model_file, save_model_file

    model, info = load_model_file(tiny_lite_model)
    assert info.ood is not None
    save_model_file(tmp_path / "half.pt", model, info, half=True)
    fp32 = load_runtime_model(export_onnx(tiny_lite_model, tmp_path / "fp32.onnx"))
    fp16 = load_runtime_model(export_onnx(tmp_path / "half.pt", tmp_path / "fp16.onnx"))
    batch = np.stack([prepare(read_image(f), fp32.spec) for f in _val_films(real_data)])
    full, half = fp32.run(batch), fp16.run(batch)
    np.testing.assert_allclose(half["ood_score"], full["ood_score"], rtol=1e-2)
    np.testing.assert_allclose(half["probabilities"], full["probabilities"], atol=1e-3)
    half_model, _ = load_model_file(tmp_path / "half.pt")
    np.testing.assert_allclose(
        half["ood_score"], _torch_gate_scores(half_model, info.ood, batch), rtol=1e-3
    )
