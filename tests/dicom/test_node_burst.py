"""The node at burst speed: films that queue up are predicted in one model run, a burst is
delivered over one association, and SRs filled from a template equal highdicom's own."""

from __future__ import annotations

import dataclasses
import datetime
import io
import time

import numpy as np
import pydicom
import pytest

from dicom import sr_reading as sr
from dicom.films import NORMAL_JPEG, PNEUMONIA_JPEG, chest_film, jpeg_pixels, write_film
from pneumoscan.devtools.dicom_harness import free_port, send_films
from pneumoscan.dicom.capture import build_capture
from pneumoscan.dicom.delivery import CStoreDestination
from pneumoscan.dicom.node import SUCCESS, DicomNode, NodeSettings
from pneumoscan.dicom.producer import Producer
from pneumoscan.dicom.report import build_report, encode
from pneumoscan.dicom.report_templates import (
    CaptureTemplates,
    ReportTemplates,
    sequence_lengths,
)
from pneumoscan.dicom.results import predict_film, predict_films


def test_batched_prediction_gives_each_film_its_own_answer(binary_model, films):
    order = ["pneumonia", "normal", "normal"]  # not a palindrome: a reversed batch fails
    datasets = [pydicom.dcmread(films[which]) for which in order]
    results = predict_films(binary_model, datasets, [f"film {i}" for i in range(len(order))])
    assert [result.label for result in results] == order  # the example films' true labels
    for which, result in zip(order, results):
        alone = predict_film(binary_model, pydicom.dcmread(films[which]), "alone")
        for name, probability in alone.probabilities.items():
            assert result.probabilities[name] == pytest.approx(probability, abs=1e-5)
        assert result.heatmap is not None


def _canonical(report) -> bytes:
    """The report's bytes (of a dataset, or Part 10 bytes as read back) with highdicom's own
    clock stamps blanked and every sequence and item of defined length."""
    data = report if isinstance(report, bytes) else encode(report)
    dataset = pydicom.dcmread(io.BytesIO(data))
    sequence_lengths(dataset, undefined=False)
    dataset.InstanceCreationDate = dataset.InstanceCreationTime = ""
    if "TimeOfSecondaryCapture" in dataset:
        dataset.DateOfSecondaryCapture = dataset.TimeOfSecondaryCapture = ""
    for item in dataset.ContributingEquipmentSequence:
        if (
            item.get("ContributionDateTime")
            and item.get("Manufacturer") != "pneumoscan (research software)"
        ):
            item.ContributionDateTime = ""
    return encode(dataset)


def _films(case, tmp_path):
    """Two films of one shape of report that differ in every value filled per film."""
    if case in ("refused", "unreadable"):
        pixels = [np.zeros((128, 128), np.uint8), np.zeros((96, 80), np.uint8)]
    else:
        jpeg = NORMAL_JPEG if case == "normal" else PNEUMONIA_JPEG
        pixels = [jpeg_pixels(jpeg), jpeg_pixels(jpeg, longest=200)]
    made = []
    for index, image in enumerate(pixels):
        film = chest_film(
            image, patient_id=f"P-{index}", patient_name=f"Doe^J{index}", instance_number=index + 3
        )
        film.PatientBirthDate, film.StudyTime = f"2019010{index + 1}", f"10150{index}"
        film.AccessionNumber, film.WindowCenter = f"ACC-{index}", 100 + index
        if case == "unreadable":
            film.PhotometricInterpretation = "PALETTE COLOR"
        made.append(write_film(tmp_path / f"{case}-{index}.dcm", film))
    return made


@pytest.mark.parametrize("case", ["pneumonia", "normal", "three-class", "refused", "unreadable"])
def test_template_reports_equal_highdicom_reports(case, binary_model, three_class_model, tmp_path):
    model = three_class_model if case == "three-class" else binary_model
    producer = Producer.from_runtime(model)
    templates = ReportTemplates(producer)
    when = datetime.datetime(2026, 5, 6, 7, 8, 9, 123456).astimezone()
    reports = []
    for index, path in enumerate(_films(case, tmp_path)):
        film = pydicom.dcmread(path)
        result = predict_film(model, film, "film")
        header = pydicom.dcmread(path, stop_before_pixels=True)
        filled = templates.build(header, result, when)
        expected = _canonical(build_report(header, result, producer, when))
        assert _canonical(filled) == expected
        reports.append((filled, expected))
        assert filled.SOPInstanceUID == producer.uid(film.SOPInstanceUID, "report")
        written = tmp_path / f"filled-{index}.dcm"
        filled.save_as(written, enforce_file_format=True)
        errors, warnings = sr.dciodvfy(written)
        assert errors == [], "\n".join(errors)
        # the node's path: the shape's encoded report with the film's elements spliced in
        spliced = templates.build_encoded(header, result, when)
        assert _canonical(spliced) == expected
        (tmp_path / f"spliced-{index}.dcm").write_bytes(spliced)
        errors, warnings = sr.dciodvfy(tmp_path / f"spliced-{index}.dcm")
        assert errors == [], "\n".join(errors)
    assert templates.filled == 4  # all came from the template, not from highdicom
    assert all(template.encoded for template in templates._templates.values())  # and spliced
    # filling the second report changed nothing in the first (they share no mutable part)
    assert all(_canonical(filled) == expected for filled, expected in reports)


@pytest.mark.parametrize("case", ["pneumonia", "normal", "three-class"])
def test_template_captures_equal_highdicom_captures(
    case, binary_model, three_class_model, tmp_path
):
    model = three_class_model if case == "three-class" else binary_model
    producer = Producer.from_runtime(model)
    templates = CaptureTemplates(producer)
    when = datetime.datetime(2026, 5, 6, 7, 8, 9, 123456).astimezone()
    for index, path in enumerate(_films(case, tmp_path)):
        result = predict_film(model, pydicom.dcmread(path), "film")
        header = pydicom.dcmread(path, stop_before_pixels=True)
        expected = _canonical(build_capture(header, result, producer, when))
        spliced = templates.build_encoded(header, result, when)
        assert _canonical(spliced) == expected  # the burned-in answer line included
        assert pydicom.dcmread(io.BytesIO(spliced)).SOPInstanceUID == producer.uid(
            header.SOPInstanceUID, "capture"
        )
        (tmp_path / f"capture-{index}.dcm").write_bytes(spliced)
        errors, warnings = sr.dciodvfy(tmp_path / f"capture-{index}.dcm")
        assert errors == [], "\n".join(errors)
    assert templates.filled == 2  # both from the template, not from highdicom
    assert all(template.encoded for template in templates._templates.values())
    no_heatmap = dataclasses.replace(result, heatmap=None, heatmap_path=None)
    assert templates.build_encoded(header, no_heatmap, when) is None


def test_a_burst_is_delivered_over_one_association(orthanc_factory, binary_model, films, tmp_path):
    orthanc = orthanc_factory("pacs")
    host, port, aet = orthanc.destination.split(":")
    destination = CStoreDestination(host, int(port), aet)
    settings = NodeSettings(tmp_path / "spool", port=free_port(), retry_base_s=0.05)
    node = DicomNode(binary_model, [destination], settings)
    node.start()
    try:
        burst = [films["pneumonia"], films["normal"]] * 5
        assert send_films("127.0.0.1", settings.port, burst) == [SUCCESS] * len(burst)
        deadline = time.monotonic() + 120
        while node.counts.delivered < len(burst):
            assert time.monotonic() < deadline, node.counts
            time.sleep(0.05)
        assert destination.associations_opened == 1
        assert len(orthanc.rest("/instances")) == 4  # two films' SR and SC (UIDs per film)
    finally:
        node.stop()
