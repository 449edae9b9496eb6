"""The DICOM results of one prediction: the TID 1500 SR and the heatmap Secondary Capture.

Golden films are the two example JPEGs (known labels, in the training pool) wrapped into DX
objects: each test fails if the decision were inverted. Every object must pass dciodvfy.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom import sr_reading as sr
from dicom.films import PATIENT_ID, PATIENT_NAME, chest_film, jpeg_pixels, write_film
from pneumoscan.core.labels import NOT_DIAGNOSTIC_NOTICE
from pneumoscan.dicom.producer import Producer
from pneumoscan.dicom.report import encode
from pneumoscan.dicom.results import predict_film, result_objects
from pneumoscan.runtime.predict import predict_one


def objects_for(model, path, margin: float = 0.0):
    film = pydicom.dcmread(path)
    result = predict_film(model, film, "film", margin)
    objects = result_objects(film, result, Producer.from_runtime(model, margin))
    return (
        film,
        result,
        [pydicom.dcmread(pydicom.filebase.DicomBytesIO(encode(o))) for o in objects],
    )


@pytest.mark.parametrize(
    ("which", "pneumonia", "normal"),
    [("pneumonia", sr.PRESENT, sr.ABSENT), ("normal", sr.ABSENT, sr.PRESENT)],
)
def test_sr_reports_the_known_finding_of_a_film(binary_model, films, which, pneumonia, normal):
    film, result, objects = objects_for(binary_model, films[which])
    report = objects[0]
    assert result.label == which  # the example films' true labels
    assert sr.evaluation(report, sr.PNEUMONIA) == pneumonia
    assert sr.evaluation(report, sr.NORMAL) == normal
    # The probability in the SR is the one the JPEG itself gets: DICOM and JPEG paths agree.
    jpeg = predict_one(binary_model, jpeg_pixels(sr_source(which)))
    values = sr.numbers(report, sr.PNEUMONIA)
    assert values[sr.PROBABILITY] == (
        pytest.approx(jpeg.probabilities["pneumonia"], abs=1e-5),
        "{probability}",
    )
    assert values[sr.THRESHOLD] == (
        pytest.approx(binary_model.threshold, abs=1e-6),
        "{probability}",
    )
    assert sr.numbers(report, sr.NORMAL)[sr.PROBABILITY][0] == pytest.approx(
        jpeg.probabilities["normal"], abs=1e-5
    )


def sr_source(which: str):
    from dicom.films import NORMAL_JPEG, PNEUMONIA_JPEG

    return PNEUMONIA_JPEG if which == "pneumonia" else NORMAL_JPEG


def test_sr_is_a_tid1500_report_in_the_films_study(binary_model, films):
    film, result, (report, capture) = objects_for(binary_model, films["pneumonia"])
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.code(report.ConceptNameCodeSequence) == ("126000", "DCM")
    assert report.VerificationFlag == "UNVERIFIED"
    assert report.CompletionFlag == "COMPLETE"
    assert NOT_DIAGNOSTIC_NOTICE in sr.texts(report)
    assert sr.gate(report) == "ACCEPTED"
    for item in (report, capture):  # the film's Patient and Study, a new series of its own
        assert item.StudyInstanceUID == film.StudyInstanceUID
        assert item.PatientID == PATIENT_ID and str(item.PatientName) == PATIENT_NAME
        assert item.AccessionNumber == film.AccessionNumber
        assert item.SeriesInstanceUID != film.SeriesInstanceUID
        assert "pneumoscan" in item.SeriesDescription
        assert "NOT FOR DIAGNOSTIC USE" in item.SeriesDescription
    assert report.SeriesInstanceUID != capture.SeriesInstanceUID  # SR and OT: one modality each
    # The source image, the algorithm, the observer device and IHE AIR contributing equipment.
    references = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in sr.walk(report)
        if item.ValueType == "IMAGE"
    ]
    assert references and set(references) == {film.SOPInstanceUID}
    named = {sr.code(item.ConceptNameCodeSequence): item for item in sr.walk(report)}
    assert str(named[("111001", "DCM")].TextValue) == "pneumoscan binary"  # Algorithm Name
    assert str(named[("111003", "DCM")].TextValue) == binary_model.version  # Algorithm Version
    assert sr.code(named[("121005", "DCM")].ConceptCodeSequence) == ("121007", "DCM")  # Device
    equipment = [
        item
        for item in report.ContributingEquipmentSequence
        if sr.code(item.PurposeOfReferenceCodeSequence) == ("109102", "DCM")
        and "pneumoscan" in item.Manufacturer
    ]
    assert len(equipment) == 1
    assert equipment[0].ManufacturerModelName == "pneumoscan binary"
    assert f"model {binary_model.version}" in equipment[0].SoftwareVersions


def test_three_class_sr_names_the_label(three_class_model, films):
    _, result, (report, _) = objects_for(three_class_model, films["pneumonia"])
    assert result.label == "bacteria"  # person1946_bacteria_4874
    assert sr.evaluation(report, sr.BACTERIA) == sr.PRESENT
    assert sr.evaluation(report, sr.VIRUS) == sr.ABSENT
    assert sr.evaluation(report, sr.NORMAL) == sr.ABSENT
    probabilities = [
        sr.numbers(report, f)[sr.PROBABILITY][0] for f in (sr.NORMAL, sr.BACTERIA, sr.VIRUS)
    ]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert sr.THRESHOLD not in sr.numbers(report, sr.BACTERIA)  # three-class: argmax, no threshold


def test_indeterminate_film_is_reported_as_indeterminate(binary_model, films):
    _, result, (report, capture) = objects_for(binary_model, films["pneumonia"], margin=0.49)
    assert result.status == "indeterminate"
    assert sr.evaluation(report, sr.PNEUMONIA) == sr.INDETERMINATE
    assert sr.evaluation(report, sr.NORMAL) == sr.INDETERMINATE
    assert any("indeterminate margin 0.49" in text for text in sr.texts(report))


def test_refused_film_gets_an_sr_saying_no_result_and_why(binary_model, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    path = write_film(tmp_path / "noise.dcm", chest_film(noise))
    _, result, objects = objects_for(binary_model, path)
    assert result.status == "not_chest_xray"
    assert len(objects) == 1  # no heatmap, so no Secondary Capture
    report = objects[0]
    assert sr.groups(report) == {}  # no finding, no probability
    assert sr.gate(report) == "REFUSED"
    reason = next(text for text in sr.texts(report) if text.startswith("No result"))
    assert "does not look like the frontal chest radiographs" in reason
    assert f"refused above {binary_model.ood_threshold:.1f}" in reason


def test_unreadable_film_gets_an_sr_saying_it_could_not_be_read(binary_model, tmp_path):
    film = chest_film(np.zeros((64, 64), np.uint8))
    film.PhotometricInterpretation = "PALETTE COLOR"
    path = write_film(tmp_path / "palette.dcm", film)
    _, result, (report,) = objects_for(binary_model, path)
    assert result.status == "error"
    assert sr.gate(report) is None  # the gate never saw it
    reason = next(text for text in sr.texts(report) if text.startswith("No result"))
    assert "could not be read" in reason and "MONOCHROME2" in reason
    assert "film:" not in reason  # the input's name stays out of the archive


def test_secondary_capture_burns_in_the_notice(binary_model, films):
    film, result, (_, capture) = objects_for(binary_model, films["pneumonia"])
    assert capture.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert capture.BurnedInAnnotation == "YES"
    assert capture.PhotometricInterpretation == "RGB" and capture.SamplesPerPixel == 3
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == film.SOPInstanceUID
    pixels = capture.pixel_array
    assert pixels.shape == (512 + 2 * 44, 512, 3)
    # The amber notice sits in the top band, above the overlay of the film.
    band = pixels[:44].reshape(-1, 3)
    assert ((band[:, 0] > 200) & (band[:, 1] > 150) & (band[:, 2] < 80)).sum() > 200
    assert np.array_equal(pixels[44:556], np.asarray(result.heatmap.convert("RGB")))


def test_results_have_stable_uids_per_film_and_model(binary_model, three_class_model, films):
    _, _, first = objects_for(binary_model, films["pneumonia"])
    _, _, again = objects_for(binary_model, films["pneumonia"])
    _, _, other = objects_for(three_class_model, films["pneumonia"])
    assert [o.SOPInstanceUID for o in first] == [o.SOPInstanceUID for o in again]
    assert {o.SOPInstanceUID for o in first}.isdisjoint(o.SOPInstanceUID for o in other)


@pytest.mark.parametrize("case", ["pneumonia", "three-class", "refused", "unreadable"])
def test_dciodvfy_finds_no_errors(case, binary_model, three_class_model, films, tmp_path):
    model = three_class_model if case == "three-class" else binary_model
    path = films["pneumonia"]
    if case == "refused":
        path = write_film(tmp_path / "blank.dcm", chest_film(np.zeros((128, 128), np.uint8)))
    elif case == "unreadable":
        broken = chest_film(np.zeros((64, 64), np.uint8))
        broken.PhotometricInterpretation = "PALETTE COLOR"
        path = write_film(tmp_path / "broken.dcm", broken)
    _, _, objects = objects_for(model, path)
    for index, item in enumerate(objects):
        written = tmp_path / f"{case}-{index}.dcm"
        item.save_as(written, enforce_file_format=True)
        errors, warnings = sr.dciodvfy(written)
        assert errors == [], "\n".join(errors)
        # The only warnings: our private coding scheme, and the SC's empty-by-design Laterality.
        assert all("99PNEUMOSCAN" in w or "Laterality" in w for w in warnings), warnings


def test_the_dicom_layer_never_imports_torch_or_training_code():
    import subprocess
    import sys

    code = (
        "import sys, pneumoscan.dicom.node, pneumoscan.dicom.outputs, pneumoscan.devtools.dicom_bench, "
        "pneumoscan.cli.dicom\n"
        "import highdicom, pynetdicom, dicomweb_client\n"
        # The CLI lists the threshold rules in calibrate's and ship's --rule help: that registry
        # (numpy only) is the one part of evaluation it may load; serve's settings (no web stack)
        # give serve's options their defaults.
        "light = {'pneumoscan.evaluation', 'pneumoscan.evaluation.rules',\n"
        "         'pneumoscan.serve', 'pneumoscan.serve.settings'}\n"
        "loaded = [m for m in sys.modules if m == 'torch' or m not in light and m.startswith(("
        "'pneumoscan.training', 'pneumoscan.evaluation', 'pneumoscan.site', "
        "'pneumoscan.research', 'pneumoscan.serve'))]\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
