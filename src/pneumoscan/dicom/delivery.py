"""Sending result objects to an archive: DIMSE C-STORE, DICOMweb STOW-RS, or a folder.

Each destination takes a list of DICOM files (or pydicom datasets) and either stores them all or raises
`DeliveryError`, whose `retry` says whether trying again later can help (the archive is down,
busy or out of resources) or not (it refused the objects themselves). Messages name the
destination and the status, never a patient field; a bearer token never appears in one. A
C-STORE destination keeps its association open across a burst and releases it when idle.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from pneumoscan.core.errors import PneumoscanError
from pneumoscan.core.fileio import atomic_write, make_private_dir, private_modes

# The SOP classes pneumoscan sends: its SR and its Secondary Capture.
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DEFAULT_TIMEOUT_S = 30.0
# The file meta a result file is sent by: pynetdicom sends its data set as stored.
SENT_META = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
# Seconds a C-STORE association stays open without a delivery before it is released.
DEFAULT_IDLE_S = 5.0

logger = logging.getLogger(__name__)


class DeliveryError(PneumoscanError):
    """Objects that did not reach a destination; `retry`: whether a later try can succeed."""

    def __init__(self, message: str, retry: bool, lost: bool = False) -> None:
        super().__init__(message)
        self.retry = retry
        self.lost = lost  # the association went away mid-delivery (the archive may be fine)


def no_delay(event) -> None:
    """pynetdicom's EVT_CONN_OPEN handler: send each PDU at once (TCP_NODELAY).

    DIMSE sends a request's command and data set as separate PDUs and then waits for the answer.
    With Nagle's algorithm on, the second waits for the peer's delayed ACK (about 40 ms on Linux):
    a C-STORE into a local Orthanc took 92 ms, 48 ms with this on our side, and 5 ms once the
    archive's side had it too (docs/dicom.md)."""
    connection = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    try:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # no socket (yet), or not TCP: nothing to speed up
        pass


def _safe_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


class _Link:
    """The association a C-STORE destination keeps open across a burst of deliveries (used by
    one thread, the node's courier)."""

    def __init__(self) -> None:
        self.association = None
        self.last_used = 0.0
        self.opened = 0  # associations opened since the start (the tests count them)

    def drop(self, release: bool) -> None:
        association, self.association = self.association, None
        if association is not None and association.is_established:
            if release:
                association.release()
            else:
                association.abort()


@dataclass(frozen=True)
class CStoreDestination:
    """An archive's DIMSE C-STORE SCP: `HOST:PORT:AET`. One association carries a burst of
    deliveries: it stays open until `idle_s` pass without one (`release_idle`), and is dropped on
    any error (the next delivery opens a new one)."""

    host: str
    port: int
    ae_title: str
    calling_ae_title: str = "PNEUMOSCAN"
    timeout_s: float = DEFAULT_TIMEOUT_S
    idle_s: float = DEFAULT_IDLE_S
    _link: _Link = field(default_factory=_Link, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str, calling_ae_title: str = "PNEUMOSCAN") -> CStoreDestination:
        """`HOST:PORT:AET`, e.g. `pacs.example.org:104:ORTHANC` (an IPv6 host in brackets)."""
        match = re.fullmatch(r"(\[[^\]]+\]|[^:\s]+):(\d{1,5}):([^:]{1,16})", text.strip())
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise PneumoscanError(
                f"--send-to {text!r}: give HOST:PORT:AET, e.g. pacs.example.org:104:ORTHANC "
                "(the archive's address, DICOM port and AE title)."
            )
        return cls(
            match.group(1).strip("[]"),
            int(match.group(2)),
            match.group(3).strip(),
            calling_ae_title,
        )

    @property
    def key(self) -> str:
        return _safe_key(f"cstore-{self.host}-{self.port}-{self.ae_title}")

    @property
    def associations_opened(self) -> int:
        return self._link.opened

    def __str__(self) -> str:
        return f"C-STORE {self.host}:{self.port}:{self.ae_title}"

    def send(self, items: list) -> None:
        """Store every item, on the open association if there is one. A reused association that
        turns out to be gone (the archive closed it while idle) is replaced once, at once: the
        objects' UIDs are fixed, so storing one again replaces it."""
        reused = self._link.association is not None and self._link.association.is_established
        try:
            try:
                self._store(self._association(), items)
            except DeliveryError as error:
                if not (reused and error.lost):
                    raise
                self._link.drop(release=False)
                self._store(self._association(), items)  # a new association; its errors stand
        except BaseException:  # whatever went wrong, the association's state is unknown
            self._link.drop(release=False)
            raise
        self._link.last_used = time.monotonic()

    def release_idle(self, now: float | None = None, force: bool = False) -> float | None:
        """Release the association once `idle_s` have passed without a delivery (or now, with
        `force`); the seconds until it is due otherwise, None when none is open."""
        if self._link.association is None:
            return None
        left = self._link.last_used + self.idle_s - (time.monotonic() if now is None else now)
        if force or left <= 0 or not self._link.association.is_established:
            self._link.drop(release=True)
            return None
        return left

    def _association(self):
        if self._link.association is not None and self._link.association.is_established:
            return self._link.association
        self._link.drop(release=False)
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.calling_ae_title)
        for sop_class in (COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = min(self.timeout_s, 10.0)
        association = ae.associate(
            self.host,
            self.port,
            ae_title=self.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)],
        )
        if not association.is_established:
            how = "rejected the association" if association.is_rejected else "did not answer"
            raise DeliveryError(f"{self}: the archive {how}", retry=True)
        self._link.association = association
        self._link.opened += 1
        logger.info("%s: association opened (%d so far)", self, self._link.opened)
        return association

    def _store(self, association, items: list) -> None:
        from pynetdicom.status import code_to_category

        for item in items:
            try:
                status = _send(association, item)
            except ValueError:  # no accepted presentation context for this SOP class
                raise DeliveryError(
                    f"{self}: the archive accepts no Comprehensive 3D SR or Secondary "
                    "Capture storage from this AE title",
                    retry=False,
                ) from None
            except RuntimeError:  # pynetdicom: the association is no longer established
                raise DeliveryError(f"{self}: association lost", retry=True, lost=True) from None
            code = int(status.get("Status", -1)) if status else -1
            if code == -1:
                raise DeliveryError(
                    f"{self}: connection lost before the answer", retry=True, lost=True
                )
            category = code_to_category(code)
            if category in ("Success", "Warning"):
                continue
            comment = str(status.get("ErrorComment", "") or "")[:120]
            retry = 0xA700 <= code <= 0xA7FF or code == 0x0210  # out of resources, busy
            raise DeliveryError(
                f"{self}: status 0x{code:04X} ({category}){': ' + comment if comment else ''}",
                retry=retry,
            )


def _send(association, item):
    """C-STORE one object: a file is sent as stored (its data set is not decoded and encoded
    again, which cost about 20 ms per SR), unless the archive took none of its presentation
    contexts in the file's transfer syntax; then pynetdicom converts a decoded copy."""
    from pynetdicom import _config

    if isinstance(item, (str, Path)):
        _config.STORE_SEND_CHUNKED_DATASET = True  # read at each call; this process's senders
        try:
            return association.send_c_store(item)
        except ValueError:  # no context in the file's transfer syntax: convert it
            import pydicom

            item = pydicom.dcmread(item)
    return association.send_c_store(item)


@dataclass(frozen=True)
class StowDestination:
    """An archive's DICOMweb root, e.g. `http://pacs:8042/dicom-web`, with an optional bearer token."""

    url: str
    token: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.url):
            raise PneumoscanError(
                f"--stow {self.url!r}: give the archive's DICOMweb root URL, e.g. "
                "http://pacs.example.org:8042/dicom-web"
            )

    @property
    def key(self) -> str:
        return "stow-" + hashlib.sha256(self.url.encode()).hexdigest()[:12]

    def __str__(self) -> str:
        return f"STOW-RS {self.url}"  # the token stays out of every message

    def __repr__(self) -> str:
        return f"StowDestination(url={self.url!r}, token={'***' if self.token else None})"

    def send(self, items: list) -> None:
        import pydicom
        import requests
        from dicomweb_client.api import DICOMwebClient

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        client = DICOMwebClient(self.url, headers=headers, timeout=self.timeout_s)
        client.set_http_retry_params(retry=False)  # the spool retries, with its own backoff
        datasets = [
            item if hasattr(item, "SOPInstanceUID") else pydicom.dcmread(item) for item in items
        ]
        try:
            response = client.store_instances(datasets)
        except requests.HTTPError as error:
            code = error.response.status_code if error.response is not None else 0
            retry = code in (408, 429) or code >= 500
            raise DeliveryError(f"{self}: HTTP {code}", retry=retry) from None
        except requests.RequestException as error:
            raise DeliveryError(
                f"{self}: {type(error).__name__} (no answer from the archive)", retry=True
            ) from None
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = sorted({int(item.get("FailureReason", 0)) for item in failed})
            raise DeliveryError(
                f"{self}: {len(failed)} object(s) refused (failure reasons "
                f"{', '.join(f'0x{reason:04X}' for reason in reasons)})",
                retry=any(0xA700 <= reason <= 0xA7FF for reason in reasons),
            )


@dataclass(frozen=True)
class FolderDestination:
    """A local folder: each object is copied there atomically, under the spool's own name, 0600
    in a 0700 folder (patient data; 0640 and 0750 with `group_readable`)."""

    folder: Path
    group_readable: bool = False

    @property
    def key(self) -> str:
        return "folder-" + hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:12]

    def __str__(self) -> str:
        return f"folder {self.folder}"

    def send(self, paths: list[Path]) -> None:
        file_mode, folder_mode = private_modes(self.group_readable)
        for path in paths:
            target = self.folder / f"{path.parent.name}_{path.name}"
            try:
                make_private_dir(self.folder, folder_mode)
                atomic_write(
                    target, lambda tmp, source=path: shutil.copyfile(source, tmp), file_mode
                )
            except OSError as error:
                raise DeliveryError(
                    f"{self}: cannot write {target.name} ({error.strerror or error})", retry=True
                ) from None
