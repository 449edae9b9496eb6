"""CSV and JSON files of predictions, each carrying the not-a-diagnostic-device notice."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pneumoscan.fileio import atomic_write_text
from pneumoscan.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.runtime import OnnxModel, Prediction


def write_csv(path: Path, results: list[Prediction], model: OnnxModel) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "file",
            "status",
            "label",
            *[f"p_{n}" for n in model.class_names],
            "threshold",
            "message",
            "notice",
        ]
    )
    for result in results:
        probabilities = [
            f"{result.probabilities[n]:.6f}" if result.probabilities else ""
            for n in model.class_names
        ]
        threshold = "" if result.threshold is None else f"{result.threshold:.6f}"
        writer.writerow(
            [
                result.source,
                result.status,
                result.label or "",
                *probabilities,
                threshold,
                "" if result.ood_score is None else f"{result.ood_score:.4f}",
                result.message or "",
                NOT_DIAGNOSTIC_NOTICE,
            ]
        )
    atomic_write_text(Path(path), buffer.getvalue())


def write_json(path: Path, results: list[Prediction], model: OnnxModel) -> None:
    document = {
        "notice": NOT_DIAGNOSTIC_NOTICE,
        "model": {
            key: model.metadata[key]
            for key in ("name", "model_version", "task", "class_names", "threshold", "temperature")
        },
        "predictions": [result.to_dict() for result in results],
    }
    atomic_write_text(Path(path), json.dumps(document, indent=2))
