"""The command line as a user meets it: instant help, one-line errors, real commands end to end."""

import json
import subprocess
import sys

import pytest
from conftest import make_layout
from typer.testing import CliRunner

from pneumoscan.cli import app

runner = CliRunner()


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pneumoscan", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_help_is_torch_free():
    code = (
        "import sys; from typer.testing import CliRunner; from pneumoscan.cli import app; "
        "result = CliRunner().invoke(app, ['--help']); assert result.exit_code == 0, result.output; "
        "assert 'not a diagnostic device' in ' '.join(result.output.split()); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eda", "/no/such/folder"], "data folder not found"),
        (["evaluate", "/no/such/folder", "--model", "/no/model.pt"], "model file not found"),
        (["train", "--config", "/no/config.yaml"], "config file not found"),
        (["train", "train.epochs=abc"], "train.epochs: expected an integer"),
        (["train", "model.arch=vgg99", "--data", "/no/data"], "unknown architecture"),
        (["evaluate", ".", "--model", "x.pt", "--split", "holdout"], "choose test, val or train"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message, tmp_path):
    result = _run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()  # nothing written for a run that could not start


def test_eda_on_a_small_folder(tmp_path):
    data = make_layout(tmp_path / "data", splits=("train", "test"))
    result = runner.invoke(app, ["eda", str(data), "--out", str(tmp_path / "eda")])
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "eda" / "summary.md").read_text()
    assert "| train | PNEUMONIA | virus | 3 | 3 |" in summary
    for name in ("counts.png", "images_per_patient.png", "image_sizes.png", "samples_virus.png"):
        assert (tmp_path / "eda" / name).stat().st_size > 1000


def test_train_then_evaluate_from_the_command_line(tmp_path):
    data = make_layout(tmp_path / "data", splits=("train", "test"), per_class=6)
    (data / "train" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"broken")
    run = tmp_path / "run"
    common = [
        "model.arch=seed002-cnn",
        "model.image_size=32",
        "train.epochs=1",
        "train.batch_size=8",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.val_fraction=0.34",
    ]
    strict = runner.invoke(
        app, ["train", "--data", str(data), "--out", str(run), "--strict", *common]
    )
    assert strict.exit_code == 2 and "IM-9999-0001.jpeg" in strict.output
    result = runner.invoke(
        app, ["train", "--data", str(data), "--out", str(tmp_path / "run2"), *common]
    )
    assert result.exit_code == 0, result.output
    model = tmp_path / "run2" / "model.pt"
    assert model.is_file()
    report = tmp_path / "report"
    result = runner.invoke(
        app,
        ["evaluate", str(data), "--model", str(model), "--out", str(report), "--bootstrap", "20"],
    )
    assert result.exit_code == 0, result.output
    assert "not a diagnostic device" in result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n"] == 18 and metrics["split"] == "test"
    assert metrics["in_training_pool"] is False and "warning" not in result.output
    pooled = runner.invoke(
        app,
        ["evaluate", str(data), "--model", str(model), "--split", "train"]
        + ["--out", str(tmp_path / "pooled"), "--bootstrap", "0"],
    )
    assert pooled.exit_code == 0, pooled.output
    assert "warning: the train films are part of the training pool" in pooled.output
    assert "not out-of-sample" in (tmp_path / "pooled" / "report.md").read_text()


def test_train_prints_no_library_notes_between_its_own_lines(tmp_path):
    """A training run's stderr holds pneumoscan's lines, not Lightning's banner, tip and
    warnings; the metrics CSV is still written. A process, as a user runs it."""
    data = make_layout(tmp_path / "data", splits=("train", "test"), per_class=6)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "pneumoscan", "train", "--data", str(data), "--out", str(run)]
    command += ["model.arch=seed002-cnn", "model.image_size=32", "train.epochs=1"]
    command += ["train.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}"]
    result = subprocess.run(
        command + ["data.val_fraction=0.34"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for noise in ("litlogger", "GPU available", "Seed set", "Warning", "deprecated", "stopped"):
        assert noise not in result.stderr, result.stderr
    assert "patient-grouped split" in result.stderr
    assert list(run.glob("phase-*/logs/**/metrics.csv"))


def test_log_lines_off_a_terminal_are_plain_and_whole(monkeypatch, capsys):
    """A service's log (a journal, a file, a pipe) gets `LEVEL     message`, one line per record
    however long: Rich's handler would wrap it at the console width (and cost a dicom-node about
    5 ms of CPU per film)."""
    import logging

    from pneumoscan.cli.common import setup_logging

    setup_logging()
    message = "film 20261206T120000.000000-1-000001: pneumonia (P(pneumonia) 0.97) " + "x" * 200
    logging.getLogger("pneumoscan.dicom.node").info(message)
    logging.getLogger("pneumoscan.dicom.node").warning("archive down")
    assert capsys.readouterr().err.splitlines() == [
        f"INFO     {message}",
        "WARNING  archive down",
    ]
