"""The runtime keeps ONNX Runtime's optimised graph between processes (a shorter cold start):
the cached graph gives the same answers as the file, a damaged cache entry is replaced, the
cache can be switched off, and the model file is never changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.core.images import read_image
from pneumoscan.core.preprocess import prepare
from pneumoscan.runtime.model import OnnxModel, optimized_cache_path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def model_copy(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PNEUMOSCAN_ONNX_CACHE", str(cache))
    path = tmp_path / "binary.onnx"
    shutil.copy(MODELS / "binary.onnx", path)
    return path, cache


def _films(spec) -> np.ndarray:
    films = sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    return np.stack([prepare(read_image(p, min_side=spec.decode_side), spec) for p in films[:4]])


def test_the_cached_graph_answers_as_the_file_does(model_copy):
    path, cache = model_copy
    before = path.read_bytes()
    first = OnnxModel(path)  # optimises and saves the graph
    entry = optimized_cache_path(path)
    assert entry is not None and entry.parent == cache and entry.is_file()
    assert [p.name for p in cache.glob("*.onnx*")] == [entry.name]  # no partial file left behind
    second = OnnxModel(path)  # loads the saved graph
    films = _films(first.spec)
    a, b = first.run(films), second.run(films)
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-6)
    assert second.metadata == first.metadata and second.threshold == first.threshold
    assert path.read_bytes() == before


def test_a_damaged_cache_entry_is_replaced(model_copy):
    path, _ = model_copy
    OnnxModel(path)
    entry = optimized_cache_path(path)
    entry.write_bytes(b"not an onnx graph")
    model = OnnxModel(path)
    assert model.class_names == ("normal", "pneumonia")
    assert entry.stat().st_size > 1_000_000  # optimised and saved again


def test_a_changed_model_file_gets_its_own_entry(model_copy):
    path, _ = model_copy
    old = optimized_cache_path(path)
    path.write_bytes(path.read_bytes())  # same bytes, new modification time
    import os

    os.utime(path, ns=(1, 1))
    assert optimized_cache_path(path) != old


def test_the_cache_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOSCAN_ONNX_CACHE", "0")
    path = tmp_path / "binary.onnx"
    shutil.copy(MODELS / "binary.onnx", path)
    assert optimized_cache_path(path) is None
    OnnxModel(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.onnx"]


def test_a_cache_folder_that_cannot_be_written_is_passed_over(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PNEUMOSCAN_ONNX_CACHE", str(blocker / "onnx"))  # mkdir fails
    path = tmp_path / "binary.onnx"
    shutil.copy(MODELS / "binary.onnx", path)
    model = OnnxModel(path)
    assert model.class_names == ("normal", "pneumonia")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "binary.onnx"]
