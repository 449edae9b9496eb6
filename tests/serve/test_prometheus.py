"""GET /metrics: Prometheus exposition of what the server did, parsed as Prometheus parses it;
counts match the requests sent, and no file name reaches it."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serve_fixtures import NORMAL_FILM, PNEUMONIA_FILM, load_shipped_models, png_bytes

from pneumoscan.serve.app import ServeSettings, create_app


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(ServeSettings(), models=load_shipped_models())) as test_client:
        yield test_client


def _samples(client) -> dict[tuple, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = text_string_to_metric_families(response.text)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        for sample in family.samples
    }, response.text


def _post(client, name: str, content: bytes, content_type="image/jpeg"):
    return client.post("/v1/predict", files={"file": (name, content, content_type)})


def test_metrics_count_predictions_refusals_and_latency(client):
    for film in (NORMAL_FILM, PNEUMONIA_FILM):
        assert _post(client, "secret-patient-name.jpeg", film.read_bytes()).status_code == 200
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    refused = _post(client, "secret-noise.png", png_bytes(noise), "image/png").json()
    assert refused["status"] == "not_chest_xray", refused
    assert _post(client, "secret-broken.jpeg", b"not an image").status_code == 400
    samples, text = _samples(client)

    def value(name: str, **labels) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    predictions = "pneumoscan_predictions_total"
    assert value(predictions, model="binary", status="ok", label="normal") == 1
    assert value(predictions, model="binary", status="ok", label="pneumonia") == 1
    assert value(predictions, model="binary", status="not_chest_xray", label="") == 1
    reason = refused["gate_reason"]
    assert value("pneumoscan_gate_refusals_total", model="binary", reason=reason) == 1
    assert value("pneumoscan_refusals_total", status="400", code="not_an_image") == 1
    assert value("pneumoscan_http_requests_total", route="/v1/predict", code="200") == 3
    assert value("pneumoscan_http_request_duration_seconds_count", route="/v1/predict") == 4
    assert value("pneumoscan_requests_in_flight") == 0
    # One at a time, the three decoded films each ran as a batch of one (the broken one never
    # reached the model).
    assert value("pneumoscan_batch_size_count", model="binary") == 3
    assert value("pneumoscan_batch_size_sum", model="binary") == 3
    assert value("pneumoscan_batch_wait_seconds_count", model="binary") == 3
    assert "secret" not in text  # no file names in any label


def test_unknown_paths_share_one_route_label(client):
    client.get("/static/some-long-file-name.js")
    client.get("/v1/nothing-here")
    samples, text = _samples(client)
    routes = {dict(labels).get("route") for (name, labels) in samples if "route" in dict(labels)}
    assert "other" in routes and not any("nothing-here" in (r or "") for r in routes)
