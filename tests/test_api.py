"""The Python API (`pneumoscan.load_model`) on the shipped models, as a notebook user meets it."""

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import write_dicom
from PIL import Image
from pydicom import dcmread

import pneumoscan
from pneumoscan.api import Model, Result, load_model
from pneumoscan.core.errors import (
    ImageTooLargeError,
    InputError,
    ModelFileError,
    UnsupportedFormatError,
)
from pneumoscan.core.images import read_image
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.runtime.predict import STATUSES

REPO = Path(__file__).resolve().parents[1]
FILM = REPO / "examples" / "pneumonia_person1946_bacteria_4874.jpeg"


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("binary")


def test_import_pneumoscan_is_light_and_load_model_is_lazy():
    code = (
        "import sys, pneumoscan; "
        "assert 'onnxruntime' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'; "
        "from pneumoscan import load_model; assert callable(load_model); "
        "import pneumoscan.api; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_attributes_come_from_the_model_file(model):
    assert pneumoscan.load_model is load_model
    metadata = model.runtime.metadata
    assert model.name == metadata["name"] and model.version == metadata["model_version"]
    assert model.task == metadata["task"]
    assert model.class_names == tuple(metadata["class_names"])
    assert model.threshold == metadata["threshold"]
    assert model.card is not None and NOT_DIAGNOSTIC_NOTICE in " ".join(model.card.split())


def test_path_bytes_array_and_dicom_give_the_same_answer(model, tmp_path):
    pixels = np.asarray(Image.open(FILM).convert("L"))
    dicom_path = write_dicom(tmp_path / "film.dcm", pixels.astype(np.uint16) * 16)
    inputs = {
        "path": FILM,
        "str": str(FILM),
        "bytes": FILM.read_bytes(),
        "uint8": pixels,
        "uint16": pixels.astype(np.uint16) * 257,
        "float": pixels.astype(np.float32) / 255,
        "dicom": dcmread(dicom_path),
    }
    results = {kind: model.predict(x) for kind, x in inputs.items()}
    reference = results["path"].probabilities
    for kind, result in results.items():
        assert isinstance(result, Result) and result.status == "ok", kind
        assert result.label == results["path"].label, kind
        for name in model.class_names:
            assert result.probabilities[name] == pytest.approx(reference[name], abs=2e-3), kind
        assert result.threshold == model.threshold and result.notice == NOT_DIAGNOSTIC_NOTICE
        assert result.model_name == model.name and result.model_version == model.version
        assert result.gate_score is not None
    assert results["path"].source == str(FILM)
    assert results["bytes"].source == "<upload>" and results["uint8"].source == "<array>"
    assert results["dicom"].source == "<dicom>"
    assert model.predict(FILM.read_bytes(), source="film-7").source == "film-7"


def test_result_is_json_ready_with_heatmap_as_base64_or_array(model):
    result = model.predict(FILM, heatmap=True)
    array = result.heatmap_array()
    assert array.shape == (512, 512, 3) and array.dtype == np.uint8
    assert result.heatmap.size == (512, 512)
    document = json.loads(json.dumps(result.to_dict(heatmap="base64")))
    decoded = Image.open(io.BytesIO(base64.b64decode(document["heatmap"])))
    np.testing.assert_array_equal(np.asarray(decoded), array)
    plain = result.to_dict()
    assert "heatmap" not in plain
    assert set(plain) == {
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
    }
    assert model.predict(FILM).heatmap is None and model.predict(FILM).heatmap_array() is None


def test_a_list_in_gives_a_list_out_and_never_raises(model, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    items = [FILM, b"\x00" * 10, broken, np.zeros((3, 4, 5)), FILM.read_bytes(), 42]
    results = model.predict(items, source=[None, "blob", None, None, "again", None])
    assert [r.status for r in results] == ["ok", "error", "error", "error", "ok", "error"]
    assert all(r.status in STATUSES for r in results)
    assert results[1].source == "blob" and results[4].source == "again"
    assert results[2].message.startswith(str(broken))
    assert "2-D grayscale" in results[3].message and "int" in results[5].message
    assert results[0].probabilities == results[4].probabilities


@pytest.mark.parametrize(
    ("array", "phrase"),
    [
        (np.full((64, 64), 2.0, np.float32), r"must be in \[0, 1\]"),
        (np.full((64, 64), -0.5), r"must be in \[0, 1\]"),
        (np.full((64, 64), np.nan, np.float32), "NaN"),
        (np.zeros((64, 64), np.int32), "dtype int32"),
        (np.zeros((64, 64, 3), np.uint8), "2-D grayscale"),
        (np.zeros((0, 64), np.uint8), "2-D grayscale"),
        (np.zeros((64, 64), bool), "dtype bool"),
    ],
)
def test_arrays_off_the_pixel_contract_are_refused(model, array, phrase):
    with pytest.raises(InputError, match=phrase):
        model.predict(array)


def test_input_errors_have_types_the_server_maps_to_status_codes(model, tmp_path):
    with pytest.raises(UnsupportedFormatError):
        model.predict(b"%PDF-1.7 not an image at all")
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")
    with pytest.raises(ImageTooLargeError, match="limit for safe decoding"):
        model.predict(bomb.getvalue())
    small_limit = load_model("binary", max_pixels=1000)
    with pytest.raises(ImageTooLargeError):
        small_limit.predict(FILM)
    with pytest.raises(InputError, match="truncated or corrupt") as raised:
        model.predict(FILM.read_bytes()[:2000])
    assert not isinstance(raised.value, (UnsupportedFormatError, ImageTooLargeError))
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(tmp_path / "nothing.onnx")


def test_patient_fields_never_reach_results_or_messages(model, tmp_path):
    pixels = np.asarray(Image.open(FILM).convert("L")).astype(np.uint16) * 16
    good = dcmread(write_dicom(tmp_path / "good.dcm", pixels))
    bad = dcmread(write_dicom(tmp_path / "bad.dcm", pixels))
    bad.PhotometricInterpretation = "RGB"
    results = model.predict([good, bad, (tmp_path / "good.dcm").read_bytes()])
    text = json.dumps([r.to_dict() for r in results])
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert "SECRET-12345" not in text and "Doe" not in text and "Jane" not in text


def test_gate_off_and_indeterminate_band(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    gated, ungated = load_model("binary"), load_model("binary", gate=False)
    assert gated.predict(noise).status == "not_chest_xray"
    assert gated.predict(noise).label is None and gated.predict(noise).probabilities == {}
    open_result = ungated.predict(noise)
    assert open_result.status == "ok" and open_result.label in ungated.class_names
    film = ungated.predict(FILM)
    distance = abs(film.probabilities[ungated.class_names[1]] - ungated.threshold)
    close = ungated.predict(FILM, indeterminate_margin=distance + 1e-3)
    assert close.status == "indeterminate" and close.label is None
    assert close.probabilities == film.probabilities and "too close to call" in close.message
    assert ungated.predict(FILM, indeterminate_margin=max(distance - 1e-3, 0)).status == "ok"


def test_three_class_model_uses_argmax_of_its_own_classes():
    model = load_model("three-class")
    assert model.threshold is None and len(model.class_names) == 3
    result = model.predict(FILM)
    assert set(result.probabilities) == set(model.class_names)
    assert result.label == max(result.probabilities, key=result.probabilities.get)


def test_read_image_accepts_bytes_and_datasets(tmp_path):
    pixels = np.asarray(Image.open(FILM).convert("L")).astype(np.uint16) * 16
    path = write_dicom(tmp_path / "a.dcm", pixels)
    np.testing.assert_array_equal(read_image(path.read_bytes()), read_image(path))
    np.testing.assert_array_equal(read_image(dcmread(path)), read_image(path))


def test_a_failure_inside_the_pipeline_is_one_items_error(model, monkeypatch):
    """Whatever raises after decoding (preprocessing, the model) fails that input only."""
    import pneumoscan.runtime.predict as runtime

    real_prepare = runtime.prepare

    def flaky_prepare(image, spec):
        if image.shape[0] == 33:
            raise ZeroDivisionError("boom")
        return real_prepare(image, spec)

    monkeypatch.setattr(runtime, "prepare", flaky_prepare)
    good = np.full((64, 64), 0.5, np.float32)
    results = model.predict([good, np.full((33, 64), 0.5, np.float32), good])
    assert [r.status for r in results][1] == "error"
    assert results[0].status != "error" and results[2].status != "error"
    assert results[1].message.startswith("<array>: could not be prepared for the model")
    assert "try again" in results[1].message

    real_run = model.runtime.run

    def failing_run(batch, **options):
        # the flat films prepare to a constant input (whatever the intensity standardisation);
        # the ramp does not, and the model "fails" on it
        if len(batch) > 1 or batch[0].std() > 0.1:
            raise RuntimeError("onnxruntime says no")
        return real_run(batch, **options)

    monkeypatch.setattr(model.runtime, "run", failing_run)
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    results = model.predict([good, ramp, good])
    assert [r.status == "error" for r in results] == [False, True, False]
    assert "the model failed on this input (RuntimeError)" in results[1].message
