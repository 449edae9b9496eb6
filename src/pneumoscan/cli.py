"""The `pneumoscan` command. Thin: each command imports its heavy modules inside itself, so
`pneumoscan --help` is instant and never imports torch."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from pneumoscan.errors import PneumoscanError
from pneumoscan.labels import NOT_DIAGNOSTIC_NOTICE

app = typer.Typer(
    help=f"Pneumonia detection in pediatric chest X-rays. {NOT_DIAGNOSTIC_NOTICE}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
logger = logging.getLogger("pneumoscan")


def _setup_logging(verbose: bool = False) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("pneumoscan").setLevel(logging.DEBUG if verbose else logging.INFO)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def friendly(command):
    """Turn PneumoscanError into a one-line message and Ctrl-C into a resume hint, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except PneumoscanError as error:
            _fail(str(error))
        except KeyboardInterrupt:
            _fail("interrupted; a training run continues with the same command plus --resume.", 130)

    return wrapper


DataDir = Annotated[Path, typer.Argument(help="data folder: DATA_DIR/<train|val|test>/<NORMAL|PNEUMONIA>/")]


@app.command()
@friendly
def eda(
    data_dir: DataDir,
    out: Annotated[Path, typer.Option("--out", help="folder for the plots and summary.md")] = Path("eda"),
) -> None:
    """Explore a data set: counts per split, class and subtype, images per patient, image sizes,
    sample grids; PNG plots and a Markdown summary."""
    _setup_logging()
    from pneumoscan.eda import run_eda

    summary = run_eda(data_dir, out)
    typer.echo(f"wrote {summary}")


@app.command()
@friendly
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="recipe YAML, e.g. configs/binary.yaml")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="data folder (overrides data.root)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder (default runs/<name>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run in --out")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="stop on unreadable images instead of skipping them")] = False,
    override: Annotated[
        list[str] | None,
        typer.Argument(help="config overrides as section.key=value, e.g. train.epochs=3 model.arch=resnet18"),
    ] = None,
) -> None:
    """Train a model from a recipe; writes OUT/model.pt, a self-describing model file."""
    _setup_logging()
    from pneumoscan.config import load_config

    overrides = list(override or [])
    if data is not None:
        overrides.append(f"data.root={data}")
    if strict:
        overrides.append("data.strict=true")
    cfg = load_config(config, overrides)
    out_dir = out or Path("runs") / cfg.name
    from pneumoscan.train import fit

    model_path = fit(cfg, out_dir, resume=resume, progress=sys.stderr.isatty())
    typer.echo(f"model file: {model_path}")


@app.command()
@friendly
def evaluate(
    data_dir: DataDir,
    model: Annotated[str, typer.Option("--model", "-m", help="model file, or a shipped model name: binary, three-class")],
    split: Annotated[str, typer.Option("--split", help="test, val or train")] = "test",
    out: Annotated[Path, typer.Option("--out", help="folder for metrics.json, plots and report.md")] = Path("evaluation"),
    strict: Annotated[bool, typer.Option("--strict", help="stop on unreadable images instead of skipping them")] = False,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples (by patient) for the 95% intervals")] = 1000,
) -> None:
    """Evaluate a model on one split: metrics.json with 95% patient-bootstrap intervals,
    confusion matrix, ROC, PR and reliability plots, report.md."""
    _setup_logging()
    from pneumoscan.evaluate import evaluate_model

    if split not in ("train", "val", "test"):
        _fail(f"--split {split!r}: choose test, val or train")
    metrics = evaluate_model(model, data_dir, split, out, strict=strict, bootstrap=bootstrap)
    summary = f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, ROC AUC {metrics['roc_auc']:.4f}"
    if "sensitivity" in metrics:
        summary += f", sensitivity {metrics['sensitivity']:.4f}, specificity {metrics['specificity']:.4f}"
    typer.echo(f"{split} (n={metrics['n']}): {summary}")
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")
    typer.echo(NOT_DIAGNOSTIC_NOTICE)


@app.command()
def models() -> None:
    """List the architectures, heads and training strategies."""
    from pneumoscan.models import ARCHITECTURES, HEADS

    for name, arch in ARCHITECTURES.items():
        weights = arch.pretrained_source or "trained from scratch"
        typer.echo(f"{name:20s} {arch.description}; {arch.preprocess.size} px; {weights}")
    typer.echo(f"heads: {', '.join(HEADS)}")
    typer.echo("strategies: full, frozen, finetune-last-N")


def main() -> None:  # pragma: no cover
    app()
