"""The HTTP API and page through FastAPI's TestClient, on the real shipped models and films.

Class names, thresholds and versions are read from the models, never written here: the models are
re-shipped with other thresholds from time to time.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from dicom_fixtures import write_dicom
from fastapi.testclient import TestClient
from PIL import Image
from serve_fixtures import (
    NORMAL_FILM,
    PNEUMONIA_FILM,
    film_as,
    load_shipped_models,
    png_bytes,
)

from pneumoscan.api import load_model
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.serve.app import STATIC_DIR, ServeSettings, create_app


@pytest.fixture(scope="module")
def models():
    return load_shipped_models()


@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(ServeSettings(), models=models)) as test_client:
        yield test_client


def make_client(models, **settings) -> TestClient:
    return TestClient(create_app(ServeSettings(**settings), models=models))


def post_film(client, content: bytes, content_type="image/jpeg", filename="film.jpeg", **form):
    return client.post("/v1/predict", files={"file": (filename, content, content_type)}, data=form)


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["message"]
    if code is not None:
        assert body["error"] == code, body
    return body


# --- predictions ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["binary", "three-class"])
def test_predict_returns_the_models_own_answer_with_heatmap_and_notice(client, models, name):
    model = models[name]
    data = PNEUMONIA_FILM.read_bytes()
    response = post_film(client, data, model=name, heatmap="true")
    assert response.status_code == 200, response.text
    body = response.json()
    expected = model.predict(data)  # the Python API: one code path for both
    assert body["status"] == expected.status == "ok"
    assert body["label"] == expected.label and body["label"] in model.class_names
    assert list(body["probabilities"]) == list(model.class_names)
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-9)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["threshold"] == model.threshold
    assert body["model"] == name and body["model_version"] == model.version
    assert body["notice"] == NOT_DIAGNOSTIC_NOTICE
    with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"]))) as heatmap:
        assert heatmap.format == "PNG" and heatmap.size[0] == heatmap.size[1] >= 256


def test_default_model_is_the_first_and_heatmap_is_off_by_default(client, models):
    body = post_film(client, NORMAL_FILM.read_bytes()).json()
    assert body["model"] == next(iter(models))
    assert body["heatmap_png_base64"] is None
    assert body["label"] == models[body["model"]].predict(NORMAL_FILM.read_bytes()).label


def test_png_and_dicom_uploads_predict_like_the_jpeg(client, models, tmp_path):
    jpeg = post_film(client, PNEUMONIA_FILM.read_bytes()).json()
    png = post_film(client, film_as(PNEUMONIA_FILM, "PNG"), "image/png", "film.png").json()
    with Image.open(PNEUMONIA_FILM) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.uint16) * 16  # 12-bit, as a DX film
    dicom = write_dicom(tmp_path / "film.dcm", pixels).read_bytes()
    answer = post_film(client, dicom, "application/dicom", "film.dcm").json()
    assert jpeg["label"] == png["label"] == answer["label"]
    assert answer["probabilities"] == pytest.approx(jpeg["probabilities"], abs=0.02)
    # The DICOM carries PatientName Doe^Jane and PatientID SECRET-12345: never echoed.
    assert "Doe" not in json.dumps(answer) and "SECRET" not in json.dumps(answer)


def test_not_a_chest_xray_gets_no_diagnosis(client):
    from skimage import data as samples

    response = post_film(client, png_bytes(samples.astronaut()), "image/png", "photo.png")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "not_chest_xray"
    assert body["label"] is None and body["probabilities"] == {}
    assert body["gate_score"] is not None and body["notice"] == NOT_DIAGNOSTIC_NOTICE


def test_indeterminate_within_the_configured_margin(models):
    threshold = models["binary"].threshold

    def distance(film):
        probabilities = models["binary"].predict(film.read_bytes()).probabilities
        return abs(list(probabilities.values())[1] - threshold)

    film = min((NORMAL_FILM, PNEUMONIA_FILM), key=distance)  # the one nearer the threshold
    assert distance(film) < 0.48, "both example films are far from the threshold"
    margin = distance(film) + 0.01
    with make_client(models, indeterminate_margin=margin) as client:
        body = post_film(client, film.read_bytes(), model="binary").json()
    assert body["status"] == "indeterminate" and body["label"] is None
    assert body["probabilities"] and body["message"]


def test_batch_isolates_bad_files_and_keeps_order(client, models):
    good = PNEUMONIA_FILM.read_bytes()
    files = [
        ("files", ("a.jpeg", good, "image/jpeg")),
        ("files", ("b.txt", b"hello", "text/plain")),
        ("files", ("c.jpeg", good[:400], "image/jpeg")),
        ("files", ("d.jpeg", NORMAL_FILM.read_bytes(), "image/jpeg")),
        ("files", ("e.gif", film_as(NORMAL_FILM, "GIF"), "application/octet-stream")),
    ]
    response = client.post("/v1/predict/batch", files=files, data={"model": "three-class"})
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [item["status"] for item in body["results"]]
    assert statuses == ["ok", "error", "error", "ok", "error"]
    assert [item["index"] for item in body["results"]] == [0, 1, 2, 3, 4]
    assert [item["error_code"] for item in body["results"]] == [
        None,
        "unsupported_media_type",
        "rejected_input",
        None,
        "unsupported_format",
    ]
    assert body["results"][0]["label"] == models["three-class"].predict(good).label
    assert body["counts"] == {"predicted": 2, "indeterminate": 0, "not_chest_xray": 0, "failed": 3}
    assert all(item["notice"] == NOT_DIAGNOSTIC_NOTICE for item in body["results"])


@pytest.mark.parametrize("name", ["binary", "three-class"])
def test_sets_field_adds_the_conformal_prediction_set(client, models, name):
    model = models[name]
    data = PNEUMONIA_FILM.read_bytes()
    body = post_film(client, data, model=name, sets="0.95").json()
    expected = model.predict(data, sets=0.95)
    assert body["prediction_set"] == expected.prediction_set and body["set_coverage"] == 0.95
    assert body["label"] in body["prediction_set"]
    assert set(body["prediction_set"]) <= set(model.class_names)
    plain = post_film(client, data, model=name).json()
    assert plain["prediction_set"] is None and plain["set_coverage"] is None
    batch = client.post(
        "/v1/predict/batch",
        files=[("files", ("a.jpeg", data, "image/jpeg"))],
        data={"model": name, "sets": "0.95"},
    ).json()
    assert batch["results"][0]["prediction_set"] == expected.prediction_set
    for bad in ("1.5", "0", "ninety"):
        assert_error(post_film(client, data, model=name, sets=bad), 400, "bad_field")


def test_batch_over_the_file_limit_is_refused(models):
    with make_client(models, max_batch_files=2) as client:
        files = [("files", ("x.jpeg", NORMAL_FILM.read_bytes(), "image/jpeg"))] * 3
        assert_error(client.post("/v1/predict/batch", files=files), 413, "too_many_files")


# --- models, health --------------------------------------------------------------------------


def test_models_lists_names_versions_classes_thresholds_and_cards(client, models):
    body = client.get("/v1/models").json()
    assert body["default"] == "binary"
    assert body["limits"]["max_upload_bytes"] == 20 * 1024 * 1024
    for info in body["models"]:
        model = load_model(info["name"])  # straight from the file, not via the server
        assert info["version"] == model.version
        assert info["class_names"] == list(model.class_names)
        assert info["threshold"] == model.threshold
        assert info["task"] == model.task
        assert info["card"] == model.card and info["card"].startswith("# Model card")
    assert [info["name"] for info in body["models"]] == list(models)


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["models"] == ["binary", "three-class"]


def test_lifespan_loads_the_configured_models_once():
    with TestClient(create_app(ServeSettings(models=("three-class",)))) as client:
        assert client.get("/readyz").json()["models"] == ["three-class"]
        body = post_film(client, PNEUMONIA_FILM.read_bytes()).json()
        assert body["model"] == "three-class"
        assert_error(post_film(client, PNEUMONIA_FILM.read_bytes(), model="binary"), 400)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"", "image/jpeg", 400, "empty_file"),
        (b"this is not an image at all", "image/png", 400, "not_an_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg", 400, "unreadable"),
        (b"%PDF-1.4 ...", "application/pdf", 415, "unsupported_media_type"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"GIF89a" + b"\x00" * 50, "image/gif", 415, "unsupported_media_type"),
        (b"GIF89a" + b"\x00" * 50, "application/octet-stream", 415, "unsupported_format"),
        (b"%PDF-1.4 ...", "application/octet-stream", 415, "unsupported_format"),
    ],
)
def test_bad_uploads_get_specific_4xx(client, content, content_type, status, code):
    assert_error(post_film(client, content, content_type), status, code)


def test_truncated_film_is_400_with_the_decoders_message(client):
    body = assert_error(post_film(client, PNEUMONIA_FILM.read_bytes()[:2000]), 400, "unreadable")
    assert "truncated" in body["message"] or "corrupt" in body["message"]


def test_request_that_is_not_multipart_is_415(client):
    response = client.post(
        "/v1/predict", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert "multipart/form-data" in assert_error(response, 415)["message"]


def test_missing_file_and_unknown_model_are_400(client):
    assert_error(client.post("/v1/predict", files={"model": (None, "binary")}), 400, "no_file")
    response = post_film(client, NORMAL_FILM.read_bytes(), model="resnet-9000")
    assert "binary" in assert_error(response, 400, "unknown_model")["message"]
    assert_error(post_film(client, NORMAL_FILM.read_bytes(), model=""), 400, "unknown_model")
    response = post_film(client, NORMAL_FILM.read_bytes(), heatmap="maybe")
    assert_error(response, 400, "bad_field")


def test_file_over_the_size_limit_is_413(models):
    with make_client(models, max_upload_bytes=10_000) as client:
        body = assert_error(post_film(client, PNEUMONIA_FILM.read_bytes()), 413, "file_too_large")
        assert "MB" in body["message"] or "KB" in body["message"]
        assert post_film(client, film_as(NORMAL_FILM, "JPEG", (200, 200))).status_code == 200


def test_pixel_bomb_is_413_before_decoding():
    settings = ServeSettings(models=("binary",), max_pixels=1_000_000)
    with TestClient(create_app(settings)) as client:  # the lifespan loads it with the limit
        bomb = png_bytes(np.zeros((1500, 1500), dtype=np.uint8), compress_level=9)
        assert len(bomb) < 20_000  # tiny on the wire, 2.25 Mpx decoded
        assert "px" in assert_error(post_film(client, bomb, "image/png"), 413)["message"]


def test_api_key_is_required_when_configured(models):
    with make_client(models, api_key="s3cret") as client:
        data = NORMAL_FILM.read_bytes()
        assert_error(post_film(client, data), 401, "unauthorized")
        wrong = client.post(
            "/v1/predict", files={"file": ("f", data, "image/jpeg")}, headers={"X-API-Key": "no"}
        )
        assert_error(wrong, 401)
        assert_error(client.get("/v1/models"), 401)
        for headers in ({"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
            ok = client.post(
                "/v1/predict", files={"file": ("f", data, "image/jpeg")}, headers=headers
            )
            assert ok.status_code == 200, ok.text
        assert client.get("/healthz").status_code == 200  # probes stay open
        assert client.get("/").status_code == 200


def test_api_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PNEUMOSCAN_API_KEY", "from-env")
    settings = ServeSettings.from_environment(models=("binary",))
    assert settings.api_key == "from-env"
    assert "from-env" not in settings.to_environment()  # never copied into another variable
    assert "from-env" not in repr(settings)


def test_full_server_answers_503_with_retry_after(models):
    with make_client(models, max_in_flight=1) as client:
        client.app.state.server.in_flight = 1  # one request already being handled
        response = post_film(client, NORMAL_FILM.read_bytes())
        assert_error(response, 503, "busy")
        assert response.headers["Retry-After"] == "1"
        assert client.get("/readyz").status_code == 503
        client.app.state.server.in_flight = 0
        assert post_film(client, NORMAL_FILM.read_bytes()).status_code == 200


def test_memory_budget_refuses_instead_of_growing(models):
    with make_client(models, memory_budget_bytes=10_000) as client:
        response = post_film(client, PNEUMONIA_FILM.read_bytes())
        assert_error(response, 503, "busy")
        assert client.app.state.server.budget.used_bytes == 0  # released after refusal


class SlowModel:
    """A real model whose predictions take longer than the request time limit."""

    def __init__(self, model, delay: float) -> None:
        self.model, self.delay = model, delay

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.model.predict(*args, **kwargs)


def test_request_time_limit_gives_503_not_a_hang(models):
    slow = {"binary": SlowModel(models["binary"], delay=1.5)}
    with make_client(slow, request_timeout_s=0.5) as client:
        started = time.monotonic()
        response = post_film(client, NORMAL_FILM.read_bytes())
        assert time.monotonic() - started < 1.4
    assert_error(response, 503, "timeout")
    assert "Retry-After" in response.headers


def test_unexpected_error_is_json_not_a_traceback(models):
    class Broken:
        def __getattr__(self, name):
            return getattr(models["binary"], name)

        def predict(self, *args, **kwargs):
            raise RuntimeError("bug")

    with TestClient(
        create_app(ServeSettings(), models={"binary": Broken()}), raise_server_exceptions=False
    ) as client:
        response = post_film(client, NORMAL_FILM.read_bytes())
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error" and "bug" not in response.text


# --- privacy ---------------------------------------------------------------------------------


def test_uploads_never_touch_the_disk(client, monkeypatch):
    """A 6 MB film (above Starlette's 1 MB spooling threshold) with every temp-file API broken."""

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was about to be written to disk")

    import starlette.formparsers

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", no_disk)
    with Image.open(PNEUMONIA_FILM) as image:
        big = png_bytes(np.asarray(image.convert("L").resize((2500, 2500))), compress_level=0)
    assert len(big) > 6_000_000
    response = post_film(client, big, "image/png", "big.png")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


def test_file_names_and_patient_fields_stay_out_of_logs_and_responses(client, caplog, tmp_path):
    with Image.open(NORMAL_FILM) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.uint16) * 16
    dicom = write_dicom(tmp_path / "x.dcm", pixels).read_bytes()
    broken = dicom[:-5000]  # truncated pixel data: an error path too
    caplog.set_level(logging.DEBUG)
    texts = []
    for content, content_type in ((dicom, "application/dicom"), (broken, "application/dicom")):
        texts.append(post_film(client, content, content_type, "Doe_Jane_SECRET-12345.dcm").text)
    files = [("files", ("Doe_Jane_SECRET-12345.dcm", broken, "application/dicom"))]
    texts.append(client.post("/v1/predict/batch", files=files).text)
    for text in [*texts, caplog.text]:
        assert "Doe" not in text and "SECRET" not in text and "Jane" not in text


# --- page, headers, CORS, docs --------------------------------------------------------------------


def test_page_carries_the_notice_and_strict_security_headers(client):
    response = client.get("/")
    assert response.status_code == 200
    assert " ".join(NOT_DIAGNOSTIC_NOTICE.split()) in " ".join(response.text.split())
    csp = response.headers["Content-Security-Policy"]
    script_src = next(part for part in csp.split(";") if "script-src" in part)
    assert "'unsafe-inline'" not in script_src and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    api = post_film(client, NORMAL_FILM.read_bytes())
    assert api.headers["Cache-Control"] == "no-store" and "X-Frame-Options" in api.headers


def test_page_assets_are_all_local_with_no_inline_script_or_style(client):
    html = (STATIC_DIR / "index.html").read_text()
    assert "<script>" not in html and "style=" not in html and "onclick" not in html.lower()
    for asset in STATIC_DIR.iterdir():
        text = asset.read_text()
        assert "http://" not in text and "https://" not in text, asset.name
        assert client.get(f"/static/{asset.name}").status_code == 200


def test_docs_work_offline(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "http" not in docs.text
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/batch", "/v1/models", "/healthz", "/readyz"} <= set(
        schema["paths"]
    )
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["model"]["enum"] == [
        "binary",
        "three-class",
    ]


def test_cors_is_off_unless_configured(client, models):
    headers = {"Origin": "https://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/v1/models", headers=headers).headers
    with make_client(models, cors_origins=("https://elsewhere.example",)) as allowed:
        response = allowed.get("/v1/models", headers=headers)
        assert response.headers["access-control-allow-origin"] == "https://elsewhere.example"


def test_unknown_route_is_json_404(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed")


# --- command line ----------------------------------------------------------------------------


def test_help_and_predict_import_neither_fastapi_nor_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from pneumoscan.cli import app; "
        "runner = CliRunner(); assert runner.invoke(app, ['--help']).exit_code == 0; "
        "result = runner.invoke(app, ['predict', 'examples/']); "
        "assert result.exit_code == 0, result.output; "
        "heavy = {'fastapi', 'uvicorn', 'starlette', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PNEUMONIA_FILM.parents[1])


def test_serve_command_lists_its_options():
    from typer.testing import CliRunner

    from pneumoscan.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    output = " ".join(result.output.split())
    assert result.exit_code == 0
    for option in ("--host", "--port", "--model", "--workers", "--max-upload-mb", "127.0.0.1"):
        assert option in output


def test_serve_batching_options_show_the_settings_defaults_and_refuse_bad_values():
    """The defaults live in ServeSettings; the help (written before serve is imported) states
    them, and a value out of range is one line, not a traceback."""
    from typer.testing import CliRunner

    from pneumoscan.cli import app

    defaults = ServeSettings()
    wide = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}  # one line per option in rich's box
    output = " ".join(CliRunner().invoke(app, ["serve", "--help"], env=wide).output.split())
    for option, default in (
        ("--max-batch", defaults.max_batch_size),
        ("--max-batch-wait-ms", defaults.max_batch_wait_ms),
    ):
        assert option in output
        assert f"(default {default:g}" in output
    result = CliRunner().invoke(app, ["serve", "--max-batch", "0", "-m", "binary"])
    assert result.exit_code == 2 and "max batch size must be 1 to" in result.output
    assert "Traceback" not in result.output
