"""Uploads read into memory under limits, checked before any decoder sees them.

Starlette's own form parser spools files over 1 MB to a temporary file on disk; a radiograph is
patient data, so this module parses multipart bodies itself, streaming, into memory only. Every
limit is checked while bytes arrive (not from headers a client can fake), and every refusal is an
`UploadRefused` carrying the HTTP status and a message that names the problem and the fix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from pneumoscan.core.images import is_dicom

# Content types a browser or client may declare for a radiograph; anything else is refused (415)
# before the bytes are looked at. The bytes themselves decide the format afterwards.
ACCEPTED_DECLARED_TYPES = frozenset(
    {
        "",
        "application/octet-stream",
        "application/dicom",
        "application/x-dicom",
        "image/dicom",
        "image/jpeg",
        "image/jpg",
        "image/pjpeg",
        "image/png",
        "image/x-png",
    }
)
SUPPORTED_FORMATS = ("JPEG", "PNG", "DICOM")
# Recognised formats that pneumoscan does not read: a clear 415 instead of "not an image".
_OTHER_FORMATS: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WebP"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypavif", 4, "AVIF"),
    (b"%PDF", 0, "PDF"),
    (b"PK\x03\x04", 0, "ZIP"),
    (b"\x1f\x8b", 0, "gzip"),
)
_MAX_FIELD_BYTES = 1024  # form fields are short words such as "three-class" or "true"
_MAX_FIELDS = 8  # the API has three (model, heatmap, sets); a flood of fields is refused
_MAX_PART_HEADER_BYTES = 4096


class UploadRefused(Exception):
    """A request refused before prediction: HTTP status, short code and a user-facing message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass
class UploadedFile:
    """One file part, in memory. The client's file name is deliberately not kept."""

    field_name: str
    declared_type: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class ParsedForm:
    fields: dict[str, str]
    files: list[UploadedFile]


class MemoryBudget:
    """Bytes of uploads held in memory by all requests together; a request that would exceed it is
    refused with 503 instead of the process running out of memory. Single event loop: no lock."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0

    def reserve(self, size: int) -> None:
        if self.used_bytes + size > self.limit_bytes:
            raise UploadRefused(
                503,
                "busy",
                "the server is holding as many uploads in memory as it allows; retry shortly.",
                {"Retry-After": "1"},
            )
        self.used_bytes += size

    def release(self, size: int) -> None:
        self.used_bytes = max(0, self.used_bytes - size)


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data request, or 415/400 saying what to send instead."""
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        shown = media_type.decode("latin-1") or "none"
        raise UploadRefused(
            415,
            "unsupported_media_type",
            f"request Content-Type is {shown!r}; send multipart/form-data with the image in a "
            "'file' field (curl -F file=@film.jpg).",
        )
    boundary = params.get(b"boundary", b"")
    if not boundary or len(boundary) > 200:
        raise UploadRefused(
            400,
            "malformed_multipart",
            "multipart/form-data request has no valid boundary parameter.",
        )
    return boundary


class _FormCollector:
    """Callbacks for python-multipart's streaming parser; enforces per-part limits as data arrives."""

    def __init__(self, max_file_bytes: int, max_files: int, budget: MemoryBudget) -> None:
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.budget = budget
        self.reserved = 0
        self.fields: dict[str, str] = {}
        self.field_count = 0
        self.files: list[UploadedFile] = []
        self.finished = False
        self._headers: dict[str, str] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._header_bytes = 0
        self._target: UploadedFile | bytearray | None = None
        self._field_name = ""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0
        self._target = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > _MAX_PART_HEADER_BYTES:
            raise UploadRefused(
                400, "malformed_multipart", "a multipart part has oversized headers."
            )

    def _header_end(self) -> None:
        name = bytes(self._header_name).decode("latin-1").strip().lower()
        self._headers[name] = bytes(self._header_value).decode("latin-1").strip()
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", ""))
        if disposition != b"form-data" or b"name" not in params:
            raise UploadRefused(
                400,
                "malformed_multipart",
                "a multipart part has no 'Content-Disposition: form-data; name=...' header.",
            )
        self._field_name = params[b"name"].decode("utf-8", "replace")
        if b"filename" in params:  # a file part; its name is never stored, logged or returned
            if len(self.files) >= self.max_files:
                raise UploadRefused(
                    413,
                    "too_many_files",
                    f"more than {self.max_files} files in one request; split the batch.",
                )
            declared = parse_options_header(self._headers.get("content-type", ""))[0]
            upload = UploadedFile(self._field_name, declared.decode("latin-1").lower())
            self.files.append(upload)
            self._target = upload
        else:
            self.field_count += 1
            if self.field_count > _MAX_FIELDS:
                raise UploadRefused(
                    400, "too_many_fields", f"more than {_MAX_FIELDS} form fields in one request."
                )
            self._target = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if isinstance(self._target, UploadedFile):
            buffer = self._target.data
            if len(buffer) + size > self.max_file_bytes:
                raise UploadRefused(
                    413,
                    "file_too_large",
                    f"an uploaded file is over the {format_bytes(self.max_file_bytes)} limit; "
                    "export the radiograph at a lower resolution or as JPEG.",
                )
        elif isinstance(self._target, bytearray):
            buffer = self._target
            if len(buffer) + size > _MAX_FIELD_BYTES:
                raise UploadRefused(
                    400, "field_too_large", f"form field {self._field_name!r} is too long."
                )
        else:
            raise UploadRefused(400, "malformed_multipart", "multipart part data before headers.")
        self.budget.reserve(size)
        self.reserved += size
        buffer += data[start:end]

    def _part_end(self) -> None:
        if isinstance(self._target, bytearray):
            self.fields[self._field_name] = bytes(self._target).decode("utf-8", "replace").strip()
        self._target = None

    def _end(self) -> None:
        self.finished = True


async def read_form(
    chunks,
    content_type: str | None,
    *,
    max_file_bytes: int,
    max_files: int,
    max_body_bytes: int,
    deadline: float,
    budget: MemoryBudget,
    min_bytes_per_s: float = 0.0,
    grace_s: float = 2.0,
) -> tuple[ParsedForm, int]:
    """Stream a multipart body into memory. Returns the form and the bytes reserved from `budget`
    (the caller releases them when the request is done, also on error: see `reserved` on the
    exception path, which releases itself). With `min_bytes_per_s`, a body that arrives slower
    than that on average after `grace_s` seconds is refused (408 `upload_too_slow`), so a few
    trickling clients cannot hold admission slots and memory for the whole request time limit."""
    boundary = multipart_boundary(content_type)
    collector = _FormCollector(max_file_bytes, max_files, budget)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    started = time.monotonic()
    iterator = chunks.__aiter__()
    try:
        while True:
            try:
                chunk = await _next_chunk(iterator, started, received, min_bytes_per_s, grace_s)
            except StopAsyncIteration:
                break
            received += len(chunk)
            if received > max_body_bytes:
                raise UploadRefused(
                    413,
                    "request_too_large",
                    f"request body is over the {format_bytes(max_body_bytes)} limit.",
                )
            if time.monotonic() > deadline:
                raise UploadRefused(
                    408, "request_timeout", "the upload took too long to arrive; try again."
                )
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UploadRefused:
        budget.release(collector.reserved)
        raise
    except MultipartParseError as error:
        budget.release(collector.reserved)
        raise UploadRefused(
            400, "malformed_multipart", f"multipart body could not be parsed ({error})."
        ) from None
    if not collector.finished:
        budget.release(collector.reserved)
        raise UploadRefused(
            400,
            "malformed_multipart",
            "multipart body is truncated or has no closing boundary.",
        )
    return ParsedForm(collector.fields, collector.files), collector.reserved


async def _next_chunk(iterator, started: float, received: int, rate: float, grace_s: float):
    """The next chunk, by the time the bytes received so far would fall under `rate`."""
    if rate <= 0:
        return await iterator.__anext__()
    due = started + grace_s + received / rate
    try:
        with anyio.fail_after(max(0.0, due - time.monotonic())):
            return await iterator.__anext__()
    except TimeoutError:
        raise UploadRefused(
            408,
            "upload_too_slow",
            f"the upload arrived slower than {format_bytes(int(rate))}/s; try again on a faster "
            "connection.",
        ) from None


def check_declared_type(upload: UploadedFile) -> None:
    """415 for a part whose declared Content-Type is clearly not a radiograph (text, PDF, ...)."""
    if upload.declared_type not in ACCEPTED_DECLARED_TYPES:
        raise UploadRefused(
            415,
            "unsupported_media_type",
            f"uploaded file is declared as {upload.declared_type!r}; pneumoscan reads "
            f"{', '.join(SUPPORTED_FORMATS)} radiographs.",
        )


def sniff_format(data: bytes | bytearray) -> str:
    """'JPEG', 'PNG' or 'DICOM' from the content (never the file name); 415 for other known
    formats, 400 for bytes that are no image at all."""
    head = bytes(data[:160])
    if not head:
        raise UploadRefused(400, "empty_file", "uploaded file is empty (0 bytes).")
    if is_dicom(head):  # first, as the decoder does: a DICOM preamble may hold anything
        return "DICOM"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    for magic, offset, name in _OTHER_FORMATS:
        if head[offset : offset + len(magic)] == magic:
            raise UploadRefused(
                415,
                "unsupported_format",
                f"uploaded file is a {name} file; pneumoscan reads "
                f"{', '.join(SUPPORTED_FORMATS)} radiographs. Export the film as PNG or JPEG.",
            )
    raise UploadRefused(
        400,
        "not_an_image",
        "uploaded file is not a JPEG, PNG or DICOM image; pneumoscan reads chest radiographs only.",
    )


def format_bytes(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):g} MB"
    return f"{size / 1024:g} KB"
