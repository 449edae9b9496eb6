"""Throwaway processes for the DICOM tests, the benchmark and the documentation's screenshots.

- `OrthancProcess`: Debian's Orthanc (with its DICOMweb plugin) on free loopback ports, from a
  temporary configuration and storage folder; `rest()` reads its REST API.
- `NodeProcess`: `pneumoscan dicom-node` in a child process, ready once it answers C-ECHO.
- `send_films`: a C-STORE SCU (what a modality or an archive does), returning each status;
- `chest_film`: a film as a modality would send it (a DX object with made-up patient fields),
  from the pixels of a JPEG (`jpeg_pixels`).

Needs the `Orthanc` binary (`apt-get install orthanc orthanc-dicomweb`) for `OrthancProcess`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pneumoscan.devtools.local import free_port
from pneumoscan.dicom.delivery import no_delay

# Where Debian's orthanc-dicomweb package puts the plugin (the first path is a symlink to it).
DICOMWEB_PLUGIN_PATHS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
ORTHANC_AET = "ORTHANC"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
NODE_AET = "PNEUMOSCAN"


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc")


def dicomweb_plugin() -> Path | None:
    return next((path for path in DICOMWEB_PLUGIN_PATHS if path.exists()), None)


class OrthancProcess:
    """Orthanc in a child process; `storage` survives `stop()`, so a restart keeps its studies."""

    def __init__(
        self,
        workdir: Path,
        modalities: dict[str, tuple[str, int]] | None = None,
        lua_scripts: list[Path] | None = None,
        dicom_port: int | None = None,
        http_port: int | None = None,
    ) -> None:
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError("Orthanc not found: apt-get install orthanc orthanc-dicomweb")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.destination = f"127.0.0.1:{self.dicom_port}:{ORTHANC_AET}"
        plugin = dicomweb_plugin()
        self.config = {
            "Name": "pneumoscan-test",
            "StorageDirectory": str(self.workdir.resolve() / "storage"),
            "IndexDirectory": str(self.workdir.resolve() / "storage"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False,
            "DicomModalities": {
                name: [aet, "127.0.0.1", port] for name, (aet, port) in (modalities or {}).items()
            },
            "LuaScripts": [str(Path(path).resolve()) for path in lua_scripts or []],
            "Plugins": [str(plugin)] if plugin else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1,
            "SaveJobs": False,
            "HttpDescribeErrors": True,
            "DicomScuTimeout": 30,
        }
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"

    def start(self, timeout: float = 60.0) -> OrthancProcess:
        config = self.workdir / "orthanc.json"
        config.write_text(json.dumps(self.config, indent=2))
        self._log = open(self.log_path, "a")
        # Debian's DCMTK, under Orthanc's DICOM server, leaves Nagle's algorithm on unless
        # TCP_NODELAY=1 is in its environment: each answer then waited ~40 ms for a delayed ACK
        # (C-ECHO 44 ms, C-STORE 92 ms here; 2.7 ms and 5 ms with it). docs/dicom.md says so too.
        self.process = subprocess.Popen(
            [self.binary, str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited early:\n{self.log()}")
            try:
                self.rest("/system")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc not answering after {timeout:g} s:\n{self.log()}")

    def stop(self, kill: bool = False) -> None:
        """Stop it: gracefully (about 3 s), or at once with `kill` when nothing will reuse it."""
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> OrthancProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rest(self, path: str, data: bytes | None = None, method: str | None = None):
        """JSON from Orthanc's REST API (bytes for /file routes)."""
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        if path.endswith("/file") or path.endswith("/preview"):
            return body
        return json.loads(body) if body else None

    def upload(self, data: bytes) -> dict:
        """Store a DICOM file through the REST API (as a modality's C-STORE would)."""
        return self.rest("/instances", data=data)

    def study_instances(self, study_uid: str) -> list[dict]:
        """The instances of a study (by StudyInstanceUID), with their main tags."""
        found = self.rest("/tools/lookup", data=study_uid.encode(), method="POST")
        studies = [item["ID"] for item in found or [] if item.get("Type") == "Study"]
        if not studies:
            return []
        return self.rest(f"/studies/{studies[0]}/instances")

    def wait_for(self, study_uid: str, modalities: set[str], timeout: float = 60.0) -> list[dict]:
        """The study's instances once one of each series modality in `modalities` is there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                instances = self.study_instances(study_uid)
            except (OSError, urllib.error.HTTPError):
                instances = []
            present = {self.modality_of(instance) for instance in instances}
            if modalities <= present:
                return instances
            time.sleep(0.1)
        raise TimeoutError(
            f"no {', '.join(sorted(modalities))} in the study after {timeout:g} s; "
            f"Orthanc log:\n{self.log()[-3000:]}"
        )

    def modality_of(self, instance: dict) -> str:
        series = self.rest(f"/series/{instance['ParentSeries']}")
        return series["MainDicomTags"].get("Modality", "")

    def file(self, instance_id: str) -> bytes:
        return self.rest(f"/instances/{instance_id}/file")


class NodeProcess:
    """`pneumoscan dicom-node` in a child process on a free loopback port."""

    def __init__(self, spool: Path, args: list[str], port: int | None = None, env=None) -> None:
        self.port = port or free_port()
        self.spool = Path(spool)
        self.args = [
            sys.executable,
            "-m",
            "pneumoscan",
            "dicom-node",
            "--port",
            str(self.port),
            "--spool",
            str(self.spool),
            *args,
        ]
        self.env = {**os.environ, "COLUMNS": "200", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.log_file = None

    def start(self, timeout: float = 120.0, ready=None) -> NodeProcess:
        """Start it and wait until `ready()` (default: a plain C-ECHO succeeds)."""
        ready = ready or (lambda: echo("127.0.0.1", self.port))
        self.log_file = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dicom-node exited early:\n{self.output()}")
            if ready():
                return self
            time.sleep(0.2)
        raise RuntimeError(f"dicom-node not answering C-ECHO after {timeout:g} s")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code (SIGKILL after `timeout`, which a test should fail on)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def output(self) -> str:
        if self.log_file is None:
            return ""
        self.log_file.seek(0)
        return self.log_file.read()

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def echo(
    host: str, port: int, ae_title: str = NODE_AET, calling: str = ORTHANC_AET, tls=None
) -> bool:
    """True when a DICOM C-ECHO to host:port succeeds (`tls`: an ssl.SSLContext)."""
    from pynetdicom import AE, evt

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    tls_args = (tls, host) if tls is not None else None
    association = ae.associate(
        host,
        port,
        ae_title=ae_title,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)],
    )
    if not association.is_established:
        return False
    try:
        status = association.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        association.release()


def send_films(
    host: str, port: int, films: list, ae_title: str = NODE_AET, calling: str = ORTHANC_AET
) -> list[int]:
    """C-STORE each film (a path or dataset) on one association; the status of each (-1: none)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt

    ae = AE(ae_title=calling)
    classes = {
        str(
            (
                film
                if isinstance(film, pydicom.Dataset)
                else pydicom.dcmread(film, stop_before_pixels=True)
            ).SOPClassUID
        )
        for film in films
    }
    for sop_class in sorted(classes):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    association = ae.associate(
        host, port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)]
    )
    if not association.is_established:
        return [-1] * len(films)
    statuses = []
    try:
        for film in films:
            status = association.send_c_store(film)
            statuses.append(int(status.Status) if status else -1)
    finally:
        if association.is_established:
            association.release()
    return statuses


def chest_film(
    pixels: np.ndarray,
    sop_class: str = DX_FOR_PRESENTATION,
    study_uid: str | None = None,
    patient_id: str = "SECRET-12345",
    patient_name: str = "Doe^Jane",
    instance_number: int = 1,
) -> Dataset:
    """A DX (for presentation) or CR film of 8-bit `pixels` with Patient, Study, Series and
    Equipment modules filled in, as a modality would send it; the patient is made up."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "20190101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime = "20240301", "101500"
    ds.AccessionNumber = "ACC-777"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CR" if sop_class == ComputedRadiographyImageStorage else "DX"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "Test Modality Inc."
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    if ds.Modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.BurnedInAnnotation = "NO"
        ds.ImageLaterality = "U"
        ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"  # the JPEGs were lossy
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def jpeg_pixels(path: Path, longest: int | None = None) -> np.ndarray:
    """A JPEG or PNG film as 8-bit grayscale, shrunk to `longest` pixels on its longer side."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("L")
        if longest is not None and max(image.size) > longest:
            image.thumbnail((longest, longest))
        return np.asarray(image, dtype=np.uint8)
