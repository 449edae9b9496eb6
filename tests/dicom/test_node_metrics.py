"""`dicom-node --metrics-port`: a real node process takes the two example films (known labels)
by C-STORE, writes their results, and its Prometheus endpoint says so, with no patient data."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from predict_process import SRC
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from dicom.films import example_film
from pneumoscan.devtools.dicom_harness import free_port

pynetdicom = pytest.importorskip("pynetdicom")


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _scrape(port: int) -> tuple[dict, str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return samples, text


def test_node_metrics_count_films_predictions_and_delivery(tmp_path):
    port, metrics_port = free_port(), free_port()
    out = tmp_path / "out"
    log = tmp_path / "node.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "pneumoscan", "dicom-node", "--port", str(port)]
            + ["--spool", str(tmp_path / "spool"), "--out", str(out)]
            + ["--metrics-port", str(metrics_port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC)},
        )
    try:
        deadline = time.monotonic() + 120
        while not (_listening(port) and _listening(metrics_port)):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        films = [example_film(tmp_path / f"{w}.dcm", w) for w in ("pneumonia", "normal")]
        names = {str(dcmread(f).PatientName) for f in films}
        ae = pynetdicom.AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1")
        association = ae.associate("127.0.0.1", port, ae_title="PNEUMOSCAN")
        assert association.is_established
        for film in films:
            assert association.send_c_store(film).Status == 0x0000
        association.release()
        samples, text = {}, ""
        while samples.get(("pneumoscan_node_films_total", (("stage", "delivered"),))) != 2:
            assert time.monotonic() < deadline + 60, (samples, log.read_text())
            time.sleep(0.3)
            samples, text = _scrape(metrics_port)
    finally:
        process.terminate()
        process.wait(60)

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("pneumoscan_node_films_total", stage="received") == 2
    assert value("pneumoscan_node_cstore_answers_total", status="0x0000") == 2
    predictions = "pneumoscan_predictions_total"
    assert value(predictions, model="binary", status="ok", label="pneumonia") == 1
    assert value(predictions, model="binary", status="ok", label="normal") == 1
    assert value("pneumoscan_node_delivery_latency_seconds_count") == 2
    assert value("pneumoscan_node_spool", queue="inbox") == 0
    assert value("pneumoscan_node_spool", queue="outbox") == 0
    assert value("pneumoscan_node_dead_threads") == 0
    assert not any(name and name in text for name in names), "a patient name reached /metrics"
