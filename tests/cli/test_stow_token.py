"""A STOW-RS bearer token is never sent in clear beyond this machine: `predict --stow` and
`dicom-node --stow` refuse an http:// URL with a token unless it is loopback or --insecure-stow."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pneumoscan.cli import app
from pneumoscan.cli.common import check_stow

FILM = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.jpeg"))[0]


@pytest.mark.parametrize("command", [["predict", str(FILM)], ["dicom-node"]])
def test_a_token_over_plain_http_beyond_loopback_is_refused(command):
    result = CliRunner().invoke(
        app, [*command, "--stow", "http://pacs.example.org:8042/dicom-web", "--token", "s3cret"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --stow http://pacs.example.org")
    assert "--insecure-stow" in lines[0] and "s3cret" not in result.output


@pytest.mark.parametrize(
    ("url", "token", "insecure"),
    [
        ("https://pacs.example.org/dicom-web", "t", False),
        ("http://127.0.0.1:8042/dicom-web", "t", False),
        ("http://localhost:8042/dicom-web", "t", False),
        ("http://[::1]:8042/dicom-web", "t", False),
        ("http://pacs.example.org/dicom-web", None, False),
        ("http://pacs.example.org/dicom-web", "t", True),
    ],
)
def test_https_loopback_no_token_or_insecure_stow_pass(url, token, insecure):
    check_stow(url, token, insecure)  # no exit
