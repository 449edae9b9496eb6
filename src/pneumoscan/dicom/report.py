"""The result of one film as a TID 1500 measurement report (Comprehensive 3D SR, IHE AI Results).

The content tree (`docs/dicom.md` draws it with real values):

    Imaging Measurement Report (TID 1500)
    |- Language, Observation context: observer type Device (pneumoscan, the model)
    |- Procedure reported: Plain chest X-ray
    |- Image Library: the source film
    |- Imaging Measurements                       (only when the model gave probabilities)
    |  '- Measurement Group, one per class        (TID 1501)
    |     |- Tracking identifier and UID, Finding: the class (SNOMED CT)
    |     |- Algorithm name, version, parameters, Source: the film
    |     |- Probability (UCUM {probability}); Threshold value on the binary positive class
    |     '- the class: Present / Absent / Indeterminate (SNOMED CT)
    '- Qualitative Evaluations
       |- Chest radiograph gate: accepted / refused / off
       |- Comment: why no result was produced     (refused or unreadable films)
       '- Comment: the not-for-diagnostic-use notice

The document is marked UNVERIFIED and PRELIMINARY, and carries the Patient and Study modules of
the film so the archive files it in the film's study.
"""

from __future__ import annotations

import datetime
import io

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from pneumoscan.dicom import codes
from pneumoscan.dicom.producer import (
    MANUFACTURER,
    NOTICE,
    Producer,
)
from pneumoscan.runtime.predict import ERROR, INDETERMINATE, NOT_CHEST_XRAY, OK, Result


def build_report(
    source: Dataset, result: Result, producer: Producer, when: datetime.datetime | None = None
) -> Dataset:
    """The SR for `result`, predicted on the film whose header is `source` (pixels not needed)."""
    import highdicom as hd
    from highdicom.sr.templates import DEFAULT_LANGUAGE

    when = when or datetime.datetime.now().astimezone()
    content = hd.sr.ContainerContentItem(name=codes.REPORT_TITLE, template_id="1500")
    content.ContentSequence = hd.sr.ContentSequence(
        [
            *hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE),
            *_observation_context(producer),
            hd.sr.CodeContentItem(
                name=dicom_codes.DCM.ProcedureReported,
                value=codes.PROCEDURE,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
            ),
            _image_library(source),
        ]
    )
    if result.status in (OK, INDETERMINATE) and result.probabilities:
        content.ContentSequence.append(_imaging_measurements(source, result, producer))
    content.ContentSequence.append(_qualitative_evaluations(result, producer))
    report = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=content,
        is_complete=True,
        is_final=False,
        is_verified=False,
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=codes.PRIVATE_SCHEME, name=codes.PRIVATE_SCHEME_NAME
            )
        ],
        **producer.series_attributes(source, "report", when),
    )
    return report


def _observation_context(producer: Producer):
    import highdicom as hd

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=producer.device_uid,
        name=producer.model_title,
        manufacturer_name=MANUFACTURER,
        model_name=producer.model_title,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=dicom_codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _image_library(source: Dataset):
    """TID 1600 with one entry, the film: its modality and size, as highdicom's `ImageLibrary`
    writes them (which also insists on the optional orientation and pixel spacing that many
    films lack)."""
    import highdicom as hd

    acquisition = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    pixels = hd.sr.CodedConcept(value="{pixels}", meaning="Pixels", scheme_designator="UCUM")
    descriptors = []
    modality = _MODALITY_CODES.get(str(source.get("Modality", "")).upper())
    if modality is not None:
        descriptors.append(
            hd.sr.CodeContentItem(
                name=dicom_codes.DCM.Modality, value=modality, relationship_type=acquisition
            )
        )
    for name, keyword in (
        (dicom_codes.DCM.PixelDataRows, "Rows"),
        (dicom_codes.DCM.PixelDataColumns, "Columns"),
    ):
        value = source.get(keyword)
        if isinstance(value, int) and value > 0:
            descriptors.append(
                hd.sr.NumContentItem(
                    name=name, value=value, unit=pixels, relationship_type=acquisition
                )
            )
    image = hd.sr.ImageContentItem(
        name=codes.SOURCE,
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type=contains,
    )
    image.ContentSequence = hd.sr.ContentSequence(descriptors)
    group = hd.sr.ContainerContentItem(
        name=dicom_codes.DCM.ImageLibraryGroup, relationship_type=contains
    )
    group.ContentSequence = hd.sr.ContentSequence([image])
    library = hd.sr.ContainerContentItem(
        name=dicom_codes.DCM.ImageLibrary, relationship_type=contains
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


_MODALITY_CODES = {
    "DX": dicom_codes.DCM.DigitalRadiography,
    "CR": dicom_codes.DCM.ComputedRadiography,
}


def _evaluation(result: Result, class_name: str, producer: Producer):
    """Present / absent / indeterminate for one class."""
    if result.status == INDETERMINATE:
        return codes.INDETERMINATE
    return codes.PRESENT if result.label == class_name else codes.ABSENT


def _imaging_measurements(source: Dataset, result: Result, producer: Producer):
    import highdicom as hd

    algorithm = hd.sr.AlgorithmIdentification(
        name=producer.model_title,
        version=producer.model_version,
        parameters=list(producer.settings),
    )
    film = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    positive = producer.class_names[1] if producer.threshold is not None else None
    groups = []
    for class_name in producer.class_names:
        concept = codes.finding(class_name)
        measurements = [
            hd.sr.Measurement(
                name=codes.PROBABILITY,
                value=round(float(result.probabilities[class_name]), 6),
                unit=codes.UNIT_PROBABILITY,
            )
        ]
        if class_name == positive:
            measurements.append(
                hd.sr.Measurement(
                    name=codes.THRESHOLD,
                    value=round(float(producer.threshold), 6),
                    unit=codes.UNIT_PROBABILITY,
                )
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=producer.uid(source.SOPInstanceUID, "finding", class_name),
                    identifier=f"{producer.model_title}: {class_name}, whole film",
                ),
                finding_type=concept,
                algorithm_id=algorithm,
                source_images=[film],
                measurements=measurements,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=concept, value=_evaluation(result, class_name, producer)
                    )
                ],
            )
        )
    container = hd.sr.ContainerContentItem(
        name=dicom_codes.DCM.ImagingMeasurements,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence([item for group in groups for item in group])
    return container


def no_result_reason(result: Result, producer: Producer) -> str | None:
    """Why no finding was reported, in words for the report (no file names, no header values)."""
    if result.status == NOT_CHEST_XRAY:
        score = "" if result.gate_score is None else f" (gate score {result.gate_score:.1f}"
        if score and producer.gate_threshold is not None:
            score += f", refused above {producer.gate_threshold:.1f})"
        elif score:
            score += ")"
        return (
            "No result was produced: the image does not look like the frontal chest "
            f"radiographs the model was trained on{score}."
        )
    if result.status == ERROR:
        detail = (result.message or "unknown error").split(": ", 1)[-1]
        return f"No result was produced: the film could not be read ({detail})"
    return None


def _qualitative_evaluations(result: Result, producer: Producer):
    import highdicom as hd

    contains = hd.sr.RelationshipTypeValues.CONTAINS
    if producer.gate_threshold is None:
        verdict = codes.GATE_OFF
    elif result.status == NOT_CHEST_XRAY:
        verdict = codes.GATE_REFUSED
    elif result.status == ERROR:
        verdict = None  # the gate never saw the film
    else:
        verdict = codes.GATE_ACCEPTED
    items = []
    if verdict is not None:
        items.append(
            hd.sr.CodeContentItem(name=codes.GATE, value=verdict, relationship_type=contains)
        )
    reason = no_result_reason(result, producer)
    if reason is not None:
        items.append(
            hd.sr.TextContentItem(name=codes.COMMENT, value=reason, relationship_type=contains)
        )
    items.append(
        hd.sr.TextContentItem(name=codes.COMMENT, value=NOTICE, relationship_type=contains)
    )
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=contains
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def encode(dataset: Dataset) -> bytes:
    """A result object as DICOM Part 10 bytes."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
