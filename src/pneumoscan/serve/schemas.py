"""Request and response models of the HTTP API; they are also its OpenAPI schema at /docs.

Every response that shows a prediction carries the not-a-diagnostic-device notice. Nothing here
has a field for a file name or a DICOM patient field, so none can leak into a response.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE

Status = Literal["ok", "indeterminate", "not_chest_xray", "error"]


class ModelInfo(BaseModel):
    """What a loaded model is, read from its own metadata (never from a copy in the server)."""

    name: str = Field(description="name to pass as the `model` form field")
    version: str | None = Field(description="model version recorded when it was shipped")
    task: str = Field(description="binary or three_class")
    class_names: list[str]
    threshold: float | None = Field(
        description="binary: decision threshold on the probability of the second class, chosen on "
        "validation; null when the label is the most probable class"
    )
    gate: bool = Field(description="inputs unlike chest radiographs are refused")
    card: str | None = Field(description="the model card (Markdown), when shipped")


class ModelsResponse(BaseModel):
    default: str = Field(description="the model used when a request names none")
    models: list[ModelInfo]
    limits: dict[str, int | float] = Field(description="upload limits enforced by this server")
    notice: str = NOT_DIAGNOSTIC_NOTICE


class Prediction(BaseModel):
    """One film's outcome. `status` says which fields are filled:
    ok / indeterminate: label, probabilities, threshold; not_chest_xray: no diagnosis, only the
    gate score; error: only the message."""

    status: Status
    label: str | None = Field(
        description="predicted class; 'indeterminate' near the threshold; null when no prediction"
    )
    probabilities: dict[str, float] = Field(
        description="temperature-calibrated probability per class (empty when no prediction)"
    )
    threshold: float | None
    gate_score: float | None = Field(
        description="out-of-distribution score; above the model's gate threshold the input is "
        "refused as not a chest X-ray"
    )
    gate_reason: str | None = Field(
        default=None,
        description="why a not_chest_xray input was refused: wrong modality, not chest or "
        "lateral view (from the DICOM header, before the network runs), no radiograph structure "
        "or feature distance; null otherwise",
    )
    message: str | None
    heatmap_png_base64: str | None = Field(
        default=None,
        description="with heatmap=true: PNG of the squared film under the class activation map",
    )
    prediction_set: list[str] | None = Field(
        default=None,
        description="with sets=LEVEL: the split-conformal prediction set, the classes that hold "
        "the true one with that probability on films like the model's calibration films",
    )
    set_coverage: float | None = Field(default=None, description="the level of prediction_set")
    model: str
    model_version: str | None
    notice: str = NOT_DIAGNOSTIC_NOTICE


class BatchItem(Prediction):
    index: int = Field(description="position of the file in the request, from 0")
    error_code: str | None = Field(
        default=None, description="for status 'error': why, e.g. not_an_image, file_too_large"
    )


class BatchResponse(BaseModel):
    results: list[BatchItem]
    counts: dict[str, int] = Field(
        description="outcomes: predicted, indeterminate, not_chest_xray, failed"
    )
    notice: str = NOT_DIAGNOSTIC_NOTICE


class ErrorResponse(BaseModel):
    """Every refused request: a short machine-readable code and a message naming the fix."""

    error: str = Field(description="short code, e.g. file_too_large, unsupported_media_type")
    message: str
    status: int
    notice: str = NOT_DIAGNOSTIC_NOTICE


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    models: list[str]
    in_flight: int
    max_in_flight: int


# The multipart request bodies, written out for OpenAPI: the server parses them itself (in memory,
# see uploads.py), so FastAPI cannot derive them from function parameters.
_MODEL_FIELD = {"type": "string", "description": "a model name from GET /v1/models"}
_HEATMAP_FIELD = {
    "type": "boolean",
    "default": False,
    "description": "add the heatmap overlay as base64 PNG",
}
_SETS_FIELD = {
    "type": "number",
    "exclusiveMinimum": 0,
    "exclusiveMaximum": 1,
    "description": "add each film's conformal prediction set at this coverage, e.g. 0.9 (the "
    "model must carry a conformal calibration: the shipped ones and `pneumoscan calibrate` "
    "outputs do)",
}


def _multipart_body(model_names: list[str], upload: str, upload_schema: dict) -> dict:
    """The multipart form both predict routes take: the upload field, `model`, `heatmap` and
    `sets`."""
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [upload],
                    "properties": {
                        upload: upload_schema,
                        "model": {**_MODEL_FIELD, "enum": model_names},
                        "heatmap": _HEATMAP_FIELD,
                        "sets": _SETS_FIELD,
                    },
                }
            }
        },
    }


def predict_request_body(model_names: list[str]) -> dict:
    return _multipart_body(
        model_names,
        "file",
        {
            "type": "string",
            "format": "binary",
            "description": "one JPEG, PNG or DICOM radiograph",
        },
    )


def batch_request_body(model_names: list[str], max_files: int) -> dict:
    return _multipart_body(
        model_names,
        "files",
        {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,
            "maxItems": max_files,
            "description": "JPEG, PNG or DICOM radiographs, one part each",
        },
    )
