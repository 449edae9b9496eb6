"""Training commands: `train`, `cv`, `export`, `ship` and `models` (torch, the [train] extra)."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from pneumoscan.cli.common import (
    fail,
    friendly,
    setup_logging,
)
from pneumoscan.evaluation.rules import rules_help

# Lightning's notes between the progress bars: accelerator availability, the litlogger tip,
# "Seed set to", "`Trainer.fit` stopped", and its warnings about a non-empty checkpoint folder or
# the logging interval; torch's and Lightning's deprecation warnings. The run's own records, the
# rich progress and metrics.csv stay; `train --verbose` shows them all.
TRAINING_LIBRARIES = ("lightning", "lightning.pytorch", "lightning.fabric", "torch")


def quiet_training_libraries() -> None:
    import warnings

    import lightning.pytorch  # noqa: F401 (it sets its loggers' levels on import: set them after)

    for name in TRAINING_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module=re.escape(name) + r"(\..*)?$")
    # Lightning writes its notes as warnings through rank_zero_warn: from its own modules.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


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
        bool,
        typer.Option(
            "--resume",
            help="continue an interrupted run in --out (its checkpoints are read as weights "
            "only: one holding other objects is refused)",
        ),
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
            help="fine-tune from this model: binary-fast (the shipped network with a torch file) or a .pt file (a calibrated "
            "DIR/model.pt too); without --config, a short recipe (3 epochs, lr 1e-4)",
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="also show Lightning's notes and library warnings"),
    ] = False,
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
    setup_logging(verbose)
    if not verbose:
        quiet_training_libraries()
    from pneumoscan.core.config import FINETUNE_RECIPE, load_config

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

    from pneumoscan.training.fit import fit

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
    from pneumoscan.core.shipped import resolve_model
    from pneumoscan.training.model_file import load_model_file

    return load_model_file(resolve_model(reference))[1].task


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
    setup_logging()
    from pneumoscan.core.config import load_config
    from pneumoscan.training.fit import cross_validate

    overrides = list(override or []) + ([f"data.root={data}"] if data is not None else [])
    try:
        fold_list = [int(f) for f in folds.split(",") if f.strip()]
    except ValueError:
        fail(f"--folds {folds!r}: give comma-separated numbers, e.g. 0,1,2")
    cross_validate(load_config(config, overrides), out, fold_list, progress=sys.stderr.isatty())
    typer.echo((out / "cv_summary.md").read_text())


@friendly
def export(
    model: Annotated[
        str, typer.Option("--model", "-m", help="model file, or binary / three-class")
    ],
    out: Annotated[Path, typer.Option("--out", help="ONNX file to write")],
) -> None:
    """Export a model file to ONNX with its metadata (classes, threshold, temperature,
    preprocessing) and, for the linear head, a class activation map output."""
    setup_logging()
    from pneumoscan.training.export import export_onnx

    path = export_onnx(model, out)
    typer.echo(f"wrote {path}")


_OofRunOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--oof-run",
        help="with --ensemble: a run on another fold of the members' split that is not in the "
        "graph (repeat for each); its validation films join the out-of-fold films that "
        "calibration is fitted and reported on",
    ),
]

_Int8Option = Annotated[
    bool,
    typer.Option(
        "--int8",
        help="ship int8 convolutions (static quantization on training films), checked against "
        "fp32 on every member's validation films; the fp16 model file stays in RUN/shipped/",
    ),
]


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
    oof_runs: _OofRunOption = None,
    stress_dir: Annotated[
        Path, typer.Option("--stress-dir", help="where the stress benchmark writes")
    ] = Path("docs/stress"),
    class_bias: Annotated[
        bool,
        typer.Option(
            "--class-bias",
            help="three-class: fit per-class logit biases with the temperature "
            "(bias-corrected temperature scaling), cross-fitted for the reported figures",
        ),
    ] = False,
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
        typer.Option("--rule", help=f"binary threshold rule: {rules_help()}"),
    ] = "balanced",
    cost_fn: Annotated[
        float,
        typer.Option(
            "--cost-fn",
            help="with --rule cost: what a missed pneumonia costs, in false alarms",
        ),
    ] = 1.0,
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
    int8: _Int8Option = False,
) -> None:
    """Ship a run: cross-fitted calibration, refitted gate, fp16 model file, parity-checked ONNX,
    stress benchmark and a model card generated from what was recorded."""
    setup_logging()
    from pneumoscan.training.ship import ship_model, write_card

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
            class_bias=class_bias,
            cost_fn=cost_fn,
            int8=int8,
            oof_runs=oof_runs or [],
        )
    typer.echo(f"wrote {path}")


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
    setup_logging()
    from pneumoscan.training.distill import write_teacher_targets

    typer.echo(f"wrote {write_teacher_targets(models, data, out)}")


@friendly
def restore_run(
    model: Annotated[Path, typer.Argument(help="a model file (.pt) whose run folder is gone")],
    out: Annotated[Path, typer.Option("--out", help="run folder to write")],
) -> None:
    """Rebuild a run folder (model.pt and split.csv, the split redrawn from the recorded config)
    for a shipped model, so `ship --ensemble` and `stress` can use it as a member."""
    setup_logging()
    from pneumoscan.training.fit import restore_run as restore

    typer.echo(f"wrote {restore(model, out)}")


def models() -> None:
    """List the architectures, heads and training strategies."""
    from pneumoscan.training.networks import ARCHITECTURES, HEADS

    for name, arch in ARCHITECTURES.items():
        weights = arch.pretrained_source or "trained from scratch"
        typer.echo(f"{name:20s} {arch.description}; {arch.preprocess.size} px; {weights}")
    typer.echo(f"heads: {', '.join(HEADS)}")
    typer.echo("strategies: full, frozen, finetune-last-N")
