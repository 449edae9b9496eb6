"""A batch of 50+ broken files: each gets one clear line, the batch goes on, the exit code says so."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import synthetic_radiograph
from dicom_fixtures import set_raw_value, write_dicom
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import UID
from typer.testing import CliRunner

from pneumoscan.cli import app
from pneumoscan.core.images import MAX_IMAGE_PIXELS


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_radiograph(1, size=(300, 260))).save(buffer, format=fmt)
    return buffer.getvalue()


def make_bad_files(folder) -> tuple[list, list]:
    """(bad paths with the phrase each error must contain, good paths with misleading names)."""
    folder.mkdir()
    bad: list[tuple] = []
    jpeg, png = _encoded("JPEG"), _encoded("PNG")

    def add(name: str, content: bytes, phrase: str) -> None:
        (folder / name).write_bytes(content)
        bad.append((folder / name, phrase))

    for suffix in (".jpeg", ".jpg", ".png", ".dcm", ".dicom"):
        add(f"empty{suffix}", b"", "file is empty")
    for index, fraction in enumerate(np.linspace(0.05, 0.9, 10)):
        add(f"cut{index}.jpeg", jpeg[: int(len(jpeg) * fraction)], "truncated or corrupt")
        add(
            f"cut{index}.png",
            png[: max(40, int(len(png) * fraction))],
            "truncated or corrupt|not a JPEG",
        )
    junk = {
        "text": b"hello, this is not an image\n" * 20,
        "html": b"<!doctype html><html><body>x-ray</body></html>",
        "pdf": b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n",
        "zip": b"PK\x03\x04" + bytes(100),
        "elf": b"\x7fELF" + bytes(100),
        "random": np.random.default_rng(0).bytes(4096),
        "json": json.dumps({"image": "none"}).encode(),
        "csv": b"a,b,c\n1,2,3\n",
        "gzip": b"\x1f\x8b\x08\x00" + bytes(50),
        "nul": bytes(1000),
    }
    for kind, content in junk.items():
        add(f"{kind}.png", content, "not a JPEG, PNG or DICOM")
    side = int(MAX_IMAGE_PIXELS**0.5) + 10
    for index in range(2):
        path = folder / f"bomb{index}.png"
        Image.new("1", (side, side + index)).save(path)
        bad.append((path, "limit for safe decoding|too large"))
    for index in range(5):
        add(
            f"fake{index}.dcm",
            bytes(128) + b"DICM" + np.random.default_rng(index).bytes(60),
            "DICOM",
        )
    pixels = synthetic_radiograph(2).astype(np.uint16) * 16
    for index in range(2):
        path = write_dicom(folder / f"multi{index}.dcm", pixels, frames=2 + index)
        bad.append((path, "frames"))
    for index in range(2):
        path = write_dicom(folder / f"rgb{index}.dcm", pixels)
        dataset = dcmread(path)
        dataset.PhotometricInterpretation = "RGB"
        dataset.save_as(path)
        bad.append((path, "PhotometricInterpretation 'RGB'"))
    for index in range(2):
        path = write_dicom(folder / f"nopixels{index}.dcm", pixels)
        dataset = dcmread(path)
        del dataset.PixelData
        dataset.save_as(path)
        bad.append((path, "no pixel data"))
    for index in range(3):
        bad.append((folder / f"missing{index}.jpeg", "file not found"))
    good = []
    for name, content in (
        ("png_named.jpeg", png),
        ("jpeg_named.png", jpeg),
        ("jpeg_named.dcm", jpeg),
    ):
        (folder / name).write_bytes(content)
        good.append(folder / name)
    return bad, good


def test_fifty_bad_files_each_get_one_clear_error(tiny_onnx, tmp_path):
    bad, good = make_bad_files(tmp_path / "files")
    assert len(bad) >= 50
    arguments = [str(path) for path, _ in bad] + [str(path) for path in good]
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--model",
            str(tiny_onnx),
            "--no-gate",
            "--json",
            str(tmp_path / "out.json"),
            *arguments,
        ],
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"3 predicted, 0 indeterminate, 0 not a chest X-ray, {len(bad)} failed" in result.output
    predictions = {
        p["source"]: p for p in json.loads((tmp_path / "out.json").read_text())["predictions"]
    }

    for path, phrase in bad:
        entry = predictions[str(path)]
        assert entry["status"] == "error", path
        assert re.search(phrase, entry["message"]), (path, entry["message"])
        assert entry["message"].startswith(str(path))
        assert "\n" not in entry["message"]
    for path in good:
        assert predictions[str(path)]["status"] == "ok"


def _twelve_bit_jpeg_extended(path: Path) -> Path:
    """A 12-bit JPEG Extended DICOM: Pillow cannot decode it, and pydicom logs an ERROR with a
    full traceback before raising."""
    pixels = np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16)
    dataset = dcmread(write_dicom(path, pixels))
    buffer = io.BytesIO()
    Image.fromarray((pixels >> 4).astype(np.uint8)).save(buffer, "JPEG")
    dataset.PixelData = encapsulate([buffer.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.51")
    dataset.BitsStored, dataset.HighBit = 12, 11
    dataset.save_as(path)
    return path


def _hostile_batch(folder: Path) -> Path:
    folder.mkdir()
    _twelve_bit_jpeg_extended(folder / "jpeg12.dcm")
    pixels = synthetic_radiograph(2).astype(np.uint16) * 16
    frames = dcmread(write_dicom(folder / "frames.dcm", pixels))
    frames.NumberOfFrames = 1
    frames.save_as(folder / "frames.dcm")
    set_raw_value(folder / "frames.dcm", (0x0028, 0x0008), "IS", b"ab")  # an invalid IS value
    padded = dcmread(write_dicom(folder / "padded.dcm", pixels))
    padded.PixelData = padded.PixelData + bytes(64)  # pydicom warns about the excess bytes
    padded.save_as(folder / "padded.dcm")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    return folder


def _predict_process(tiny_onnx: Path, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    import pneumoscan

    source = str(Path(pneumoscan.__file__).parents[1])  # this checkout, not an installed copy
    return subprocess.run(
        [sys.executable, "-m", "pneumoscan", "predict", "-m", str(tiny_onnx), "--no-gate"]
        + [str(folder), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "PYTHONPATH": source},
    )


def test_hostile_batch_prints_no_library_log_records(tiny_onnx, tmp_path):
    """Issue 18: pydicom printed an ERROR with a traceback (12-bit JPEG Extended) and a WARNING
    (invalid IS value) between the table rows. The screen and stderr hold only pneumoscan's own
    lines; the JPEG Extended file's one-line error carries pydicom's reason."""
    folder = _hostile_batch(tmp_path / "hostile")
    result = _predict_process(tiny_onnx, folder, "--json", str(tmp_path / "out.json"))
    shown = result.stdout + result.stderr
    assert result.returncode == 1, shown
    for marker in ("Traceback", "WARNING", "ERROR", "NotImplementedError", "pixels/decoders"):
        assert marker not in shown, (marker, shown)
    assert not [line for line in shown.splitlines() if line.strip().startswith("pydicom")]
    entries = {
        Path(p["source"]).name: p
        for p in json.loads((tmp_path / "out.json").read_text())["predictions"]
    }
    assert entries["jpeg12.dcm"]["status"] == "error"
    assert "12-bit" in entries["jpeg12.dcm"]["message"]
    assert "\n" not in entries["jpeg12.dcm"]["message"]


def test_verbose_prints_library_records_one_line_each(tiny_onnx, tmp_path):
    folder = _hostile_batch(tmp_path / "hostile")
    result = _predict_process(tiny_onnx, folder, "--verbose")
    assert "Traceback" not in result.stdout + result.stderr
    library = [line for line in result.stderr.splitlines() if line.startswith("pydicom")]
    assert any("12-bit" in line for line in library), result.stderr
    assert "pydicom" not in result.stdout
