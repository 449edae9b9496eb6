"""Reading pneumoscan's SR back with plain pydicom (not the library that wrote it), and dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

PROBABILITY = ("122157", "DCM")
THRESHOLD = ("122411", "DCM")
FINDING = ("121071", "DCM")
COMMENT = ("121106", "DCM")
GATE = ("GATE", "99PNEUMOSCAN")
PNEUMONIA = ("233604007", "SCT")
NORMAL = ("17621005", "SCT")
BACTERIA = ("53084003", "SCT")
VIRUS = ("75570004", "SCT")
PRESENT = ("52101004", "SCT")
ABSENT = ("272519000", "SCT")
INDETERMINATE = ("82334004", "SCT")


def code(sequence) -> tuple[str, str]:
    return str(sequence[0].CodeValue), str(sequence[0].CodingSchemeDesignator)


def walk(dataset):
    """Every content item, depth first."""
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from walk(item)


def groups(sr) -> dict[tuple[str, str], pydicom.Dataset]:
    """Measurement groups by their finding."""
    found = {}
    for item in walk(sr):
        if item.ValueType == "CONTAINER" and code(item.ConceptNameCodeSequence) == (
            "125007",
            "DCM",
        ):
            for child in item.ContentSequence:
                if code(child.ConceptNameCodeSequence) == FINDING:
                    found[code(child.ConceptCodeSequence)] = item
    return found


def evaluation(sr, finding) -> tuple[str, str] | None:
    """The qualitative evaluation of `finding`: present / absent / indeterminate."""
    group = groups(sr).get(finding)
    if group is None:
        return None
    for child in group.ContentSequence:
        if child.ValueType == "CODE" and code(child.ConceptNameCodeSequence) == finding:
            return code(child.ConceptCodeSequence)
    return None


def numbers(sr, finding) -> dict[tuple[str, str], tuple[float, str]]:
    """NUM items of a finding's group: concept -> (value, UCUM unit)."""
    values = {}
    for child in groups(sr)[finding].ContentSequence:
        if child.ValueType == "NUM":
            measured = child.MeasuredValueSequence[0]
            values[code(child.ConceptNameCodeSequence)] = (
                float(measured.NumericValue),
                str(measured.MeasurementUnitsCodeSequence[0].CodeValue),
            )
    return values


def texts(sr) -> list[str]:
    return [str(item.TextValue) for item in walk(sr) if item.ValueType == "TEXT"]


def gate(sr) -> str | None:
    for item in walk(sr):
        if item.ValueType == "CODE" and code(item.ConceptNameCodeSequence) == GATE:
            return str(item.ConceptCodeSequence[0].CodeValue)
    return None


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) from dicom3tools' dciodvfy; skips when it is not installed."""
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy not installed: apt-get install -y dicom3tools (as .ci/run does)")
    run = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return (
        [line for line in lines if line.startswith("Error")],
        [line for line in lines if line.startswith("Warning")],
    )
