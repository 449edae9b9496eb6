"""The DICOM objects for one prediction: an SR always, a heatmap Secondary Capture when there is one.

Shared by `pneumoscan predict --dicom-out/--stow` (`outputs`) and `pneumoscan dicom-node` (`node`).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from pydicom.dataset import Dataset

from pneumoscan.core.errors import InputError
from pneumoscan.core.images import MAX_IMAGE_PIXELS, check_inflated_size, is_dicom
from pneumoscan.dicom.capture import build_capture
from pneumoscan.dicom.producer import Producer
from pneumoscan.dicom.report import build_report
from pneumoscan.dicom.report_templates import CaptureTemplates, ReportTemplates
from pneumoscan.runtime.model import OnnxModel
from pneumoscan.runtime.predict import ERROR, Result, predict_batch, predict_one

# What a film's header must hold for a result to be filed with it.
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def predict_film(
    runtime: OnnxModel,
    film: Dataset,
    label: str,
    indeterminate_margin: float = 0.0,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Result:
    """The film's Result with its heatmap; a film that cannot be read gets an `error` Result
    (whose SR then says why), never an exception."""
    try:
        return predict_one(
            runtime,
            film,
            source=label,
            heatmap=True,
            indeterminate_margin=indeterminate_margin,
            max_pixels=max_pixels,
        )
    except InputError as error:
        return _error_result(runtime, label, error)


def predict_films(
    runtime: OnnxModel,
    films: list[Dataset],
    labels: list[str],
    indeterminate_margin: float = 0.0,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> list[Result | Exception]:
    """`predict_film` for each film, with the model run once over them all: each entry is the
    film's Result (an `error` Result for a film that cannot be read), or the unexpected
    exception that film raised."""
    outcomes = predict_batch(
        runtime,
        films,
        labels,
        heatmap=True,
        indeterminate_margin=indeterminate_margin,
        max_pixels=max_pixels,
    )
    return [
        _error_result(runtime, label, outcome) if isinstance(outcome, InputError) else outcome
        for label, outcome in zip(labels, outcomes)
    ]


def _error_result(runtime: OnnxModel, label: str, error: InputError) -> Result:
    return Result(
        source=label,
        status=ERROR,
        message=str(error),
        model_name=runtime.name,
        model_version=runtime.version,
    )


def result_objects(
    header: Dataset,
    result: Result,
    producer: Producer,
    when: datetime.datetime | None = None,
    reports: ReportTemplates | None = None,
) -> list[Dataset]:
    """[SR] or [SR, SC] for `result`, in the film's patient and study (see `report`, `capture`);
    with `reports` (the node's), the SR is filled from a template of its shape."""
    when = when or datetime.datetime.now().astimezone()
    if reports is not None:
        objects = [reports.build(header, result, when)]
    else:
        objects = [build_report(header, result, producer, when)]
    capture = build_capture(header, result, producer, when)
    if capture is not None:
        objects.append(capture)
    return objects


def encoded_result_objects(
    header: Dataset,
    result: Result,
    reports: ReportTemplates,
    captures: CaptureTemplates,
    when: datetime.datetime | None = None,
) -> list[bytes]:
    """`result_objects` as DICOM Part 10 bytes, each spliced from its shape's encoded template
    (`Templates.build_encoded`): the node's path."""
    when = when or datetime.datetime.now().astimezone()
    objects = [reports.build_encoded(header, result, when)]
    capture = captures.build_encoded(header, result, when)
    if capture is not None:
        objects.append(capture)
    return objects


def check_header(header: Dataset, label: str) -> None:
    """An InputError unless the film can have results filed with it."""
    missing = [keyword for keyword in REQUIRED_UIDS if not str(header.get(keyword, "") or "")]
    if missing:
        raise InputError(
            f"{label}: DICOM header has no {', '.join(missing)}; a DICOM result is filed in the "
            "film's study and needs them. Re-export the film from the archive."
        )


def read_header(path: Path, label: str) -> Dataset | None:
    """The film's header (no pixels) when `path` is a DICOM file, None when it is not DICOM.
    Raises InputError when it is DICOM but unreadable or cannot carry a result."""
    import pydicom

    try:
        with open(path, "rb") as handle:
            if not is_dicom(handle.read(132)):
                return None
            handle.seek(0)
            check_inflated_size(handle, label)  # dcmread inflates a Deflated file whole
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except InputError:
        raise
    except OSError as error:
        raise InputError(f"{label}: cannot be read ({error.strerror or error}).") from None
    except Exception as error:  # pydicom raises many types; its messages can quote values
        raise InputError(
            f"{label}: unreadable DICOM header ({type(error).__name__}); re-export the study."
        ) from None
    check_header(header, label)
    return header
