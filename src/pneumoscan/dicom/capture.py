"""The heatmap overlay as a Secondary Capture image, with the notice burned into the pixels.

Any viewer shows a Secondary Capture, including those that cannot read an SR; so the image says
for itself what it is: a band above the film carries the not-for-diagnostic-use notice and the
model, a band below carries the answer. BurnedInAnnotation is YES, as DICOM asks of an image
with text in its pixels (the text holds no patient field).
"""

from __future__ import annotations

import datetime
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pneumoscan.dicom.producer import (
    BURNED_IN_NOTICE,
    Producer,
)
from pneumoscan.runtime.predict import INDETERMINATE, STATUS_TEXT, Result

BAND_HEIGHT = 44
FONT_SIZE = 15
NOTICE_COLOUR = (255, 214, 0)  # amber on black: read as a warning in any viewer
TEXT_COLOUR = (255, 255, 255)


def answer_line(result: Result, producer: Producer) -> str:
    """The result in one line, as burned in below the film."""
    shown = result.label if result.label else STATUS_TEXT[result.status]
    probabilities = ", ".join(
        f"P({name}) {result.probabilities[name]:.2f}"
        for name in producer.class_names
        if name in result.probabilities
    )
    threshold = "" if producer.threshold is None else f"; threshold {producer.threshold:.2f}"
    return f"{shown.upper()}: {probabilities}{threshold}"


def burn_in(overlay: Image.Image, result: Result, producer: Producer) -> np.ndarray:
    """The overlay between two text bands, as an (H, W, 3) uint8 array. The top band and the
    bottom band's notice are the same for every film of a model: drawn once (`_bands`), so each
    film draws only its answer line."""
    overlay = overlay.convert("RGB")
    width, height = overlay.size
    top, bottom_notice = _bands(width, producer.model_title, producer.model_version)
    bottom = bottom_notice.copy()
    colour = NOTICE_COLOUR if result.status == INDETERMINATE else TEXT_COLOUR
    ImageDraw.Draw(bottom).text(
        (8, 4), answer_line(result, producer), fill=colour, font=_font(FONT_SIZE)
    )
    canvas = Image.new("RGB", (width, height + 2 * BAND_HEIGHT), (0, 0, 0))
    canvas.paste(top, (0, 0))
    canvas.paste(overlay, (0, BAND_HEIGHT))
    canvas.paste(bottom, (0, height + BAND_HEIGHT))
    return np.asarray(canvas, dtype=np.uint8)


@functools.lru_cache(maxsize=8)
def _bands(width: int, model_title: str, model_version: str) -> tuple[Image.Image, Image.Image]:
    """(the top band: notice and model line; the bottom band with its notice line only)."""
    font = _font(FONT_SIZE)
    top = Image.new("RGB", (width, BAND_HEIGHT), (0, 0, 0))
    draw = ImageDraw.Draw(top)
    draw.text((8, 4), BURNED_IN_NOTICE, fill=NOTICE_COLOUR, font=font)
    draw.text(
        (8, 4 + FONT_SIZE + 6),
        f"{model_title} (model {model_version}): heatmap of the evidence",
        fill=TEXT_COLOUR,
        font=font,
    )
    bottom = Image.new("RGB", (width, BAND_HEIGHT), (0, 0, 0))
    ImageDraw.Draw(bottom).text(
        (8, 4 + FONT_SIZE + 6), BURNED_IN_NOTICE, fill=NOTICE_COLOUR, font=font
    )
    return top, bottom


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled font, when FreeType is there
    except (TypeError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def overlay_of(result: Result) -> Image.Image | None:
    """The result's heatmap overlay (in memory, or read from its file), or None."""
    if result.heatmap is not None or result.heatmap_path is None:
        return result.heatmap
    with Image.open(result.heatmap_path) as image:
        return image.convert("RGB")


def build_capture(
    source: Dataset, result: Result, producer: Producer, when: datetime.datetime | None = None
) -> Dataset | None:
    """The Secondary Capture of `result`'s heatmap, or None when the result has none
    (`report_templates.CaptureTemplates` makes the same object for less)."""
    overlay = overlay_of(result)
    if overlay is None:
        return None
    import highdicom as hd

    when = when or datetime.datetime.now().astimezone()
    orientation = _orientation(source)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=burn_in(overlay, result, producer),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **producer.series_attributes(source, "capture", when),
    )
    if orientation is None:
        capture.PatientOrientation = None  # type 2: present, empty, as the film did not say
    capture.BodyPartExamined = "CHEST"  # unpaired, so the series has no Laterality
    capture.BurnedInAnnotation = "YES"
    capture.RecognizableVisualFeatures = "NO"
    capture.ImageComments = BURNED_IN_NOTICE
    capture.DerivationDescription = (
        "Class-activation heatmap of the film's evidence for the reported class, drawn over the "
        "film squared to the model's view; text bands burned in"
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [reference]
    return capture


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The film's patient orientation when it states a valid one."""
    try:
        value = list(source.get("PatientOrientation") or [])
    except (TypeError, ValueError):
        return None
    allowed = set("LRAPHF")
    if len(value) == 2 and all(text and set(str(text)) <= allowed for text in value):
        return str(value[0]), str(value[1])
    return None
