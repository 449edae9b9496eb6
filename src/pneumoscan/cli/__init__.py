"""cli: the `pneumoscan` command, one module per command group; thin.

The entry point is `pneumoscan.cli:app`. Modules: `predict` (predict, merge), `training` (train,
cv, export, ship, distill-targets, restore-run, models), `evaluation` (evaluate, stress, monitor), `site` (validate, calibrate, adapt),
`research` (eda, bench, bench-ood, bench-workers, experiments), `serve` and `dicom` (dicom-node); `common` holds
the shared options, logging set-up and the one-line error wrapper; `reference` writes the CLI reference,
docs/cli.md, from the app. Each command imports its heavy modules inside
itself, so `pneumoscan --help` is instant, and `--help`, `predict` and `serve` never import torch.

May import: every layer, inside the commands; at import time only typer and `core`.
"""

from __future__ import annotations

import os

# Set for the `pneumoscan` process before numpy or pydantic is first imported (a user's own
# setting wins). A cold `pneumoscan predict` spent about a fifth of its time on these two:
# - numpy's OpenBLAS starts a thread pool at import; the CLI's numpy work is small (heatmap
#   upsampling, calibration fits), and torch and ONNX Runtime run their own threads;
# - pydantic scans every installed package's entry points for plugins at the first model it
#   builds; pneumoscan uses none.
PROCESS_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1", "PYDANTIC_DISABLE_PLUGINS": "__all__"}
for _name, _value in PROCESS_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

import typer  # noqa: E402  (imported after the environment is set, as are these two)

from pneumoscan.cli import dicom, evaluation, predict, research, serve, site, training  # noqa: E402
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE  # noqa: E402


def _typer(**options) -> typer.Typer:
    """A Typer app as `pneumoscan` is: its help, no rich tracebacks, no completion commands."""
    return typer.Typer(
        help=f"Pneumonia detection in pediatric chest X-rays. {NOT_DIAGNOSTIC_NOTICE}",
        pretty_exceptions_enable=False,
        add_completion=False,
        **options,
    )


app = _typer(no_args_is_help=True)

# The order `pneumoscan --help` lists them in.
COMMANDS = (
    research.eda,
    training.train,
    training.cv,
    evaluation.evaluate,
    site.validate,
    site.calibrate,
    site.adapt,
    training.export,
    predict.predict,
    training.ship,
    training.distill_targets,
    training.restore_run,
    research.bench,
    predict.merge,
    research.bench_ood,
    research.bench_workers,
    research.experiments,
    evaluation.stress,
    evaluation.monitor,
    serve.serve,
    dicom.dicom_node,
    training.models,
)
for command in COMMANDS:
    app.command()(command)

# Each command by the name typer gives it (its function's, with dashes).
BY_NAME = {command.__name__.replace("_", "-"): command for command in COMMANDS}


def main(argv: list[str] | None = None) -> None:
    """The `pneumoscan` entry point (and `python -m pneumoscan`). When the first argument names a
    command, only that command is built: typer reads every command's signature to build the whole
    app, about 25 ms of a 400 ms cold start. Anything else (no command, `--help`, a typo) goes to
    the whole app, which lists every command or names the unknown one."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    command = BY_NAME.get(argv[0]) if argv else None
    if command is None:
        return app(argv, prog_name="pneumoscan")
    alone = _typer()
    alone.callback()(_group)  # a group of one: `pneumoscan NAME ...` as with the whole app
    alone.command()(command)
    return alone(argv, prog_name="pneumoscan")


def _group() -> None:
    """Pneumonia detection in pediatric chest X-rays."""
