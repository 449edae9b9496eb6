"""The floors in pyproject.toml are versions the code runs safely on."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# pydicom 3: `pydicom.pixels` (apply_voi_lut, get_decoder) and dcmread's keyword arguments.
# onnxruntime 1.19: external-data paths are checked to stay in the model's folder.
FLOORS = {"pydicom": (3, 0), "onnxruntime": (1, 19)}


def _floors() -> dict[str, tuple[int, ...]]:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found = {}
    for spec in dependencies:
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", spec)
        if match:
            found[match.group(1).lower()] = tuple(int(p) for p in match.group(2).split("."))
    return found


def test_floors_are_versions_the_code_needs():
    floors = _floors()
    for name, needed in FLOORS.items():
        assert name in floors, f"pyproject.toml: {name} has no >= floor"
        assert floors[name] >= needed, f"pyproject.toml: {name}>={floors[name]} is below {needed}"
