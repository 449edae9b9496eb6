"""`dicom-node`: the DICOM node an archive routes chest films to (the [dicom] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pneumoscan.cli.common import (
    LOOPBACK_HOSTS,
    GateSwitch,
    IndeterminateMargin,
    InsecureStow,
    OnnxThreads,
    RuntimeModel,
    StowToken,
    check_stow,
    friendly,
    logger,
    missing_extra,
    setup_logging,
)
from pneumoscan.dicom.settings import NodeSettings as Defaults  # stdlib and core only

_SendToOption = Annotated[
    list[str] | None,
    typer.Option("--send-to", help="send results by C-STORE to HOST:PORT:AET (repeat for several)"),
]

_StowOption = Annotated[
    str | None,
    typer.Option("--stow", help="send results by DICOMweb STOW-RS to this root URL"),
]

_SpoolOption = Annotated[
    Path,
    typer.Option(help="folder holding received films and unsent results (patient data)"),
]

_AllowAetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-aet",
        help="accept associations only from this calling AE title, or AET@HOST: that title "
        "only from that IP address (repeat)",
    ),
]

_MaxAttemptsOption = Annotated[
    int,
    typer.Option(
        help="unexpected delivery errors of one result before it goes to the spool's failed/"
    ),
]

_GroupReadableOption = Annotated[
    bool,
    typer.Option(
        "--group-readable",
        help="spool and --out files 0640 in 0750 folders (default 0600 and 0700: patient data)",
    ),
]

_TlsCaOption = Annotated[
    Path | None,
    typer.Option("--tls-ca", help="PEM CA bundle: require callers' certificates signed by it"),
]

_QueueWaitOption = Annotated[
    float,
    typer.Option(help="seconds a sender waits for room in a full queue before 0xA700"),
]

_MaxAssociationsOption = Annotated[
    int, typer.Option(help="associations open at once; past it, new ones are refused")
]

_WorkersOption = Annotated[
    int | None,
    typer.Option(help="prediction threads (default: 2 where two cores are usable, else 1)"),
]

_MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (films by stage, C-STORE "
        "answers, predictions by label, spool depth, delivery latency; no patient data)",
    ),
]


@friendly
def dicom_node(
    port: Annotated[int, typer.Option(help="DICOM port to listen on")] = Defaults.port,
    ae_title: Annotated[
        str, typer.Option("--ae-title", help="this node's AE title")
    ] = Defaults.ae_title,
    host: Annotated[
        str, typer.Option(help="address to bind; 0.0.0.0 lets other machines (the PACS) connect")
    ] = Defaults.host,
    send_to: _SendToOption = None,
    stow: _StowOption = None,
    token: StowToken = None,
    insecure_stow: InsecureStow = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="also write every result object to this folder")
    ] = None,
    spool: _SpoolOption = Path("~/.local/state/pneumoscan/dicom-node"),
    model: RuntimeModel = "binary",
    allow_aet: _AllowAetOption = None,
    max_associations: _MaxAssociationsOption = Defaults.max_associations,
    queue: Annotated[
        int, typer.Option(help="films waiting for prediction; past it, senders wait, then retry")
    ] = Defaults.queue_size,
    queue_wait: _QueueWaitOption = Defaults.queue_wait_s,
    workers: _WorkersOption = None,
    batch: Annotated[
        int, typer.Option(help="films that queued up predicted in one model run, at most")
    ] = Defaults.batch_size,
    threads: OnnxThreads = None,
    max_pixels: Annotated[
        int, typer.Option(help="largest film accepted, in pixels")
    ] = Defaults.max_pixels,
    max_mb: Annotated[
        float, typer.Option(help="largest C-STORE message accepted, in MB (larger ones abort)")
    ] = Defaults.max_message_mb,
    retry_max: Annotated[
        float, typer.Option(help="longest wait between delivery attempts, in seconds")
    ] = Defaults.retry_max_s,
    max_attempts: _MaxAttemptsOption = Defaults.max_attempts,
    group_readable: _GroupReadableOption = False,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate: accept DICOM over TLS")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key")] = None,
    tls_ca: _TlsCaOption = None,
    metrics_port: _MetricsPortOption = None,
    indeterminate: IndeterminateMargin = 0.0,
    gate: GateSwitch = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every association")] = False,
) -> None:
    """A DICOM node (C-STORE SCP, C-ECHO) for an archive to route chest films to: each CR or DX film
    gets a TID 1500 SR and a heatmap Secondary Capture in its study, sent back by C-STORE or
    STOW-RS, spooled on disk until delivered (the \\[dicom] extra). Stops cleanly on SIGTERM."""
    setup_logging(verbose)
    check_stow(stow, token, insecure_stow)
    DicomNode, NodeSettings, quiet_libraries, load_runtime_model = _node_classes()
    quiet_libraries()
    destinations = _destinations(send_to, ae_title, stow, token, out, group_readable)
    settings = NodeSettings(
        spool=spool.expanduser(),
        ae_title=ae_title,
        host=host,
        port=port,
        allow_aet=tuple(allow_aet or ()),
        queue_size=queue,
        queue_wait_s=queue_wait,
        **({} if workers is None else {"workers": workers}),
        batch_size=batch,
        max_pixels=max_pixels,
        max_message_mb=max_mb,
        max_associations=max_associations,
        indeterminate_margin=indeterminate,
        retry_max_s=retry_max,
        max_attempts=max_attempts,
        group_readable=group_readable,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        metrics_port=metrics_port,
    )
    runtime = load_runtime_model(model, threads=threads, gate=gate)
    _warn_if_open(host, allow_aet)
    code = DicomNode(runtime, destinations, settings).serve_forever()
    if code:
        raise typer.Exit(code)  # the watchdog stopped it: the supervisor restarts it


def _destinations(send_to, ae_title: str, stow: str | None, token, out, group_readable=False):
    """Where results go: C-STORE peers, a DICOMweb archive, a folder."""
    from pneumoscan.dicom.delivery import CStoreDestination, FolderDestination, StowDestination

    destinations = [CStoreDestination.parse(text, ae_title) for text in send_to or []]
    if stow is not None:
        destinations.append(StowDestination(stow, token or None))
    if out is not None:
        destinations.append(FolderDestination(out, group_readable))
    return destinations


def _warn_if_open(host: str, allow_aet) -> None:
    if host not in LOOPBACK_HOSTS and not allow_aet:
        logger.warning(
            "listening on %s without --allow-aet: any DICOM peer that reaches this port can send "
            "films and receive nothing back but its status; name the archive's AE title",
            host,
        )


def _node_classes():
    """The node's classes and helpers, or a one-line error naming the extra to install."""
    from pneumoscan.dicom import quiet_libraries
    from pneumoscan.runtime.model import load_runtime_model

    try:
        import highdicom  # noqa: F401
        import pynetdicom  # noqa: F401

        from pneumoscan.dicom.node import DicomNode, NodeSettings
    except ImportError as error:
        missing_extra("dicom-node", "dicom", error)
    return DicomNode, NodeSettings, quiet_libraries, load_runtime_model
