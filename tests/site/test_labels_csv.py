"""A site's labels.csv (path,label[,patient]) as `validate` and `calibrate` read it: a short row, a
path outside the CSV's folder and one film with two labels are one-line errors naming the file and
line(s), never a traceback; `--allow-outside` lets paths leave the folder on purpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pneumoscan.cli import app
from pneumoscan.core.dataset import load_site
from pneumoscan.core.errors import DatasetError

runner = CliRunner()


def _film(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(path)
    return path


@pytest.fixture
def site(tmp_path) -> Path:
    folder = tmp_path / "site"
    _film(folder / "NORMAL" / "a.png")
    _film(folder / "PNEUMONIA" / "b.png")
    _film(tmp_path / "elsewhere" / "c.png")
    return folder


def _csv(site: Path, *rows: str) -> Path:
    path = site / "labels.csv"
    path.write_text("path,label\n" + "".join(row + "\n" for row in rows))
    return path


@pytest.mark.parametrize("command", ["validate", "calibrate"])
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            ("NORMAL/a.png,normal", "PNEUMONIA/b.png"),
            "labels.csv, line 3: fewer fields than the header",
        ),
        (("NORMAL/a.png,normal", "../elsewhere/c.png,pneumonia"), "line 3: ../elsewhere/c.png is"),
        (("NORMAL/a.png,normal", "{outside},pneumonia"), "is outside the CSV's folder"),
        (
            ("NORMAL/a.png,normal", "PNEUMONIA/b.png,pneumonia", "NORMAL/../NORMAL/a.png,virus"),
            "lines 2 and 4: the same film labelled normal and virus",
        ),
    ],
    ids=["short-row", "dot-dot", "absolute", "two-labels"],
)
def test_bad_labels_csv_is_a_one_line_error(site, tmp_path, command, rows, expected):
    outside = tmp_path / "elsewhere" / "c.png"
    labels = _csv(site, *(row.format(outside=outside) for row in rows))
    result = runner.invoke(app, [command, str(labels), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert "labels.csv" in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, (AttributeError, TypeError))


def test_allow_outside_accepts_paths_outside_the_folder(site, tmp_path):
    outside = tmp_path / "elsewhere" / "c.png"
    labels = _csv(
        site, "NORMAL/a.png,normal", f"{outside},pneumonia", "../elsewhere/c.png,pneumonia"
    )
    with pytest.raises(DatasetError, match="--allow-outside"):
        load_site(labels)
    samples = load_site(labels, allow_outside=True)
    assert [sample.path.resolve() for sample in samples][1:] == [outside, outside]


def test_both_site_commands_take_allow_outside():
    for command in ("validate", "calibrate"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})
        assert "--allow-outside" in result.output, command


def test_training_on_a_site_csv_leaves_its_folder_only_with_data_allow_outside(site, tmp_path):
    from pneumoscan.core.config import load_config
    from pneumoscan.core.dataset import training_pool

    labels = _csv(site, "NORMAL/a.png,normal", f"{tmp_path / 'elsewhere' / 'c.png'},pneumonia")
    with pytest.raises(DatasetError, match="data.allow_outside=true"):
        training_pool(labels, load_config(None, []).data.allow_outside)
    allowed = load_config(None, ["data.allow_outside=true"]).data.allow_outside
    assert len(training_pool(labels, allowed)) == 2
