"""`serve`: the web page and REST API on uvicorn (the [serve] extra)."""

from __future__ import annotations

from typing import Annotated

import typer

from pneumoscan.cli.common import (
    LOOPBACK_HOSTS,
    GateSwitch,
    IndeterminateMargin,
    fail,
    friendly,
    logger,
    missing_extra,
    setup_logging,
)


@friendly
def serve(
    host: Annotated[
        str, typer.Option(help="address to bind; 0.0.0.0 exposes the server to the network")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="models to load (repeat; the first is the default): binary and three-class by default",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="server processes; each loads the models once")] = 1,
    parallel: Annotated[int, typer.Option(help="predictions running at once in each process")] = 1,
    threads: Annotated[
        int | None,
        typer.Option(help="ONNX Runtime threads per prediction (default: cores / parallel)"),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest file accepted, in MB")] = 20.0,
    max_pixels: Annotated[int, typer.Option(help="largest image accepted, in pixels")] = 30_000_000,
    max_in_flight: Annotated[
        int, typer.Option(help="requests handled at once; more get 503 with Retry-After")
    ] = 32,
    max_per_client: Annotated[
        int, typer.Option(help="requests handled at once for one client address; more get 429")
    ] = 4,
    min_upload_kb_per_s: Annotated[
        float,
        typer.Option(help="slowest average upload rate accepted after 2 s, in KB/s; slower: 408"),
    ] = 32.0,
    timeout: Annotated[float, typer.Option(help="request time limit in seconds")] = 30.0,
    indeterminate: IndeterminateMargin = 0.0,
    gate: GateSwitch = True,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin", help="allow browser calls from this origin (repeat); off by default"
        ),
    ] = None,
) -> None:
    """Serve the web page, the REST API (/v1/predict) and its docs (/docs) on uvicorn, with the
    serve extra (pip install "pneumoscan\\[serve]"). Set PNEUMOSCAN_API_KEY to require an API key."""
    setup_logging()
    try:
        import uvicorn

        from pneumoscan.serve.app import SETTINGS_ENV, ServeSettings, create_app
    except ImportError as error:
        missing_extra("serve", "serve", error)
    if workers < 1:
        fail(f"--workers {workers}: give 1 or more")
    try:
        settings = ServeSettings.from_environment(
            models=tuple(model or ("binary", "three-class")),
            gate=gate,
            threads=threads,
            parallel=parallel,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_pixels=max_pixels,
            max_in_flight=max_in_flight,
            max_in_flight_per_client=max_per_client,
            min_upload_bytes_per_s=int(min_upload_kb_per_s * 1024),
            request_timeout_s=timeout,
            indeterminate_margin=indeterminate,
            cors_origins=tuple(cors_origin or ()),
        )
    except ValueError as error:
        fail(str(error))
    if host not in LOOPBACK_HOSTS and not settings.api_key:
        logger.warning(
            "serving on %s without an API key: anyone who can reach this port can upload films; "
            "set PNEUMOSCAN_API_KEY",
            host,
        )
    logger.info("pneumoscan on http://%s:%d (docs at /docs)", host, port)
    common = {"host": host, "port": port, "log_config": None, "timeout_keep_alive": 5}
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
    else:  # each worker process builds its own app from the same settings
        import os

        os.environ[SETTINGS_ENV] = settings.to_environment()
        uvicorn.run("pneumoscan.serve.app:create_app", factory=True, workers=workers, **common)
