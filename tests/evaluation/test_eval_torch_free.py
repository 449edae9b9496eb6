"""`validate` and `evaluate` of an exported model run without torch: in this environment they never
import it, and in a fresh virtualenv with only `pip install ".[eval]"` (no torch at all) they work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_layout

REPO = Path(__file__).resolve().parents[2]
TORCH = ("torch", "torchvision", "torchmetrics", "lightning")


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


@pytest.mark.slow
def test_eval_install_validates_and_evaluates_without_torch(tmp_path):
    """`pip install ".[eval]"` in a fresh virtualenv: torch is absent, and validate on a site's
    folder and evaluate of the shipped ONNX model on a split both write their reports."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{REPO}[eval]"], check=True, cwd=tmp_path
    )
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

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
