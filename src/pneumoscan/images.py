"""Read any supported file into one pixel contract: a 2-D float32 array in [0, 1], 0 = black.

JPEG and PNG of any mode and bit depth (8/16-bit, grayscale, RGB, RGBA, palette) and DICOM
(modality rescale, VOI LUT / windowing, MONOCHROME1 inverted) all end here on one scale, so
training, evaluation and serving see the same numbers. The format is sniffed from the content,
not the file name. DICOM patient fields are never read into anything we return or log.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pneumoscan.errors import InputError

logger = logging.getLogger(__name__)

# Pillow's decompression-bomb guard, made explicit: a full-size radiograph is under 10 Mpx, so
# anything above 60 Mpx is refused before it is decoded.
MAX_IMAGE_PIXELS = 60_000_000
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm", ".dicom")

_DICOM_MAGIC_OFFSET = 128
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def is_dicom(data: bytes) -> bool:
    """True for DICOM Part 10 files (the 'DICM' magic after the 128-byte preamble)."""
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


def read_image(source: Path | str | bytes, name: str | None = None) -> np.ndarray:
    """Decode a file or its bytes into a 2-D float32 array in [0, 1].

    Raises InputError naming the file, the problem and the fix; never a raw decoder error.
    """
    if isinstance(source, bytes):
        data, label = source, name or "<upload>"
    else:
        path = Path(source)
        label = name or str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{label}: file not found.") from None
        except IsADirectoryError:
            raise InputError(f"{label}: is a folder, not an image file.") from None
        except OSError as error:
            raise InputError(f"{label}: cannot be read ({error.strerror}).") from None
    if not data:
        raise InputError(f"{label}: file is empty (0 bytes); re-export or re-download it.")
    if is_dicom(data):
        return _read_dicom(data, label)
    return _read_raster(data, label)


def _read_raster(data: bytes, label: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(
                        f"{label}: image is {width}x{height} px, over the {MAX_IMAGE_PIXELS:,} px "
                        "limit for safe decoding; downscale it first."
                    )
                image.load()
                return _to_gray_unit(image, label)
    except UnidentifiedImageError:
        raise InputError(
            f"{label}: not a JPEG, PNG or DICOM image; pneumoscan reads chest radiographs only."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"{label}: image is too large to decode safely (over {MAX_IMAGE_PIXELS:,} px)."
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(
            f"{label}: image data is truncated or corrupt ({error}); re-export the file."
        ) from None


def _to_gray_unit(image: Image.Image, label: str) -> np.ndarray:
    """Any Pillow mode to grayscale in [0, 1], keeping the full precision of 16-bit images."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "I":
        pixels = np.asarray(image, dtype=np.float32)
        top = 65535.0 if pixels.max(initial=0) > 255 else 255.0
        return np.clip(pixels / top, 0.0, 1.0)
    if image.mode == "F":
        return _min_max(np.asarray(image, dtype=np.float32))
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        # Transparent pixels become black, the background of a radiograph.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def _read_dicom(data: bytes, label: str) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom is a core dependency
        raise InputError(f"{label}: reading DICOM needs pydicom: pip install pydicom") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # pydicom raises many unrelated types for broken files
        raise InputError(f"{label}: unreadable DICOM ({error}).") from None
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    if photometric not in _MONOCHROME:
        raise InputError(
            f"{label}: DICOM has PhotometricInterpretation '{photometric or 'missing'}'; pneumoscan "
            "reads grayscale radiographs only. Export the study as MONOCHROME2."
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(
            f"{label}: DICOM has {frames} frames; pneumoscan reads single-frame radiographs only. "
            "Export the frontal view as its own file."
        )
    if "PixelData" not in dataset:
        raise InputError(
            f"{label}: DICOM has no pixel data (is it a report or a structured document?)."
        )
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # missing decoders and damaged pixel data both land here
        syntax = getattr(dataset.file_meta, "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise InputError(
            f"{label}: cannot decode DICOM pixel data (transfer syntax {name}: {error}). "
            "Install pydicom's optional decoders (pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg) or export the study uncompressed."
        ) from None
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    if "VOILUTSequence" in dataset:
        image = _min_max(apply_voi_lut(values, dataset))
    else:
        if "WindowCenter" in dataset:
            values = apply_voi_lut(values, dataset)
        # Scale by the range the stored bits can hold (not this image's min and max), as a 16-bit
        # PNG is scaled by 65535: the same film exported either way gives the same numbers.
        low, high = _stored_range(dataset)
        image = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image


def _stored_range(dataset) -> tuple[float, float]:
    """The modality-LUT output range of the stored bits (windowing keeps this range)."""
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        raw_low, raw_high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        raw_low, raw_high = 0, 2**bits - 1
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    low, high = sorted((raw_low * slope + intercept, raw_high * slope + intercept))
    return low, high


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def image_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the header alone (fast, for EDA); None when unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None
