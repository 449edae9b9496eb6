"""Provenance of the shipped models: models/SHA256SUMS holds each file's digest, each card states
it, and loading a shipped name refuses a file that is not the recorded one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pneumoscan.api import load_model
from pneumoscan.core.errors import ModelFileError
from pneumoscan.core.shipped import DIGESTS_FILE, file_sha256, recorded_digests

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_sha256sums_and_cards_match_the_shipped_files():
    recorded = recorded_digests(MODELS)
    files = sorted(p for p in MODELS.iterdir() if p.suffix in (".onnx", ".pt"))
    assert sorted(recorded) == [p.name for p in files]
    for path in files:
        digest = file_sha256(path)
        assert recorded[path.name] == digest, (
            f"{path.name}: run `python -m pneumoscan.core.shipped`"
        )
        card = (MODELS / f"{path.stem}.md").read_text()
        assert f"`models/{path.name}`: sha256 `{digest}`" in card


def test_a_replaced_shipped_file_is_refused_naming_it(tmp_path, monkeypatch):
    for path in MODELS.iterdir():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setenv("PNEUMOSCAN_MODELS_DIR", str(tmp_path))
    assert load_model("binary").name == "binary"  # the copies are the recorded files
    damaged = bytearray((tmp_path / "binary.onnx").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "binary.onnx").write_bytes(bytes(damaged))
    with pytest.raises(ModelFileError) as error:
        load_model("binary")
    message = str(error.value)
    assert "binary.onnx" in message and DIGESTS_FILE in message and "\n" not in message


def test_a_folder_without_sha256sums_is_not_checked(tmp_path, monkeypatch):
    shutil.copy(MODELS / "binary.onnx", tmp_path / "binary.onnx")
    monkeypatch.setenv("PNEUMOSCAN_MODELS_DIR", str(tmp_path))
    assert load_model("binary").name == "binary"


def test_shipped_names_say_which_are_onnx_only_and_where_torch_work_starts(tmp_path, monkeypatch):
    """`binary` and `three-class` ship as int8 ONNX graphs alone: evaluate reads them through
    ONNX Runtime, and asking for their torch file names the single network that has one."""
    from pneumoscan.core.shipped import onnx_only, resolve_model

    for name in ("binary.onnx", "binary-fast.onnx", "binary-fast.pt"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setenv("PNEUMOSCAN_MODELS_DIR", str(tmp_path))
    assert onnx_only("binary") and not onnx_only("binary-fast")
    assert not onnx_only("some/file.onnx")
    assert resolve_model("binary-fast") == tmp_path / "binary-fast.pt"
    with pytest.raises(ModelFileError, match="ONNX graph only.*'binary-fast'"):
        resolve_model("binary")
    assert resolve_model("binary", suffix=".onnx") == tmp_path / "binary.onnx"
