"""The CLI reference, docs/cli.md, written from the typer app by typer's own Markdown renderer
(what `typer pneumoscan.cli utils docs --name pneumoscan` prints), so it cannot drift from
`--help`: `python -m pneumoscan.cli.reference` rewrites it, and tests/test_docs.py fails when the
file differs from what the app says."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.cli import get_docs_for_click
from typer.core import MARKUP_MODE_KEY

from pneumoscan.cli import app

REFERENCE_FILE = Path("docs/cli.md")
HEADER = "<!-- written from the typer app by `python -m pneumoscan.cli.reference`; do not edit -->"


def reference_markdown() -> str:
    """The whole reference: every command, its arguments and options with their defaults."""
    command = typer.main.get_command(app)
    context = typer.Context(command, info_name="pneumoscan")
    context.ensure_object(dict)[MARKUP_MODE_KEY] = app.rich_markup_mode  # as `utils docs` does
    body = get_docs_for_click(obj=command, ctx=context, name="pneumoscan")
    return f"{HEADER}\n\n{body.strip()}\n"


if __name__ == "__main__":  # python -m pneumoscan.cli.reference: rewrite docs/cli.md
    from pneumoscan.core.fileio import atomic_write_text

    atomic_write_text(REFERENCE_FILE, reference_markdown())
    print(f"wrote {REFERENCE_FILE}")
