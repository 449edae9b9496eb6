"""Cheaper result objects: highdicom builds an SR (or a heatmap Secondary Capture) once per shape,
and each film fills a copy.

highdicom takes about 100 ms to build one TID 1500 SR (checks and copies of the content tree)
and several to build a Secondary Capture, and the films of a burst get the same objects but for
a few values: their UIDs, patient and study fields, size, probabilities, the time, the reason
when there is no result, and (a capture) the burned-in pixels. `ReportTemplates.build` gives the
dataset `report.build_report` gives, and `CaptureTemplates.build` the one
`capture.build_capture` gives, for less:

- an object's *shape*: the result's status, label and classes, whether it has a reason, and
  every header attribute of the film except those filled per film (`FILLED`) and per-image
  attributes no part of the object reads (`Templates.unread`); for each filled one, only whether
  it has a value (a capture adds the heatmap's size);
- the first film of a shape: highdicom builds the objects of two *probes*, the film with each
  filled attribute set to a made-up value, unique to the probe (probe B also drops every unread
  attribute), and the result with made-up probabilities, gate score and message. An element
  holding one of the made-up values (or a UID, or pixels, derived from one) is a *slot*. The two
  objects must agree everywhere else, slot for slot; otherwise something per film reaches the
  object in a way the slots do not cover, and that shape keeps highdicom's path;
- every other film of that shape: a deep copy of probe A's object with each slot set to the
  film's own value, made as highdicom makes it (`DA`, `TM`, `DT`, `DS` with auto-format, FD),
  or (the node's path, `build_encoded`) probe A's encoding with the film's elements spliced in.

tests/dicom/test_node_burst.py compares the paths on films that differ in every filled and
unread attribute, for each kind of result.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import io
import threading
import uuid

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import Tag
from pydicom.valuerep import DA, DS, DT, TM

from pneumoscan.dicom.capture import build_capture, burn_in, overlay_of
from pneumoscan.dicom.producer import Producer, instance_number
from pneumoscan.dicom.report import build_report, encode, no_result_reason
from pneumoscan.runtime.predict import ERROR, Result

# Header attributes each film fills in (the values the report copies), and how a probe's
# made-up value for each is made from a unique text (`_probe_values`).
FILLED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Rows",
    "Columns",
    "InstanceNumber",
)
# Per-image attributes (acquisition, pixels, presentation) that the report does not read;
# probe B drops them all, so a report that read one would not get a template.
UNREAD = frozenset(
    {
        "ContentDate",
        "ContentTime",
        "AcquisitionDate",
        "AcquisitionTime",
        "AcquisitionDateTime",
        "AcquisitionNumber",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "SeriesDate",
        "SeriesTime",
        "SeriesNumber",
        "SeriesDescription",
        "ImageType",
        "BodyPartExamined",
        "ViewPosition",
        "PatientOrientation",
        "ImageLaterality",
        "Laterality",
        "ImagerPixelSpacing",
        "PixelSpacing",
        "WindowCenter",
        "WindowWidth",
        "WindowCenterWidthExplanation",
        "VOILUTFunction",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "PresentationIntentType",
        "PixelIntensityRelationship",
        "PixelIntensityRelationshipSign",
        "PresentationLUTShape",
        "BurnedInAnnotation",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PlanarConfiguration",
        "KVP",
        "ExposureTime",
        "XRayTubeCurrent",
        "Exposure",
        "ExposureInuAs",
        "DistanceSourceToDetector",
        "DistanceSourceToPatient",
    }
)
# What highdicom stamps with its own clock (its creation time, a capture's time, its own
# contributing-equipment item): filled with the time the object is made.
NOW = {
    Tag("InstanceCreationDate"): "now date",
    Tag("InstanceCreationTime"): "now time",
    Tag("DateOfSecondaryCapture"): "now date",
    Tag("TimeOfSecondaryCapture"): "now time",
    Tag("ContributionDateTime"): "now datetime",
}
MAX_SHAPES = 64  # templates kept; later shapes take highdicom's path


@dataclasses.dataclass
class _Template:
    report: Dataset
    slots: list[tuple[tuple, str]]  # (path to an element, the value's name)
    encoded: _Encoded | None = None  # the report as bytes cut at its slots (`_encoded`)


@dataclasses.dataclass
class _Encoded:
    """A template report as Part 10 bytes: its data set cut at each slot element (sequences and
    items of undefined length, so a value of another length changes no enclosing length)."""

    meta_pieces: tuple[bytes, bytes]  # the file meta after its group length, cut at the UID
    pieces: list[bytes]  # the bytes around the slot elements: one more than `elements`
    elements: list[tuple[int, str, str]]  # (tag, VR, the value's name), in byte order


class Templates:
    """A kind of result object (`_build`) for one producer, with a template per shape (thread-safe).
    `ReportTemplates` and `CaptureTemplates` say what is built, what a film's header may hold
    that the object never reads (`unread`), and which values each film fills (`_values`)."""

    unread: frozenset = UNREAD
    instance_value = "report"  # the value (`_values`) that is the object's SOP Instance UID

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self._templates: dict[tuple, _Template | None] = {}
        self._lock = threading.Lock()
        self.filled = 0  # objects made from a template (the tests read these)
        self.built = 0  # objects highdicom built (probes included)

    def _build(self, source: Dataset, result: Result, when: datetime.datetime) -> Dataset:
        raise NotImplementedError

    def _values(self, source: Dataset, result: Result, when: datetime.datetime) -> dict:
        return _values(source, result, self.producer, when)

    def _shape(self, source: Dataset, result: Result) -> tuple:
        return _shape(source, result, self.producer, self.unread)

    def build(self, source: Dataset, result: Result, when: datetime.datetime | None = None):
        when = when or datetime.datetime.now().astimezone()
        template = self._template_for(source, result, when)
        if template is None:
            self.built += 1
            return self._build(source, result, when)
        values = self._film_values(source, result, when)
        made = _copy(template.report)
        for path, name in template.slots:
            _element(made, path).value = values[name]
        self.filled += 1
        return made

    def build_encoded(
        self, source: Dataset, result: Result, when: datetime.datetime | None = None
    ) -> bytes:
        """`encode(self.build(...))`, for less: a shape's object is encoded once, and each
        film's bytes are that encoding with its own slot elements spliced in (encoding a filled
        copy took most of the node's time per film after the copy itself). The bytes differ from
        `encode`'s only in giving sequences and items undefined lengths; they read back as the
        same data set (tests/dicom/test_node_burst.py)."""
        when = when or datetime.datetime.now().astimezone()
        template = self._template_for(source, result, when)
        if template is None or template.encoded is None:
            return encode(self.build(source, result, when))
        values = self._film_values(source, result, when)
        encoded = template.encoded
        parts = [encoded.pieces[0]]
        for (tag, vr, name), piece in zip(encoded.elements, encoded.pieces[1:]):
            parts += [_element_bytes(DataElement(tag, vr, values[name])), piece]
        self.filled += 1
        return b"".join([PREAMBLE, _meta_with(encoded, values[self.instance_value]), *parts])

    def _template_for(self, source: Dataset, result: Result, when: datetime.datetime):
        """The template of this object's shape, made at its first film; None when the shape
        keeps highdicom's path (the probes disagreed, or `MAX_SHAPES` are kept already)."""
        shape = self._shape(source, result)
        with self._lock:
            if shape not in self._templates and len(self._templates) < MAX_SHAPES:
                self._templates[shape] = self._template(source, result, when)
            return self._templates.get(shape)

    def _film_values(self, source: Dataset, result: Result, when: datetime.datetime) -> dict:
        values = self._values(source, result, when)
        now = datetime.datetime.now()
        values.update(
            {"now date": DA(now.date()), "now time": TM(now.time()), "now datetime": DT(now)}
        )
        return values

    def _template(self, source: Dataset, result: Result, when: datetime.datetime):
        """Probe A's object and its slots, or None when the probes disagree (or fail)."""
        probes = []
        for probe in ("a", "b"):
            header, probe_result, probe_when = _probe(source, result, when, probe, self.unread)
            try:
                made = self._build(header, probe_result, probe_when)
            except Exception:  # a probe highdicom refuses: this shape keeps the plain path
                return None
            self.built += 1
            values = self._values(header, probe_result, probe_when)
            index = {_text(name, value): name for name, value in values.items()}
            if len(index) != len(values):  # two made-up values alike: slots would be ambiguous
                return None
            probes.append((made, _leaves(made), index))
        (made_a, leaves_a, index_a), (_, leaves_b, index_b) = probes
        if [path for path, _ in leaves_a] != [path for path, _ in leaves_b]:
            return None
        slots = []
        for (path, text_a), (_, text_b) in zip(leaves_a, leaves_b):
            name_a, name_b = index_a.get(text_a), index_b.get(text_b)
            if name_a != name_b:
                return None
            if name_a is not None:
                slots.append((path, name_a))
            elif text_a != text_b:
                if path[-1] not in NOW:
                    return None  # a per-film value the slots do not cover
                slots.append((path, NOW[path[-1]]))
        return _Template(made_a, slots, _encoded(made_a, slots))


class ReportTemplates(Templates):
    """`build_report` for one producer, with a template per shape of report."""

    def _build(self, source: Dataset, result: Result, when: datetime.datetime) -> Dataset:
        return build_report(source, result, self.producer, when)


class CaptureTemplates(Templates):
    """`capture.build_capture` for one producer, with a template per shape of Secondary Capture:
    the film's patient orientation and the heatmap's size are part of the shape, and the burned-in
    pixels are filled per film. `build` and `build_encoded` return None for a result without a
    heatmap, as `build_capture` does."""

    unread = UNREAD - {"PatientOrientation"}  # the capture states the film's orientation
    instance_value = "capture"

    def _build(self, source: Dataset, result: Result, when: datetime.datetime) -> Dataset:
        return build_capture(source, result, self.producer, when)

    def _values(self, source: Dataset, result: Result, when: datetime.datetime) -> dict:
        values = _values(source, result, self.producer, when)
        values["capture series"] = self.producer.uid(source.StudyInstanceUID, "capture series")
        values["capture"] = self.producer.uid(source.SOPInstanceUID, "capture")
        values["pixels"] = burn_in(result.heatmap, result, self.producer).tobytes()
        return values

    def _shape(self, source: Dataset, result: Result) -> tuple:
        return (*super()._shape(source, result), result.heatmap.size)

    def build(self, source: Dataset, result: Result, when: datetime.datetime | None = None):
        result = _in_memory(result)
        return None if result is None else super().build(source, result, when)

    def build_encoded(
        self, source: Dataset, result: Result, when: datetime.datetime | None = None
    ) -> bytes | None:
        result = _in_memory(result)
        return None if result is None else super().build_encoded(source, result, when)


def _in_memory(result: Result) -> Result | None:
    """`result` with its overlay in memory (read once from its file if it was written to one),
    or None when it has no heatmap."""
    overlay = overlay_of(result)
    if overlay is None:
        return None
    return result if overlay is result.heatmap else dataclasses.replace(result, heatmap=overlay)


def _shape(
    source: Dataset, result: Result, producer: Producer, unread: frozenset = UNREAD
) -> tuple:
    parts: list = [
        result.status,
        result.label,
        tuple(result.probabilities),
        no_result_reason(result, producer) is not None,
    ]
    for element in source:
        keyword = element.keyword
        if keyword in unread:
            continue
        if keyword in FILLED:
            parts.append((keyword, _fillable(source, keyword)))
        else:
            parts.append((int(element.tag), element.VR, str(element.value)))
    return tuple(parts)


def _fillable(source: Dataset, keyword: str) -> bool:
    """Whether the film's value for a filled attribute is one the report copies as a value."""
    value = source.get(keyword)
    if keyword in ("Rows", "Columns"):
        return isinstance(value, int) and value > 0
    return value is not None and str(value) != ""


def _values(
    source: Dataset, result: Result, producer: Producer, when: datetime.datetime
) -> dict[str, object]:
    """Every value a report takes from its film, result and time, by name, as highdicom
    writes it."""
    values: dict[str, object] = {}
    for keyword in FILLED:
        if keyword not in ("Rows", "Columns", "InstanceNumber") and _fillable(source, keyword):
            values[keyword] = source[keyword].value
    for keyword in ("Rows", "Columns"):
        if _fillable(source, keyword):
            values[keyword] = DS(source[keyword].value, auto_format=True)
    values["instance"] = instance_number(source)
    values["report series"] = producer.uid(source.StudyInstanceUID, "report series")
    values["report"] = producer.uid(source.SOPInstanceUID, "report")
    for name in producer.class_names:
        values[f"finding {name}"] = producer.uid(source.SOPInstanceUID, "finding", name)
    for name, probability in result.probabilities.items():
        rounded = round(float(probability), 6)
        values[f"P({name})"] = DS(rounded, auto_format=True)
        values[f"P({name}) FD"] = rounded
    values["date"], values["time"], values["datetime"] = (
        DA(when.date()),
        TM(when.time()),
        DT(when),
    )
    reason = no_result_reason(result, producer)
    if reason is not None:
        values["reason"] = reason
    return values


def _probe(
    source: Dataset,
    result: Result,
    when: datetime.datetime,
    probe: str,
    unread: frozenset = UNREAD,
):
    """The film, its result and the time, with unique made-up values in every slot (probe B
    without the `unread` attributes)."""
    tag = uuid.uuid4().hex
    b = probe == "b"
    made_up = {
        "PatientName": f"Probe^{tag[:10]}",
        "PatientID": f"PID{tag[:12]}",
        "PatientBirthDate": "19050607" if b else "19010102",
        "PatientAge": "087Y" if b else "093Y",
        "StudyDate": "19060708" if b else "19020304",
        "StudyTime": "121314.151617" if b else "111213.141516",
        "AccessionNumber": f"ACC{tag[:12]}",
        "StudyID": f"SID{tag[:12]}",
        "ReferringPhysicianName": f"Ref^{tag[:10]}",
        "Rows": 30029 if b else 30011,
        "Columns": 30031 if b else 30013,
        "InstanceNumber": 30037 if b else 30017,
    }
    header = copy.deepcopy(source)
    if b:
        for keyword in unread:
            if keyword in header:
                del header[keyword]
    for keyword in FILLED:
        if not _fillable(source, keyword):
            continue
        if keyword.endswith("InstanceUID"):
            setattr(header, keyword, f"2.25.{uuid.uuid4().int}")
        else:
            setattr(header, keyword, made_up[keyword])
    start = 0.144443 if b else 0.111113
    probabilities = {
        name: start + 0.111119 * index for index, name in enumerate(result.probabilities)
    }
    probe_result = dataclasses.replace(
        result,
        probabilities=probabilities,
        gate_score=None if result.gate_score is None else (876.543 if b else 987.654),
        message=f"{result.source}: probe {tag}" if result.status == ERROR else result.message,
    )
    probe_when = datetime.datetime(
        1904 if b else 1903, 4 if b else 3, 4 if b else 3, 4, 4, 4, 444444 if b else 333333
    ).replace(tzinfo=when.tzinfo)
    return header, probe_result, probe_when


def _text(name: str, value) -> tuple[bool, str]:
    """How a value reads in a report's element: (whether it is an FD, its text)."""
    return name.endswith(" FD"), str(value)


def _leaves(dataset: Dataset, path: tuple = ()) -> list[tuple[tuple, tuple[bool, str]]]:
    """(path, (whether an FD, value as text)) of every element that is not a sequence, in
    order."""
    leaves = []
    for element in dataset:
        here = (*path, element.tag)
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                leaves.extend(_leaves(item, (*here, index)))
        else:
            leaves.append((here, (element.VR == "FD", str(element.value))))
    return leaves


def _copy(dataset: Dataset) -> Dataset:
    """A copy of a template report deep enough to fill its slots: its own datasets, sequences
    and element objects all the way down, sharing only element values, which filling replaces
    and never changes in place (strings, numbers, UIDs). copy.deepcopy over pydicom's objects
    took about a sixth of the node's busy time in a burst of 60 films (py-spy samples)."""
    copied = copy.copy(dataset)  # the class (highdicom's SR) and its attributes
    copied._dict = {}
    copied._private_blocks = {}
    for tag in dataset._dict:
        element = dataset[tag]
        twin = copy.copy(element)
        if element.VR == "SQ":
            twin.value = [_copy(item) for item in element.value]
        copied._dict[tag] = twin
    file_meta = dataset.__dict__.get("file_meta")
    if file_meta is not None:
        copied.file_meta = _copy(file_meta)
    return copied


def _element(dataset: Dataset, path: tuple):
    for step in range(0, len(path) - 1, 2):
        dataset = dataset[path[step]].value[path[step + 1]]
    return dataset[path[-1]]


PREAMBLE = b"\x00" * 128 + b"DICM"


def _encoded(report: Dataset, slots: list[tuple[tuple, str]]) -> _Encoded | None:
    """The report's bytes cut at its slot elements, or None when a slot's element cannot be
    found exactly once per slot in them (that shape then encodes each filled copy)."""
    undefined = _copy(report)
    sequence_lengths(undefined, undefined=True)
    data = encode(undefined)
    body_start = (
        len(PREAMBLE) + 12 + int.from_bytes(data[len(PREAMBLE) + 8 : len(PREAMBLE) + 12], "little")
    )
    body = data[body_start:]
    wanted: dict[bytes, list[tuple[int, str, str]]] = {}
    for path, name in slots:
        element = _element(undefined, path)
        wanted.setdefault(_element_bytes(element), []).append((element.tag, element.VR, name))
    found = []
    for element_bytes, elements in wanted.items():
        starts = _occurrences(body, element_bytes)
        if len(starts) != len(elements) or len({name for *_, name in elements}) != 1:
            return None
        found += [(start, len(element_bytes), elements[0]) for start in starts]
    found.sort()
    pieces, elements, position = [], [], 0
    for start, length, element in found:
        if start < position:  # overlapping matches: ambiguous
            return None
        pieces.append(body[position:start])
        elements.append(element)
        position = start + length
    pieces.append(body[position:])
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    after_length = data[len(PREAMBLE) + len(_group_length(0)) : body_start]
    uid = _element_bytes(meta["MediaStorageSOPInstanceUID"])
    starts = _occurrences(after_length, uid)
    if len(starts) != 1:
        return None
    meta_pieces = (after_length[: starts[0]], after_length[starts[0] + len(uid) :])
    return _Encoded(meta_pieces, pieces, elements)


def _group_length(length: int) -> bytes:
    return _element_bytes(DataElement(0x00020000, "UL", length))


def _meta_with(encoded: _Encoded, uid: str) -> bytes:
    """The template's file meta information with the object's own instance UID (and the group
    length that UID gives; writing the meta with pydicom took a millisecond an object)."""
    before, after = encoded.meta_pieces
    rest = before + _element_bytes(DataElement(0x00020003, "UI", uid)) + after
    return _group_length(len(rest)) + rest


def _occurrences(data: bytes, part: bytes) -> list[int]:
    """Where `part` starts in `data`, without overlaps (a pixel element is a megabyte: no regex)."""
    starts, at = [], data.find(part)
    while at >= 0:
        starts.append(at)
        at = data.find(part, at + len(part))
    return starts


def sequence_lengths(dataset: Dataset, undefined: bool) -> None:
    """Mark every sequence and item of `dataset`, all the way down, to be written with undefined
    lengths (delimiters) or with defined ones."""
    for element in dataset:
        if element.VR == "SQ":
            element.is_undefined_length = undefined
            for item in element.value:
                item.is_undefined_length_sequence_item = undefined
                sequence_lengths(item, undefined)


def _explicit_little_endian() -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    return buffer


def _element_bytes(element: DataElement) -> bytes:
    """One element as explicit VR little endian bytes, as pydicom writes it in a data set."""
    buffer = _explicit_little_endian()
    write_data_element(buffer, element)
    return buffer.getvalue()
