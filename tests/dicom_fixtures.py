"""Write small real DICOM files with pydicom (no binary fixtures in the repository)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def film_dataset(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    instance_uid: str | None = None,
) -> Dataset:
    """A DX film with patient fields set (tests check they never reach an output). `pixels` are
    written as they are, in the dtype `bits` and `signed` give; BitsStored defaults to 12 for
    16-bit films and to `bits` otherwise."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = instance_uid or generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-12345"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or (12 if bits == 16 else bits)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    dtype = {(16, False): np.uint16, (16, True): np.int16, (8, False): np.uint8, (8, True): np.int8}
    ds.PixelData = pixels.astype(dtype[bits, signed]).tobytes()
    return ds


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    frames: int = 1,
) -> Path:
    if frames > 1:
        pixels = np.stack([pixels] * frames)
    ds = film_dataset(pixels, photometric)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    return path


def set_raw_value(path: Path, tag: tuple[int, int], vr: str, value: bytes) -> Path:
    """Overwrite one short-VR element's value in an explicit-VR little-endian file, byte for byte,
    so it can hold what pydicom refuses to write (a NumberOfFrames of 'ab', say)."""
    data = path.read_bytes()
    marker = tag[0].to_bytes(2, "little") + tag[1].to_bytes(2, "little") + vr.encode("ascii")
    start = data.index(marker, 132)
    length = int.from_bytes(data[start + 6 : start + 8], "little")
    value = value + b" " * (len(value) % 2)
    header = marker + len(value).to_bytes(2, "little")
    path.write_bytes(data[:start] + header + value + data[start + 8 + length :])
    return path
