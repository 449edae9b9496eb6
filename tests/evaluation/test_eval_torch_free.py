"""`validate`, `evaluate` and `calibrate` of an exported model run without torch: in this
environment they never import it, and in a fresh virtualenv with only `pip install ".[eval]"` (no
torch at all) they work, and `predict` gives the golden labels with the recalibrated model."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_layout

REPO = Path(__file__).resolve().parents[2]
TORCH = ("torch", "torchvision", "torchmetrics", "lightning")
VAL = REPO.parent / "shared" / "data" / "chest_xray" / "val"
# The committed examples (test_golden.GOLDEN): official validation films with known labels.
GOLDEN = {
    "normal_NORMAL2-IM-1427-0001.jpeg": "normal",
    "pneumonia_person1946_bacteria_4874.jpeg": "pneumonia",
}


def site_without_examples(root: Path) -> Path:
    """A site folder of the official validation films less the examples' patients (13 films), so
    the examples are predicted by a calibration that never saw them or their patient."""
    if not VAL.is_dir():
        pytest.skip(f"{VAL} not found: the validation films come with ../shared/data")
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for film in sorted((VAL / label).glob("*.jpeg")):
            if not film.name.startswith(("NORMAL2-IM-1427-", "person1946_")):
                shutil.copy(film, root / label / film.name)
    return root


def test_calibrate_writes_the_onnx_model_without_importing_torch(tmp_path):
    """With torch reported missing, calibrate writes model.onnx alone (no model.pt), imports
    neither torch nor the training code that needs it, and predict reads the model it wrote."""
    site = site_without_examples(tmp_path / "site")
    out = tmp_path / "calibrated"
    code = (
        "import sys; from typer.testing import CliRunner; from pneumoscan.cli import app; "
        "import pneumoscan.site.calibrate as calibrate; calibrate.torch_installed = lambda: False; "
        f"result = CliRunner().invoke(app, ['calibrate', {str(site)!r}, '--out', {str(out)!r}, "
        "'--bootstrap', '20', '--refit-gate']); assert result.exit_code == 0, result.output; "
        f"heavy = set({TORCH!r}) & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (out / "model.onnx").is_file() and not (out / "model.pt").exists()
    report = json.loads((out / "calibration.json").read_text())
    assert report["written"] == {"onnx": str(out / "model.onnx")} and report["films"] == 13
    _assert_golden_labels(
        out / "model.onnx", tmp_path / "predicted.csv", [sys.executable, "-m", "pneumoscan"]
    )


def _assert_golden_labels(model: Path, table: Path, pneumoscan: list[str]) -> None:
    """predict with the recalibrated model: the examples get their true labels, and the file
    carries the site's operating point and the rule that chose its threshold."""
    films = [str(REPO / "examples" / name) for name in GOLDEN]
    result = subprocess.run(
        [*pneumoscan, "predict", *films, "--model", str(model), "--csv", str(table)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    with table.open() as handle:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
    assert {name: (row["status"], row["label"]) for name, row in rows.items()} == {
        name: ("ok", label) for name, label in GOLDEN.items()
    }
    assert {row["model"] for row in rows.values()} == {"binary-site"}
    from pneumoscan.runtime.model import OnnxModel

    written, shipped = OnnxModel(model), OnnxModel(REPO / "models" / "binary.onnx")
    assert written.threshold != pytest.approx(shipped.threshold)  # refitted on the site's films
    assert float(next(iter(rows.values()))["threshold"]) == pytest.approx(
        written.threshold, abs=1e-6
    )
    assert written.metadata["rule"] == {
        "name": "sensitivity",
        "params": {"target_sensitivity": 0.95},
    }
    assert written.metadata["preprocess"] == shipped.metadata["preprocess"]


def test_validate_and_evaluate_onnx_never_import_torch(tmp_path):
    data = make_layout(tmp_path / "data", splits=("test",))
    code = (
        "import sys; from typer.testing import CliRunner; from pneumoscan.cli import app; "
        f"runner = CliRunner(); data = {str(data)!r}; out = {str(tmp_path)!r}; "
        "result = runner.invoke(app, ['validate', data + '/test', '--model', 'binary', "
        "'--out', out + '/validate', '--bootstrap', '20']); "
        "assert result.exit_code == 0, result.output; "
        "result = runner.invoke(app, ['evaluate', data, '--split', 'test', '--model', "
        f"{str(REPO / 'models' / 'binary.onnx')!r}, '--out', out + '/evaluate', "
        "'--bootstrap', '20']); assert result.exit_code == 0, result.output; "
        f"heavy = set({TORCH!r}) & set(sys.modules); assert not heavy, heavy; "
        "training = [m for m in sys.modules if m.startswith('pneumoscan.training')]; "
        "assert not training, training"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for folder in ("validate", "evaluate"):
        metrics = json.loads((tmp_path / folder / "metrics.json").read_text())
        assert metrics["n"] == 9 and sum(map(sum, metrics["confusion_matrix"])) == 9
        assert (tmp_path / folder / "report.md").is_file()


@pytest.fixture(scope="module")
def eval_venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with only `pip install ".[eval]"`: no torch at all (built once)."""
    venv = tmp_path_factory.mktemp("eval-install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{REPO}[eval]"], check=True, cwd=venv.parent
    )
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    return venv


@pytest.mark.slow
def test_eval_install_validates_and_evaluates_without_torch(eval_venv, tmp_path):
    """`pip install ".[eval]"` in a fresh virtualenv: torch is absent, and validate on a site's
    folder and evaluate of the shipped ONNX model on a split both write their reports."""
    venv = eval_venv
    data = make_layout(tmp_path / "data", splits=("test",))
    pneumoscan = str(venv / "bin" / "pneumoscan")
    commands = {
        "validate": [pneumoscan, "validate", str(data / "test"), "--model", "binary"],
        "evaluate": [pneumoscan, "evaluate", str(data), "--split", "test", "--model"]
        + [str(REPO / "models" / "binary.onnx")],
    }
    for name, command in commands.items():
        out = tmp_path / name
        result = subprocess.run(
            [*command, "--out", str(out), "--bootstrap", "20"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads((out / "metrics.json").read_text())["n"] == 9
        assert (out / "report.md").is_file() and (out / "roc.png").is_file()


@pytest.mark.slow
def test_eval_install_calibrates_and_predicts_without_torch(eval_venv, tmp_path):
    """In the [eval] install (no torch), calibrate on a site's labelled films writes model.onnx
    (no model.pt) with its card, and predict with it gives the examples their true labels."""
    site = site_without_examples(tmp_path / "site")
    out = tmp_path / "calibrated"
    pneumoscan = str(eval_venv / "bin" / "pneumoscan")
    result = subprocess.run(
        [pneumoscan, "calibrate", str(site), "--model", "binary", "--out", str(out)]
        + ["--bootstrap", "20", "--refit-gate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and f"wrote {out / 'model.onnx'}, " in result.stdout
    assert not (out / "model.pt").exists()
    card = (out / "card.md").read_text()
    assert "Calibrated on 13 films" in card and "by the `sensitivity` rule" in card
    _assert_golden_labels(out / "model.onnx", tmp_path / "predicted.csv", [pneumoscan])
