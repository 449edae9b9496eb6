"""What `pneumoscan predict` writes and shows, read back field by field (csv, pandas, json).

One folder holds every outcome: films that are predicted, one film inside the indeterminate band,
a non-radiograph the gate refuses, an unreadable file, a DICOM with a malformed header value, a
DICOM with patient fields and a DICOM whose pixel data makes pydicom warn. The command runs as a
user runs it (a separate process), so what reaches the terminal is what a user sees.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_fixtures import set_raw_value, write_dicom
from PIL import Image
from predict_process import run_predict
from pydicom import dcmread

from pneumoscan.api import load_model
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.runtime.outputs import JSON_MODEL_KEYS, csv_columns

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.jpeg"))
PATIENT_VALUES = ("SECRET-12345", "Doe", "Jane")
RESULT_KEYS = {
    "source",
    "status",
    "label",
    "probabilities",
    "threshold",
    "gate_score",
    "gate_reason",
    "prediction_set",
    "set_coverage",
    "message",
    "model_name",
    "model_version",
    "notice",
    "heatmap",
}


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "films"
    folder.mkdir()
    for film in EXAMPLES:
        (folder / film.name).write_bytes(film.read_bytes())
    pixels = np.asarray(Image.open(EXAMPLES[0]).convert("L")).astype(np.uint16) * 16
    write_dicom(folder / "patient.dcm", pixels)
    padded = dcmread(write_dicom(folder / "padded.dcm", pixels))
    padded.PixelData = padded.PixelData + bytes(64)  # pydicom warns about the excess bytes
    padded.save_as(folder / "padded.dcm")
    frames = dcmread(write_dicom(folder / "frames.dcm", pixels))
    frames.NumberOfFrames = 1
    frames.save_as(folder / "frames.dcm")
    set_raw_value(folder / "frames.dcm", (0x0028, 0x0008), "IS", b"ab")  # not a number
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    return folder


def _margin_for_one_indeterminate(folder: Path) -> tuple[float, str]:
    """A band that catches exactly the film closest to the threshold (read from the model)."""
    model = load_model("binary", gate=False)
    films = [folder / film.name for film in EXAMPLES] + [folder / "patient.dcm"]
    distances = sorted(
        (abs(model.predict(path).probabilities[model.class_names[1]] - model.threshold), path.name)
        for path in films
    )
    (closest, name), (next_closest, _) = distances[0], distances[1]
    # Halfway between the two closest films: exactly one inside the band. Never a skip: a model
    # that ties two films, or puts none within 0.49 of its threshold, fails here, visibly.
    assert next_closest > closest, f"two example films tie at {closest} from the threshold"
    assert closest < 0.49, f"no example film within 0.49 of the threshold ({closest})"
    return min((closest + next_closest) / 2, 0.49), name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("outputs")
    folder = _folder(tmp_path)
    margin, indeterminate_film = _margin_for_one_indeterminate(folder)
    result = run_predict(folder, tmp_path, "--indeterminate", f"{margin:.6f}")
    return tmp_path, folder, result, indeterminate_film


EXPECTED = {
    "not_chest_xray": {"noise.png"},
    "error": {"broken.png", "frames.dcm"},
}


def _status_by_name(rows, indeterminate_film):
    expected = {}
    for film in [*[f.name for f in EXAMPLES], "patient.dcm", "padded.dcm"]:
        expected[film] = "indeterminate" if film == indeterminate_film else "ok"
    for status, names in EXPECTED.items():
        expected.update(dict.fromkeys(names, status))
    return {Path(row["file"]).name: row["status"] for row in rows}, expected


def test_every_outcome_reaches_the_terminal_as_it_is(run):
    _, folder, result, indeterminate_film = run
    assert result.returncode == 1  # two files failed, the batch went on
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert "warn" not in result.stdout.lower()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert any(
        line.startswith(
            f"error: {folder / 'frames.dcm'}: DICOM NumberOfFrames is not a valid number"
        )
        for line in errors
    )
    assert any(line.startswith(f"error: {folder / 'broken.png'}:") for line in errors)
    rows = {
        line.split("│")[1].strip().rsplit("/", 1)[-1]: line
        for line in result.stdout.splitlines()
        if line.startswith("│")
    }
    assert "not a chest X-ray" in rows["noise.png"]
    assert "error" in rows["broken.png"] and "error" in rows["frames.dcm"]
    assert "indeterminate" in rows[indeterminate_film]
    assert "gate score" in result.stdout
    assert (
        "3 predicted, 1 indeterminate, 1 not a chest X-ray, 2 failed. " + NOT_DIAGNOSTIC_NOTICE
        in result.stdout
    )


def test_csv_reads_back_with_the_documented_columns(run):
    tmp_path, _, _, indeterminate_film = run
    model = load_model("binary")
    columns = csv_columns(model.class_names)
    with (tmp_path / "out.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        raw_rows = list(reader)
    assert header == columns
    assert all(len(row) == len(columns) for row in raw_rows)
    rows = [dict(zip(columns, row)) for row in raw_rows]
    statuses, expected = _status_by_name(rows, indeterminate_film)
    assert statuses == expected
    for row in rows:
        probabilities = [row[f"p_{name}"] for name in model.class_names]
        assert row["notice"] == NOT_DIAGNOSTIC_NOTICE
        assert row["model"] == model.name and row["model_version"] == model.version
        if row["status"] in ("ok", "indeterminate"):
            assert sum(float(p) for p in probabilities) == pytest.approx(1.0, abs=1e-5)
            assert float(row["threshold"]) == pytest.approx(model.threshold, abs=1e-6)
            assert float(row["gate_score"]) <= model.runtime.ood_threshold
        else:
            assert probabilities == [""] * len(model.class_names) and row["label"] == ""
            assert row["message"].startswith(row["file"])
        if row["status"] == "ok":
            assert row["label"] in model.class_names and row["message"] == ""
            chosen = float(row[f"p_{model.class_names[1]}"]) >= model.threshold
            assert row["label"] == model.class_names[int(chosen)]
        elif row["status"] == "indeterminate":
            assert row["label"] == "" and "too close to call" in row["message"]
        elif row["status"] == "not_chest_xray":
            assert float(row["gate_score"]) > model.runtime.ood_threshold
        else:
            assert row["gate_score"] == "" and row["threshold"] == ""


def test_pandas_reads_the_csv_unshifted(run):
    tmp_path, _, _, _ = run
    model = load_model("binary")
    frame = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(frame.columns) == csv_columns(model.class_names)
    assert (frame["notice"] == NOT_DIAGNOSTIC_NOTICE).all()
    predicted = frame[frame["status"].isin(["ok", "indeterminate"])]
    for name in model.class_names:
        assert pd.to_numeric(predicted[f"p_{name}"]).between(0, 1).all()
    assert pd.to_numeric(frame.loc[frame["status"] != "error", "gate_score"]).gt(0).all()
    assert set(frame.loc[frame["status"] == "ok", "label"]) <= set(model.class_names)


def test_json_reads_back_with_the_documented_keys(run):
    tmp_path, _, _, indeterminate_film = run
    model = load_model("binary")
    document = json.loads((tmp_path / "out.json").read_text())
    assert set(document) == {"notice", "model", "conformal", "summary", "predictions"}
    assert document["notice"] == NOT_DIAGNOSTIC_NOTICE
    assert set(document["model"]) == set(JSON_MODEL_KEYS)
    assert document["model"]["name"] == model.name
    assert document["model"]["class_names"] == list(model.class_names)
    assert document["summary"] == {
        "predicted": 3,
        "indeterminate": 1,
        "not_chest_xray": 1,
        "failed": 2,
    }
    predictions = document["predictions"]
    assert all(set(p) == RESULT_KEYS for p in predictions)
    statuses, expected = _status_by_name(
        [{"file": p["source"], "status": p["status"]} for p in predictions], indeterminate_film
    )
    assert statuses == expected
    for prediction in predictions:
        assert prediction["notice"] == NOT_DIAGNOSTIC_NOTICE and prediction["heatmap"] is None
        if prediction["status"] == "ok":
            assert prediction["label"] in model.class_names
            assert set(prediction["probabilities"]) == set(model.class_names)
        else:
            assert prediction["label"] is None and prediction["message"]


def test_dicom_patient_fields_are_absent_from_every_output(run):
    tmp_path, _, result, _ = run
    outputs = [
        result.stdout,
        result.stderr,
        (tmp_path / "out.csv").read_text(),
        (tmp_path / "out.json").read_text(),
    ]
    for text in outputs:
        for value in PATIENT_VALUES:
            assert value not in text


def test_gate_off_from_the_command_line_classifies_everything_readable(run, tmp_path):
    _, folder, _, _ = run
    result = run_predict(folder, tmp_path, "--no-gate")
    assert result.returncode == 1
    frame = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    by_name = dict(zip(frame["file"].map(lambda f: Path(f).name), frame["status"]))
    assert by_name["noise.png"] == "ok"  # no gate: a diagnosis even for noise
    assert "0 indeterminate, 0 not a chest X-ray, 2 failed" in result.stdout


def test_indeterminate_needs_a_binary_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pneumoscan", "predict", str(EXAMPLES[0]), "-m", "three-class"]
        + ["--indeterminate", "0.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no decision threshold" in result.stderr


def test_unwritable_outputs_are_one_line_errors(tmp_path):
    from typer.testing import CliRunner

    from pneumoscan.cli import app
    from pneumoscan.runtime.model import load_runtime_model
    from pneumoscan.runtime.predict import predict_many

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for option, target in (
        ("--csv", tmp_path),
        ("--json", blocker / "out.json"),
        ("--heatmaps", blocker / "maps"),
    ):
        result = CliRunner().invoke(app, ["predict", str(EXAMPLES[0]), option, str(target)])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"error: {option} {target}:" in result.output
    # through the runtime (the API, the server): the prediction stands, the message says why
    results = list(
        predict_many(load_runtime_model("binary"), EXAMPLES, heatmap_dir=blocker / "maps")
    )
    assert all(r.status == "ok" and r.heatmap_path is None for r in results)
    assert all("heatmap not written" in r.message for r in results)


def test_heatmap_lookup_blend_is_within_one_level_of_the_float_blend():
    """The overlay's table lookup (`_blend_table`) against the blend written out in floating
    point: film * (1 - weight) + jet colour * weight, per pixel."""
    import numpy as np

    from pneumoscan.runtime.heatmap import (
        HEAT_LEVELS,
        _jet_tables,
        _upsampling_matrix,
        render_heatmaps,
    )

    rng = np.random.default_rng(3)
    bases = rng.random((2, 64, 64), dtype=np.float32)
    maps = rng.standard_normal((2, 5, 5)).astype(np.float32)
    rendered = render_heatmaps(bases, maps).astype(int)
    positive = np.maximum(maps, 0)
    positive /= positive.reshape(2, -1).max(axis=1)[:, None, None]
    rows, columns = _upsampling_matrix(5, 64), _upsampling_matrix(5, 64)
    heat = np.einsum("ij,njk,lk->nil", rows, positive, columns)
    levels = np.clip(heat * (HEAT_LEVELS - 1) + 0.5, 0, HEAT_LEVELS - 1).astype(np.uint8)
    coloured, weight = _jet_tables(0.55)
    expected = bases[..., None] * 255.0 * (1 - weight[levels])[..., None] + coloured[levels]
    assert np.abs(rendered - expected).max() <= 1.0
    # hot regions are coloured, cold ones keep the film's grey
    hot = levels == levels.max()
    assert (rendered[hot][:, 0] - rendered[hot][:, 2]).mean() > 50


def test_heatmap_png_is_the_same_image_with_libdeflate_or_zlib(monkeypatch):
    """The PNG writer compresses with libdeflate (`deflate`) where installed and zlib otherwise;
    either file decodes to the overlay exactly."""
    import io
    import sys

    import numpy as np
    from PIL import Image

    from pneumoscan.runtime.heatmap import png_bytes

    y, x = np.mgrid[0:40, 0:56]
    rgb = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)  # smooth, compressible
    fast = png_bytes(rgb)
    monkeypatch.setitem(sys.modules, "deflate", None)  # `import deflate` now fails
    plain = png_bytes(rgb)
    assert fast != plain  # two compressors were used
    for data in (fast, plain):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)
