"""`predict` (ONNX Runtime, torch-free) and `merge` (the CSV parts of a sharded predict)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pneumoscan.cli.common import (
    GateSwitch,
    IndeterminateMargin,
    InsecureStow,
    OnnxThreads,
    RuntimeModel,
    StowToken,
    check_stow,
    expand_paths,
    fail,
    friendly,
    logger,
    setup_logging,
)
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE

_SetsOption = Annotated[
    float | None,
    typer.Option(
        "--sets",
        help="also give each film's conformal prediction set at this coverage, e.g. 0.9: the "
        "classes that hold the true one with that probability on films like the calibration films",
    ),
]

_DicomOutOption = Annotated[
    Path | None,
    typer.Option(
        "--dicom-out",
        help="folder for each DICOM film's results as DICOM: a TID 1500 SR and a heatmap "
        "Secondary Capture, in the film's study (the \\[dicom] extra)",
    ),
]

_StowOption = Annotated[
    str | None,
    typer.Option(
        "--stow",
        help="store those DICOM results in an archive by DICOMweb STOW-RS, e.g. "
        "http://pacs:8042/dicom-web",
    ),
]

_EngineOption = Annotated[
    str,
    typer.Option(
        help="local (this process) or ray: a pool of Ray actors, one ONNX session each (the "
        "\\[ray] extra); without --address a local cluster on 127.0.0.1 only"
    ),
]

_AddressOption = Annotated[
    str | None,
    typer.Option(help="--engine ray: an existing Ray cluster to run on, e.g. ray://head:10001"),
]

_ActorsOption = Annotated[
    int | None,
    typer.Option(help="--engine ray: how many actors (default: one per CPU of the cluster)"),
]

_ResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="--engine ray: go on with an interrupted run, skipping the films its journal "
        "(beside --csv or --json) already holds",
    ),
]

_GroupReadableOption = Annotated[
    bool,
    typer.Option(
        "--group-readable",
        help="--dicom-out files 0640 in a 0750 folder (default 0600 and 0700: patient data)",
    ),
]


_VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="also print the decoders' own log records (pydicom, Pillow, onnxruntime) on "
        "stderr, one line each; by default each file's one-line error says what matters",
    ),
]


@friendly
def predict(
    paths: Annotated[
        list[str], typer.Argument(help="image files (JPEG, PNG, DICOM), folders or glob patterns")
    ],
    shard: Annotated[
        str | None,
        typer.Option(
            help="predict only shard I of N of the expanded file list, e.g. 2/8; join the parts' "
            "CSVs with `pneumoscan merge`"
        ),
    ] = None,
    model: RuntimeModel = "binary",
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="also write the results as CSV")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the results as JSON")
    ] = None,
    heatmaps: Annotated[
        Path | None, typer.Option("--heatmaps", help="folder for heatmap overlay PNGs")
    ] = None,
    threads: OnnxThreads = None,
    workers: Annotated[
        int | None,
        typer.Option(help="threads decoding files while the model runs (default: CPU count)"),
    ] = None,
    indeterminate: IndeterminateMargin = 0.0,
    gate: GateSwitch = True,
    sets: _SetsOption = None,
    dicom_out: _DicomOutOption = None,
    stow: _StowOption = None,
    token: StowToken = None,
    engine: _EngineOption = "local",
    address: _AddressOption = None,
    actors: _ActorsOption = None,
    resume: _ResumeOption = False,
    insecure_stow: InsecureStow = False,
    group_readable: _GroupReadableOption = False,
    verbose: _VerboseOption = False,
) -> None:
    """Predict on images with ONNX Runtime (no torch needed): label, calibrated probabilities,
    threshold, gate score, optional heatmaps and conformal prediction sets, and DICOM results.
    Exits 1 when any file could not be read, or its DICOM results not written or stored."""
    # pydicom, Pillow and onnxruntime log records stay out of the table (see setup_logging).
    setup_logging(verbose)
    from pneumoscan.runtime.model import load_runtime_model
    from pneumoscan.runtime.predict import summarize

    check_stow(stow, token, insecure_stow)
    runtime = load_runtime_model(model, threads=threads, gate=gate)
    _check_options(runtime, indeterminate, workers, sets)
    part = _parse_shard(shard)
    files = _select_files(paths, part)
    _check_outputs(csv_out, json_out, heatmaps)
    journal, dicom = None, None
    if engine == "ray":
        journal = _ray_journal(csv_out, json_out, heatmaps, dicom_out, stow, resume)
        results = _predict_ray(
            model, files, journal, threads, gate, indeterminate, sets, address, actors
        )
    else:
        _check_local_engine(engine, resume, address, actors)
        dicom = _open_dicom(runtime, dicom_out, stow, token, indeterminate, group_readable)
        results = _predict_files(runtime, files, dicom, heatmaps, indeterminate, workers, sets)
    # The files first: whatever happens on screen, the predictions are kept.
    unwritten = _write_outputs(runtime, results, csv_out, json_out, part)
    if journal is not None and not unwritten:
        journal.unlink(missing_ok=True)  # the outputs hold every film now
    _print_results(runtime, results)
    for result in results:
        if result.status == "error":
            typer.echo(f"error: {result.message}", err=True)
    if dicom is not None:
        for line in dicom.notes:
            typer.echo(line, err=True)
        for line in dicom.failures:
            typer.echo(f"error: {line}", err=True)
    if unwritten:
        fail(unwritten)
    summary = summarize(results)
    typer.echo(summary.text())
    if summary.exit_code or (dicom is not None and dicom.failures):
        raise typer.Exit(1)


def _check_local_engine(engine: str, resume: bool, address, actors) -> None:
    """--engine local, without the options only the Ray engine takes."""
    if engine != "local":
        fail(f"--engine {engine}: choose local or ray")
    if resume or address or actors:
        fail("--resume, --address and --actors go with --engine ray")


def _ray_journal(csv_out, json_out, heatmaps, dicom_out, stow, resume: bool) -> Path | None:
    """The resume journal of a Ray run, after checking the options the Ray engine takes."""
    if heatmaps is not None or dicom_out is not None or stow is not None:
        fail("--engine ray writes CSV and JSON; --heatmaps, --dicom-out and --stow run locally")
    try:
        from pneumoscan.distributed.ray_engine import journal_path
    except ImportError:
        fail("--engine ray needs Ray: pip install 'pneumoscan[ray]'")
    journal = journal_path(csv_out, json_out)
    if resume and journal is None:
        fail("--resume keeps its journal beside --csv or --json: give one of them")
    if journal is not None and journal.exists() and not resume:
        fail(
            f"{journal}: an interrupted Ray run left this journal; add --resume to go on, or delete it"
        )
    return journal


def _predict_ray(
    model, files, journal, threads, gate, indeterminate, sets, address, actors
) -> list:
    """Every file through a pool of Ray actors, with a progress line per batch on a terminal."""
    try:
        import ray  # noqa: F401
    except ImportError:
        fail("--engine ray needs Ray: pip install 'pneumoscan[ray]'")
    from pneumoscan.distributed.ray_engine import RaySettings, predict_on_ray

    if actors is not None and actors < 1:
        fail(f"--actors {actors}: give 1 or more")
    settings = RaySettings(
        model=str(model),
        threads=threads or 1,
        gate=gate,
        indeterminate_margin=indeterminate,
        set_coverage=sets,
        address=address,
        actors=actors,
    )

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            typer.echo(f"predicted {done}/{total}", err=True)

    return predict_on_ray(files, settings, journal, progress)


def _open_dicom(
    runtime, dicom_out: Path | None, stow: str | None, token, indeterminate: float, group=False
):
    """The DICOM results writer (--dicom-out, --stow), or None."""
    if dicom_out is None and stow is None:
        return None
    from pneumoscan.dicom import quiet_libraries
    from pneumoscan.dicom.outputs import open_outputs

    quiet_libraries()
    return open_outputs(runtime, dicom_out, stow, token, indeterminate, group)


def _predict_files(runtime, files, dicom, heatmaps, indeterminate, workers, sets) -> list:
    """Every file through the batch path (and the DICOM writer), with a progress bar on a
    terminal; one result per file, in order."""
    from pneumoscan.runtime.predict import predict_many

    stream = predict_many(
        runtime,
        files,
        heatmap=dicom is not None,  # the DICOM results include the heatmap as an image
        heatmap_dir=heatmaps,
        indeterminate_margin=indeterminate,
        workers=workers,
        set_coverage=sets,
    )
    if dicom is not None:
        stream = dicom.process(stream)
    if len(files) > 1 and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import track

        stream = track(
            stream, total=len(files), description="predicting", console=Console(stderr=True)
        )
    return list(stream)


def _check_options(runtime, indeterminate: float, workers: int | None, sets: float | None) -> None:
    """Options that contradict each other or the model: fail before any file is read."""
    if not 0.0 <= indeterminate < 0.5:
        fail(f"--indeterminate {indeterminate}: give a distance from the threshold in [0, 0.5)")
    if indeterminate > 0 and runtime.threshold is None:
        fail(f"--indeterminate: {runtime.name} has no decision threshold (it is not binary)")
    if workers is not None and workers < 1:
        fail(f"--workers {workers}: give 1 or more")
    runtime.check_coverage(sets)


def _parse_shard(shard: str | None):
    """--shard I/N as a Shard, or None."""
    if shard is None:
        return None
    from pneumoscan.runtime.shards import parse_shard

    return parse_shard(shard)


def _select_files(paths: list[str], part) -> list[Path]:
    """The expanded file list, or this shard's part of it."""
    files = expand_paths(paths)
    if not files:
        fail(f"no image files found in {' '.join(paths)}")
    if part is not None:
        total = len(files)
        files = part.select(files)
        logger.info("shard %s: %d of %d files", part, len(files), total)
    return files


def _check_outputs(csv_out: Path | None, json_out: Path | None, heatmaps: Path | None) -> None:
    """Output paths that cannot be written: fail before predicting."""
    for option, path in (("--csv", csv_out), ("--json", json_out)):
        if path is not None and path.is_dir():
            fail(f"{option} {path}: is a folder; give a file name, e.g. {path / 'results'}")
    if heatmaps is not None:
        try:
            heatmaps.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            fail(f"--heatmaps {heatmaps}: cannot create this folder ({error.strerror or error})")


def _write_outputs(
    runtime, results, csv_out: Path | None, json_out: Path | None, part
) -> str | None:
    """The --csv and --json files; a sharded run's CSV says which shard it is, for `merge`.
    Returns the error of a file that could not be written (the other is still written), or None."""
    from functools import partial

    from pneumoscan.runtime.outputs import write_csv, write_json

    writers = (("--csv", csv_out, partial(write_csv, shard=part)), ("--json", json_out, write_json))
    unwritten = None
    for option, path, write in writers:
        if path is not None:
            try:
                write(path, results, runtime)
            except OSError as error:
                unwritten = (
                    unwritten or f"{option} {path}: cannot write it ({error.strerror or error})"
                )
    return unwritten


def _print_results(runtime, results) -> None:
    """The table on screen: every status as it is, probabilities where there are some, and the
    gate score under its own name. Every text from a file or a model (names, reasons, labels)
    is escaped: `film [left].jpeg` shows as it is, never as Rich markup."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from pneumoscan.runtime.predict import OK, STATUS_TEXT

    table = Table(
        title=escape(f"pneumoscan {runtime.name} ({runtime.version})"),
        caption=escape(NOT_DIAGNOSTIC_NOTICE),
    )
    table.add_column("file", overflow="fold")
    table.add_column("result")
    for name in runtime.class_names:
        table.add_column(escape(f"P({name})"), justify="right")
    table.add_column("gate score", justify="right")
    with_sets = any(result.prediction_set is not None for result in results)
    if with_sets:
        coverage = next(r.set_coverage for r in results if r.set_coverage is not None)
        table.add_column(f"{coverage:.0%} set")
    styles = {"indeterminate": "yellow", "not_chest_xray": "magenta", "error": "red"}
    for result in results:
        shown = result.label if result.status == OK else STATUS_TEXT[result.status]
        if result.gate_reason:
            shown = f"{shown} ({result.gate_reason})"
        shown = escape(shown)
        if result.status in styles:
            shown = f"[{styles[result.status]}]{shown}[/{styles[result.status]}]"
        table.add_row(
            escape(result.source),
            shown,
            *[
                f"{result.probabilities[n]:.3f}" if result.probabilities else ""
                for n in runtime.class_names
            ],
            "" if result.gate_score is None else f"{result.gate_score:.1f}",
            *([escape("{" + ", ".join(result.prediction_set or []) + "}")] if with_sets else []),
        )
    console = Console(emoji=False)  # `:smile:` in a file name stays as it is
    console.print(table)
    if runtime.threshold is not None:
        console.print(
            escape(
                f"threshold on P({runtime.class_names[1]}): {runtime.threshold:.3f} (chosen on "
                "the model's calibration films); probabilities are calibrated"
            )
        )
    if runtime.ood_threshold is not None:
        console.print(
            f"gate: scores above {runtime.ood_threshold:.1f} are refused as not a chest X-ray"
        )
    if with_sets:
        console.print(
            escape(
                f"sets: split-conformal ({runtime.conformal.method} score) at {coverage:.0%} coverage, "
                "calibrated on "
                f"{runtime.conformal.films} films ({runtime.conformal.source}); the promise holds for "
                "films like those, not for a new site until it is recalibrated (`pneumoscan calibrate`)"
            )
        )


@friendly
def merge(
    parts: Annotated[
        list[Path], typer.Argument(help="every CSV part written by predict --csv --shard I/N")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="the joined CSV to write")] = Path(
        "predictions.csv"
    ),
) -> None:
    """Join the CSV parts of a sharded `predict` into one file, rows in shard order; refuses a
    missing or repeated shard, parts of different N or models, and files predicted twice."""
    from pneumoscan.runtime.shards import merge_csv

    merged = merge_csv(parts, out)
    typer.echo(f"wrote {out}: {merged.rows} rows from {merged.parts} parts")
