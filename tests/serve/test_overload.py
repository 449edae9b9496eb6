"""Issue 18 item 4: the server keeps its limits under overload. A prediction that outlives its
request's time limit keeps its model thread (and, run alone, its memory budget) until the thread
really ends, so no more than `parallel` model runs are ever under way; the copy of an upload counts in the budget; one
client cannot hold every admission slot; a real server process's memory stays flat while waves of
clients time out (slow)."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image
from serve_fixtures import NORMAL_FILM, film_as, load_shipped_models, post_to_a_broken_model

from pneumoscan.serve.app import ServeSettings, create_app


@pytest.fixture(scope="module")
def models():
    return load_shipped_models()


class GatedModel:
    """A real model whose predictions wait until the test opens the gate, counting how many run
    at once (no timing involved in what is asserted)."""

    def __init__(self, model) -> None:
        self.model = model
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = self.peak = self.entered = 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.entered += 1
            self.peak = max(self.peak, self.running)
        try:
            self.gate.wait(timeout=60)
            return self.model.predict(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def _post(client: httpx.AsyncClient, **form):
    files = {"file": ("film.jpeg", NORMAL_FILM.read_bytes(), "image/jpeg")}
    return client.post("/v1/predict", files=files, data=form)


def _client(app, host: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60)


@pytest.mark.parametrize("heatmap", ["true", "false"], ids=["run-alone", "batched"])
def test_timed_out_work_keeps_its_slot_and_budget_until_it_ends(models, heatmap):
    """A heatmap runs alone, decoding with the model, so its upload's bytes stay counted while
    the model runs; a batched film is decoded first, and its bytes are freed when that ends."""
    slow = GatedModel(models["binary"])
    app = create_app(
        ServeSettings(parallel=1, request_timeout_s=0.5, max_in_flight_per_client=32),
        models={"binary": slow},
    )
    state = app.state.server

    async def scenario():
        async with _client(app) as client:
            first = await _post(client, heatmap=heatmap)  # times out while its prediction runs
            assert first.status_code == 503 and first.json()["error"] == "timeout"
            assert slow.running == 1
            assert state.workers.busy == 1  # the model thread is still held by the work
            if heatmap == "true":
                assert state.budget.used_bytes > 0  # and so are its upload's bytes
            statuses = []

            async def one():
                statuses.append((await _post(client, heatmap=heatmap)).status_code)

            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(one)
            assert statuses == [503] * 4
            assert slow.peak == 1 and slow.entered == 1  # none of them started a second one
            slow.gate.set()
            with anyio.fail_after(30):
                while state.workers.busy or state.budget.used_bytes:
                    await anyio.sleep(0.02)
            assert (await _post(client)).status_code == 200  # all freed once the work ended
            assert slow.peak == 1

    anyio.run(scenario)


def test_the_copy_of_an_upload_counts_in_the_memory_budget(models):
    size = NORMAL_FILM.stat().st_size
    app = create_app(
        ServeSettings(memory_budget_bytes=int(size * 1.5)), models={"binary": models["binary"]}
    )

    async def scenario():
        async with _client(app) as client:
            response = await _post(client)
            assert response.status_code == 503 and response.json()["error"] == "busy"
        assert app.state.server.budget.used_bytes == 0

    anyio.run(scenario)


def test_one_client_cannot_hold_every_slot(models):
    slow = GatedModel(models["binary"])
    app = create_app(
        ServeSettings(parallel=2, max_in_flight_per_client=1, request_timeout_s=20),
        models={"binary": slow},
    )

    async def scenario():
        async with _client(app, "10.0.0.1") as greedy, _client(app, "10.0.0.2") as other:
            async with anyio.create_task_group() as group:
                group.start_soon(_post, greedy)
                with anyio.fail_after(10):
                    while slow.entered < 1:
                        await anyio.sleep(0.01)
                refused = await _post(greedy)
                assert refused.status_code == 429
                assert refused.json()["error"] == "too_many_requests"
                assert "Retry-After" in refused.headers
                group.start_soon(_post, other)  # another client is still admitted
                with anyio.fail_after(10):
                    while slow.entered < 2:
                        await anyio.sleep(0.01)
                slow.gate.set()
        assert app.state.server.per_client == {}

    anyio.run(scenario)


def test_a_trickling_upload_is_cut_off_at_the_minimum_rate():
    """A client that sends a few bytes and then stalls is refused once its average rate falls
    under the minimum, long before the request's time limit, and its bytes are released."""
    import time

    from pneumoscan.serve.uploads import MemoryBudget, UploadRefused, read_form

    budget = MemoryBudget(10_000_000)

    async def trickle():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        await anyio.sleep(60)  # stalls: the request time limit below is 60 s away
        yield b"never"

    async def scenario():
        with anyio.fail_after(20):
            return await read_form(
                trickle(),
                "multipart/form-data; boundary=b",
                max_file_bytes=1_000_000,
                max_files=1,
                max_body_bytes=2_000_000,
                deadline=time.monotonic() + 60,
                budget=budget,
                min_bytes_per_s=1_000,
                grace_s=0.2,
            )

    with pytest.raises(UploadRefused) as refused:
        anyio.run(scenario)
    assert (refused.value.status, refused.value.code) == (408, "upload_too_slow")
    assert budget.used_bytes == 0


def test_a_handled_error_is_answered_and_logged_without_a_traceback(models, caplog):
    """Issue 18 item 4: a Starlette handler for Exception answers 500 but re-raises, so uvicorn
    printed a full traceback. Here the exception must not escape the app at all (TestClient
    re-raises whatever escapes), and the log holds one line without exception info."""
    import logging

    caplog.set_level(logging.INFO)
    response = post_to_a_broken_model(models)
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error" and "secret" not in response.text
    assert response.headers["Cache-Control"] == "no-store"  # still inside the security headers
    assert not any(record.exc_info for record in caplog.records)
    assert "secret" not in caplog.text and "Traceback" not in caplog.text


SLOW_SERVER = Path(__file__).with_name("slow_server.py")
CLIENTS = 64
# The first WARM_UP waves start the decoding and model threads and warm the allocator up (two
# thread pools since micro-batching: the RSS rose for three waves, then held level within a few
# MB, e.g. 193, 212, 232, 232, 234 MB); the RSS after them is the baseline for the rest.
WAVES = 7
WARM_UP = 3
# Leaking each request's upload (about 0.4 MB, and its copy) would add over 25 MB a wave, about
# 100 MB over the four measured waves; the bound leaves room for allocator noise only. That noise
# reached 39 MB once with no leak (222, 242, 226, 226, 253, 254, 265 MB, while the suite's other
# slow files had just run; five reruns stayed under 32), so the bound is 50 MB, half a leak.
RSS_GROWTH_LIMIT_MB = 50
# Timed out waiting for the model (503), or, on busy cores, while the upload still arrived (408).
TIMED_OUT = {(503, "timeout"), (408, "request_timeout")}


async def _wave(url: str, film: bytes) -> list[tuple[int, str | None]]:
    """CLIENTS uploads at once; each answer's status and error code."""
    answers: list[tuple[int, str | None]] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one() -> None:
            files = {"file": ("film.jpeg", film, "image/jpeg")}
            response = await client.post("/v1/predict", files=files)
            answers.append((response.status_code, response.json().get("error")))

        async with anyio.create_task_group() as group:
            for _ in range(CLIENTS):
                group.start_soon(one)
    return answers


@pytest.mark.slow
def test_memory_stays_flat_while_waves_of_clients_time_out():
    """Issue 18 item 4: a real server process whose model holds its one slot for 5 s takes waves
    of 64 clients uploading a full-size film (2,000 px shorter side); every request times out
    (503, or 408 while its upload still arrives) and its upload, its copy and its budget must be freed: the server's resident memory
    after the later waves stays within a few tens of MB of what it was after the first. The
    memory budget holds two waves' uploads, so budget that is never given back shows as 503
    `busy` by the third wave."""
    import sys

    from pneumoscan.devtools.loadtest import ServerProcess

    with Image.open(NORMAL_FILM) as image:
        scale = 2000 / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
    film = film_as(NORMAL_FILM, "JPEG", size, quality=95)
    budget_mb = 2 * CLIENTS * 2 * len(film) // 2**20 + 1  # upload and copy, two waves
    arguments = ["--delay", "5", "--timeout", "2", "--clients", str(CLIENTS)]
    rss = []
    with ServerProcess(
        [*arguments, "--budget-mb", str(budget_mb)], command=[sys.executable, str(SLOW_SERVER)]
    ) as server:
        for _ in range(WAVES):
            answers = anyio.run(_wave, server.url, film)
            assert set(answers) <= TIMED_OUT, answers
            rss.append(server.rss_bytes() / 2**20)
    growth = max(rss[WARM_UP:]) - rss[WARM_UP - 1]
    assert growth < RSS_GROWTH_LIMIT_MB, f"RSS after each wave (MB): {[round(v) for v in rss]}"
