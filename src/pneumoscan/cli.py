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
    logging.getLogger("lightning").propagate = False  # Lightning prints through its own handler


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


DataDir = Annotated[
    Path, typer.Argument(help="data folder: DATA_DIR/<train|val|test>/<NORMAL|PNEUMONIA>/")
]
# Options `predict` and `serve` share.
IndeterminateMargin = Annotated[
    float,
    typer.Option(help="binary: report 'indeterminate' within this distance of the threshold"),
]
# Options the report-writing commands (evaluate, validate, calibrate) share.
Bootstrap = Annotated[
    int, typer.Option(help="bootstrap resamples (by patient) for the 95% intervals")
]
GateSwitch = Annotated[
    bool,
    typer.Option("--gate/--no-gate", help="refuse inputs unlike chest radiographs (default on)"),
]


@app.command()
@friendly
def eda(
    data_dir: DataDir,
    out: Annotated[Path, typer.Option("--out", help="folder for the plots and summary.md")] = Path(
        "eda"
    ),
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
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="recipe YAML, e.g. configs/binary.yaml")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="data folder (overrides data.root)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="run folder (default runs/<name>)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue an interrupted run in --out")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="stop on unreadable images instead of skipping them")
    ] = False,
    devices: Annotated[
        str | None,
        typer.Option(help="devices per machine: a count, auto, or GPU ids (train.devices)"),
    ] = None,
    num_nodes: Annotated[
        int | None, typer.Option("--num-nodes", help="machines (train.num_nodes)")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="Lightning strategy, e.g. ddp (train.strategy)")
    ] = None,
    accelerator: Annotated[
        str | None, typer.Option(help="cpu, gpu or auto (train.accelerator)")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="fine-tune from this model: binary, three-class or a .pt file (a calibrated "
            "DIR/model.pt too); without --config, a short recipe (3 epochs, lr 1e-4)",
        ),
    ] = None,
    override: Annotated[
        list[str] | None,
        typer.Argument(
            help="config overrides as section.key=value, e.g. train.epochs=3 model.arch=resnet18"
        ),
    ] = None,
) -> None:
    """Train a model from a recipe; writes OUT/model.pt, a self-describing model file. Several
    devices or machines: --devices 2 (DDP), also under torchrun or srun; rank zero writes.
    --init fine-tunes a shipped or calibrated model on a site's labelled films (--data SITE:
    NORMAL/ and PNEUMONIA/ folders or a path,label[,patient] CSV)."""
    _setup_logging()
    from pneumoscan.config import FINETUNE_RECIPE, load_config

    overrides = list(FINETUNE_RECIPE if init is not None and config is None else [])
    if init is not None:
        overrides.append(f"model.init={init}")
        if config is None and not any(o.startswith("data.task=") for o in override or []):
            overrides.append(f"data.task={_task_of(init)}")
    overrides += list(override or [])
    if data is not None:
        overrides.append(f"data.root={data}")
    if strict:
        overrides.append("data.strict=true")
    for key, value in (
        ("devices", devices),
        ("num_nodes", num_nodes),
        ("strategy", strategy),
        ("accelerator", accelerator),
    ):
        if value is not None:
            overrides.append(f"train.{key}={value}")
    cfg = load_config(config, overrides)
    out_dir = out or Path("runs") / cfg.name
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from pneumoscan.train import fit

    # Under DDP the other ranks report only warnings and errors; rank zero tells the story once.
    for handler in logging.getLogger().handlers:
        handler.addFilter(
            lambda record: rank_zero_only.rank == 0 or record.levelno >= logging.WARNING
        )
    model_path = fit(cfg, out_dir, resume=resume, progress=sys.stderr.isatty())
    if rank_zero_only.rank == 0:
        typer.echo(f"model file: {model_path}")


def _task_of(reference: str) -> str:
    """The task of a model file, for `train --init` without a recipe."""
    from pneumoscan.models import load_model_file
    from pneumoscan.shipped import resolve_model

    return load_model_file(resolve_model(reference))[1].task


@app.command()
@friendly
def cv(
    config: Annotated[Path, typer.Option("--config", "-c", help="recipe YAML")],
    out: Annotated[
        Path, typer.Option("--out", help="study folder; one run folder per fold inside")
    ],
    folds: Annotated[
        str, typer.Option(help="comma-separated fold numbers, e.g. 0,1,2")
    ] = "0,1,2,3,4",
    data: Annotated[
        Path | None, typer.Option("--data", help="data folder (overrides data.root)")
    ] = None,
    override: Annotated[
        list[str] | None, typer.Argument(help="config overrides, as for train")
    ] = None,
) -> None:
    """Cross-validate a recipe over patient-grouped folds; per-fold and mean ± sd validation metrics.
    Rerun the same command to resume; finished folds are skipped."""
    _setup_logging()
    from pneumoscan.config import load_config
    from pneumoscan.train import cross_validate

    overrides = list(override or []) + ([f"data.root={data}"] if data is not None else [])
    try:
        fold_list = [int(f) for f in folds.split(",") if f.strip()]
    except ValueError:
        _fail(f"--folds {folds!r}: give comma-separated numbers, e.g. 0,1,2")
    cross_validate(load_config(config, overrides), out, fold_list, progress=sys.stderr.isatty())
    typer.echo((out / "cv_summary.md").read_text())


@app.command()
@friendly
def evaluate(
    data_dir: DataDir,
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="model file, or a shipped model name: binary, three-class"
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
    _setup_logging()
    from pneumoscan.evaluate import evaluate_model, training_pool_caveat

    if split not in ("train", "val", "test"):
        _fail(f"--split {split!r}: choose test, val or train")
    caveat = training_pool_caveat(split)
    if caveat:
        typer.echo(f"warning: {caveat}", err=True)
    metrics = evaluate_model(model, data_dir, split, out, strict=strict, bootstrap=bootstrap)
    typer.echo(f"{split} (n={metrics['n']}): {_headline(metrics, roc_auc=True)}")
    if caveat:
        typer.echo(f"not out-of-sample: {caveat}")
    typer.echo(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")
    typer.echo(NOT_DIAGNOSTIC_NOTICE)


SiteData = Annotated[
    Path,
    typer.Argument(
        help="the site's labelled films: a folder with NORMAL/ and PNEUMONIA/ (or BACTERIA/ and "
        "VIRUS/) subfolders, or a CSV with path,label[,patient]"
    ),
]
SiteModel = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="binary, three-class, or a model's .onnx/.pt file (e.g. DIR/model.onnx)",
    ),
]


def _headline(metrics: dict, roc_auc: bool = False) -> str:
    """The one-line summary of a metrics.json the report-writing commands print."""
    text = f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    if roc_auc:
        text += f", ROC AUC {metrics['roc_auc']:.4f}"
    if "sensitivity" in metrics:
        text += (
            f", sensitivity {metrics['sensitivity']:.4f}, specificity {metrics['specificity']:.4f}"
        )
    return text


@app.command()
@friendly
def validate(
    data: SiteData,
    model: SiteModel = "binary",
    out: Annotated[
        Path, typer.Option("--out", help="folder for the report, metrics and plots")
    ] = Path("validation"),
    bootstrap: Bootstrap = 1000,
) -> None:
    """Check a model on a site's own labelled films: the evaluation report (95% patient-bootstrap
    intervals, confusion matrix, ROC, PR, reliability diagram), the gate's refusal rate and the
    coverage of the model's conformal prediction sets. Changes nothing; see `calibrate`."""
    _setup_logging()
    from pneumoscan.site import validate as validate_site

    metrics = validate_site(data, model, out, bootstrap=bootstrap)
    typer.echo(f"{metrics['model_name']} on {data} (n={metrics['n']}): {_headline(metrics)}")
    if "gate" in metrics:
        typer.echo(f"gate refused {100 * metrics['gate']['refusal_rate']:.1f}% of the films")
    for row in (metrics.get("conformal") or {}).get("levels", []):
        typer.echo(
            f"{row['level']:.0%} sets: coverage {row['coverage']:.4f}, mean size {row['mean_size']:.3f}"
        )
    typer.echo(f"wrote {out / 'report.md'}")
    typer.echo(NOT_DIAGNOSTIC_NOTICE)


@app.command()
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
    rule: Annotated[
        str | None,
        typer.Option(
            help="binary threshold rule instead: youden, cost (with --cost-fn), balanced or half"
        ),
    ] = None,
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
    bias: Annotated[
        bool,
        typer.Option(
            "--bias/--no-bias",
            help="fit per-class logit biases besides the temperature (default on; absorbs a "
            "shifted decision boundary or prevalence)",
        ),
    ] = True,
    sets: Annotated[
        float, typer.Option(help="coverage level reported for the conformal prediction sets")
    ] = 0.9,
    set_method: Annotated[
        str, typer.Option(help="conformal score: lac (smallest sets) or aps")
    ] = "lac",
    name: Annotated[str | None, typer.Option(help="name of the new model")] = None,
    seed: Annotated[int, typer.Option(help="seed of the patient split")] = 0,
    bootstrap: Bootstrap = 1000,
) -> None:
    """Recalibrate a model for a site: temperature, threshold, conformal sets (and gate) fitted on
    part of the site's films, before/after on the rest, and how the figures grow with the number
    of films. Writes a new model (OUT/model.pt, OUT/model.onnx) with its card."""
    _setup_logging()
    from pneumoscan.site import Request
    from pneumoscan.site import calibrate as calibrate_site

    if rule is not None and target_sensitivity is not None:
        _fail("give --target-sensitivity or --rule, not both")
    if rule == "sensitivity":
        _fail("--rule sensitivity: use --target-sensitivity 0.95 instead")
    if target_sensitivity is not None and not 0.0 < target_sensitivity <= 1.0:
        _fail(f"--target-sensitivity {target_sensitivity}: give a value in (0, 1]")
    if cost_fn <= 0:
        _fail(f"--cost-fn {cost_fn}: give a positive number")
    if not 0.0 < sets < 1.0:
        _fail(f"--sets {sets}: give a coverage level between 0 and 1, e.g. 0.9")
    if set_method not in ("lac", "aps"):
        _fail(f"--set-method {set_method!r}: choose lac or aps")
    request = Request(
        rule=rule or "sensitivity",
        target_sensitivity=target_sensitivity or 0.95,
        cost_fn=cost_fn,
        holdout=holdout,
        refit_gate=refit_gate,
        bias=bias,
        set_method=set_method,
        seed=seed,
    )
    report = calibrate_site(
        data, model, out, request, coverage=sets, name=name, bootstrap=bootstrap
    )
    if "after" in report:
        typer.echo(f"held-out before: {_headline(report['before'])}")
        typer.echo(f"held-out after:  {_headline(report['after'])}")
    typer.echo(
        f"wrote {out / 'model.onnx'}, {out / 'model.pt'}, {out / 'card.md'} and {out / 'report.md'}"
    )
    typer.echo(NOT_DIAGNOSTIC_NOTICE)


@app.command()
@friendly
def export(
    model: Annotated[
        str, typer.Option("--model", "-m", help="model file, or binary / three-class")
    ],
    out: Annotated[Path, typer.Option("--out", help="ONNX file to write")],
) -> None:
    """Export a model file to ONNX with its metadata (classes, threshold, temperature,
    preprocessing) and, for the linear head, a class activation map output."""
    _setup_logging()
    from pneumoscan.export import export_onnx

    path = export_onnx(model, out)
    typer.echo(f"wrote {path}")


def _expand(paths: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, glob patterns expanded."""
    import glob

    from pneumoscan.images import IMAGE_SUFFIXES

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


@app.command()
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
    model: Annotated[
        str, typer.Option("--model", "-m", help="binary, three-class, or an exported .onnx file")
    ] = "binary",
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="also write the results as CSV")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the results as JSON")
    ] = None,
    heatmaps: Annotated[
        Path | None, typer.Option("--heatmaps", help="folder for heatmap overlay PNGs")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for ONNX Runtime")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="threads decoding files while the model runs (default: CPU count)"),
    ] = None,
    indeterminate: IndeterminateMargin = 0.0,
    gate: GateSwitch = True,
    sets: Annotated[
        float | None,
        typer.Option(
            "--sets",
            help="also give each film's conformal prediction set at this coverage, e.g. 0.9: the "
            "classes that hold the true one with that probability on films like the calibration films",
        ),
    ] = None,
) -> None:
    """Predict on images with ONNX Runtime (no torch needed): label, calibrated probabilities,
    threshold, gate score, optional heatmaps and conformal prediction sets. Exits 1 when any file
    could not be read."""
    _setup_logging()
    # pydicom logs header complaints; the file's own error line says what matters.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    from pneumoscan.predict_io import write_csv, write_json
    from pneumoscan.runtime import load_runtime_model, predict_many, summarize

    runtime = load_runtime_model(model, threads=threads, gate=gate)
    if not 0.0 <= indeterminate < 0.5:
        _fail(f"--indeterminate {indeterminate}: give a distance from the threshold in [0, 0.5)")
    if indeterminate > 0 and runtime.threshold is None:
        _fail(f"--indeterminate: {runtime.name} has no decision threshold (it is not binary)")
    if workers is not None and workers < 1:
        _fail(f"--workers {workers}: give 1 or more")
    runtime.check_coverage(sets)
    files = _expand(paths)
    if not files:
        _fail(f"no image files found in {' '.join(paths)}")
    if shard is not None:
        from pneumoscan.shards import parse_shard

        part, total = parse_shard(shard), len(files)
        files = part.select(files)
        logger.info("shard %s: %d of %d files", part, len(files), total)
    for option, path in (("--csv", csv_out), ("--json", json_out)):
        if path is not None and path.is_dir():
            _fail(f"{option} {path}: is a folder; give a file name, e.g. {path / 'results'}")
    if heatmaps is not None:
        try:
            heatmaps.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            _fail(f"--heatmaps {heatmaps}: cannot create this folder ({error.strerror or error})")
    stream = predict_many(
        runtime,
        files,
        heatmap_dir=heatmaps,
        indeterminate_margin=indeterminate,
        workers=workers,
        set_coverage=sets,
    )
    if len(files) > 1 and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import track

        stream = track(
            stream, total=len(files), description="predicting", console=Console(stderr=True)
        )
    results = list(stream)
    _print_results(runtime, results)
    for result in results:
        if result.status == "error":
            typer.echo(f"error: {result.message}", err=True)
    for option, path, write in (("--csv", csv_out, write_csv), ("--json", json_out, write_json)):
        if path is not None:
            try:
                write(path, results, runtime)
            except OSError as error:
                _fail(f"{option} {path}: cannot write it ({error.strerror or error})")
    summary = summarize(results)
    typer.echo(summary.text())
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _print_results(runtime, results) -> None:
    """The table on screen: every status as it is, probabilities where there are some, and the
    gate score under its own name."""
    from rich.console import Console
    from rich.table import Table

    from pneumoscan.runtime import OK, STATUS_TEXT

    table = Table(
        title=f"pneumoscan {runtime.name} ({runtime.version})", caption=NOT_DIAGNOSTIC_NOTICE
    )
    table.add_column("file", overflow="fold")
    table.add_column("result")
    for name in runtime.class_names:
        table.add_column(f"P({name})", justify="right")
    table.add_column("gate score", justify="right")
    with_sets = any(result.prediction_set is not None for result in results)
    if with_sets:
        coverage = next(r.set_coverage for r in results if r.set_coverage is not None)
        table.add_column(f"{coverage:.0%} set")
    styles = {"indeterminate": "yellow", "not_chest_xray": "magenta", "error": "red"}
    for result in results:
        shown = result.label if result.status == OK else STATUS_TEXT[result.status]
        if result.status in styles:
            shown = f"[{styles[result.status]}]{shown}[/{styles[result.status]}]"
        table.add_row(
            result.source,
            shown,
            *[
                f"{result.probabilities[n]:.3f}" if result.probabilities else ""
                for n in runtime.class_names
            ],
            "" if result.gate_score is None else f"{result.gate_score:.1f}",
            *(["{" + ", ".join(result.prediction_set or []) + "}"] if with_sets else []),
        )
    console = Console()
    console.print(table)
    if runtime.threshold is not None:
        console.print(
            f"threshold on P({runtime.class_names[1]}): {runtime.threshold:.3f} (chosen on the "
            "model's calibration films); probabilities are calibrated"
        )
    if runtime.ood_threshold is not None:
        console.print(
            f"gate: scores above {runtime.ood_threshold:.1f} are refused as not a chest X-ray"
        )
    if with_sets:
        console.print(
            f"sets: split-conformal ({runtime.conformal.method} score) at {coverage:.0%} coverage, "
            "calibrated on "
            f"{runtime.conformal.films} films ({runtime.conformal.source}); the promise holds for "
            "films like those, not for a new site until it is recalibrated (`pneumoscan calibrate`)"
        )


@app.command("distill-targets")
@friendly
def distill_targets(
    models: Annotated[
        list[Path], typer.Argument(help="teacher model files (.pt), e.g. runs/*/model.pt")
    ],
    out: Annotated[Path, typer.Option("--out", help="CSV of teacher probabilities to write")],
    data: Annotated[
        Path, typer.Option("--data", help="data folder with the training films")
    ] = Path("../shared/data/chest_xray"),
) -> None:
    """Average the teacher networks' logits on every training film (as stored) and write their
    probabilities, for `pneumoscan train ... train.distill_targets=CSV`."""
    _setup_logging()
    from pneumoscan.distill import write_teacher_targets

    typer.echo(f"wrote {write_teacher_targets(models, data, out)}")


@app.command()
@friendly
def ship(
    run: Annotated[
        Path | None,
        typer.Option("--run", help="finished run folder (holds model.pt and split.csv)"),
    ] = None,
    name: Annotated[
        str, typer.Option("--name", help="shipped name, e.g. binary or three-class")
    ] = "three-class",
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            "--ensemble",
            help="a member run (repeat for each; runs on different patient folds): ship their "
            "mean as one ONNX graph, fitted and reported on out-of-fold films",
        ),
    ] = None,
    stress_dir: Annotated[
        Path, typer.Option("--stress-dir", help="where the stress benchmark writes")
    ] = Path("docs/stress"),
    fold_runs: Annotated[
        list[Path] | None,
        typer.Option("--fold-run", help="the same recipe trained on another fold (fold spread)"),
    ] = None,
    derive: Annotated[
        str | None,
        typer.Option("--derive", help="binary: ship a three-class run as the binary model"),
    ] = None,
    rule: Annotated[
        str,
        typer.Option("--rule", help="binary threshold rule: balanced, youden, sensitivity, half"),
    ] = "balanced",
    stress_data: Annotated[
        Path | None,
        typer.Option(
            "--stress-data", help="data folder: run the shift stress benchmark for the card"
        ),
    ] = None,
    models_dir: Annotated[
        Path, typer.Option("--models-dir", help="where shipped models live")
    ] = Path("models"),
    card_only: Annotated[
        bool, typer.Option("--card-only", help="only rewrite the model card from the shipped files")
    ] = False,
) -> None:
    """Ship a run: cross-fitted calibration, refitted gate, fp16 model file, parity-checked ONNX,
    stress benchmark and a model card generated from what was recorded."""
    _setup_logging()
    from pneumoscan.ship import ship_model, write_card

    if card_only:
        path = write_card(name, models_dir, stress_dir=stress_dir / name)
    else:
        if run is None and not ensemble:
            raise typer.BadParameter("give --run RUN, or --ensemble RUN for each member")
        path = ship_model(
            run,
            name,
            models_dir,
            fold_runs or [],
            derive,
            rule,
            stress_data=stress_data,
            stress_dir=stress_dir,
            ensemble=ensemble or [],
        )
    typer.echo(f"wrote {path}")


@app.command()
@friendly
def bench(
    images: Annotated[
        list[Path], typer.Option("--images", help="radiograph files or folders to time on")
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="binary, three-class or an .onnx file")
    ] = "binary",
    out: Annotated[Path, typer.Option("--out", help="Markdown report to write")] = Path(
        "docs/benchmarks.md"
    ),
    int8_run: Annotated[
        Path | None,
        typer.Option(
            "--int8-run", help="also try int8 quantization, judged on this run's validation split"
        ),
    ] = None,
    films: Annotated[
        int, typer.Option(help="films in the whole-process folder benchmark (cycled from --images)")
    ] = 624,
    full_size_films: Annotated[
        int, typer.Option(help="films upscaled to full size for the same benchmark (0: skip)")
    ] = 200,
    repeats: Annotated[int, typer.Option(help="runs of each whole-process command")] = 3,
) -> None:
    """Benchmark prediction speed: in-process latency (ONNX vs torch eager), then whole processes
    from the command line: cold start, folders to CSV with and without heatmaps, 256 px and
    full-size films."""
    from pneumoscan.bench import speed_report, write_report

    files = _expand([str(path) for path in images])
    if not files:
        _fail("--images: no image files found")
    report = speed_report(
        model, files, films=films, full_size_films=full_size_films, process_repeats=repeats
    )
    typer.echo(report)
    write_report(report, out, section="predict-speed")
    if int8_run is not None:
        from pneumoscan.bench import quantization_report

        int8 = quantization_report(model, int8_run)
        typer.echo(int8)
        write_report(int8, out, section="int8")
    typer.echo(f"wrote {out}")


@app.command()
@friendly
def merge(
    parts: Annotated[
        list[Path], typer.Argument(help="CSV parts written by predict --csv --shard, in order")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="the joined CSV to write")] = Path(
        "predictions.csv"
    ),
) -> None:
    """Join the CSV parts of a sharded `predict` into one file, rows in the order of the parts;
    refuses parts of different models and files predicted twice."""
    from pneumoscan.shards import merge_csv

    merged = merge_csv(parts, out)
    typer.echo(f"wrote {out}: {merged.rows} rows from {merged.parts} parts")


@app.command("bench-ood")
@friendly
def bench_ood(
    model: Annotated[
        str, typer.Option("--model", "-m", help="binary, three-class or an .onnx file")
    ] = "binary",
    run: Annotated[
        Path | None, typer.Option("--run", help="training run whose validation films to check")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Markdown report to write")] = Path(
        "docs/ood.md"
    ),
) -> None:
    """Measure the out-of-distribution gate: rejection of photos, documents, screenshots, blank and
    noise images, and of the run's validation chest X-rays."""
    from pneumoscan.bench import gate_report, write_report

    report = gate_report(model, run)
    typer.echo(report)
    typer.echo(f"wrote {write_report(report, out)}")


@app.command()
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
    _setup_logging()
    from pneumoscan.experiments import STUDIES, run_study

    if study not in STUDIES:
        _fail(f"unknown study {study!r}; choose {' or '.join(STUDIES)}")
    report = run_study(study, data, out or Path("runs") / study, quick)
    typer.echo(report.read_text())


@app.command()
@friendly
def stress(
    data: DataDir,
    model: Annotated[
        str, typer.Option("--model", "-m", help="binary, three-class or an .onnx file")
    ] = "binary",
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
    _setup_logging()
    from pneumoscan.stress import run_stress

    points = None
    if thresholds:
        try:
            points = [float(value) for value in thresholds.split(",")]
        except ValueError:
            _fail(f"--thresholds {thresholds!r}: give numbers between 0 and 1, e.g. 0.1,0.5")
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


@app.command()
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
    _setup_logging()
    try:
        import uvicorn

        from pneumoscan.serve.app import SETTINGS_ENV, ServeSettings, create_app
    except ImportError as error:
        _fail(
            f'serve needs the [serve] extra ({error.name} is missing): pip install "pneumoscan[serve]"'
        )
    if workers < 1:
        _fail(f"--workers {workers}: give 1 or more")
    try:
        settings = ServeSettings.from_environment(
            models=tuple(model or ("binary", "three-class")),
            gate=gate,
            threads=threads,
            parallel=parallel,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_pixels=max_pixels,
            max_in_flight=max_in_flight,
            request_timeout_s=timeout,
            indeterminate_margin=indeterminate,
            cors_origins=tuple(cors_origin or ()),
        )
    except ValueError as error:
        _fail(str(error))
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
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
