"""The HTTP server: `create_app(settings)` builds a FastAPI app whose lifespan loads the models once.

Routes stay thin: each reads the upload into memory (uploads.py), refuses what it must with a
specific status and message, and hands the bytes to `pneumoscan.api` (the same path as
`pneumoscan predict` and `import pneumoscan`) on worker threads (batching.py): a single film is
decoded on a decoder thread, then runs through the model in one batch with the films of other
requests that arrived with it; heatmaps and batch requests run alone. Nothing is written to disk
and nothing about an upload (its name, a DICOM patient field) is logged or returned.

Run it with `pneumoscan serve`; for tests, `TestClient(create_app(ServeSettings(...)))`.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from pneumoscan import __version__
from pneumoscan.api import Result, summarize
from pneumoscan.core.errors import ImageTooLargeError, InputError, UnsupportedFormatError
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.serve import schemas
from pneumoscan.serve.batching import BatchFailed, Workers
from pneumoscan.serve.metrics import RequestMetrics, ServeMetrics
from pneumoscan.serve.settings import ServeSettings
from pneumoscan.serve.uploads import (
    MemoryBudget,
    UploadedFile,
    UploadRefused,
    check_declared_type,
    read_form,
    sniff_format,
)

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_MULTIPART_OVERHEAD = 64 * 1024  # part headers and small form fields around the file itself

# The page loads only its own files; /docs needs inline styles for Swagger UI (never inline scripts).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


@dataclass
class ServerState:
    """Per-app state (no module globals): models, limits in force, worker threads and request
    counters."""

    settings: ServeSettings
    models: dict[str, Any]
    workers: Workers  # every model run: batches of single films, heatmaps, batch requests
    decoders: Workers  # decoding single films before they join a batch
    budget: MemoryBudget
    index_html: str
    in_flight: int = 0
    ready: bool = False
    per_client: dict[str, int] = field(default_factory=dict)  # admitted requests per address


def create_app(
    settings: ServeSettings | None = None, models: dict[str, Any] | None = None
) -> FastAPI:
    """The app. Models load once, in the lifespan, with the settings' gate, threads and pixel
    limit; models passed in (name -> `pneumoscan.api.Model`, as tests do) are used as they are."""
    settings = settings or ServeSettings.from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: ServerState = app.state.server
        if not state.models:
            state.models = await anyio.to_thread.run_sync(_load_models, settings)
        state.ready = True
        logger.info("serving %s; %s", ", ".join(state.models), NOT_DIAGNOSTIC_NOTICE)
        yield
        state.ready = False

    app = FastAPI(
        title="pneumoscan",
        version=__version__,
        summary="Pneumonia detection in pediatric chest X-rays.",
        description=f"{NOT_DIAGNOSTIC_NOTICE}\n\nUpload JPEG, PNG or DICOM radiographs as "
        "multipart/form-data. Errors are JSON with a code and a message.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = ServerState(
        settings=settings,
        models=dict(models or {}),
        ready=bool(models),  # models passed in are ready before any lifespan runs
        workers=Workers(
            settings.parallel,
            max_batch=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            name="pneumoscan-model",
        ),
        decoders=Workers(settings.decoder_threads(), name="pneumoscan-decode"),
        budget=MemoryBudget(settings.memory_budget_bytes),
        index_html=(STATIC_DIR / "index.html")
        .read_text(encoding="utf-8")
        .replace("{{notice}}", html.escape(NOT_DIAGNOSTIC_NOTICE)),
    )
    state = app.state.server
    app.state.metrics = ServeMetrics(in_flight=lambda: state.in_flight)
    state.workers.on_batch = app.state.metrics.record_batch
    _add_error_handlers(app)
    _add_routes(app, settings)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _mount_docs_assets(app)
    app.add_middleware(HandledErrors)  # innermost: its 500 gets the headers of any other answer
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)  # outermost: every answer
    return app


def _load_models(settings: ServeSettings) -> dict[str, Any]:
    from pneumoscan.api import load_model

    loaded = {}
    for reference in settings.models:
        model = load_model(
            reference,
            gate=settings.gate,
            threads=settings.onnx_threads(),
            max_pixels=settings.max_pixels,
        )
        loaded[model.name if model.name not in loaded else reference] = model
    return loaded


# --- routes ----------------------------------------------------------------------------------


def _add_routes(app: FastAPI, settings: ServeSettings) -> None:
    """The routes, on APIRouters: pages and health probes, /v1/models, then the predict API."""
    errors = {
        status: {"model": schemas.ErrorResponse, "description": description}
        for status, description in {
            400: "unreadable upload, not an image, malformed multipart or bad form field",
            401: "API key missing or wrong (only when PNEUMOSCAN_API_KEY is set)",
            408: "the upload took longer than the request time limit to arrive",
            413: "file, request or pixel count over the limit",
            415: "not multipart/form-data, or a file type pneumoscan does not read",
            503: "too many requests at once or prediction over the time limit; see Retry-After",
        }.items()
    }
    # The enum in the documented body is the configured model list; the lifespan may load them
    # under the names in their metadata, which are the same for the shipped models.
    model_names = [Path(reference).stem for reference in settings.models]
    app.include_router(_health_router())  # public: the page, the docs, probes and metrics
    # Every other route needs the API key (when one is set) through its router, so a route added
    # to these routers is protected without a line of its own (tests/serve/test_auth_routes.py
    # checks every route of the app).
    protected = [Depends(_require_api_key)]
    app.include_router(_models_router(settings, errors), dependencies=protected)
    app.include_router(_predict_router(settings, errors, model_names), dependencies=protected)


def _health_router() -> APIRouter:
    """The page, the docs page and the liveness/readiness probes."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(_server(request).index_html)

    @router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "docs.html").read_text(encoding="utf-8"))

    @router.get("/metrics", tags=["health"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: predictions by model, status and label, gate refusals by reason,
        request latency by route, refusals by code, requests in flight, batch sizes and batch
        waits by model. No patient data."""
        body, content_type = request.app.state.metrics.exposition()
        return Response(body, media_type=content_type)

    @router.get("/healthz", response_model=schemas.Health, tags=["health"])
    async def healthz() -> schemas.Health:
        """Liveness: the process answers."""
        return schemas.Health()

    @router.get(
        "/readyz",
        response_model=schemas.Readiness,
        tags=["health"],
        responses={503: {"model": schemas.Readiness, "description": "not ready"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: models loaded and room for another request."""
        state = _server(request)
        ready = state.ready and state.in_flight < state.settings.max_in_flight
        body = schemas.Readiness(
            ready=ready,
            models=list(state.models),
            in_flight=state.in_flight,
            max_in_flight=state.settings.max_in_flight,
        )
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    return router


def _models_router(settings: ServeSettings, errors: dict) -> APIRouter:
    """/v1/models."""
    router = APIRouter()

    @router.get(
        "/v1/models",
        response_model=schemas.ModelsResponse,
        tags=["models"],
        responses={401: errors[401]},
    )
    async def list_models(request: Request) -> schemas.ModelsResponse:
        """The loaded models: names, versions, classes, thresholds and model cards."""
        state = _server(request)
        limits = {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_batch_files": settings.max_batch_files,
            "max_batch_bytes": settings.max_batch_bytes,
            "max_pixels": settings.max_pixels,
            "request_timeout_s": settings.request_timeout_s,
        }
        return schemas.ModelsResponse(
            default=next(iter(state.models)),
            models=[_model_info(name, model) for name, model in state.models.items()],
            limits=limits,
        )

    return router


def _predict_router(settings: ServeSettings, errors: dict, model_names: list[str]) -> APIRouter:
    """/v1/predict and /v1/predict/batch; every route here is admitted first (`_admission`)."""
    router = APIRouter(dependencies=[Depends(_admission, scope="function")])

    @router.post(
        "/v1/predict",
        response_model=schemas.Prediction,
        tags=["predict"],
        responses=errors,
        openapi_extra={"requestBody": schemas.predict_request_body(model_names)},
    )
    async def predict(request: Request) -> JSONResponse:
        """Predict on one radiograph (multipart field `file`). Optional form fields: `model`
        (default: the first loaded), `heatmap` (true adds the overlay PNG as base64), `sets`
        (a coverage level such as 0.9 adds the conformal prediction set)."""
        state = _server(request)
        form = await _read(request, state, settings.max_upload_bytes + _MULTIPART_OVERHEAD)
        model_name, heatmap, sets = _options(form.fields, state)
        uploads = form.files
        if not uploads:
            raise UploadRefused(
                400, "no_file", "no file in the request; send the image in a 'file' field."
            )
        if len(uploads) > 1:
            raise UploadRefused(
                400,
                "too_many_files",
                f"{len(uploads)} files sent to /v1/predict; use /v1/predict/batch for several.",
            )
        if not heatmap:
            result = await _predict_batched(request, state, model_name, uploads[0], sets)
        else:  # run alone: the overlay is drawn and compressed with the prediction
            data = _checked_bytes(uploads[0], request, state)
            model = state.models[model_name]
            result = await _run(
                request,
                state.workers.submit_job,
                lambda: _predict_one(model, data, heatmap, settings.indeterminate_margin, sets),
            )
        if result.status == "error":
            raise UploadRefused(400, "unreadable", result.message or "unreadable image.")
        request.app.state.metrics.record(model_name, [result])
        body = _prediction(result, model_name)
        logger.info("predict %s: %s", model_name, result.status)
        return JSONResponse(body.model_dump())

    @router.post(
        "/v1/predict/batch",
        response_model=schemas.BatchResponse,
        tags=["predict"],
        responses=errors,
        openapi_extra={
            "requestBody": schemas.batch_request_body(model_names, settings.max_batch_files)
        },
    )
    async def predict_batch(request: Request) -> JSONResponse:
        """Predict on several radiographs (repeated multipart field `files`). One bad file gets
        status `error` with a message and code; the others are predicted as usual."""
        state = _server(request)
        form = await _read(request, state, settings.max_batch_bytes)
        model_name, heatmap, sets = _options(form.fields, state)
        if not form.files:
            raise UploadRefused(
                400, "no_file", "no files in the request; send each image in a 'files' field."
            )
        model = state.models[model_name]
        refused: dict[int, UploadRefused] = {}
        accepted: dict[int, bytes] = {}
        for index, upload in enumerate(form.files):
            try:
                accepted[index] = _checked_bytes(upload, request, state)
            except UploadRefused as refusal:
                refused[index] = refusal
        predicted = await _run(
            request,
            state.workers.submit_job,
            lambda: _predict_many(
                model,
                list(accepted.values()),
                [f"upload {index}" for index in accepted],
                heatmap,
                settings.indeterminate_margin,
                sets,
            ),
        )
        results, items = _batch_items(
            len(form.files), accepted, predicted, refused, model, model_name
        )
        request.app.state.metrics.record(model_name, results.values())
        counts = asdict(summarize(results.values()))
        logger.info("batch %s: %s", model_name, counts)
        return JSONResponse(schemas.BatchResponse(results=items, counts=counts).model_dump())

    return router


def _batch_items(
    count: int, accepted: dict, predicted: list, refused: dict, model, model_name: str
):
    """Every upload's result in upload order: predicted ones, and refused ones as errors with
    their refusal code."""
    results = dict(zip(accepted, predicted))
    for index, refusal in refused.items():
        results[index] = Result(
            source=f"upload {index}",
            status="error",
            message=f"upload {index}: {refusal.message}",
            model_name=model.name,
            model_version=model.version,
        )
    items = []
    for index in range(count):
        item = _prediction(results[index], model_name).model_dump()
        code = refused[index].code if index in refused else None
        if item["status"] == "error" and code is None:
            code = "rejected_input"
        items.append(schemas.BatchItem(**item, index=index, error_code=code))
    return results, items


def _server(request: Request) -> ServerState:
    return request.app.state.server


async def _require_api_key(request: Request) -> None:
    """Router dependency: the API key, checked before anything else (admission included)."""
    _check_api_key(request, _server(request).settings)


async def _admission(request: Request) -> AsyncIterator[None]:
    """Router dependency of the predict routes: admitted around the route's function, released
    once it has returned (scope "function"), before the answer is sent."""
    async with _admitted(request):
        yield


@asynccontextmanager
async def _admitted(request: Request) -> AsyncIterator[ServerState]:
    """Admission: past `max_in_flight` requests a new one gets 503 at once, before its body is
    read, so a burst costs neither memory nor CPU."""
    state = _server(request)
    if not state.ready:
        raise UploadRefused(503, "not_ready", "models are still loading.", {"Retry-After": "1"})
    if state.in_flight >= state.settings.max_in_flight:
        raise UploadRefused(
            503,
            "busy",
            f"{state.in_flight} requests are already being handled; retry shortly.",
            {"Retry-After": "1"},
        )
    client = request.client.host if request.client else "unknown"
    if state.per_client.get(client, 0) >= state.settings.max_in_flight_per_client:
        raise UploadRefused(
            429,
            "too_many_requests",
            f"{state.per_client[client]} requests from this client are already being handled; "
            "wait for one to finish.",
            {"Retry-After": "1"},
        )
    state.in_flight += 1
    state.per_client[client] = state.per_client.get(client, 0) + 1
    request.state.reserved = 0
    request.state.deadline = time.monotonic() + state.settings.request_timeout_s
    try:
        yield state
    finally:
        state.in_flight -= 1
        state.per_client[client] -= 1
        if not state.per_client[client]:
            del state.per_client[client]
        state.budget.release(request.state.reserved)


async def _read(request: Request, state: ServerState, max_body_bytes: int):
    settings = state.settings
    declared_length = request.headers.get("content-length", "")
    if declared_length.isdigit() and int(declared_length) > max_body_bytes:
        raise UploadRefused(
            413,
            "request_too_large",
            f"request body of {int(declared_length):,} bytes is over the {max_body_bytes:,} "
            "byte limit.",
        )
    try:
        with anyio.fail_after(max(0.0, request.state.deadline - time.monotonic())):
            form, reserved = await read_form(
                request.stream(),
                request.headers.get("content-type"),
                max_file_bytes=settings.max_upload_bytes,
                max_files=settings.max_batch_files,
                max_body_bytes=max_body_bytes,
                deadline=request.state.deadline,
                budget=state.budget,
                min_bytes_per_s=settings.min_upload_bytes_per_s,
            )
    except TimeoutError:
        raise UploadRefused(
            408, "request_timeout", "the upload took too long to arrive; try again."
        ) from None
    request.state.reserved = reserved
    return form


def _options(form_fields: dict[str, str], state: ServerState) -> tuple[str, bool, float | None]:
    model_name = form_fields.get("model", next(iter(state.models)))  # empty: refused below
    if model_name not in state.models:
        raise UploadRefused(
            400,
            "unknown_model",
            f"model {model_name[:60]!r} is not loaded; choose one of {', '.join(state.models)}.",
        )
    text = form_fields.get("heatmap", "false").lower()
    if text not in ("true", "false"):
        raise UploadRefused(400, "bad_field", "heatmap must be true or false.")
    sets = None
    if form_fields.get("sets", "") != "":
        try:
            sets = float(form_fields["sets"])
        except ValueError:
            sets = -1.0
        if not 0.0 < sets < 1.0:
            raise UploadRefused(
                400, "bad_field", "sets must be a coverage level in (0, 1), e.g. 0.9."
            )
        if state.models[model_name].runtime.conformal is None:
            raise UploadRefused(
                400,
                "no_conformal",
                f"model {model_name} carries no conformal calibration; leave out sets.",
            )
    return model_name, text == "true", sets


def _checked_bytes(upload: UploadedFile, request: Request, state: ServerState) -> bytes:
    """The upload's bytes once its declared type and real format pass (the pixel count is
    checked by the decoder, from the header, before it decodes anything). The copy counts in
    the memory budget, as the upload itself does, until the prediction ends."""
    check_declared_type(upload)
    sniff_format(upload.data)
    state.budget.reserve(len(upload.data))
    request.state.reserved += len(upload.data)
    return bytes(upload.data)


async def _run(request: Request, submit: Callable[..., Future], *args) -> Any:
    """Work on a worker thread (`submit` is a `Workers` method, `args` its arguments) within the
    request's time limit; waiting for a free thread or for a batch counts too.

    The bytes the request reserved go with the work and are released when it ends, or when it is
    dropped before it began. A request that times out is answered at once, but its work keeps
    them until its thread really ends: a thread cannot be stopped, and freeing them on timeout let
    memory that no budget counted pile up behind a slow model. The pools' thread counts bound the
    work under way, however many requests gave up on theirs.
    """
    state = _server(request)
    future = submit(*args)
    reserved, request.state.reserved = request.state.reserved, 0
    if reserved:
        loop = asyncio.get_running_loop()

        def release(_: Future) -> None:
            try:
                loop.call_soon_threadsafe(state.budget.release, reserved)
            except RuntimeError:  # the event loop is gone (shutdown): nothing left to free
                pass

        future.add_done_callback(release)
    try:
        with anyio.fail_after(max(0.0, request.state.deadline - time.monotonic())):
            return await asyncio.wrap_future(future)
    except TimeoutError:
        future.cancel()  # dropped if no thread has taken it yet
        raise _timed_out(state) from None


async def _predict_batched(
    request: Request, state: ServerState, model_name: str, upload: UploadedFile, sets: float | None
):
    """One film without a heatmap: decoded on a decoder thread, then run through the model once
    with the films of other requests for the same model and options that arrived with it
    (batching.py). The request keeps no copy of the upload meanwhile: the decoder holds the only
    one, and the upload's budget is released when the decoding ends."""
    model = state.models[model_name]
    decode = partial(_prepare_upload, model, _checked_bytes(upload, request, state))
    upload.data.clear()
    prepared = await _run(request, state.decoders.submit_job, decode)
    del decode
    margin = state.settings.indeterminate_margin
    return await _run(
        request,
        state.workers.submit_item,
        (model_name, sets),
        prepared,
        lambda items: model.predict(items, indeterminate_margin=margin, sets=sets),
    )


def _prepare_upload(model, data: bytes):
    return _refusing_bad_input(lambda: model.prepare(data, source="upload"))


def _timed_out(state: ServerState) -> UploadRefused:
    return UploadRefused(
        503,
        "timeout",
        f"prediction did not finish within {state.settings.request_timeout_s:g} s; the server "
        "is busy, retry shortly.",
        {"Retry-After": "2"},
    )


def _predict_one(model, data: bytes, heatmap: bool, margin: float, sets: float | None = None):
    return _refusing_bad_input(
        lambda: model.predict(
            data, heatmap=heatmap, indeterminate_margin=margin, source="upload", sets=sets
        )
    )


def _refusing_bad_input(work: Callable[[], Any]) -> Any:
    """`work()`, with an unreadable upload's InputError turned into the HTTP refusal it calls for."""
    try:
        return work()
    except ImageTooLargeError as error:
        raise UploadRefused(413, "too_many_pixels", str(error)) from None
    except UnsupportedFormatError as error:
        # The bytes already began like a JPEG, PNG or DICOM file (sniff_format), so a decoder that
        # cannot identify them means a damaged file (400), not an unsupported type (415).
        raise UploadRefused(400, "unreadable", str(error)) from None
    except InputError as error:
        raise UploadRefused(400, "unreadable", str(error)) from None


def _predict_many(
    model,
    items: list[bytes],
    sources: list[str],
    heatmap: bool,
    margin: float,
    sets: float | None = None,
) -> list:
    if not items:
        return []
    return model.predict(
        items, heatmap=heatmap, indeterminate_margin=margin, source=sources, sets=sets
    )


def _prediction(result, model_name: str) -> schemas.Prediction:
    record = result.to_dict(heatmap="base64")
    return schemas.Prediction(
        status=record["status"],
        label=record.get("label"),
        probabilities=record.get("probabilities") or {},
        threshold=record.get("threshold"),
        gate_score=record.get("gate_score"),
        gate_reason=record.get("gate_reason"),
        message=record.get("message"),
        heatmap_png_base64=record.get("heatmap"),
        prediction_set=record.get("prediction_set"),
        set_coverage=record.get("set_coverage"),
        model=model_name,
        model_version=record.get("model_version"),
    )


def _model_info(name: str, model) -> schemas.ModelInfo:
    return schemas.ModelInfo(
        name=name,
        version=model.version,
        task=str(model.task),
        class_names=list(model.class_names),
        threshold=model.threshold,
        gate=model.gate,
        card=model.card,
    )


def _check_api_key(request: Request, settings: ServeSettings) -> None:
    """With $PNEUMOSCAN_API_KEY set, /v1 routes need it as X-API-Key or `Authorization: Bearer`."""
    if not settings.api_key:
        return
    import hmac

    given = request.headers.get("x-api-key", "")
    authorization = request.headers.get("authorization", "")
    if not given and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
        raise UploadRefused(
            401,
            "unauthorized",
            "this server needs an API key: send it as 'X-API-Key: KEY' or "
            "'Authorization: Bearer KEY'.",
            {"WWW-Authenticate": "Bearer"},
        )


# --- errors, headers, docs --------------------------------------------------------------------


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    body = schemas.ErrorResponse(error=code, message=message, status=status)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadRefused)
    async def refused(request: Request, error: UploadRefused) -> JSONResponse:
        request.app.state.metrics.refusals.labels(str(error.status), error.code).inc()
        logger.info(
            "%s %s refused: %d %s", request.method, request.url.path, error.status, error.code
        )
        return _error(error.status, error.code, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error(error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        return _error(422, "invalid_request", problems[:500])


class HandledErrors:
    """Pure ASGI middleware: an unexpected exception becomes a 500 JSON answer and one log line.
    (A Starlette handler for `Exception` answers too, but then re-raises it, so uvicorn printed a
    full traceback for an error that had been handled.)"""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as error:
            # A bug, never an input's fault. The log gets the type and where it happened (file,
            # line, function of each frame) under a request id the answer carries too; never the
            # exception's message, source lines or values, which may hold an upload's bytes or a
            # DICOM header's patient fields.
            request_id = uuid.uuid4().hex[:16]
            logger.error(
                "request %s: %s %s failed: %s\n%s",
                request_id,
                scope.get("method"),
                scope.get("path"),
                type(error).__name__,
                _frames(error),
            )
            if started:  # too late for an answer: the client sees the connection end
                return
            what = str(error) if isinstance(error, BatchFailed) else "internal error"
            response = _error(
                500,
                "internal_error",
                f"{what}; the server log has the details under request id {request_id}.",
                headers={"X-Request-ID": request_id},
            )
            await response(scope, receive, send)


def _frames(error: BaseException) -> str:
    """The traceback of `error` and of the exceptions it came from, first cause first, as
    `file:line in function` lines: no messages, source lines or values."""
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    lines = []
    for link in reversed(chain):
        lines.append(f"{type(link).__name__}, raised at:")
        frames = traceback.StackSummary.extract(
            traceback.walk_tb(link.__traceback__), lookup_lines=False
        )
        lines += [f"  {frame.filename}:{frame.lineno} in {frame.name}" for frame in frames]
    return "\n".join(lines)


class SecurityHeaders:
    """Pure ASGI middleware adding security headers to every response (CSP without inline
    scripts, no framing, no sniffing, no referrer) and no-store on the API's answers."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = (
                    DOCS_CSP if path.startswith("/docs") else PAGE_CSP
                )
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                if path.startswith("/v1/"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _mount_docs_assets(app: FastAPI) -> None:
    """Swagger UI's files from the fastapi-offline package, so /docs works offline (no CDN)."""
    try:
        import fastapi_offline
    except ImportError:  # the [serve] extra installs it; without it /docs says so
        return
    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")
