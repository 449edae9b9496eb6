"""What the command modules share: logging set-up, one-line errors, the error wrapper and the
options several commands take."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from pneumoscan.core.errors import PneumoscanError

logger = logging.getLogger("pneumoscan")


# Libraries whose `logging` records (pydicom's header complaints and decoder tracebacks, Pillow's
# and onnxruntime's notes) would otherwise land between the table rows: each file's one-line
# error already says what went wrong. With --verbose they go to stderr, one line each.
THIRD_PARTY_LOGGERS = ("pydicom", "PIL", "onnxruntime")


class _OneLine(logging.Formatter):
    """`library LEVEL: message` on one line, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())
        return f"{record.name} {record.levelname.lower()}: {message}"

    def formatException(self, ei) -> str:  # noqa: N802 (logging's name)
        return ""


def route_library_logs(verbose: bool = False) -> None:
    """Keep third-party log records out of the output: dropped, or with `verbose`, one line each
    on stderr without tracebacks."""
    for name in THIRD_PARTY_LOGGERS:
        library = logging.getLogger(name)
        library.propagate = False
        for old in list(library.handlers):
            library.removeHandler(old)
        if verbose:
            handler = logging.StreamHandler()  # sys.stderr at the time of each record
            handler.setFormatter(_OneLine())
            library.addHandler(handler)
            library.setLevel(logging.DEBUG)
        else:
            library.addHandler(logging.NullHandler())
            library.setLevel(logging.CRITICAL + 1)


class _Stderr(logging.StreamHandler):
    """Plain lines on whatever sys.stderr is at each record (a test's capture, a service's
    journal)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """Rich's log lines on a terminal; elsewhere (a service's journal, a file, a pipe) the same
    `LEVEL     message` lines written plainly: Rich's handler cost a dicom-node about 5 ms of
    CPU per film in a burst (three lines a film; py-spy samples), where a plain line costs
    microseconds."""
    if sys.stderr is not None and sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("pneumoscan").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("lightning").propagate = False  # Lightning prints through its own handler
    route_library_logs(verbose)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def friendly(command):
    """Turn PneumoscanError into a one-line message and Ctrl-C into a resume hint, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PneumoscanError as error:
            fail(str(error))
        except KeyboardInterrupt:
            fail("interrupted; a training run continues with the same command plus --resume.", 130)

    return wrapper


DataDir = Annotated[
    Path, typer.Argument(help="data folder: DATA_DIR/<train|val|test>/<NORMAL|PNEUMONIA>/")
]


# Options the commands that run an exported model share (`predict`, `dicom-node`; `serve` too for
# the margin and the gate).
RuntimeModel = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="binary, three-class, binary-fast, or an exported .onnx file"
    ),
]
OnnxThreads = Annotated[int | None, typer.Option(help="CPU threads for ONNX Runtime")]
# The same choice as the benchmarks and `stress` word it.
ModelOrOnnx = Annotated[
    str, typer.Option("--model", "-m", help="binary, three-class, binary-fast or an .onnx file")
]
IndeterminateMargin = Annotated[
    float,
    typer.Option(help="binary: report 'indeterminate' within this distance of the threshold"),
]


# Options the report-writing commands (evaluate, validate, calibrate) share.
Bootstrap = Annotated[
    int, typer.Option(help="bootstrap resamples (by patient) for the 95% intervals")
]


StowToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="PNEUMOSCAN_STOW_TOKEN",
        help="bearer token for --stow",
        show_default=False,
    ),
]
InsecureStow = Annotated[
    bool,
    typer.Option(
        "--insecure-stow",
        help="send --token to a plain http:// --stow URL beyond this machine (anyone on the path "
        "can read the token)",
    ),
]


def check_stow(url: str | None, token: str | None, insecure: bool) -> None:
    """A bearer token goes in clear over http://: refuse that beyond loopback unless told to."""
    if url is None or not token or insecure:
        return
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme.lower() == "http" and not _is_loopback(parts.hostname or ""):
        fail(
            f"--stow {url}: http:// would send the --token in clear to {parts.hostname}; use "
            "https://, or give --insecure-stow to send it anyway"
        )


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host in LOOPBACK_HOSTS or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        return False


GateSwitch = Annotated[
    bool,
    typer.Option("--gate/--no-gate", help="refuse inputs unlike chest radiographs (default on)"),
]


# Addresses only this machine reaches: binding elsewhere without access control earns a warning.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def missing_extra(command: str, extra: str, error: ImportError) -> None:
    """The one-line error for a command whose optional dependencies are not installed."""
    fail(
        f"{command} needs the [{extra}] extra ({error.name} is missing): "
        f'pip install "pneumoscan[{extra}]"'
    )


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, glob patterns expanded."""
    import glob

    from pneumoscan.core.images import IMAGE_SUFFIXES

    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif any(char in text for char in "*?[") and not path.exists():
            found += sorted(
                Path(match) for match in glob.glob(text, recursive=True) if Path(match).is_file()
            )
        else:
            found.append(path)
    return found


def headline(metrics: dict, roc_auc: bool = False) -> str:
    """The one-line summary of a metrics.json the report-writing commands print."""
    text = f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    if roc_auc:
        text += f", ROC AUC {metrics['roc_auc']:.4f}"
    if "sensitivity" in metrics:
        text += (
            f", sensitivity {metrics['sensitivity']:.4f}, specificity {metrics['specificity']:.4f}"
        )
    return text
