"""`serve`: the web page and REST API on uvicorn (the [serve] extra)."""

from __future__ import annotations

import os
from pathlib import Path
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
from pneumoscan.core.errors import PneumoscanError
from pneumoscan.serve.settings import MB, SETTINGS_ENV
from pneumoscan.serve.settings import ServeSettings as Defaults  # no web stack imported

_HostOption = Annotated[
    str, typer.Option(help="address to bind; 0.0.0.0 exposes the server to the network")
]

_ModelOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help="models to load (repeat; the first is the default): "
        f"{' and '.join(Defaults.models)} by default",
    ),
]

_ThreadsOption = Annotated[
    int | None,
    typer.Option(help="ONNX Runtime threads per prediction (default: cores / parallel)"),
]

# Dynamic batching: None keeps ServeSettings' default (which the help states).
_MaxBatchOption = Annotated[
    int | None,
    typer.Option(
        help="single-film requests run through the model together, at most "
        f"(default {Defaults.max_batch_size}; 1: no batching)"
    ),
]

_MaxBatchWaitOption = Annotated[
    float | None,
    typer.Option(
        help="milliseconds a batch's first film waits for others while the model is free "
        f"(default {Defaults.max_batch_wait_ms:g})"
    ),
]

_DecodeThreadsOption = Annotated[
    int | None, typer.Option(help="threads decoding uploads (default: the usable cores)")
]

_MaxUploadMbOption = Annotated[float, typer.Option(help="largest file accepted, in MB")]

_MaxPixelsOption = Annotated[int, typer.Option(help="largest image accepted, in pixels")]

_TimeoutOption = Annotated[float, typer.Option(help="request time limit in seconds")]

_MaxInFlightOption = Annotated[
    int, typer.Option(help="requests handled at once; more get 503 with Retry-After")
]

_MaxPerClientOption = Annotated[
    int, typer.Option(help="requests handled at once for one client address; more get 429")
]

_MinUploadKbPerSOption = Annotated[
    float,
    typer.Option(help="slowest average upload rate accepted after 2 s, in KB/s; slower: 408"),
]

_CorsOriginOption = Annotated[
    list[str] | None,
    typer.Option(
        "--cors-origin", help="allow browser calls from this origin (repeat); off by default"
    ),
]

_HeaderTimeoutOption = Annotated[
    float,
    typer.Option(
        help="seconds a connection has to send its request headers; slower ones are closed"
    ),
]

_MaxConnectionsOption = Annotated[
    int,
    typer.Option(help="open connections per process; beyond them requests get 503"),
]

_SslCertfileOption = Annotated[
    Path | None, typer.Option(help="serve HTTPS with this certificate (PEM)")
]

_SslKeyfileOption = Annotated[Path | None, typer.Option(help="the certificate's private key (PEM)")]

_ForwardedAllowIpsOption = Annotated[
    str | None,
    typer.Option(
        help="addresses of a reverse proxy whose X-Forwarded-For/-Proto to trust, comma-"
        "separated (default: loopback only)"
    ),
]

_InsecureOption = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="serve on a non-loopback address without PNEUMOSCAN_API_KEY (anyone who can "
        "reach the port can upload films)",
    ),
]


@friendly
def serve(
    host: _HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    model: _ModelOption = None,
    workers: Annotated[int, typer.Option(help="server processes; each loads the models once")] = 1,
    parallel: Annotated[
        int, typer.Option(help="model runs (batches, heatmaps) at once in each process")
    ] = 1,
    threads: _ThreadsOption = None,
    max_batch: _MaxBatchOption = None,
    max_batch_wait_ms: _MaxBatchWaitOption = None,
    decode_threads: _DecodeThreadsOption = None,
    max_upload_mb: _MaxUploadMbOption = Defaults.max_upload_bytes / MB,
    max_pixels: _MaxPixelsOption = Defaults.max_pixels,
    max_in_flight: _MaxInFlightOption = Defaults.max_in_flight,
    max_per_client: _MaxPerClientOption = Defaults.max_in_flight_per_client,
    min_upload_kb_per_s: _MinUploadKbPerSOption = Defaults.min_upload_bytes_per_s / 1024,
    timeout: _TimeoutOption = Defaults.request_timeout_s,
    indeterminate: IndeterminateMargin = Defaults.indeterminate_margin,
    gate: GateSwitch = True,
    cors_origin: _CorsOriginOption = None,
    header_timeout: _HeaderTimeoutOption = 30.0,
    max_connections: _MaxConnectionsOption = 200,
    ssl_certfile: _SslCertfileOption = None,
    ssl_keyfile: _SslKeyfileOption = None,
    forwarded_allow_ips: _ForwardedAllowIpsOption = None,
    insecure: _InsecureOption = False,
) -> None:
    """Serve the web page, the REST API (/v1/predict) and its docs (/docs) on uvicorn, with the
    serve extra (pip install "pneumoscan\\[serve]"). Set PNEUMOSCAN_API_KEY to require an API key."""
    setup_logging()
    try:
        import uvicorn

        from pneumoscan.serve.app import create_app
        from pneumoscan.serve.protocol import HEADER_TIMEOUT_ENV, HeaderDeadlineProtocol
    except ImportError as error:
        missing_extra("serve", "serve", error)
    if workers < 1:
        fail(f"--workers {workers}: give 1 or more")
    if header_timeout <= 0:
        fail(f"--header-timeout {header_timeout:g}: give a number of seconds above 0")
    if max_connections < 1:
        fail(f"--max-connections {max_connections}: give 1 or more")
    tls = _tls_options(ssl_certfile, ssl_keyfile)
    try:
        settings = Defaults.from_environment(
            models=tuple(model or Defaults.models),
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
            **_given(
                max_batch_size=max_batch,
                max_batch_wait_ms=max_batch_wait_ms,
                decode_threads=decode_threads,
            ),
        )
    except ValueError as error:
        fail(str(error))
    if host not in LOOPBACK_HOSTS and not settings.api_key:
        if not insecure:
            fail(
                f"--host {host} without an API key: anyone who can reach this port could upload "
                "films; set PNEUMOSCAN_API_KEY (or give --insecure to serve openly)"
            )
        logger.warning(
            "serving on %s without an API key (--insecure): anyone who can reach this port can "
            "upload films",
            host,
        )
    # The models load here, before uvicorn starts: a missing or broken model is one error line.
    models = _load_models(settings)
    os.environ[HEADER_TIMEOUT_ENV] = str(header_timeout)  # read by every worker's protocol
    scheme = "https" if tls else "http"
    logger.info("pneumoscan on %s://%s:%d (docs at /docs)", scheme, host, port)
    common = {
        "host": host,
        "port": port,
        "log_config": None,
        "timeout_keep_alive": 5,
        "http": HeaderDeadlineProtocol,
        "limit_concurrency": max_connections,
        "forwarded_allow_ips": forwarded_allow_ips,
        **tls,
    }
    if workers == 1:
        uvicorn.run(create_app(settings, models=models), **common)
    else:  # each worker process builds its own app from the same settings
        del models  # checked above; each worker loads its own
        os.environ[SETTINGS_ENV] = settings.to_environment()
        uvicorn.run("pneumoscan.serve.app:create_app", factory=True, workers=workers, **common)


def _given(**options) -> dict:
    """The options given on the command line; the others keep ServeSettings' defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _tls_options(certfile: Path | None, keyfile: Path | None) -> dict:
    """uvicorn's ssl_certfile/ssl_keyfile, checked: files that exist, a key only with a
    certificate."""
    if certfile is None:
        if keyfile is not None:
            fail("--ssl-keyfile needs --ssl-certfile (the certificate the key belongs to)")
        return {}
    for option, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not path.is_file():
            fail(f"{option} {path}: file not found")
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    except (ssl.SSLError, OSError) as error:
        fail(f"--ssl-certfile {certfile}: cannot use it as a PEM certificate and key ({error})")
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile) if keyfile else None}


def _load_models(settings) -> dict:
    """The served models, loaded once; a model that cannot be loaded fails in one line."""
    from pneumoscan.serve.app import _load_models as load_models

    try:
        return load_models(settings)
    except PneumoscanError as error:
        fail(str(error))
    except (OSError, ValueError, RuntimeError) as error:
        fail(f"cannot load the models {', '.join(settings.models)}: {error}")
