"""`eda`, the seed studies (`experiments`) and the benchmarks (`bench`, `bench-ood`,
`bench-workers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pneumoscan.cli.common import (
    DataDir,
    ModelOrOnnx,
    expand_paths,
    fail,
    friendly,
    setup_logging,
)


@friendly
def eda(
    data_dir: DataDir,
    out: Annotated[Path, typer.Option("--out", help="folder for the plots and summary.md")] = Path(
        "eda"
    ),
) -> None:
    """Explore a data set: counts per split, class and subtype, images per patient, image sizes,
    sample grids; PNG plots and a Markdown summary."""
    setup_logging()
    from pneumoscan.research.eda import run_eda

    summary = run_eda(data_dir, out)
    typer.echo(f"wrote {summary}")


# Options the benchmarks share.
BenchImages = Annotated[
    list[Path], typer.Option("--images", help="radiograph files or folders to time on")
]
MarkdownOut = Annotated[Path, typer.Option("--out", help="Markdown report to write")]


def _model_card(model: str) -> Path | None:
    """The model card beside a model's ONNX file (models/binary.md for `binary`), if there is one."""
    from pneumoscan.core.errors import ModelFileError
    from pneumoscan.core.shipped import resolve_model

    try:
        card = resolve_model(model, suffix=".onnx").with_suffix(".md")
    except ModelFileError:  # the benchmark itself says what is wrong with the model
        return None
    return card if card.is_file() else None


@friendly
def bench(
    images: BenchImages,
    model: ModelOrOnnx = "binary",
    out: MarkdownOut = Path("docs/benchmarks.md"),
    int8_run: Annotated[
        Path | None,
        typer.Option(
            "--int8-run",
            help="also quantize to int8 as `ship --int8` does and compare with fp32 on this "
            "run's validation split",
        ),
    ] = None,
    films: Annotated[
        int, typer.Option(help="films in the whole-process folder benchmark (cycled from --images)")
    ] = 624,
    full_size_films: Annotated[
        int,
        typer.Option(
            help="films upscaled to 2,000 px (JPEG and 16-bit DICOM) and timed beside their "
            "256 px copies (0: skip)"
        ),
    ] = 120,
    repeats: Annotated[int, typer.Option(help="runs of each whole-process command")] = 3,
) -> None:
    """Benchmark prediction speed: in-process latency (ONNX vs torch eager), then whole processes
    from the command line: cold start, folders to CSV with and without heatmaps, and the same
    films at 256 px and at 2,000 px as JPEG and 16-bit DICOM, side by side."""
    from pneumoscan.research.bench import speed_report, write_report

    files = expand_paths([str(path) for path in images])
    if not files:
        fail("--images: no image files found")
    report, card = speed_report(
        model, files, films=films, full_size_films=full_size_films, process_repeats=repeats
    )
    typer.echo(report)
    write_report(report, out, section="predict-speed")
    card_file = _model_card(model)
    if card_file is not None:
        write_report(card, card_file, section="speed")
        typer.echo(f"wrote the speed section of {card_file}")
    if int8_run is not None:
        from pneumoscan.research.bench import quantization_report

        int8 = quantization_report(model, int8_run)
        typer.echo(int8)
        write_report(int8, out, section="int8")
    typer.echo(f"wrote {out}")


@friendly
def bench_workers(
    images: BenchImages,
    model: ModelOrOnnx = "binary",
    out: MarkdownOut = Path("docs/benchmarks.md"),
    films: Annotated[
        int, typer.Option(help="films in each folder (cycled from --images), JPEG and DICOM")
    ] = 200,
    repeats: Annotated[int, typer.Option(help="runs of each whole-process command")] = 3,
) -> None:
    """Benchmark decoding threads: `pneumoscan predict FOLDER --workers 1` vs `--workers 2` as
    whole processes on full-size (2,000 px) JPEG and 16-bit DICOM copies of the films."""
    from pneumoscan.research.bench import workers_report, write_report

    files = expand_paths([str(path) for path in images])
    if not files:
        fail("--images: no image files found")
    if films < 1 or repeats < 1:
        fail(f"--films {films} --repeats {repeats}: give 1 or more of each")
    command = (
        f"pneumoscan bench-workers --model {model} --images "
        f"{' '.join(str(path) for path in images)} --films {films} --repeats {repeats}"
    )
    report = workers_report(model, files, films=films, repeats=repeats, command=command)
    typer.echo(report)
    typer.echo(f"wrote {write_report(report, out, section='predict-workers')}")


@friendly
def bench_ood(
    model: ModelOrOnnx = "binary",
    run: Annotated[
        Path | None, typer.Option("--run", help="training run whose validation films to check")
    ] = None,
    out: MarkdownOut = Path("docs/ood.md"),
) -> None:
    """Measure the out-of-distribution gate: rejection of photos, documents, screenshots, blank and
    noise images, and of the run's validation chest X-rays."""
    from pneumoscan.research.bench import gate_report, write_report

    report = gate_report(model, run)
    typer.echo(report)
    typer.echo(f"wrote {write_report(report, out)}")


@friendly
def experiments(
    study: Annotated[str, typer.Argument(help="seed-three-class or seed-binary")],
    data: Annotated[Path, typer.Option("--data", help="data folder")] = Path(
        "../shared/data/chest_xray"
    ),
    out: Annotated[
        Path | None, typer.Option("--out", help="study folder (default runs/<study>)")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="128 px and few epochs")] = False,
) -> None:
    """Rerun a seed study's variants; results.csv, results.md and learning curves. Rerun to resume."""
    setup_logging()
    from pneumoscan.research.experiments import STUDIES, run_study

    if study not in STUDIES:
        fail(f"unknown study {study!r}; choose {' or '.join(STUDIES)}")
    report = run_study(study, data, out or Path("runs") / study, quick)
    typer.echo(report.read_text())
