"""A real `pneumoscan dicom-node` process and pynetdicom callers on loopback: who may associate
(--allow-aet AET@HOST), silent sockets, Deflated transfer syntax, films its results cannot copy.

127.0.0.2 is loopback too and can be bound as a source address: a caller from a wrong host.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from predict_process import SRC
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from pneumoscan.devtools.dicom_harness import chest_film, free_port

pynetdicom = pytest.importorskip("pynetdicom")

NODE_AET = "PNEUMOSCAN"
VERIFICATION = "1.2.840.10008.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """The node, allowing ARCHIVE only from 127.0.0.1 and MODALITY from anywhere."""
    folder = tmp_path_factory.mktemp("node")
    port = free_port()
    log = folder / "node.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pneumoscan", "dicom-node", "--port", str(port)]
            + ["--spool", str(folder / "spool"), "--out", str(folder / "out")]
            + ["--allow-aet", "ARCHIVE@127.0.0.1", "--allow-aet", "MODALITY"]
            + ["--max-associations", "4"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
        )
    deadline = time.monotonic() + 120
    while not _listening(port):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield port, log, folder / "spool"
    process.terminate()
    process.wait(60)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _associate(port, calling="ARCHIVE", source="127.0.0.1", contexts=None):
    ae = pynetdicom.AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    for abstract, syntaxes in contexts or [(VERIFICATION, [ExplicitVRLittleEndian])]:
        ae.add_requested_context(abstract, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title=NODE_AET, bind_address=(source, 0))


def _wait_for_log(log: Path, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while text not in (seen := log.read_text()):
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{seen}"
        time.sleep(0.1)
    return seen


def test_allowed_title_from_its_host_is_accepted(node):
    port, _, _ = node
    for calling in ("ARCHIVE", "MODALITY"):
        association = _associate(port, calling)
        assert association.is_established, calling
        assert association.send_c_echo().Status == 0
        association.release()


def test_allowed_title_from_another_host_is_refused_with_the_reason(node):
    port, log, _ = node
    association = _associate(port, "ARCHIVE", source="127.0.0.2")
    assert association.is_rejected
    _wait_for_log(log, "'ARCHIVE' at 127.0.0.2 refused (--allow-aet allows it only from 127.0.0.1)")
    association = _associate(port, "MODALITY", source="127.0.0.2")  # plain AET: any host
    assert association.is_established
    association.release()


def test_unknown_title_is_refused_with_the_reason(node):
    port, log, _ = node
    assert _associate(port, "INTRUDER").is_rejected
    _wait_for_log(log, "'INTRUDER' at 127.0.0.1 refused (not in --allow-aet)")


def test_silent_sockets_hold_the_node_for_seconds_not_a_minute(node):
    port, log, _ = node
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        time.sleep(0.5)
        association = _associate(port, "ARCHIVE")
        assert association.is_rejected
        # the real reason, not --allow-aet: ARCHIVE is allowed from here
        _wait_for_log(
            log, "'ARCHIVE' at 127.0.0.1 refused (4 associations already open, --max-associations)"
        )
        start = time.monotonic()
        while not (association := _associate(port, "ARCHIVE")).is_established:
            assert time.monotonic() - start < 20, "still locked out after 20 s"
            time.sleep(1)
        association.release()
    finally:
        for sock in silent:
            sock.close()


def test_deflated_transfer_syntax_is_not_offered(node):
    port, _, _ = node
    association = _associate(
        port, contexts=[(DX, [DeflatedExplicitVRLittleEndian]), (DX, [ExplicitVRLittleEndian])]
    )
    assert association.is_established
    accepted = {str(context.transfer_syntax[0]) for context in association.accepted_contexts}
    association.release()
    assert accepted == {ExplicitVRLittleEndian}


@pytest.mark.parametrize("missing", ["PatientID", "StudyDate"])
def test_film_its_results_cannot_copy_is_refused_at_admission(node, missing):
    port, log, spool = node
    film = chest_film(np.full((64, 64), 100, np.uint8))
    del film[missing]
    association = _associate(port, contexts=[(DX, [ExplicitVRLittleEndian])])
    assert association.is_established
    status = association.send_c_store(film)
    association.release()
    assert status.Status == 0xA900
    assert missing in status.ErrorComment
    _wait_for_log(log, f"refused with 0xA900: no {missing} in the dataset")
    failed = spool / "failed"
    assert not failed.exists() or not any(failed.iterdir())  # refused, never acknowledged
