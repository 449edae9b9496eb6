"""CSV and JSON files of predictions, each row and document carrying the not-a-diagnostic-device
notice. The columns and keys are defined here once; docs/usage.md documents them and
tests/runtime/test_outputs.py reads them back with csv, json and pandas.

CSV columns: file, status, label, p_<class> (one per class, in the model's order), threshold,
gate_score, gate_reason, prediction_set, set_coverage, message, model, model_version, notice; a
part of a sharded run (`predict --shard I/N`) ends with a column `shard I/N` (see `shards`).
gate_reason says why a not_chest_xray input was refused: wrong modality, not chest or lateral view
(from the DICOM header, before the network runs), no radiograph structure or feature distance.
prediction_set holds the conformal set's classes joined by "|" (e.g. "bacteria|virus"), filled
only with `predict --sets LEVEL`. Empty cells mean "not applicable" (no label
unless status is ok; no probabilities for not_chest_xray or error; no gate score for a model without a gate or
for a file that could not be read). With --no-gate the score is still reported, but nothing is refused.
A cell that starts with = + - @ tab or carriage return (a file named `=1+2.jpeg`) is written with a
`'` before it, so that a spreadsheet shows it rather than runs it (see core.csvcells).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from pneumoscan.core.csvcells import guard_row
from pneumoscan.core.fileio import atomic_write_text
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.runtime.model import OnnxModel
from pneumoscan.runtime.predict import Result, summarize
from pneumoscan.runtime.shards import Shard

JSON_MODEL_KEYS = ("name", "model_version", "task", "class_names", "threshold", "temperature")


def csv_columns(class_names: Sequence[str]) -> list[str]:
    return [
        "file",
        "status",
        "label",
        *[f"p_{name}" for name in class_names],
        "threshold",
        "gate_score",
        "gate_reason",
        "prediction_set",
        "set_coverage",
        "message",
        "model",
        "model_version",
        "notice",
    ]


def _number(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def csv_row(result: Result, class_names: Sequence[str]) -> list[str]:
    row = [
        result.source,
        result.status,
        result.label or "",
        *[_number(result.probabilities.get(name)) for name in class_names],
        _number(result.threshold),
        _number(result.gate_score, 4),
        result.gate_reason or "",
        "|".join(result.prediction_set) if result.prediction_set is not None else "",
        _number(result.set_coverage, 3),
        result.message or "",
        result.model_name or "",
        result.model_version or "",
        result.notice,
    ]
    return row


def write_csv(
    path: Path, results: list[Result], model: OnnxModel, shard: Shard | None = None
) -> None:
    """With `shard`, a part of a sharded run: a last column names the shard (see `shards`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    tail = [[shard.column], [str(shard)]] if shard is not None else [[], []]
    writer.writerow(csv_columns(model.class_names) + tail[0])
    # File names and messages come from users: no cell may reach a spreadsheet as a formula.
    writer.writerows(guard_row(csv_row(result, model.class_names) + tail[1]) for result in results)
    atomic_write_text(Path(path), buffer.getvalue())


def write_json(path: Path, results: list[Result], model: OnnxModel) -> None:
    """{notice, model: {name, model_version, ...}, conformal: {films, source} | null,
    summary: {predicted, ...}, predictions: [...]}"""
    summary = summarize(results)
    document = {
        "notice": NOT_DIAGNOSTIC_NOTICE,
        "model": {key: model.metadata.get(key) for key in JSON_MODEL_KEYS},
        "conformal": {"films": model.conformal.films, "source": model.conformal.source}
        if model.conformal is not None
        else None,
        "summary": {
            "predicted": summary.predicted,
            "indeterminate": summary.indeterminate,
            "not_chest_xray": summary.not_chest_xray,
            "failed": summary.failed,
        },
        "predictions": [result.to_dict(heatmap="path") for result in results],
    }
    atomic_write_text(Path(path), json.dumps(document, indent=2))
