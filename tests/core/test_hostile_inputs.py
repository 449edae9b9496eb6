"""Hostile files given to `predict`: a Deflated DICOM bomb, a huge declared frame, a FIFO.

Each is refused with a one-line error for that file, in bounded memory and time, while the rest of
the batch is still predicted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dicom_bomb import deflate_bomb
from dicom_fixtures import film_dataset
from predict_process import SRC

from pneumoscan.core.errors import ImageTooLargeError
from pneumoscan.core.images import read_image

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "normal_NORMAL2-IM-1427-0001.jpeg"
PEAK_LIMIT_MB = 600


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return deflate_bomb()


def test_deflate_bomb_is_refused_before_it_is_inflated(bomb):
    assert len(bomb) < 2 * 1024 * 1024  # ~1 MB on disk, 1 GiB inflated
    with pytest.raises(ImageTooLargeError, match="bomb.dcm: Deflated DICOM inflates to over"):
        read_image(bomb, name="bomb.dcm", max_pixels=30_000_000)


def test_huge_declared_frame_is_refused_from_the_header():
    ds = film_dataset(np.zeros((4, 4), dtype=np.uint16))
    ds.Rows = ds.Columns = 60_000  # 3.6 Gpx declared, 32 bytes of pixel data
    path_bytes = _dicom_bytes(ds)
    with pytest.raises(ImageTooLargeError, match="60000x60000 px, over the"):
        read_image(path_bytes, name="huge.dcm")


def _dicom_bytes(ds) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _predict_peak(
    target: Path, tmp_path: Path, *extra: str, timeout: float = 120
) -> tuple[int, str, float]:
    """Run `pneumoscan predict` on `target`; (exit code, output, peak RSS in MB of that process).
    The peak is VmHWM of the child's own address space, read until it exits (VmHWM only grows,
    so the last reading is the peak to within one poll): the rusage of a child started from a
    large pytest process carries the parent's size across exec."""
    log = tmp_path / "predict.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pneumoscan", "predict", str(target)]
            + ["--csv", str(tmp_path / "out.csv"), *extra],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
        )
    peak_kb, deadline = 0, time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):  # exiting between poll() and the read
            pass
        time.sleep(0.02)
    if process.poll() is None:
        process.kill()
        process.wait()
    assert process.returncode != -9, f"predict on {target} still running after {timeout} s"
    return process.returncode, log.read_text(), peak_kb / 1024


def test_predict_refuses_a_deflate_bomb_in_bounded_memory(bomb, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "bomb.dcm").write_bytes(bomb)
    shutil.copy(EXAMPLE, batch / EXAMPLE.name)
    code, output, peak = _predict_peak(batch, tmp_path)
    assert "bomb.dcm: Deflated DICOM inflates to over" in output
    assert "Traceback" not in output
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert any(EXAMPLE.name in row and ",ok," in row for row in rows), rows
    assert any("bomb.dcm" in row and ",error," in row for row in rows), rows
    assert code == 1  # a file had an error; the rest of the batch was still predicted
    assert peak < PEAK_LIMIT_MB, f"predict peaked at {peak:.0f} MB on a 1 MB file"


def test_predict_on_a_fifo_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "film.jpeg"
    os.mkfifo(fifo)
    code, output, _ = _predict_peak(fifo, tmp_path, timeout=60)
    assert code != 0
    assert f"{fifo}: not a regular file" in output
    assert "Traceback" not in output


def test_predict_dicom_out_reads_no_bomb_header_whole(bomb, tmp_path):
    """--dicom-out reads each DICOM's header after predicting; a bomb's stays uninflated too."""
    film = tmp_path / "bomb.dcm"
    film.write_bytes(bomb)
    code, output, peak = _predict_peak(film, tmp_path, "--dicom-out", str(tmp_path / "results"))
    assert code == 1 and "bomb.dcm: Deflated DICOM inflates to over" in output
    assert "Traceback" not in output
    assert peak < PEAK_LIMIT_MB, f"predict --dicom-out peaked at {peak:.0f} MB on a 1 MB file"
