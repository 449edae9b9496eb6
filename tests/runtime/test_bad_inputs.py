"""A batch of 50+ broken files: each gets one clear line, the batch goes on, the exit code says so."""

import io
import json
import re

import numpy as np
from conftest import synthetic_radiograph
from dicom_fixtures import write_dicom
from PIL import Image
from pydicom import dcmread
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
