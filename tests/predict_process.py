"""`pneumoscan predict` as a user runs it: a new process, for tests of what reaches the screen,
the CSV and the JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pneumoscan

# this checkout's package, not whichever copy the interpreter has installed
SRC = Path(pneumoscan.__file__).resolve().parents[1]


def run_predict(folder: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """Predict `folder` into tmp_path/out.csv and out.json, with `extra` options."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumoscan",
            "predict",
            str(folder),
            "--csv",
            str(tmp_path / "out.csv"),
            "--json",
            str(tmp_path / "out.json"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
    )
