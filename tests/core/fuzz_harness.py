"""Property-based fuzzing (hypothesis) of `read_image` and the predict path on mutated real files.

Seeds are small real files of every kind we read: JPEG (grayscale, colour, progressive, with EXIF),
PNG (1-, 8- and 16-bit, palette with transparency, alpha) and DICOM (MONOCHROME1/2, 8/16-bit,
signed, windowed, implicit VR, deflated, RLE- and JPEG-compressed). A case is a seed plus
structural mutations (DICOM header values and VRs, transfer syntaxes, pixel-data lengths, frame
counts, photometric interpretations and bit depths; PNG/JPEG header dimensions, bit depths and
colour types, with valid checksums so the decoder gets past them) and then byte mutations (flips,
overwrites, insertions, deletions, duplications, truncation).

The property: every case ends either in a [0, 1] float32 2-D array or in an `InputError` with a
one-line message, and `predict_many` returns one result per input without raising.
tests/core/test_fuzz.py runs a seeded few hundred cases by default and 10,000 with `make fuzz`.
"""

from __future__ import annotations

import functools
import io
import resource
import struct
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dicom_fixtures import film_dataset
from hypothesis import strategies as st
from PIL import Image
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from pneumoscan.core.errors import InputError
from pneumoscan.core.images import read_image
from pneumoscan.runtime.predict import STATUSES, predict_many

SEED_SIZE = (48, 40)  # width, height: small, so 10,000 cases take minutes


def _film(dtype=np.uint8) -> np.ndarray:
    width, height = SEED_SIZE
    x = np.linspace(-1, 1, width)[None, :]
    y = np.linspace(-1, 1, height)[:, None]
    pixels = 0.5 + 0.3 * np.exp(-((x / 0.3) ** 2)) - 0.2 * y**2
    top = np.iinfo(dtype).max
    return np.clip(pixels * top, 0, top).astype(dtype)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def raster_seeds() -> dict[str, bytes]:
    gray = Image.fromarray(_film())
    palette = gray.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x010F] = "fuzz"
    return {
        "jpeg-gray": _encode(gray, "JPEG", quality=90),
        "jpeg-rgb": _encode(gray.convert("RGB"), "JPEG", quality=90),
        "jpeg-progressive": _encode(gray, "JPEG", progressive=True),
        "jpeg-exif": _encode(gray.convert("RGB"), "JPEG", exif=exif),
        "png-8bit": _encode(gray, "PNG"),
        "png-16bit": _encode(Image.fromarray(_film(np.uint16)), "PNG"),
        "png-1bit": _encode(gray.convert("1"), "PNG"),
        "png-palette-alpha": _encode(palette, "PNG", transparency=0),
        "png-rgba": _encode(gray.convert("RGBA"), "PNG"),
        "png-la": _encode(gray.convert("LA"), "PNG"),
    }


def dicom_dataset(
    bits: int = 16, signed: bool = False, photometric: str = "MONOCHROME2"
) -> Dataset:
    pixels = _film(np.uint16) >> 4 if bits == 16 else _film(np.uint8)
    if signed:
        pixels = pixels.astype(np.int32) - (1 << ((12 if bits == 16 else 8) - 1))
    return film_dataset(pixels, photometric, bits=bits, signed=signed)


def _dicom_bytes(dataset: Dataset, syntax=None) -> bytes:
    if syntax is not None:
        dataset.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_seeds() -> dict[str, bytes]:
    seeds = {
        "dicom-mono2-16": _dicom_bytes(dicom_dataset()),
        "dicom-mono1-16": _dicom_bytes(dicom_dataset(photometric="MONOCHROME1")),
        "dicom-mono2-8": _dicom_bytes(dicom_dataset(bits=8)),
        "dicom-signed": _dicom_bytes(dicom_dataset(signed=True)),
        "dicom-implicit": _dicom_bytes(dicom_dataset(), ImplicitVRLittleEndian),
        "dicom-deflated": _dicom_bytes(dicom_dataset(), DeflatedExplicitVRLittleEndian),
    }
    windowed = dicom_dataset()
    windowed.WindowCenter, windowed.WindowWidth = 2000, 1000
    windowed.RescaleSlope, windowed.RescaleIntercept = 2, -1024
    seeds["dicom-windowed"] = _dicom_bytes(windowed)
    rle = dicom_dataset()
    rle.compress(RLELossless)
    seeds["dicom-rle"] = _dicom_bytes(rle)
    jpeg = dicom_dataset(bits=8)
    jpeg.PixelData = encapsulate([_encode(Image.fromarray(_film()), "JPEG")])
    jpeg["PixelData"].VR = "OB"
    seeds["dicom-jpeg"] = _dicom_bytes(jpeg, JPEGBaseline8Bit)
    return seeds


@functools.cache
def all_seeds() -> dict[str, bytes]:
    return {**raster_seeds(), **dicom_seeds()}


# --- structural mutations ------------------------------------------------------------------

SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    RLELossless,
    "1.2.3.4.5",
]
PHOTOMETRIC = ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "", "monochrome2"]
NUMBERS = st.one_of(
    st.integers(-(2**31), 2**31),
    st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 64, 255, 256, 65535, 65536]),
)
TEXT_VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["ab", "1.5", "-1", "NaN", "inf", "1e400", "", " ", "2\\3", "0x10"]),
)
# (keyword, tag, dictionary VR) of the header fields the reader looks at
FIELDS = [
    ("NumberOfFrames", 0x00280008, "IS"),
    ("Rows", 0x00280010, "US"),
    ("Columns", 0x00280011, "US"),
    ("BitsAllocated", 0x00280100, "US"),
    ("BitsStored", 0x00280101, "US"),
    ("HighBit", 0x00280102, "US"),
    ("PixelRepresentation", 0x00280103, "US"),
    ("SamplesPerPixel", 0x00280002, "US"),
    ("RescaleSlope", 0x00281053, "DS"),
    ("RescaleIntercept", 0x00281052, "DS"),
    ("WindowCenter", 0x00281050, "DS"),
    ("WindowWidth", 0x00281051, "DS"),
    ("PhotometricInterpretation", 0x00280004, "CS"),
]
OTHER_VRS = ["LO", "SH", "UN", "OB", "DS", "IS", "US", "SS", "UL", "FL", "FD", "CS"]


def _element(tag: int, vr: str, value) -> DataElement:
    if vr in ("OB", "UN"):
        return DataElement(tag, vr, str(value).encode("latin-1", "replace"))
    if vr == "CS":
        return DataElement(tag, vr, str(value)[:16])
    if vr in ("LO", "SH", "DS", "IS"):
        return DataElement(tag, "LO" if vr in ("DS", "IS") else vr, str(value)[:16])
    number = int(value) if isinstance(value, int) else 0
    if vr in ("FL", "FD"):
        return DataElement(tag, vr, float(number))
    bits = {"US": (0, 2**16 - 1), "SS": (-(2**15), 2**15 - 1), "UL": (0, 2**32 - 1)}[vr]
    return DataElement(tag, vr, int(np.clip(number, *bits)))


@st.composite
def dicom_case(draw) -> bytes:
    # pydicom complains about the invalid values this harness writes on purpose; only the
    # reader's behaviour is under test, so the harness's own complaints are ignored here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _dicom_case(draw)


def _dicom_case(draw) -> bytes:
    seeds = all_seeds()
    name = draw(st.sampled_from(sorted(n for n in seeds if n.startswith("dicom"))))
    dataset = dcmread(io.BytesIO(seeds[name]))
    for _ in range(draw(st.integers(0, 4))):
        keyword, tag, vr = draw(st.sampled_from(FIELDS))
        kind = draw(st.sampled_from(["value", "vr", "delete"]))
        if kind == "delete":
            if tag in dataset:
                del dataset[tag]
        elif kind == "vr":
            vr, value = draw(st.sampled_from(OTHER_VRS)), draw(st.one_of(NUMBERS, TEXT_VALUES))
        elif keyword == "PhotometricInterpretation":
            value = draw(st.one_of(st.sampled_from(PHOTOMETRIC), st.text(max_size=16)))
        else:
            value = draw(NUMBERS)
        if kind != "delete":
            try:
                dataset[tag] = _element(tag, vr, value)
            except (ValueError, TypeError, OverflowError):
                pass  # pydicom will not even hold this value; the byte mutations still apply
    if draw(st.booleans()) and "PixelData" in dataset:
        data = dataset.PixelData
        change = draw(st.integers(-len(data), 4 * len(data)))
        dataset.PixelData = data[: len(data) + change] if change < 0 else data + bytes(change)
    syntax = draw(st.sampled_from([None] * 4 + SYNTAXES))
    try:
        return _dicom_bytes(dataset, syntax)
    except Exception:  # pydicom refuses to write some combinations: keep the unmutated seed
        return seeds[name]


def _png_with_header(data: bytes, width: int, height: int, depth: int, colour: int) -> bytes:
    header = struct.pack(">IIBB", width, height, depth, colour) + data[26:29]
    chunk = b"IHDR" + header
    return (
        data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]
    )


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        start = data.find(marker)
        if start >= 0:
            return data[: start + 5] + struct.pack(">HH", height, width) + data[start + 9 :]
    return data


@st.composite
def raster_case(draw) -> bytes:
    seeds = all_seeds()
    name = draw(st.sampled_from(sorted(n for n in seeds if not n.startswith("dicom"))))
    data = seeds[name]
    if draw(st.booleans()):
        width = draw(st.one_of(st.integers(0, 70_000), st.sampled_from([1, 2**31 - 1, 2**32 - 1])))
        height = draw(st.one_of(st.integers(0, 70_000), st.sampled_from([1, 2**31 - 1])))
        if name.startswith("png"):
            depth = draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 32]))
            colour = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 5, 7]))
            data = _png_with_header(data, width, height, depth, colour)
        else:
            data = _jpeg_with_size(data, width & 0xFFFF, height & 0xFFFF)
    return data


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "duplicate", "cut"]))
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[position] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0xFE]))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif operation == "duplicate":
            piece = data[position : position + draw(st.integers(1, 256))]
            data[position:position] = piece * draw(st.integers(1, 4))
        else:
            del data[max(position, 1) :]
    return bytes(data)


@st.composite
def fuzz_case(draw) -> bytes:
    structural = draw(st.one_of(dicom_case(), raster_case()))
    return draw(byte_mutations(structural))


# --- the property --------------------------------------------------------------------------


@dataclass
class FuzzStats:
    """What the harness saw: counts per outcome, the slowest case and the peak memory."""

    cases: int = 0
    decoded: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    uncaught: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    start_rss_mb: float = field(default_factory=lambda: peak_rss_mb())

    def report(self) -> dict:
        return {
            "cases": self.cases,
            "decoded": self.decoded,
            "refused_by_error_type": dict(sorted(self.refused.items())),
            "uncaught_exceptions": len(self.uncaught),
            "slowest_case_s": round(self.slowest_s, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_at_start_mb": round(self.start_rss_mb, 1),
        }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_case(content: bytes, model, stats: FuzzStats) -> None:
    """The property for one case; records it in `stats` and raises AssertionError when broken."""
    stats.cases += 1
    start = time.perf_counter()
    try:
        try:
            with warnings.catch_warnings(record=True) as escaped:
                warnings.simplefilter("always")
                image = read_image(content, name="fuzz-case")
            assert not escaped, [str(w.message) for w in escaped]
        except InputError as error:
            message = str(error)
            assert message.startswith("fuzz-case: ") and "\n" not in message, message
            stats.refused[type(error).__name__] = stats.refused.get(type(error).__name__, 0) + 1
        else:
            stats.decoded += 1
            assert image.ndim == 2 and image.dtype == np.float32 and image.size > 0
            assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
        if model is not None:
            with warnings.catch_warnings(record=True) as escaped:
                warnings.simplefilter("always")
                results = list(predict_many(model, [content], workers=1))
            assert not escaped, [str(w.message) for w in escaped]
            assert len(results) == 1 and results[0].status in STATUSES
            if results[0].status == "error":
                assert results[0].message.startswith("<upload>: ")
    except AssertionError:
        raise
    except Exception as error:  # an uncaught exception: the bug the harness looks for
        stats.uncaught.append(f"{type(error).__name__}: {error}")
        raise
    finally:
        stats.slowest_s = max(stats.slowest_s, time.perf_counter() - start)


def write_seed_files(folder: Path) -> list[Path]:
    """The seeds as files (for a look at what the fuzzer starts from)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in {**raster_seeds(), **dicom_seeds()}.items():
        path = folder / f"{name}{'.dcm' if name.startswith('dicom') else '.img'}"
        path.write_bytes(data)
        paths.append(path)
    return paths
