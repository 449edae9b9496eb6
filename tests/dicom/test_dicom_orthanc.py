"""pneumoscan against a real archive: Debian's Orthanc on loopback, and `pneumoscan dicom-node`
as a real child process.

- Orthanc C-STOREs a film to the node (routed by the Lua script in docs/orthanc/) and gets the SR and
  SC back in the film's study;
- `predict --stow` stores them through Orthanc's DICOMweb;
- with the archive down, results wait in the spool and arrive once it is back, across a restart;
- hostile C-STOREs get refusal statuses, and the node keeps serving.
"""

from __future__ import annotations

import io
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
from typer.testing import CliRunner

from dicom import sr_reading as sr
from dicom.films import (
    NORMAL_JPEG,
    PATIENT_ID,
    PATIENT_NAME,
    PNEUMONIA_JPEG,
    chest_film,
    jpeg_pixels,
    write_film,
)
from pneumoscan.cli import app
from pneumoscan.devtools.dicom_harness import NodeProcess, echo, free_port, send_films

NODE_FLAGS = ["--allow-aet", "ORTHANC", "--retry-max", "1", "-v"]


def study_objects(orthanc, study_uid: str) -> dict[str, pydicom.Dataset]:
    """The study's objects by modality (DX film, SR report, OT heatmap), read as DICOM."""
    objects = {}
    for instance in orthanc.study_instances(study_uid):
        dataset = pydicom.dcmread(io.BytesIO(orthanc.file(instance["ID"])))
        objects[dataset.Modality] = dataset
    return objects


def assert_no_patient_fields(text: str) -> None:
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe", "SECRET"):
        assert secret not in text


def test_film_routed_by_orthanc_comes_back_with_sr_and_sc(orthanc_factory, films, tmp_path):
    node_port = free_port()
    orthanc = orthanc_factory("pacs", node_port=node_port, routing=True)
    with NodeProcess(
        tmp_path / "spool", ["--send-to", orthanc.destination, *NODE_FLAGS], node_port
    ) as node:
        film = pydicom.dcmread(films["pneumonia"])
        orthanc.upload(films["pneumonia"].read_bytes())  # Lua routes it to the node
        orthanc.wait_for(film.StudyInstanceUID, {"DX", "SR", "OT"}, timeout=90)
        assert node.stop() == 0
        output = node.output()
    objects = study_objects(orthanc, film.StudyInstanceUID)
    report, capture = objects["SR"], objects["OT"]
    assert report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert report.StudyInstanceUID == capture.StudyInstanceUID == film.StudyInstanceUID
    assert report.PatientID == capture.PatientID == film.PatientID
    probability, unit = sr.numbers(report, sr.PNEUMONIA)[sr.PROBABILITY]
    assert probability > 0.9 and unit == "{probability}"
    assert sr.evaluation(report, sr.PNEUMONIA) == sr.PRESENT  # the film's known label
    assert capture.BurnedInAnnotation == "YES"
    assert "results delivered" in output
    assert_no_patient_fields(output)
    assert not list((tmp_path / "spool").rglob("*.dcm"))  # delivered: nothing left behind


def test_stow_stores_results_through_dicomweb(dicomweb_orthanc, films, tmp_path):
    normal = pydicom.dcmread(films["normal"])
    jpeg = NORMAL_JPEG
    result = CliRunner().invoke(
        app,
        ["predict", str(films["normal"]), str(jpeg), "--stow", dicomweb_orthanc.dicomweb_url],
    )
    assert result.exit_code == 0, result.output
    assert "not a DICOM file, so no DICOM result" in result.output
    objects = study_objects(dicomweb_orthanc, normal.StudyInstanceUID)
    assert set(objects) == {"SR", "OT"}  # the film itself was never sent, only its results
    assert sr.evaluation(objects["SR"], sr.PNEUMONIA) == sr.ABSENT  # a normal film
    assert objects["SR"].PatientID == PATIENT_ID


def test_stow_to_an_archive_that_is_down_is_an_error_line_per_film(films, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(films["normal"]),
            str(films["pneumonia"]),
            "--stow",
            closed,
            "--dicom-out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all(
        "not stored" in line and str(tmp_path) in line for line in errors
    )
    assert len(list(tmp_path.glob("*_sr.dcm"))) == 2  # the copies are kept


def test_results_wait_in_the_spool_until_the_archive_is_back(orthanc_factory, films, tmp_path):
    """Archive down: results are spooled; SIGTERM stops the node cleanly keeping them; a restarted
    node delivers them once the archive is up; a second outage mid-run heals without restart."""
    pacs_dicom_port = free_port()
    destination = f"127.0.0.1:{pacs_dicom_port}:ORTHANC"
    spool = tmp_path / "spool"
    flags = ["--send-to", destination, *NODE_FLAGS]
    node = NodeProcess(spool, flags).start()
    first = pydicom.dcmread(films["pneumonia"])
    assert send_films("127.0.0.1", node.port, [films["pneumonia"]]) == [0]
    wait_until(lambda: list((spool / "outbox").glob("*/0.dcm")), "results spooled")
    wait_until(lambda: "wait in the spool" in node.output(), "a failed delivery attempt")
    assert node.stop() == 0  # SIGTERM: a clean stop, the results stay on disk
    log = node.output()
    assert "1 result(s) stay in" in log
    assert len(list((spool / "outbox").iterdir())) == 1

    orthanc = orthanc_factory("pacs", dicom_port=pacs_dicom_port)
    node = NodeProcess(spool, flags).start()  # delivers what the first run spooled
    orthanc.wait_for(first.StudyInstanceUID, {"SR", "OT"}, timeout=60)

    orthanc.stop()  # a second outage, this time while the node runs
    second = pydicom.dcmread(films["normal"])
    assert send_films("127.0.0.1", node.port, [films["normal"]]) == [0]
    wait_until(lambda: node.output().count("wait in the spool") >= 1, "a failed attempt")
    orthanc.start()  # same storage and ports: the archive is back
    orthanc.wait_for(second.StudyInstanceUID, {"SR", "OT"}, timeout=60)
    assert node.stop() == 0
    log += node.output()
    assert "is back: delivering what waited" in log
    assert not list((spool / "outbox").iterdir())
    assert_no_patient_fields(log)
    assert study_objects(orthanc, first.StudyInstanceUID)["SR"].PatientID == PATIENT_ID


def wait_until(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not after {timeout:g} s")


# --- hostile C-STOREs ---------------------------------------------------------------------

DX = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def raw_store(port: int, path: Path, context_class: str, calling: str = "ORTHANC") -> int:
    """C-STORE a file's bytes as they are (not re-encoded), in a `context_class` context."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, _config

    ae = AE(ae_title=calling)
    ae.add_requested_context(context_class, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", port, ae_title="PNEUMOSCAN")
    assert association.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's dataset bytes unparsed
    try:
        status = association.send_c_store(path)
        return int(status.Status) if status else -1
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if association.is_established:
            association.release()


def with_dataset_bytes(path: Path, sop_class: str, body: bytes) -> Path:
    """A Part 10 file whose meta says `sop_class` and whose dataset is `body`, byte for byte."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    path.write_bytes(buffer.getvalue() + body)
    return path


def encoded(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data[132 + 12 + struct.unpack("<I", data[140:144])[0] :]  # the dataset after the meta


def test_hostile_cstores_are_refused_and_the_node_keeps_serving(orthanc_factory, films, tmp_path):
    orthanc = orthanc_factory("pacs")
    flags = [
        "--send-to",
        orthanc.destination,
        "--max-pixels",
        "4000000",
        "--max-mb",
        "8",
        "--queue",
        "1",
        "--queue-wait",
        "0",
        *NODE_FLAGS,
    ]
    statuses: dict[str, int] = {}
    with NodeProcess(tmp_path / "spool", flags) as node:
        port = node.port
        # 1. A dataset that cannot be parsed (a sequence of undefined length that never ends).
        broken = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + b"\x00" * 8
        statuses["malformed"] = raw_store(
            port, with_dataset_bytes(tmp_path / "m.dcm", DX, broken), DX
        )
        # 2. Bytes that parse into nothing like a film.
        noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        statuses["garbage"] = raw_store(port, with_dataset_bytes(tmp_path / "g.dcm", DX, noise), DX)
        # 3. A CT dataset sent in a DX context (an SCU that would not take no at negotiation).
        ct = chest_film(jpeg_pixels(PNEUMONIA_JPEG))
        ct.SOPClassUID = CT
        statuses["wrong SOP class"] = raw_store(
            port, with_dataset_bytes(tmp_path / "ct.dcm", DX, encoded(ct)), DX
        )
        # 4. A frame that declares 40,000 x 40,000 pixels (1.6 Gpx) over a few bytes.
        huge = chest_film(np.zeros((8, 8), np.uint8))
        huge.Rows = huge.Columns = 40_000
        statuses["huge frame"] = raw_store(
            port, with_dataset_bytes(tmp_path / "h.dcm", DX, encoded(huge)), DX
        )
        # 5. A real frame over --max-pixels (2,500 x 2,000 = 5 Mpx > 4 Mpx).
        big = write_film(tmp_path / "big.dcm", chest_film(np.zeros((2500, 2000), np.uint8)))
        statuses["frame over the limit"] = send_films("127.0.0.1", port, [big])[0]
        # 6. Pixel data shorter than the header says.
        short = chest_film(np.zeros((64, 64), np.uint8))
        short.PixelData = short.PixelData[:100]
        statuses["truncated pixels"] = send_films("127.0.0.1", port, [short])[0]
        # 7. A message over --max-mb (3,000 x 3,000 x 8 bit ~ 9 MB > 8 MB): no status can answer
        #    mid-message, so the association is aborted.
        bomb = write_film(tmp_path / "bomb.dcm", chest_film(np.zeros((3000, 3000), np.uint8)))
        statuses["message over --max-mb"] = send_films("127.0.0.1", port, [bomb])[0]
        # 8. An association proposing CT storage only: its context is refused at negotiation.
        statuses["CT context"] = ct_context_result(port)
        # 9. A caller outside --allow-aet.
        statuses["unknown AE title"] = 0 if echo("127.0.0.1", port, calling="STRANGER") else -2
        # 10. More films than the queue holds (--queue 1, --queue-wait 0): the node refuses what
        #     it cannot hold yet with 0xA700, for the sender to retry, instead of growing.
        burst = [chest_film(jpeg_pixels(PNEUMONIA_JPEG)) for _ in range(6)]
        burst_statuses = send_films("127.0.0.1", port, burst)
        # ... and the node still answers C-ECHO and predicts a real film, a CR one this time.
        assert echo("127.0.0.1", port)
        cr = chest_film(jpeg_pixels(PNEUMONIA_JPEG), sop_class=CR)
        wait_until(lambda: send_films("127.0.0.1", port, [cr]) == [0], "room in the queue")
        orthanc.wait_for(cr.StudyInstanceUID, {"SR", "OT"}, timeout=60)
        for film, status in zip(burst, burst_statuses):
            if status == 0:  # every film it took has its results in the archive
                orthanc.wait_for(film.StudyInstanceUID, {"SR", "OT"}, timeout=60)
        assert node.stop() == 0
        output = node.output()
    print("burst of 6 films on a 1-film queue:", [hex(status) for status in burst_statuses])
    assert set(burst_statuses) == {0, 0xA700}, burst_statuses
    print("hostile C-STORE statuses:", {k: hex(v) if v >= 0 else v for k, v in statuses.items()})
    assert statuses == {
        "malformed": 0xC000,
        "garbage": 0xA900,
        "wrong SOP class": 0x0122,
        "huge frame": 0xA700,
        "frame over the limit": 0xA700,
        "truncated pixels": 0xA900,
        "message over --max-mb": -1,  # aborted
        "CT context": 3,  # abstract syntax not supported (A-ASSOCIATE-AC result)
        "unknown AE title": -2,  # association rejected
    }
    assert "refused (not in --allow-aet)" in output
    assert "aborted: a message over 8 MB" in output
    assert_no_patient_fields(output)


def ct_context_result(port: int) -> int:
    from pynetdicom import AE

    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(CT)
    ae.add_requested_context("1.2.840.10008.1.1")  # so the association itself is accepted
    association = ae.associate("127.0.0.1", port, ae_title="PNEUMOSCAN")
    try:
        return next(c.result for c in association.rejected_contexts if c.abstract_syntax == CT)
    finally:
        association.release()


def test_node_speaks_tls_only_when_given_a_certificate(tmp_path):
    import ssl

    certificate, key = tmp_path / "node.crt", tmp_path / "node.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(certificate)],
        check=True,
        capture_output=True,
    )
    client = ssl.create_default_context(cafile=str(certificate))
    client.check_hostname = False  # the node is reached as 127.0.0.1
    flags = ["--out", str(tmp_path / "out"), "--tls-cert", str(certificate), "--tls-key", str(key)]
    node = NodeProcess(tmp_path / "spool", flags)
    node.start(ready=lambda: echo("127.0.0.1", node.port, tls=client))
    try:
        assert echo("127.0.0.1", node.port, tls=client)
        assert not echo("127.0.0.1", node.port)  # plain DICOM gets no answer
    finally:
        assert node.stop() == 0
