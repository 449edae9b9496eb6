"""Issue 18 item 2: the gate says why. A DICOM header pre-check refuses a CT slice, another body
part and a lateral view before the network runs; every refusal carries a `gate_reason`, in the
CSV, JSON, table, Python API and REST API; a frontal chest film still passes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import write_dicom
from PIL import Image
from predict_process import run_predict
from pydicom import dcmread

from pneumoscan.api import load_model
from pneumoscan.core.refusal import (
    LATERAL_VIEW,
    NO_RADIOGRAPH_STRUCTURE,
    NOT_CHEST,
    WRONG_MODALITY,
    header_refusal,
)

REPO = Path(__file__).resolve().parents[2]
FILM = sorted((REPO / "examples").glob("*.jpeg"))[0]


def _dicom(path: Path, **fields) -> Path:
    """The example chest film as a DICOM with the given header fields (patient fields set too)."""
    pixels = np.asarray(Image.open(FILM).convert("L")).astype(np.uint16) * 16
    dataset = dcmread(write_dicom(path, pixels))
    for keyword, value in fields.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path)
    return path


@pytest.fixture()
def films(tmp_path) -> Path:
    folder = tmp_path / "films"
    folder.mkdir()
    _dicom(folder / "ct.dcm", Modality="CT", BodyPartExamined="CHEST")
    _dicom(folder / "lateral.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="LL")
    _dicom(folder / "knee.dcm", Modality="CR", BodyPartExamined="KNEE")
    _dicom(folder / "chest.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="PA")
    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    return folder


EXPECTED = {
    "ct.dcm": WRONG_MODALITY,
    "lateral.dcm": LATERAL_VIEW,
    "knee.dcm": NOT_CHEST,
    "noise.png": NO_RADIOGRAPH_STRUCTURE,
}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (("CT", "CHEST", "PA"), WRONG_MODALITY),
        (("MR", "", ""), WRONG_MODALITY),
        (("DX", "SKULL", "AP"), NOT_CHEST),
        (("CR", "CHEST", "LATERAL"), LATERAL_VIEW),
        (("DX", "CHEST", "RL"), LATERAL_VIEW),
        (("DX", "CHEST", "PA"), None),
        (("CR", "THORAX", "AP"), None),
        (("", "", ""), None),  # a header that says nothing is no reason to refuse
        (("DX", "PEDIATRIC CHEST", "AP"), None),  # free text: left to the feature gate
    ],
)
def test_header_refusal(fields, reason):
    refusal = header_refusal(*fields)
    assert (refusal[0] if refusal else None) == reason


def test_python_api_refuses_with_a_reason_before_the_network_runs(films, monkeypatch):
    model = load_model("three-class")
    calls = []
    real_run = model.runtime.run
    monkeypatch.setattr(
        model.runtime,
        "run",
        lambda batch, **options: calls.append(len(batch)) or real_run(batch, **options),
    )
    for name, reason in EXPECTED.items():
        result = model.predict(films / name)
        assert (result.status, result.gate_reason) == ("not_chest_xray", reason), name
        assert result.label is None and result.probabilities == {}
        assert result.to_dict()["gate_reason"] == reason
    assert calls == [1]  # only the noise image reached the network: the header refused the rest
    # A pydicom Dataset goes through the same reader.
    assert model.predict(dcmread(films / "ct.dcm")).gate_reason == WRONG_MODALITY
    chest = model.predict(films / "chest.dcm")
    assert chest.status in ("ok", "indeterminate") and chest.gate_reason is None


def test_no_gate_turns_the_header_check_off(films):
    result = load_model("binary", gate=False).predict(films / "ct.dcm")
    assert result.status in ("ok", "indeterminate") and result.gate_reason is None


def test_predict_cli_csv_json_and_table_carry_the_reason(films, tmp_path):
    completed = run_predict(films, tmp_path, "-m", "three-class")
    assert completed.returncode == 0, completed.stderr
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
    predictions = {
        Path(p["source"]).name: p
        for p in json.loads((tmp_path / "out.json").read_text())["predictions"]
    }
    for name, reason in EXPECTED.items():
        assert rows[name]["status"] == "not_chest_xray" and rows[name]["gate_reason"] == reason
        assert rows[name]["label"] == "" and rows[name]["p_virus"] == ""
        assert predictions[name]["gate_reason"] == reason
        assert reason in completed.stdout
    assert rows["chest.dcm"]["status"] in ("ok", "indeterminate")
    assert rows["chest.dcm"]["gate_reason"] == ""
    everything = completed.stdout + completed.stderr + (tmp_path / "out.csv").read_text()
    assert "SECRET-12345" not in everything and "Doe" not in everything


def test_server_answers_the_reason(films):
    from fastapi.testclient import TestClient

    from pneumoscan.serve.app import ServeSettings, _load_models, create_app

    models = _load_models(ServeSettings())
    with TestClient(create_app(ServeSettings(), models=models)) as client:
        for name, reason in (("ct.dcm", WRONG_MODALITY), ("lateral.dcm", LATERAL_VIEW)):
            response = client.post(
                "/v1/predict",
                files={"file": (name, (films / name).read_bytes(), "application/dicom")},
                data={"model": "three-class"},
            )
            body = response.json()
            assert response.status_code == 200, body
            assert (body["status"], body["gate_reason"]) == ("not_chest_xray", reason)
            assert body["label"] is None and body["probabilities"] == {}
        chest = client.post(
            "/v1/predict",
            files={"file": ("chest.dcm", (films / "chest.dcm").read_bytes(), "application/dicom")},
        ).json()
        assert chest["status"] in ("ok", "indeterminate") and chest["gate_reason"] is None
        schema = client.get("/openapi.json").json()
        assert "gate_reason" in json.dumps(schema)
