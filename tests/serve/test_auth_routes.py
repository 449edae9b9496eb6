"""Issue 25 item 6: with an API key set, every route of the app but the public few needs it. The
key is a dependency of the routers the API's routes live on, so a new route is protected without
a check of its own; this test walks the app's routes, so a route added outside them fails here."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serve_fixtures import load_shipped_models

from pneumoscan.serve.app import ServeSettings, create_app

KEY = "correct horse battery staple"
# Open without a key: the page, the docs, the probes and the metrics (and static files).
PUBLIC = {"/", "/docs", "/openapi.json", "/healthz", "/readyz", "/metrics"}


@pytest.fixture(scope="module")
def models():
    return load_shipped_models()


def _routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route the app answers, mounts (static files) aside. FastAPI 0.13x
    keeps each included router as one entry (its routes under `effective_route_contexts`)."""
    found = []
    for entry in app.routes:
        flattened = getattr(entry, "effective_route_contexts", None)
        for route in flattened() if flattened else [entry]:
            found += [(method, route.path) for method in sorted(getattr(route, "methods", ()))]
    return [(method, path) for method, path in found if method != "HEAD"]


def _keyless_routes(app) -> list[tuple[str, str]]:
    """The non-public routes that answer a request without the key with something else than 401."""
    with TestClient(app) as client:
        return [
            (method, path)
            for method, path in _routes(app)
            if path not in PUBLIC and client.request(method, path).status_code != 401
        ]


def test_every_non_public_route_needs_the_key(models):
    app = create_app(ServeSettings(api_key=KEY), models=models)
    routes = _routes(app)
    assert ("POST", "/v1/predict") in routes and ("GET", "/v1/models") in routes
    assert _keyless_routes(app) == []
    with TestClient(app) as client:
        for method, path in routes:
            if path in PUBLIC:
                assert client.request(method, path).status_code != 401, path
            else:
                refused = client.request(method, path)
                assert refused.json()["error"] == "unauthorized", path
                assert refused.headers["WWW-Authenticate"] == "Bearer"
                keyed = client.request(method, path, headers={"X-API-Key": KEY})
                assert keyed.status_code != 401, path  # 415 for a predict without a body


def test_a_route_added_outside_the_api_routers_is_caught(models):
    """What the test above exists for: a route that skipped the routers answers without the key."""
    app = create_app(ServeSettings(api_key=KEY), models=models)
    app.add_api_route("/v1/forgotten", lambda: {"ok": True}, methods=["GET"])
    assert _keyless_routes(app) == [("GET", "/v1/forgotten")]
