"""`evaluate` (a model on one split of a data folder), `stress` (the acquisition-shift
benchmark) and `monitor` (drift between two prediction logs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pneumoscan.cli.common import (
    Bootstrap,
    DataDir,
    ModelOrOnnx,
    fail,
    friendly,
    headline,
    setup_logging,
)
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE


@friendly
def evaluate(
    data_dir: DataDir,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="model file (.pt), an exported .onnx (evaluated without torch), or a shipped "
            "model name: binary, three-class (both ONNX only), binary-fast",
        ),
    ],
    split: Annotated[str, typer.Option("--split", help="test, val or train")] = "test",
    out: Annotated[
        Path, typer.Option("--out", help="folder for metrics.json, plots and report.md")
    ] = Path("evaluation"),
    strict: Annotated[
        bool, typer.Option("--strict", help="stop on unreadable images instead of skipping them")
    ] = False,
    bootstrap: Bootstrap = 1000,
) -> None:
    """Evaluate a model on one split: metrics.json with 95% patient-bootstrap intervals,
    confusion matrix, ROC, PR and reliability plots, report.md."""
    setup_logging()
    from pneumoscan.evaluation.report import SplitEvaluation, training_pool_caveat

    if split not in ("train", "val", "test"):
        fail(f"--split {split!r}: choose test, val or train")
    from pneumoscan.core.shipped import onnx_only

    # ONNX Runtime (the [eval] extra, no torch) for an .onnx file or a shipped ONNX-only name
    if Path(model).suffix.lower() == ".onnx" or onnx_only(model):
        from pneumoscan.evaluation.evaluate import evaluate_onnx as evaluate_model
    else:
        from pneumoscan.training.evaluate import evaluate_model
    caveat = training_pool_caveat(split)
    if caveat:
        typer.echo(f"warning: {caveat}", err=True)
    evaluation = SplitEvaluation(data_dir, split, out, strict=strict, bootstrap=bootstrap)
    metrics = evaluate_model(model, evaluation)
    typer.echo(f"{split} (n={metrics['n']}): {headline(metrics, roc_auc=True)}")
    if caveat:
        typer.echo(f"not out-of-sample: {caveat}")
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")
    typer.echo(NOT_DIAGNOSTIC_NOTICE)


@friendly
def stress(
    data: DataDir,
    model: ModelOrOnnx = "binary",
    out: Annotated[Path, typer.Option("--out", help="folder for stress.json, .md and .png")] = Path(
        "runs/stress"
    ),
    limit: Annotated[
        int | None, typer.Option("--limit", help="at most this many validation films (quick look)")
    ] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="patient-bootstrap draws")] = 200,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="run only these perturbations (and clean)")
    ] = None,
    thresholds: Annotated[
        str | None,
        typer.Option(
            "--thresholds", help="binary: also report these operating points, e.g. 0.1,0.5"
        ),
    ] = None,
) -> None:
    """Shift stress benchmark: a fixed, seeded panel of acquisition perturbations of the model's
    patient-grouped validation films; every metric per perturbation, the worst case and the
    gate's refusal rate (never the test split)."""
    setup_logging()
    from pneumoscan.evaluation.stress import run_stress

    points = None
    if thresholds:
        try:
            points = [float(value) for value in thresholds.split(",")]
        except ValueError:
            fail(f"--thresholds {thresholds!r}: give numbers between 0 and 1, e.g. 0.1,0.5")
    report = run_stress(
        model, data, out, limit=limit, bootstrap=bootstrap, only=only, thresholds=points
    )
    worst = report["worst"]
    typer.echo(
        f"{report['films']} films x {len(report['perturbations'])} perturbations; worst accuracy "
        f"{worst['accuracy']['value']:.4f} ({worst['accuracy']['perturbation']}), worst gate "
        f"refusal {100 * worst['refusal_rate']['value']:.1f}% "
        f"({worst['refusal_rate']['perturbation']}); report in {out}/stress.md"
    )


@friendly
def monitor(
    current: Annotated[Path, typer.Argument(help="this period's `pneumoscan predict --csv` log")],
    reference: Annotated[
        Path,
        typer.Option(
            "--reference",
            "-r",
            help="the baseline log to compare with, e.g. the site's first accepted month",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="folder for report.md, drift.json and the plots")
    ] = Path("drift"),
) -> None:
    """Compare two prediction logs for drift: status mix, predicted labels, probability and
    gate-score distributions (chi-square and Kolmogorov-Smirnov, Holm-adjusted, with minimum
    effect sizes). Exit 0: no drift; 1: drift; 2: bad input. No labels, so no accuracy: an alarm
    is a reason to `validate` on labelled films."""
    setup_logging()
    from pneumoscan.evaluation.monitor import compare, read_log, write_report

    before, after = read_log(reference), read_log(current)
    checks = compare(before, after)
    drift = write_report(before, after, checks, out)
    for check in checks:
        mark = "DRIFT" if check.drift else "ok"
        typer.echo(
            f"{mark:5}  {check.name}: {check.effect_name} {check.effect:.3f} "
            f"(minimum {check.min_effect}), adjusted p {check.adjusted_p:.2g}"
        )
    typer.echo(f"{'drift detected' if drift else 'no drift'}; report: {out / 'report.md'}")
    typer.echo(NOT_DIAGNOSTIC_NOTICE, err=True)
    raise typer.Exit(1 if drift else 0)
