"""A site's own labelled films: `validate` a model on them, `calibrate` it for them."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from pneumoscan.cli.common import (
    Bootstrap,
    fail,
    friendly,
    headline,
    setup_logging,
)
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.evaluation.rules import rules_help

SiteData = Annotated[
    Path,
    typer.Argument(
        help="the site's labelled films: a folder with NORMAL/ and PNEUMONIA/ (or BACTERIA/ and "
        "VIRUS/) subfolders, or a CSV with path,label[,patient]"
    ),
]


AllowOutside = Annotated[
    bool,
    typer.Option(
        "--allow-outside",
        help="accept CSV paths outside the CSV's folder (absolute paths, ../); off by default",
    ),
]

SiteModel = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="binary, three-class, binary-fast, or a model's .onnx/.pt file (e.g. DIR/model.onnx)",
    ),
]


@friendly
def validate(
    data: SiteData,
    model: SiteModel = "binary",
    out: Annotated[
        Path, typer.Option("--out", help="folder for the report, metrics and plots")
    ] = Path("validation"),
    bootstrap: Bootstrap = 1000,
    allow_outside: AllowOutside = False,
) -> None:
    """Check a model on a site's own labelled films: the evaluation report (95% patient-bootstrap
    intervals, confusion matrix, ROC, PR, reliability diagram), the gate's refusal rate and the
    coverage of the model's conformal prediction sets. Changes nothing; see `calibrate`."""
    setup_logging()
    from pneumoscan.site.validate import validate as validate_site

    metrics = validate_site(data, model, out, bootstrap=bootstrap, allow_outside=allow_outside)
    typer.echo(f"{metrics['model_name']} on {data} (n={metrics['n']}): {headline(metrics)}")
    if "gate" in metrics:
        typer.echo(f"gate refused {100 * metrics['gate']['refusal_rate']:.1f}% of the films")
    for row in (metrics.get("conformal") or {}).get("levels", []):
        typer.echo(
            f"{row['level']:.0%} sets: coverage {row['coverage']:.4f}, mean size {row['mean_size']:.3f}"
        )
    typer.echo(f"wrote {out / 'report.md'}")
    typer.echo(NOT_DIAGNOSTIC_NOTICE)


_RuleOption = Annotated[
    str | None,
    typer.Option(help=f"binary threshold rule instead of --target-sensitivity: {rules_help()}"),
]

_BiasOption = Annotated[
    bool,
    typer.Option(
        "--bias/--no-bias",
        help="fit per-class logit biases besides the temperature (default on; absorbs a "
        "shifted decision boundary or prevalence)",
    ),
]

_PrevalenceOption = Annotated[
    str | None,
    typer.Option(
        help="the site's expected share of pneumonia (binary, e.g. 0.2), or one share per "
        "class (three-class: normal,bacteria,virus, e.g. 0.6,0.25,0.15); default: the "
        "calibration films' own shares, which the calibration otherwise reproduces"
    ),
]


@friendly
def calibrate(
    data: SiteData,
    model: SiteModel = "binary",
    out: Annotated[
        Path, typer.Option("--out", help="folder for model.pt, model.onnx, card.md and report.md")
    ] = Path("calibrated"),
    target_sensitivity: Annotated[
        float | None,
        typer.Option(help="binary: the highest threshold reaching this sensitivity (default 0.95)"),
    ] = None,
    rule: _RuleOption = None,
    cost_fn: Annotated[
        float, typer.Option(help="--rule cost: a missed pneumonia costs this many false alarms")
    ] = 1.0,
    holdout: Annotated[
        float,
        typer.Option(help="share of the patients kept apart to report before/after (0: none)"),
    ] = 0.5,
    refit_gate: Annotated[
        bool, typer.Option("--refit-gate", help="widen the gate to accept the site's films")
    ] = False,
    bias: _BiasOption = True,
    prevalence: _PrevalenceOption = None,
    sets: Annotated[
        float, typer.Option(help="coverage level reported for the conformal prediction sets")
    ] = 0.9,
    set_method: Annotated[
        str, typer.Option(help="conformal score: lac (smallest sets) or aps")
    ] = "lac",
    name: Annotated[str | None, typer.Option(help="name of the new model")] = None,
    seed: Annotated[int, typer.Option(help="seed of the patient split")] = 0,
    bootstrap: Bootstrap = 1000,
    allow_outside: AllowOutside = False,
) -> None:
    """Recalibrate a model for a site: temperature, threshold, conformal sets (and gate) fitted on
    part of the site's films, before/after on the rest, and how the figures grow with the number
    of films. Writes a new model (OUT/model.onnx, and OUT/model.pt where torch is installed) with
    its card; needs no torch."""
    setup_logging()
    from pneumoscan.site.calibrate import Request
    from pneumoscan.site.calibrate import calibrate as calibrate_site

    if rule is not None and target_sensitivity is not None:
        fail("give --target-sensitivity or --rule, not both")
    if rule == "sensitivity":
        fail("--rule sensitivity: use --target-sensitivity 0.95 instead")
    if target_sensitivity is not None and not 0.0 < target_sensitivity <= 1.0:
        fail(f"--target-sensitivity {target_sensitivity}: give a value in (0, 1]")
    if cost_fn <= 0:
        fail(f"--cost-fn {cost_fn}: give a positive number")
    if not 0.0 < sets < 1.0:
        fail(f"--sets {sets}: give a coverage level between 0 and 1, e.g. 0.9")
    if set_method not in ("lac", "aps"):
        fail(f"--set-method {set_method!r}: choose lac or aps")
    try:
        shares = None if prevalence is None else tuple(float(p) for p in prevalence.split(","))
    except ValueError:
        fail(
            f"--prevalence {prevalence}: give a share such as 0.2, or shares such as 0.6,0.25,0.15"
        )
    request = Request(
        rule=rule or "sensitivity",
        target_sensitivity=target_sensitivity or 0.95,
        cost_fn=cost_fn,
        holdout=holdout,
        refit_gate=refit_gate,
        bias=bias,
        set_method=set_method,
        seed=seed,
        prevalence=shares,
    )
    report = calibrate_site(
        data,
        model,
        out,
        request,
        coverage=sets,
        name=name,
        bootstrap=bootstrap,
        allow_outside=allow_outside,
    )
    if "after" in report:
        typer.echo(f"held-out before: {headline(report['before'])}")
        typer.echo(f"held-out after:  {headline(report['after'])}")
    models = ", ".join(report["written"].values())  # model.pt only where torch is installed
    typer.echo(f"wrote {models}, {out / 'card.md'} and {out / 'report.md'}")
    typer.echo(NOT_DIAGNOSTIC_NOTICE)


@friendly
def adapt(
    data: SiteData,
    model: SiteModel = "binary",
    out: Annotated[
        Path,
        typer.Option("--out", help="new folder for model.onnx, model.pt, report.md and adapt.json"),
    ] = Path("adapted"),
    folds: Annotated[
        int, typer.Option(help="patient-grouped folds of the comparison (fewer on small sites)")
    ] = 5,
    epochs: Annotated[int, typer.Option(help="fine-tuning epochs per fold")] = 3,
    min_gain: Annotated[
        float,
        typer.Option(help="the cross-validated ROC AUC gain a fine-tune must reach to be kept"),
    ] = 0.005,
    fine_tune: Annotated[
        bool,
        typer.Option("--fine-tune/--no-fine-tune", help="run the fine-tune arm (needs torch)"),
    ] = True,
    target_sensitivity: Annotated[
        float | None,
        typer.Option(help="binary: the highest threshold reaching this sensitivity (default 0.95)"),
    ] = None,
    rule: _RuleOption = None,
    cost_fn: Annotated[
        float, typer.Option(help="--rule cost: a missed pneumonia costs this many false alarms")
    ] = 1.0,
    bias: _BiasOption = True,
    seed: Annotated[int, typer.Option(help="seed of the patient folds")] = 0,
    keep_work: Annotated[
        bool, typer.Option("--keep-work", help="keep the fold runs (OUT.work) after success")
    ] = False,
    bootstrap: Bootstrap = 1000,
    allow_outside: AllowOutside = False,
    override: Annotated[
        list[str] | None,
        typer.Argument(help="training overrides for the fold runs, e.g. train.batch_size=8"),
    ] = None,
) -> None:
    """Adapt a model to a site: calibrate-only against fine-tune-then-calibrate, compared by
    patient-grouped cross-validation on the site's labelled films; the better one is written
    (OUT/model.onnx, used as any model) with a before/after report naming the choice. Rerun the
    same command to resume interrupted fine-tunes."""
    setup_logging()
    if fine_tune:
        from pneumoscan.cli.training import quiet_training_libraries

        with contextlib.suppress(ImportError):  # without torch, adapt says so in one line
            quiet_training_libraries()
    from pneumoscan.site.adapt import AdaptRequest
    from pneumoscan.site.adapt import adapt as adapt_site
    from pneumoscan.site.calibrate import Request

    if rule is not None and target_sensitivity is not None:
        fail("give --target-sensitivity or --rule, not both")
    if rule == "sensitivity":
        fail("--rule sensitivity: use --target-sensitivity 0.95 instead")
    if target_sensitivity is not None and not 0.0 < target_sensitivity <= 1.0:
        fail(f"--target-sensitivity {target_sensitivity}: give a value in (0, 1]")
    if folds < 2:
        fail(f"--folds {folds}: give at least 2")
    if epochs < 1:
        fail(f"--epochs {epochs}: give at least 1")
    calibration = Request(
        rule=rule or "sensitivity",
        target_sensitivity=target_sensitivity or 0.95,
        cost_fn=cost_fn,
        holdout=0.0,
        bias=bias,
        seed=seed,
    )
    request = AdaptRequest(
        calibration, folds, epochs, min_gain, fine_tune, tuple(override or []), keep_work
    )
    report = adapt_site(data, model, out, request, bootstrap=bootstrap, allow_outside=allow_outside)
    for name, metrics in {"as shipped": report["shipped"], **report["arms"]}.items():
        typer.echo(f"{name:>14}: {headline(metrics, roc_auc=True)}, ECE {metrics['ece']:.4f}")
    typer.echo(f"kept {report['choice']['arm']}: {report['choice']['reason']}")
    typer.echo(f"wrote {out / 'model.onnx'}, {out / 'report.md'} and {out / 'adapt.json'}")
    typer.echo(NOT_DIAGNOSTIC_NOTICE)
