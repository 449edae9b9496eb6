"""Chest films as DICOM, generated here: real example JPEGs (or data-set images) wrapped into DX or
CR objects with made-up patient fields, and hostile variants. Nothing binary is committed."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from pneumoscan.devtools.dicom_harness import chest_film, jpeg_pixels

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PNEUMONIA_JPEG = EXAMPLES / "pneumonia_person1946_bacteria_4874.jpeg"
NORMAL_JPEG = EXAMPLES / "normal_NORMAL2-IM-1427-0001.jpeg"
# The made-up patient fields of `chest_film`, which must never reach a log line, an error or a
# file name.
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "SECRET-12345"
__all__ = ["chest_film", "example_film", "jpeg_pixels", "write_film"]


def write_film(path: Path, dataset: Dataset) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def example_film(path: Path, which: str = "pneumonia", **options) -> Path:
    """One of the two example JPEGs (known labels) wrapped into a DX film at `path`."""
    jpeg = PNEUMONIA_JPEG if which == "pneumonia" else NORMAL_JPEG
    return write_film(path, chest_film(jpeg_pixels(jpeg), **options))
