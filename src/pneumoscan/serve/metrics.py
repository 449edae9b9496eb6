"""Prometheus metrics of one app (`GET /metrics`), on prometheus-client with a registry per app.

No patient data and no file names reach a label: models are the loaded names, statuses, labels
and gate reasons come from fixed lists, routes are the app's own paths (anything else is
`other`), refusals are the error codes the API documents. With `serve --workers N` each process
counts its own requests: scrape each, or run one worker per container.
"""

from __future__ import annotations

from time import perf_counter

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/v1/models", "/v1/predict", "/v1/predict/batch")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16)
BATCH_WAIT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServeMetrics:
    """The app's counters, histograms and gauges."""

    def __init__(self, in_flight=None) -> None:
        self.registry = CollectorRegistry()
        self.predictions = Counter(
            "pneumoscan_predictions",
            "Films predicted, by model, status and label (label empty unless status is ok).",
            ["model", "status", "label"],
            registry=self.registry,
        )
        self.gate_refusals = Counter(
            "pneumoscan_gate_refusals",
            "Films the gate refused as not a chest X-ray, by model and reason.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.requests = Counter(
            "pneumoscan_http_requests",
            "HTTP requests by route and status code.",
            ["route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pneumoscan_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refusals = Counter(
            "pneumoscan_refusals",
            "Requests refused before or instead of a prediction, by HTTP status and error code "
            "(admission: busy, too many from one client; limits; unreadable uploads).",
            ["status", "code"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "pneumoscan_requests_in_flight",
            "Prediction requests admitted and not yet answered.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "pneumoscan_batch_size",
            "Films per model run of concurrent single-film requests (dynamic batching), by model.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_wait = Histogram(
            "pneumoscan_batch_wait_seconds",
            "Time from a batch's first film being ready to its model run, by model.",
            ["model"],
            buckets=BATCH_WAIT_BUCKETS,
            registry=self.registry,
        )
        if in_flight is not None:
            self.in_flight.set_function(in_flight)

    def record_batch(self, key, size: int, waited_s: float) -> None:
        """One model run of the batcher; `key` is (model name, options)."""
        self.batch_size.labels(key[0]).observe(size)
        self.batch_wait.labels(key[0]).observe(waited_s)

    def record(self, model: str, results) -> None:
        for result in results:
            self.predictions.labels(model, result.status, result.label or "").inc()
            if result.gate_reason:
                self.gate_refusals.labels(model, result.gate_reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Pure ASGI middleware: each HTTP request's route, status code and duration."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            route = path if path in ROUTES else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(perf_counter() - start)
