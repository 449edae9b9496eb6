"""File names that are also markup or formulas: the screen shows them as they are, the CSV never
hands a spreadsheet a formula, and `merge` gives the names back exactly."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from predict_process import SRC, run_predict

from pneumoscan.core.csvcells import guard, unguard
from pneumoscan.runtime.shards import merge_csv

EXAMPLE = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.jpeg"))[0]


def _films(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "films"
    folder.mkdir()
    for name in names:  # "b [/x].jpeg" is x].jpeg in a folder "b ["
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLE, folder / name)
    return folder


def test_bracketed_names_show_as_they_are_and_markup_never_loses_the_outputs(tmp_path):
    names = ("film [left].jpeg", "film [right].jpeg", "b [/x].jpeg", "film :smile:.jpeg")
    folder = _films(tmp_path, *names)
    finished = run_predict(folder, tmp_path)
    assert finished.returncode == 0, finished.stderr
    for name in names:
        assert name in finished.stdout
    assert "Traceback" not in finished.stderr
    with (tmp_path / "out.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert len(json.loads((tmp_path / "out.json").read_text())["predictions"]) == 4


@pytest.mark.parametrize(
    "cell",
    ["=1+2", "+1", "-x", "@SUM(A1)", "\tx", "\rx", "'=x", "''=x", "'-x", "'a", "a=b", "", "-1.25"],
)
def test_guard_round_trips_and_disarms_formulas(cell):
    guarded = guard(cell)
    assert unguard(guarded) == cell
    numbers = ("+1", "-1.25")  # a spreadsheet reads these as numbers, never runs them
    assert not guarded.startswith(("=", "+", "-", "@", "\t", "\r")) or cell in numbers


def _predict_here(folder: Path, *extra: str):
    """predict run inside `folder` on ".", so each file cell starts with the file's name."""
    return subprocess.run(
        [sys.executable, "-m", "pneumoscan", "predict", ".", *extra],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=300,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
    )


def test_formula_names_are_guarded_in_the_csv_and_survive_merge(tmp_path):
    names = ["=1+2.jpeg", "'=3+4.jpeg", "@a.jpeg", "plain.jpeg"]
    folder = _films(tmp_path, *names)
    finished = _predict_here(folder, "--csv", str(tmp_path / "out.csv"))
    assert finished.returncode == 0, finished.stderr
    with (tmp_path / "out.csv").open(newline="") as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    assert sorted(files) == sorted(["'=1+2.jpeg", "''=3+4.jpeg", "'@a.jpeg", "plain.jpeg"])

    parts = []
    for index in (1, 2):
        part = tmp_path / f"part-{index}.csv"
        done = _predict_here(folder, "--shard", f"{index}/2", "--csv", str(part))
        assert done.returncode == 0, done.stderr
        parts.append(part)
    merge_csv(parts, tmp_path / "merged.csv")
    with (tmp_path / "merged.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(unguard(row["file"]) for row in rows) == sorted(names)
    assert (tmp_path / "merged.csv").read_bytes() == (tmp_path / "out.csv").read_bytes()
