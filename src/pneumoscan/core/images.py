"""Read any supported file into one pixel contract: a 2-D float32 array in [0, 1], 0 = black.

JPEG and PNG of any mode and bit depth (8/16-bit, grayscale, RGB, RGBA, palette) and DICOM
(modality rescale, VOI LUT / windowing, MONOCHROME1 inverted) all end here on one scale, so
training, evaluation and serving see the same numbers. The format is sniffed from the content,
not the file name. DICOM patient fields are never read into anything we return, raise or log.
`decode_input` also takes a 2-D numpy array under one contract (`pixels_from_array`) and names
inputs in results without reading anything inside them (`source_label`).

Every failure is an `InputError` (or one of its subclasses) whose one-line message names the file,
the problem and the fix: whatever a decoder raises, a batch of files never stops on one of them.
Sizes are checked from the header before any pixel is decoded (decompression bombs).

With `min_side`, a film is decoded no smaller than that on its shorter side but no larger than it
needs: a JPEG in the DCT at 1/2, 1/4 or 1/8 scale (Pillow's draft mode), other films by the mean of
each k x k block of their integer pixels, before any float conversion (`area_reduce`). Callers pass
`PreprocessSpec.decode_side`, about twice the model's input, so the later resize to the model's
square sees the same film it would from full size.
"""

from __future__ import annotations

import io
import logging
import re
import stat
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from pneumoscan.core.errors import (
    ImageTooLargeError,
    InputError,
    NotChestRadiographError,
    UnsupportedFormatError,
)
from pneumoscan.core.refusal import header_refusal

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

# A full-size radiograph is under 10 Mpx; anything above this is refused from its header, before
# a pixel is decoded. `read_image(..., max_pixels=...)` changes it per call.
MAX_IMAGE_PIXELS = 50_000_000
# Files are read whole into memory; a radiograph is tens of MB at most.
MAX_FILE_BYTES = 512 * 1024 * 1024
# A Deflated DICOM is inflated only after its inflated size is counted against the pixel limit.
_MAX_BYTES_PER_PIXEL = 4
_HEADER_ALLOWANCE = 16 * 1024 * 1024
_INFLATE_CHUNK = 1024 * 1024
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")
RASTER_FORMATS = ("JPEG", "PNG")

_DICOM_MAGIC_OFFSET = 128
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_NOT_AN_IMAGE = "not a JPEG, PNG or DICOM image; pneumoscan reads chest radiographs only."

# Third-party decoder warnings (pydicom's header checks, Pillow's) are never printed: a file's own
# error message says what went wrong when it matters, and a DICOM warning can quote a header value
# (patient fields included). The filters are set once, for warnings raised from those libraries or
# attributed to this module (pydicom often warns with a stacklevel that points at its caller), and
# not with `warnings.catch_warnings` per decode: that swaps process-wide state, so it needed one
# global lock, which made every decode in the process run one at a time.
_QUIET_MODULES = (r"pydicom(\..*)?$", r"PIL(\..*)?$", re.escape(__name__) + "$")


def _quiet_decoders() -> None:
    """Install the decoder warning filters once (again if something reset `warnings.filters`)."""
    wanted = [("ignore", None, Warning, re.compile(module), 0) for module in _QUIET_MODULES]
    if all(entry in warnings.filters for entry in wanted):
        return
    for module in _QUIET_MODULES:
        warnings.filterwarnings("ignore", module=module)


_quiet_decoders()


def is_dicom(data: bytes) -> bool:
    """True for DICOM Part 10 files (the 'DICM' magic after the 128-byte preamble)."""
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


def read_image(
    source: Path | str | bytes | Dataset,
    name: str | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    check_header: bool = False,
    min_side: int | None = None,
) -> np.ndarray:
    """Decode a file, its bytes or a pydicom Dataset into a 2-D float32 array in [0, 1].

    `name` labels the input in messages (default: the path, or `<upload>` for bytes). Raises
    `UnsupportedFormatError` for content that is no JPEG/PNG/DICOM, `ImageTooLargeError` for more
    than `max_pixels` pixels (checked before decoding) and `InputError` for anything else that
    cannot be read; never a raw decoder error. With `check_header`, a DICOM whose Modality,
    BodyPartExamined or ViewPosition says it is no frontal chest radiograph raises
    `NotChestRadiographError` (with its `reason`) before any pixel is decoded. With `min_side`, the
    image is decoded or reduced to the smallest size whose shorter side is still at least that
    (never enlarged; see the module's docstring).
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "<upload>")
    try:
        if is_pydicom_dataset(source):
            return _decoded(
                lambda: _dicom_pixels(source, label, max_pixels, check_header, min_side), label
            )
        data = (
            source if isinstance(source, (bytes, bytearray)) else _read_bytes(Path(source), label)
        )
        if not data:
            raise InputError(f"{label}: file is empty (0 bytes); re-export or re-download it.")
        if is_dicom(data):
            return _decoded(
                lambda: _read_dicom(bytes(data), label, max_pixels, check_header, min_side), label
            )
        return _decoded(lambda: _read_raster(bytes(data), label, max_pixels, min_side), label)
    except InputError:
        raise
    except MemoryError:
        raise ImageTooLargeError(
            f"{label}: not enough memory to decode this image; downscale it first."
        ) from None
    except Exception as error:  # the last line of defence: one bad file never stops a batch
        raise InputError(
            f"{label}: could not be read as an image ({type(error).__name__}); "
            "re-export it as PNG, JPEG or uncompressed DICOM."
        ) from None


# --- every accepted input: paths, bytes, arrays, pydicom datasets ------------------------


def source_label(item, source: str | None = None) -> str:
    """How an input is named in results: the given source, a path as given, or a placeholder
    (uploads and arrays are never named after anything inside them)."""
    if source is not None:
        return str(source)
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, (bytes, bytearray)):
        return "<upload>"
    if isinstance(item, np.ndarray):
        return "<array>"
    return "<dicom>" if is_pydicom_dataset(item) else "<input>"


def pixels_from_array(array: np.ndarray, label: str = "<array>") -> np.ndarray:
    """The array contract: 2-D grayscale; float in [0, 1], or uint8 / uint16 with the range their
    dtype implies (0..255, 0..65535). Anything else is an InputError, never a silent rescale."""
    if array.ndim != 2 or array.size == 0:
        raise InputError(
            f"{label}: array of shape {array.shape}; pass a 2-D grayscale image (H, W) "
            "(convert colour first, e.g. PIL's .convert('L'))."
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        pixels = array.astype(np.float32)
        if not np.isfinite(pixels).all():
            raise InputError(f"{label}: array holds NaN or infinity; pass finite values in [0, 1].")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0.0 or high > 1.0:
            raise InputError(
                f"{label}: float pixels range {low:g}..{high:g}; float input must be in [0, 1] "
                "(divide by the bit depth's maximum, or pass uint8 / uint16)."
            )
        return pixels
    raise InputError(
        f"{label}: array dtype {array.dtype}; pass uint8 (0..255), uint16 (0..65535) or float "
        "in [0, 1]."
    )


def decode_input(
    item,
    label: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
    check_header: bool = False,
    min_side: int | None = None,
) -> np.ndarray:
    """Any accepted input -> the [0, 1] 2-D pixel contract, or an InputError (with
    `check_header`, `NotChestRadiographError` for a DICOM that says it is no chest film). Files
    are decoded at `min_side` (see `read_image`); an array is taken as given."""
    if isinstance(item, np.ndarray):
        return pixels_from_array(item, label)
    if isinstance(item, (str, Path, bytes, bytearray)) or is_pydicom_dataset(item):
        return read_image(
            item, name=label, max_pixels=max_pixels, check_header=check_header, min_side=min_side
        )
    raise InputError(
        f"{label}: cannot predict on a {type(item).__name__}; pass a path, bytes, a 2-D numpy "
        "array or a pydicom Dataset."
    )


# --- reading files -------------------------------------------------------------------------


def _read_bytes(path: Path, label: str) -> bytes:
    try:
        status = path.stat()
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(status.st_mode):
            raise InputError(
                f"{label}: not a regular file (a pipe, socket or device); give an image file."
            )
        size = status.st_size
        if size > MAX_FILE_BYTES:
            raise ImageTooLargeError(
                f"{label}: file is {size / 1e6:.0f} MB, over the {MAX_FILE_BYTES / 1e6:.0f} MB "
                "limit for one radiograph; downscale it first."
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{label}: file not found.") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a folder, not an image file.") from None
    except OSError as error:
        raise InputError(f"{label}: cannot be read ({error.strerror or error}).") from None


def _decoded(decode: Callable[[], np.ndarray], label: str) -> np.ndarray:
    """Run one decoder (no lock: decodes in several threads run at the same time)."""
    _quiet_decoders()
    return _checked(decode(), label)


def _checked(image: np.ndarray, label: str) -> np.ndarray:
    """The pixel contract, enforced: 2-D, not empty, finite, float32 in [0, 1]."""
    if image.ndim != 2 or image.size == 0:
        raise InputError(
            f"{label}: decoded to an array of shape {image.shape}, not a 2-D image; "
            "export a single grayscale frame."
        )
    image = image.astype(np.float32, copy=False)
    low, high = float(image.min()), float(image.max())  # NaN and infinity show up here
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{label}: pixel values are not finite (NaN or infinity); re-export it.")
    return image if low >= 0.0 and high <= 1.0 else np.clip(image, 0.0, 1.0)


def _too_large(label: str, width: int, height: int, max_pixels: int, frames: int = 1) -> None:
    if width * height * max(frames, 1) > max_pixels:
        extra = f" x {frames} frames" if frames > 1 else ""
        raise ImageTooLargeError(
            f"{label}: image is {width}x{height} px{extra}, over the {max_pixels:,} px limit for "
            "safe decoding; downscale it first."
        )


def reduction_factor(width: int, height: int, min_side: int | None) -> int:
    """The largest whole factor that keeps the shorter side at least `min_side` (1: none)."""
    if not min_side or min_side <= 0:
        return 1
    return max(1, min(width, height) // min_side)


def area_reduce(pixels: np.ndarray, factor: int, mask: int | None = None) -> np.ndarray:
    """The mean of each `factor` x `factor` block of a 2-D array, as float64 (the array itself
    when `factor` < 2). Integer pixels are summed as integers, strided slice by slice (a few ms
    for a 2,000 px film); the rows and columns past the last whole block, fewer than `factor`,
    are dropped evenly from both edges, so the film stays centred. `mask`: integer pixels are
    ANDed with it first, slice by slice in the same pass (a DICOM film's unused high bits)."""
    if factor < 2:
        return pixels if mask is None else pixels & mask
    height, width = pixels.shape
    top, left = (height % factor) // 2, (width % factor) // 2
    whole = pixels[top : top + height - height % factor, left : left + width - width % factor]
    if np.issubdtype(whole.dtype, np.floating):
        accumulator = np.float64
    elif whole.dtype.itemsize <= 2 and np.issubdtype(whole.dtype, np.unsignedinteger):
        accumulator = np.uint32  # 65535 x 256 x 256 still fits
    else:
        accumulator = np.int64

    def row_slice(offset: int) -> np.ndarray:
        rows = whole[offset::factor]
        return rows if mask is None else rows & mask

    rows = row_slice(0).astype(accumulator)
    for offset in range(1, factor):
        rows += row_slice(offset)
    total = rows[:, 0::factor].copy()
    for offset in range(1, factor):
        total += rows[:, offset::factor]
    return total / float(factor * factor)


def _read_raster(data: bytes, label: str, max_pixels: int, min_side: int | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=RASTER_FORMATS) as image:
            width, height = image.size
            _too_large(label, width, height, max_pixels)  # from the header: nothing decoded yet
            if image.format == "JPEG" and image.mode in ("L", "RGB"):
                if reduction_factor(width, height, min_side) >= 2:
                    # libjpeg decodes at the smallest 1/2, 1/4 or 1/8 scale still >= min_side
                    image.draft(image.mode, (min_side, min_side))
            image.load()
            return _to_gray_unit(image, reduction_factor(*image.size, min_side))
    except UnidentifiedImageError:
        if data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
            kind = "PNG" if data.startswith(_PNG_MAGIC) else "JPEG"
            raise InputError(
                f"{label}: {kind} header is truncated or corrupt (or describes an impossible "
                "image); re-export the file."
            ) from None
        raise UnsupportedFormatError(f"{label}: {_NOT_AN_IMAGE}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(
            f"{label}: image is too large to decode safely (over {max_pixels:,} px)."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as error:
        detail = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise InputError(
            f"{label}: image data is truncated or corrupt ({detail}); re-export the file."
        ) from None


def _to_gray_unit(image: Image.Image, factor: int = 1) -> np.ndarray:
    """Any Pillow mode to grayscale in [0, 1], keeping the full precision of 16-bit images;
    reduced by `factor` (`area_reduce`) on the integer pixels, before the float conversion."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        pixels = area_reduce(np.asarray(image), factor)
        return (pixels / 65535.0).astype(np.float32)
    if image.mode == "I":
        pixels = np.asarray(image)
        top = 65535.0 if pixels.max(initial=0) > 255 else 255.0  # from the film before reducing
        return np.clip(area_reduce(pixels, factor) / top, 0.0, 1.0).astype(np.float32)
    if image.mode == "F":
        return area_reduce(_min_max(np.asarray(image, dtype=np.float32)), factor).astype(np.float32)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        # Transparent pixels become black, the background of a radiograph.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "L":
        image = image.convert("L")
    if factor < 2:
        return np.asarray(image, dtype=np.float32) / 255.0
    return (area_reduce(np.asarray(image), factor) / 255.0).astype(np.float32)


def is_pydicom_dataset(source) -> bool:
    """True for a pydicom Dataset (imports pydicom only when the input could be one)."""
    if isinstance(source, (str, Path, bytes, bytearray)):
        return False
    try:
        from pydicom.dataset import Dataset
    except ImportError:  # pragma: no cover - pydicom is a core dependency
        return False
    return isinstance(source, Dataset)


def _read_dicom(
    data: bytes, label: str, max_pixels: int, check_header: bool, min_side: int | None = None
) -> np.ndarray:
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a core dependency
        raise InputError(f"{label}: reading DICOM needs pydicom: pip install pydicom") from None
    check_inflated_size(io.BytesIO(data), label, max_pixels)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # pydicom raises many unrelated types for broken files
        # The type only: pydicom's message can quote header values, patient fields included.
        raise InputError(
            f"{label}: unreadable DICOM ({type(error).__name__} while parsing the header); "
            "re-export the study."
        ) from None
    return _dicom_pixels(dataset, label, max_pixels, check_header, min_side)


def inflated_limit(max_pixels: int) -> int:
    """The most bytes a Deflated DICOM dataset may inflate to: the largest accepted frame at 32
    bits per pixel, twice over, plus room for the header."""
    return 2 * max_pixels * _MAX_BYTES_PER_PIXEL + _HEADER_ALLOWANCE


def check_inflated_size(stream: BinaryIO, label: str, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse a Deflated DICOM whose dataset inflates past `inflated_limit` (a deflate bomb),
    counted chunk by chunk with nothing kept, before pydicom inflates it whole. `stream` is a
    Part 10 file read from its start; other transfer syntaxes pass untouched."""
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception:  # a broken meta group is dcmread's to report
        return
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    limit = inflated_limit(max_pixels)
    refusal = ImageTooLargeError(
        f"{label}: Deflated DICOM inflates to over {limit / 1e6:.0f} MB, more than a "
        f"{max_pixels:,} px film needs; refused unread (export it uncompressed)."
    )
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            pending = inflater.unconsumed_tail or stream.read(_INFLATE_CHUNK)
            if not pending:
                break
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            if total > limit:
                raise refusal
        if total + len(inflater.flush()) > limit:
            raise refusal
    except zlib.error:
        raise InputError(
            f"{label}: Deflated DICOM data is corrupt (zlib cannot inflate it); re-export the "
            "study uncompressed."
        ) from None


def _header_int(dataset, keyword: str, default: int, label: str) -> int:
    """An integer header value; a malformed one is an InputError naming the field."""
    try:
        value = dataset.get(keyword, default)
        if value is None or value == "":
            return default
        return int(float(value))
    except Exception:  # invalid IS/US values surface as many types, on access or conversion
        raise InputError(
            f"{label}: DICOM {keyword} is not a valid number; fix the header or re-export the study."
        ) from None


def _header_float(dataset, keyword: str, default: float, label: str) -> float:
    try:
        value = dataset.get(keyword, default)
        value = float(value if value not in (None, "") else default)
    except Exception:
        raise InputError(
            f"{label}: DICOM {keyword} is not a valid number; fix the header or re-export the study."
        ) from None
    if not np.isfinite(value):
        raise InputError(f"{label}: DICOM {keyword} is not finite; fix the header.")
    return value


def _header_text(dataset, keyword: str) -> str:
    """An acquisition field as text ('' when missing or unreadable); never a patient field."""
    try:
        return str(dataset.get(keyword, "") or "")
    except Exception:
        return ""


def _check_acquisition(dataset, label: str) -> None:
    """Refuse a DICOM whose header says it is no frontal chest radiograph. Only Modality,
    BodyPartExamined and ViewPosition are read; nothing of them is kept."""
    refusal = header_refusal(
        _header_text(dataset, "Modality"),
        _header_text(dataset, "BodyPartExamined"),
        _header_text(dataset, "ViewPosition"),
    )
    if refusal is not None:
        reason, found = refusal
        raise NotChestRadiographError(
            f"{label}: {found}; pneumoscan reads frontal chest radiographs only, no prediction "
            "made.",
            reason,
        )


def _dicom_pixels(
    dataset, label: str, max_pixels: int, check_header: bool = False, min_side: int | None = None
) -> np.ndarray:
    """Pixels of a parsed dataset, checked field by field before anything is decoded."""
    if check_header:
        _check_acquisition(dataset, label)

    try:
        photometric = str(dataset.get("PhotometricInterpretation", "") or "").strip().upper()
    except Exception:
        photometric = "unreadable"
    if photometric not in _MONOCHROME:
        shown = photometric[:24] if photometric.isprintable() else "unreadable"
        raise InputError(
            f"{label}: DICOM has PhotometricInterpretation '{shown or 'missing'}'; pneumoscan "
            "reads grayscale radiographs only. Export the study as MONOCHROME2."
        )
    frames = _header_int(dataset, "NumberOfFrames", 1, label)
    if frames > 1:
        raise InputError(
            f"{label}: DICOM has {frames} frames; pneumoscan reads single-frame radiographs only. "
            "Export the frontal view as its own file."
        )
    if "PixelData" not in dataset:
        raise InputError(
            f"{label}: DICOM has no pixel data (is it a report or a structured document?)."
        )
    rows = _header_int(dataset, "Rows", 0, label)
    columns = _header_int(dataset, "Columns", 0, label)
    if rows <= 0 or columns <= 0:
        raise InputError(f"{label}: DICOM has {rows}x{columns} pixels; re-export the study.")
    _too_large(label, columns, rows, max_pixels, frames)
    native = _native_pixels(dataset, rows, columns)
    try:
        pixels = dataset.pixel_array if native is None else native[0]
    except Exception as error:  # missing decoders and damaged pixel data both land here
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", syntax) or "unknown"
        # pydicom lists each plugin's reason on its own line: keep them, on one line.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines)[:240] if lines else type(error).__name__
        raise InputError(
            f"{label}: cannot decode DICOM pixel data (transfer syntax {syntax_name}: {detail}). "
            "Install pydicom's optional decoders (pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg) or export the study uncompressed."
        ) from None
    if pixels.ndim != 2:
        raise InputError(
            f"{label}: DICOM pixel data has shape {pixels.shape}, not one grayscale frame; "
            "export a single-frame MONOCHROME2 study."
        )
    factor = reduction_factor(*pixels.shape[::-1], min_side)
    image = _dicom_unit(pixels, dataset, label, factor, None if native is None else native[1])
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image


# Lookup tables and windows are not linear: a film that has one is reduced after them, in floats.
_NONLINEAR_DICOM = ("ModalityLUTSequence", "VOILUTSequence", "WindowCenter")


def _native_pixels(dataset, rows: int, columns: int) -> tuple[np.ndarray, int | None] | None:
    """(a read-only view of the stored pixels, the mask of their used bits or None) for an
    uncompressed little-endian single-frame film of unsigned 8- or 16-bit samples; None for
    anything else, which pydicom decodes. pydicom's `pixel_array` copies and masks the whole
    frame first: a third of the time of reading a 2,000 px 16-bit film."""
    try:
        syntax = dataset.file_meta.TransferSyntaxUID
        allocated = int(dataset.BitsAllocated)
        stored = int(dataset.get("BitsStored") or allocated)
        unsigned = int(dataset.get("PixelRepresentation") or 0) == 0
        samples = int(dataset.get("SamplesPerPixel") or 1)
        data = dataset.PixelData
    except (AttributeError, TypeError, ValueError, KeyError):
        return None
    if syntax.is_compressed or not syntax.is_little_endian or not unsigned or samples != 1:
        return None
    if allocated not in (8, 16) or not 1 <= stored <= allocated or not isinstance(data, bytes):
        return None
    count = rows * columns
    if len(data) < count * allocated // 8:
        return None  # pydicom says what is wrong with it
    pixels = np.frombuffer(data, dtype="<u2" if allocated == 16 else "u1", count=count)
    mask = None if stored == allocated else (1 << stored) - 1
    return pixels.reshape(rows, columns), mask


def _dicom_unit(
    pixels: np.ndarray, dataset, label: str, factor: int, mask: int | None = None
) -> np.ndarray:
    """Stored pixels -> [0, 1] through the modality and VOI transforms, reduced by `factor`: on the
    stored integers when every transform is linear (rescale slope and intercept only), else after
    the transforms. `mask`: the stored bits of raw `pixels` (see `_native_pixels`)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    linear = not any(keyword in dataset for keyword in _NONLINEAR_DICOM)
    if mask is not None and not linear:
        pixels, mask = pixels & mask, None
    if linear:
        pixels = area_reduce(pixels, factor, mask)
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    if "VOILUTSequence" in dataset:
        image = _min_max(apply_voi_lut(values, dataset))
    else:
        if "WindowCenter" in dataset:
            values = apply_voi_lut(values, dataset)
        # Scale by the range the stored bits can hold (not this image's min and max), as a 16-bit
        # PNG is scaled by 65535: the same film exported either way gives the same numbers.
        low, high = _stored_range(dataset, label)
        image = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return image if linear else area_reduce(image, factor).astype(np.float32)


def _stored_range(dataset, label: str) -> tuple[float, float]:
    """The modality-LUT output range of the stored bits (windowing keeps this range)."""
    allocated = _header_int(dataset, "BitsAllocated", 16, label)
    bits = _header_int(dataset, "BitsStored", allocated, label)
    if not 1 <= bits <= 32:
        raise InputError(f"{label}: DICOM BitsStored is {bits}; expected 1 to 32. Fix the header.")
    if _header_int(dataset, "PixelRepresentation", 0, label) == 1:
        raw_low, raw_high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        raw_low, raw_high = 0, 2**bits - 1
    slope = _header_float(dataset, "RescaleSlope", 1.0, label) or 1.0
    intercept = _header_float(dataset, "RescaleIntercept", 0.0, label)
    low, high = sorted((raw_low * slope + intercept, raw_high * slope + intercept))
    if high <= low:
        raise InputError(f"{label}: DICOM stored range is empty; fix BitsStored or RescaleSlope.")
    return low, high


def _min_max(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def image_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the header alone (fast, for EDA); None when unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None
