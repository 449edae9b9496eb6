"""The model contract: the published schema matches the code, every shipped model meets it, and a
model file with poisoned metadata is refused in one line before it predicts anything."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import onnx
import pytest

from pneumoscan.core.contract import SCHEMA_FILE, schema_text
from pneumoscan.core.decision import METADATA_KEY
from pneumoscan.core.errors import ModelFileError
from pneumoscan.runtime.model import OnnxModel

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "models").glob("*.onnx"))
EXAMPLES = REPO / "examples"


def _metadata(proto: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])


def test_published_schema_is_the_codes_schema():
    assert (REPO / SCHEMA_FILE).read_text() == schema_text(), (
        f"{SCHEMA_FILE} is stale: run `python -m pneumoscan.core.contract`"
    )


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_model_validates_against_the_published_schema(path):
    schema = json.loads((REPO / SCHEMA_FILE).read_text())
    metadata = _metadata(onnx.load(str(path), load_external_data=False))
    jsonschema.validate(metadata, schema)


POISONS = {
    "nan-temperature": ({"temperature": math.nan}, "'temperature'"),
    "zero-temperature": ({"temperature": 0.0}, "'temperature'"),
    "negative-temperature": ({"temperature": -0.64}, "'temperature'"),
    "threshold-1.5": ({"threshold": 1.5}, "'threshold'"),
    "infinite-bias": ({"class_bias": [0.0, math.inf]}, "'class_bias"),
    "short-bias": ({"class_bias": [0.1]}, "class_bias: 1 values for 2 classes"),
    "zero-std": ({"preprocess": {"size": 160, "mean": [0.5], "std": [0.0]}}, "'preprocess.std"),
    "huge-input": ({"preprocess": {"size": 100000, "mean": [0.5], "std": [0.5]}}, "'preprocess"),
}


def _poisoned(tmp_path: Path, change: dict) -> Path:
    proto = onnx.load(str(REPO / "models" / "binary.onnx"))
    metadata = {**_metadata(proto), **change}
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps(metadata)  # NaN and Infinity as Python's json writes them
    path = tmp_path / "poisoned.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("name", sorted(POISONS))
def test_poisoned_metadata_is_refused_on_load(tmp_path, name):
    change, field = POISONS[name]
    path = _poisoned(tmp_path, change)
    with pytest.raises(ModelFileError) as error:
        OnnxModel(path)
    message = str(error.value)
    assert str(path) in message and field in message and "\n" not in message


def test_predict_with_a_nan_temperature_writes_no_ok_rows(tmp_path):
    path = _poisoned(tmp_path, {"temperature": math.nan})
    out = tmp_path / "out.csv"
    result = subprocess.run(
        [sys.executable, "-m", "pneumoscan", "predict", str(EXAMPLES), "-m", str(path)]
        + ["--csv", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "'temperature'" in result.stderr
    assert not out.exists() or ",ok," not in out.read_text()


def test_a_validated_metadata_text_skips_pydantic_next_time_and_a_poisoned_one_never_does(
    tmp_path, monkeypatch
):
    """Once a model's metadata text has passed the contract, later processes that load it skip
    pydantic (a fifth of a cold predict); a poisoned text has other digests and is still checked
    in full, whatever the cache holds."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PNEUMOSCAN_ONNX_CACHE", str(cache))
    good = tmp_path / "good.onnx"
    good.write_bytes((REPO / "models" / "binary.onnx").read_bytes())
    load = (
        "import sys\n"
        "from pneumoscan.runtime.model import OnnxModel\n"
        f"OnnxModel({str(good)!r})\n"
        "print('pydantic' in sys.modules)\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", load], capture_output=True, text=True)
        for _ in range(2)
    ]
    assert [run.stdout.split()[-1] for run in runs] == ["True", "False"], runs[1].stderr[-1000:]
    assert len(list((cache / "contracts").iterdir())) == 1
    for change, field in POISONS.values():
        with pytest.raises(ModelFileError, match=re.escape(field)):
            OnnxModel(_poisoned(tmp_path, change))
    assert len(list((cache / "contracts").iterdir())) == 1  # no marker for what failed
