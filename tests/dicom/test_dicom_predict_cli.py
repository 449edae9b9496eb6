"""`pneumoscan predict FILES --dicom-out DIR`: DICOM results for DICOM films, one line for the rest."""

from __future__ import annotations

import numpy as np
import pydicom
from dicom_fixtures import write_dicom
from typer.testing import CliRunner

from dicom import sr_reading as sr
from dicom.films import NORMAL_JPEG, PATIENT_ID, PATIENT_NAME, chest_film, write_film
from pneumoscan.cli import app


def test_dicom_out_writes_sr_and_sc_for_each_dicom_film(films, tmp_path):
    out = tmp_path / "out"
    palette = chest_film(np.zeros((64, 64), np.uint8))
    palette.PhotometricInterpretation = "PALETTE COLOR"
    unreadable = write_film(tmp_path / "palette.dcm", palette)
    no_study = write_dicom(tmp_path / "no_study.dcm", np.full((64, 64), 2000, np.uint16))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(films["normal"].read_bytes()[:300])
    inputs = [films["pneumonia"], NORMAL_JPEG, unreadable, no_study, truncated]
    result = CliRunner().invoke(app, ["predict", *map(str, inputs), "--dicom-out", str(out)])
    assert result.exit_code == 1  # some files failed; each has its own line, the rest went on
    written = sorted(path.name for path in out.iterdir())
    assert written == [
        "00000_pneumonia_sc.dcm",
        "00000_pneumonia_sr.dcm",
        "00002_palette_sr.dcm",  # unreadable pixels: an SR that says why, no heatmap
    ]
    report = pydicom.dcmread(out / "00000_pneumonia_sr.dcm")
    assert sr.evaluation(report, sr.PNEUMONIA) == sr.PRESENT
    assert report.PatientID == PATIENT_ID  # in the object, where the archive needs it...
    assert PATIENT_ID not in result.output and PATIENT_NAME not in result.output  # ...never shown
    lines = result.output.splitlines()
    assert any(
        line.startswith(f"{NORMAL_JPEG}: not a DICOM file, so no DICOM result") for line in lines
    )
    assert any("no_study.dcm: DICOM header has no StudyInstanceUID" in line for line in lines)
    assert any(line.startswith(f"error: {truncated}") for line in lines)
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 3  # palette (prediction), no_study (DICOM result), truncated


def test_dicom_out_alone_with_jpegs_says_why_and_succeeds(tmp_path):
    result = CliRunner().invoke(app, ["predict", str(NORMAL_JPEG), "--dicom-out", str(tmp_path)])
    assert result.exit_code == 0
    assert "not a DICOM file, so no DICOM result" in result.output
    assert list(tmp_path.iterdir()) == []


def test_token_without_stow_is_refused(films, tmp_path):
    result = CliRunner().invoke(
        app, ["predict", str(films["normal"]), "--dicom-out", str(tmp_path), "--token", "t0ken"]
    )
    assert result.exit_code == 2
    assert "--token is the bearer token for --stow" in result.output
    assert "t0ken" not in result.output


def test_dicom_out_files_are_private_unless_group_readable(films, tmp_path):
    for flags, file_mode, folder_mode in (([], 0o600, 0o700), (["--group-readable"], 0o640, 0o750)):
        out = tmp_path / f"out{len(flags)}"
        result = CliRunner().invoke(
            app, ["predict", str(films["normal"]), "--dicom-out", str(out), *flags]
        )
        assert result.exit_code == 0, result.output
        assert out.stat().st_mode & 0o777 == folder_mode
        written = list(out.iterdir())
        assert len(written) == 2
        for path in written:  # patient name and ID inside
            assert path.stat().st_mode & 0o777 == file_mode, path.name


def test_the_node_out_folder_is_private_unless_group_readable(tmp_path):
    from pneumoscan.dicom.delivery import FolderDestination

    source = tmp_path / "job" / "0.dcm"
    source.parent.mkdir()
    source.write_bytes(b"sr")
    for group_readable, file_mode, folder_mode in ((False, 0o600, 0o700), (True, 0o640, 0o750)):
        folder = tmp_path / f"out{group_readable}"
        FolderDestination(folder, group_readable).send([source])
        assert folder.stat().st_mode & 0o777 == folder_mode
        assert (folder / "job_0.dcm").stat().st_mode & 0o777 == file_mode
