"""docs/cli.md is the CLI reference as typer renders it from the app, so it cannot drift from
`--help`: a new option, a changed default or help text fails here until the file is rewritten."""

import subprocess
import sys
from pathlib import Path

from pneumoscan.cli.reference import reference_markdown

REPO = Path(__file__).resolve().parents[2]


def test_docs_cli_md_is_what_the_app_says():
    assert (REPO / "docs" / "cli.md").read_text() == reference_markdown(), (
        "docs/cli.md is stale; rewrite it with `python -m pneumoscan.cli.reference`"
    )


def test_reference_lists_every_command_with_its_options():
    text = reference_markdown()
    for command in ("predict", "serve", "dicom-node", "calibrate", "train", "merge", "monitor"):
        assert f"## `pneumoscan {command}`" in text, command
    assert "* `--heatmaps <path>`: folder for heatmap overlay PNGs" in text
    assert "not a diagnostic device" in text


def test_the_generator_writes_the_file(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pneumoscan.cli.reference"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "docs" / "cli.md").read_text() == reference_markdown()
    assert "wrote docs/cli.md" in done.stdout
