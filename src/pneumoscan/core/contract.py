"""The model contract: what an exported model file promises about itself, validated once on load.

An ONNX file's pneumoscan metadata (`decision.METADATA_KEY`) is a JSON object. This module says
which of its fields the runtime acts on and what values they may take, as pydantic models, so a
poisoned or damaged file is refused with one line naming the file and the field instead of
silently giving wrong answers (a NaN temperature labels every film "normal"; a negative one
inverts every decision). Its JSON Schema is published as docs/model-contract.schema.json
(`python -m pneumoscan.core.contract`); a test keeps the two equal. numpy-free and torch-free:
the lean runtime imports it.

Fields the runtime does not act on (the record, validation metrics, provenance) are kept as they
are (`extra="allow"`): the contract bounds what decides a prediction, not what documents it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from pneumoscan.core.decision import ONNX_METADATA_FORMAT
from pneumoscan.core.errors import ModelFileError

SCHEMA_FILE = Path("docs/model-contract.schema.json")
MAX_INPUT_SIZE = 1024  # px a side: larger is not a chest-film model, and would exhaust memory
MAX_CLASSES = 64
MAX_CONFORMAL_SCORES = 1_000_000


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Finite = Annotated[float, AfterValidator(_finite)]
Positive = Annotated[float, AfterValidator(_finite), Field(gt=0)]


class Preprocess(BaseModel):
    """How a decoded [0, 1] film becomes the model's input (`core.preprocess.PreprocessSpec`)."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=8, le=MAX_INPUT_SIZE)
    mean: list[Finite] = Field(min_length=1, max_length=4)
    std: list[Positive] = Field(min_length=1, max_length=4)
    intensity: Literal["none", "equalize"] = "none"


class Conformal(BaseModel):
    """Split-conformal calibration scores (`core.conformal.ConformalCalibration`)."""

    model_config = ConfigDict(extra="allow")

    method: str
    source: str
    scores: list[Finite] = Field(min_length=1, max_length=MAX_CONFORMAL_SCORES)
    class_scores: list[list[Finite]] | None = None


class Rule(BaseModel):
    """The binary threshold rule that chose `threshold` and its parameters
    (`evaluation.calibration.THRESHOLD_RULES`)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Finite] = {}


class ModelContract(BaseModel):
    """The fields of an exported model's metadata that decide its predictions."""

    model_config = ConfigDict(extra="allow")

    format: Literal[ONNX_METADATA_FORMAT] = ONNX_METADATA_FORMAT
    name: str | None = None
    model_version: str | None = None
    task: str | None = None
    class_names: list[str] = Field(min_length=2, max_length=MAX_CLASSES)
    preprocess: Preprocess
    # The operating point: calibrated probability = softmax(logits / temperature + class_bias);
    # binary decision P(class 1) >= threshold; the gate refuses a score above ood_threshold.
    temperature: Positive = 1.0
    class_bias: list[Finite] | None = None
    threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    rule: Rule | None = None
    ood_threshold: Finite | None = None
    has_cam: bool = False
    conformal: Conformal | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelContract:
        classes = len(self.class_names)
        if self.class_bias is not None and len(self.class_bias) != classes:
            raise ValueError(f"class_bias: {len(self.class_bias)} values for {classes} classes")
        if len(self.preprocess.mean) != len(self.preprocess.std):
            raise ValueError("preprocess: mean and std have different lengths")
        return self


def validate_metadata(metadata: dict, path: Path | str) -> ModelContract:
    """The contract of one model file's metadata, or a ModelFileError naming the file and field."""
    try:
        return ModelContract.model_validate(metadata)
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a check across fields
            raise ModelFileError(
                f"{path}: metadata is inconsistent ({message}); re-export or recalibrate it."
            ) from None
        field = ".".join(str(part) for part in first["loc"])
        raise ModelFileError(
            f"{path}: metadata field {field!r} is invalid ({message}, got "
            f"{_shown(first.get('input'))}); this file cannot be trusted to predict. "
            "Re-export or recalibrate it."
        ) from None


# The fields that make up the operating point: what `calibrate` refits for a site.
OPERATING_FIELDS = ("temperature", "class_bias", "threshold", "rule", "ood_threshold", "conformal")


def recalibrated(metadata: dict, path: Path | str, **changes) -> dict:
    """A model file's metadata with a new operating point (`OPERATING_FIELDS`) and a new `name`,
    `model_version` or `record`; everything else (classes, preprocessing, provenance) as it was.
    The result is checked against the contract, so a recalibration cannot write what load refuses.
    """
    allowed = {*OPERATING_FIELDS, "name", "model_version", "record"}
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise ValueError(f"not operating-point fields: {', '.join(unknown)}")
    updated = {**metadata, **changes}
    validate_metadata(updated, path)
    return updated


def _shown(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def schema_text() -> str:
    """The contract's JSON Schema, as written to docs/model-contract.schema.json."""
    schema = ModelContract.model_json_schema()
    schema["title"] = "pneumoscan model contract"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m pneumoscan.core.contract: rewrite the published schema
    from pneumoscan.core.fileio import atomic_write_text

    atomic_write_text(SCHEMA_FILE, schema_text())
    print(f"wrote {SCHEMA_FILE}")
