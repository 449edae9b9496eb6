"""Issue 18 item 5: the decoding-threads benchmark (`pneumoscan bench-workers`) builds full-size
JPEG and 16-bit DICOM folders from real films, times `predict --workers 1` and `--workers 2` on
each, and writes its own section of the benchmarks file, leaving the others as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from typer.testing import CliRunner

from pneumoscan.cli import app
from pneumoscan.core.images import read_image
from pneumoscan.research import bench

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.jpeg"))


def test_full_size_folders_hold_2000_px_jpeg_and_16_bit_dicom(tmp_path):
    jpegs = bench._film_folder(EXAMPLES, 2, tmp_path / "jpeg", bench.WORKERS_SHORT_SIDE)
    dicoms = bench._film_folder(EXAMPLES, 2, tmp_path / "dicom", bench.WORKERS_SHORT_SIDE, True)
    for path in sorted(jpegs.iterdir()):
        with Image.open(path) as image:
            assert image.format == "JPEG" and min(image.size) == 2000
    for path, source in zip(sorted(dicoms.iterdir()), EXAMPLES):
        dataset = pydicom.dcmread(path)
        assert (dataset.BitsAllocated, dataset.BitsStored) == (16, 12)
        assert min(dataset.Rows, dataset.Columns) == 2000
        assert "PatientName" not in dataset and "PatientID" not in dataset
        stored = dataset.pixel_array
        assert stored.dtype == np.uint16 and stored.max() > 255  # the 12-bit range is used
        assert len(np.unique(stored)) > 256  # more grey levels than the 8-bit source had
        with Image.open(source) as image:  # the same film, upscaled: same shape of brightness
            small = np.asarray(image.convert("L").resize(stored.shape[::-1]), dtype=float)
        assert np.corrcoef(small.ravel(), read_image(path).ravel())[0, 1] > 0.95


def test_bench_workers_times_both_counts_on_both_formats_into_its_section(tmp_path, monkeypatch):
    calls = []

    def fake_seconds(model_ref, arguments, repeats):
        folder = Path(arguments[0])
        calls.append((folder.name, sorted(p.suffix for p in folder.iterdir()), arguments[-1]))
        return 4.0 if arguments[-1] == "1" else 2.0

    monkeypatch.setattr(bench, "_predict_seconds", fake_seconds)
    out = tmp_path / "benchmarks.md"
    out.write_text("<!-- serve-load:begin -->\nkept\n<!-- serve-load:end -->\n")
    arguments = ["bench-workers", "--images", str(EXAMPLES[0].parent), "--films", "2"]
    result = CliRunner().invoke(app, [*arguments, "--repeats", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert calls == [
        ("full-size-JPEG", [".jpeg", ".jpeg"], "1"),
        ("full-size-JPEG", [".jpeg", ".jpeg"], "2"),
        ("full-size-16-bit-DICOM", [".dcm", ".dcm"], "1"),
        ("full-size-16-bit-DICOM", [".dcm", ".dcm"], "2"),
    ]
    text = out.read_text()
    assert "kept" in text and text.count("<!-- predict-workers:begin -->") == 1
    assert "| 2 full-size 16-bit DICOM" in text and "| 2.00x |" in text
    assert "upscaled (bicubic) to a shorter side of 2,000 px" in text
