"""Dynamic batching (issue 27 item 4): concurrent single-film requests share a model run, each
gets its own answer, a failed batch fails its own requests only, and a lone film waits no longer
than the wait bound. The batcher alone (batching.Workers), then the server on the shipped model
and real films."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest
from serve_fixtures import NORMAL_FILM, PNEUMONIA_FILM, load_shipped_models

from pneumoscan.serve.app import ServeSettings, create_app
from pneumoscan.serve.batching import BatchFailed, Workers


def _hold(workers: Workers) -> threading.Event:
    """Occupy every thread of `workers` until the returned event is set, so that what is
    submitted meanwhile queues up (no timing in what the tests assert)."""
    gate = threading.Event()
    started = threading.Barrier(workers.threads + 1)

    def held() -> None:
        started.wait(timeout=10)
        gate.wait(timeout=30)

    for _ in range(workers.threads):
        workers.submit_job(held)
    started.wait(timeout=10)
    return gate


# --- the batcher ------------------------------------------------------------------------------


def test_queued_items_run_in_full_batches_and_each_gets_its_own_result():
    batches: list[list[int]] = []
    workers = Workers(1, max_batch=8, max_wait_s=0.0)
    gate = _hold(workers)

    def run_batch(items):
        batches.append(list(items))
        return [item * 10 for item in items]

    futures = [workers.submit_item("model", item, run_batch) for item in range(20)]
    gate.set()
    assert [future.result(timeout=10) for future in futures] == [item * 10 for item in range(20)]
    assert [len(batch) for batch in batches] == [8, 8, 4]  # one model run per batch


def test_items_batch_only_with_their_own_key():
    seen: list[tuple[str, list]] = []
    workers = Workers(1, max_batch=16, max_wait_s=0.0)
    gate = _hold(workers)

    def runner(key):
        def run_batch(items):
            seen.append((key, list(items)))
            return [f"{key}:{item}" for item in items]

        return run_batch

    futures = [
        workers.submit_item(key, index, runner(key))
        for index, key in enumerate(["binary", "three-class"] * 3)
    ]
    gate.set()
    results = [future.result(timeout=10) for future in futures]
    assert results == [f"{key}:{index}" for index, key in enumerate(["binary", "three-class"] * 3)]
    assert sorted(seen) == [("binary", [0, 2, 4]), ("three-class", [1, 3, 5])]


def test_a_failed_batch_fails_its_own_requests_only():
    workers = Workers(1, max_batch=16, max_wait_s=0.0)
    gate = _hold(workers)

    def broken(items):
        raise RuntimeError("secret pixel values")

    failing = [workers.submit_item("broken", index, broken) for index in range(3)]
    fine = [workers.submit_item("fine", index, lambda items: list(items)) for index in range(3)]
    gate.set()
    for future in failing:
        error = future.exception(timeout=10)
        assert isinstance(error, BatchFailed) and isinstance(error.__cause__, RuntimeError)
        assert "batch of 3" in str(error) and "secret" not in str(error)
    assert [future.result(timeout=10) for future in fine] == [0, 1, 2]
    # The thread survives the failure: the next batch of the same key runs.
    assert workers.submit_item("broken", 7, lambda items: list(items)).result(timeout=10) == 7


def test_a_cancelled_item_is_dropped_from_its_batch():
    batches: list[list[int]] = []
    workers = Workers(1, max_batch=16, max_wait_s=0.0)
    gate = _hold(workers)

    def run_batch(items):
        batches.append(list(items))
        return list(items)

    futures = [workers.submit_item("model", item, run_batch) for item in range(3)]
    assert futures[1].cancel()  # its request timed out before a thread took it
    gate.set()
    assert futures[0].result(timeout=10) == 0 and futures[2].result(timeout=10) == 2
    assert batches == [[0, 2]]


def test_a_lone_item_waits_for_company_no_longer_than_the_wait_bound():
    """With the model free, the first item waits max_wait for others (one arriving meanwhile
    joins it), then runs without waiting for a full batch."""
    wait_s = 0.3
    started: list[float] = []
    batches: list[list[str]] = []
    workers = Workers(1, max_batch=16, max_wait_s=wait_s)

    def run_batch(items):
        started.append(time.monotonic())
        batches.append(list(items))
        return list(items)

    submitted = time.monotonic()
    first = workers.submit_item("model", "first", run_batch)
    time.sleep(0.05)
    second = workers.submit_item("model", "second", run_batch)
    assert (first.result(timeout=10), second.result(timeout=10)) == ("first", "second")
    assert batches == [["first", "second"]]
    assert started[0] - submitted >= wait_s * 0.9  # it waited for company
    assert started[0] - submitted < wait_s + 1.0  # and not for a full batch of 16


def test_no_more_batches_run_at_once_than_threads():
    lock = threading.Lock()
    counts = {"running": 0, "peak": 0}
    workers = Workers(2, max_batch=1, max_wait_s=0.0)

    def job():
        with lock:
            counts["running"] += 1
            counts["peak"] = max(counts["peak"], counts["running"])
        time.sleep(0.02)
        with lock:
            counts["running"] -= 1

    for future in [workers.submit_job(job) for _ in range(12)]:
        future.result(timeout=10)
    assert counts["peak"] <= 2


# --- the server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    return load_shipped_models()


def _client(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60)


def _post(client: httpx.AsyncClient, content: bytes, model: str = "binary"):
    files = {"file": ("film.jpeg", content, "image/jpeg")}
    return client.post("/v1/predict", files=files, data={"model": model})


def _batch_sizes(text: str, model: str = "binary") -> tuple[float, float]:
    """(batches run, films in them) from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == model
    }
    return values["pneumoscan_batch_size_count"], values["pneumoscan_batch_size_sum"]


def test_concurrent_films_each_get_their_own_answer(models):
    """The golden case: a known pneumonia film and a known normal film, sent concurrently many
    times, batched together; each answer is that film's own label and probabilities (a swapped
    or inverted result fails)."""
    model = models["binary"]
    films = {"pneumonia": PNEUMONIA_FILM.read_bytes(), "normal": NORMAL_FILM.read_bytes()}
    expected = {label: model.predict(data) for label, data in films.items()}
    for label, result in expected.items():  # the films' own truth, from their names
        assert result.status == "ok" and result.label == label
    rounds = 12
    app = create_app(
        ServeSettings(max_batch_size=8, max_batch_wait_ms=50, max_in_flight_per_client=32),
        models={"binary": model},
    )

    async def scenario():
        answers: list[tuple[str, dict]] = []
        async with _client(app) as client:

            async def one(label: str) -> None:
                response = await _post(client, films[label])
                assert response.status_code == 200, response.text
                answers.append((label, response.json()))

            async with anyio.create_task_group() as group:
                for _ in range(rounds):
                    for label in films:
                        group.start_soon(one, label)
            metrics = (await client.get("/metrics")).text
        return answers, metrics

    answers, metrics = anyio.run(scenario)
    assert len(answers) == 2 * rounds
    for label, body in answers:
        assert body["status"] == "ok" and body["label"] == label
        assert body["probabilities"] == pytest.approx(expected[label].probabilities, abs=1e-5)
    batches, batched = _batch_sizes(metrics)
    assert batched == 2 * rounds and batches < batched  # films really shared model runs


class FailsFirstBatch:
    """A real model whose first batch run raises (a bug on the server's side); later ones work."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("bug with secret content")
        return self.model.predict(*args, **kwargs)


def test_a_failed_batch_fails_only_its_requests_with_a_clear_error(models):
    flaky = FailsFirstBatch(models["binary"])
    app = create_app(
        ServeSettings(max_in_flight_per_client=32),
        models={"binary": flaky, "three-class": models["three-class"]},
    )
    state = app.state.server
    film = NORMAL_FILM.read_bytes()

    async def scenario():
        async with _client(app) as client:
            gate = _hold(state.workers)  # everything below queues up behind it
            answers: dict[str, list] = {"binary": [], "three-class": []}

            async def one(model: str) -> None:
                answers[model].append(await _post(client, film, model))

            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(one, "binary")
                    group.start_soon(one, "three-class")
                with anyio.fail_after(20):
                    while state.workers.queued < 8:
                        await anyio.sleep(0.01)
                gate.set()
            after = await _post(client, film, "binary")
        return answers, after

    answers, after = anyio.run(scenario)
    for response in answers["binary"]:  # one batch of the four binary films: all four fail
        assert response.status_code == 500
        body = response.json()
        assert body["error"] == "internal_error" and "secret" not in response.text
        assert "the model failed on a batch of 4 concurrent request(s)" in body["message"]
        assert response.headers["X-Request-ID"] in body["message"]
    for response in answers["three-class"]:  # the other model's batch is untouched
        assert response.status_code == 200 and response.json()["status"] == "ok"
    assert after.status_code == 200 and after.json()["label"] == "normal"  # and it recovers
