"""`pneumoscan serve` at its edges: slow-loris connections cut at the header deadline, an open
address refused without an API key, HTTPS, a missing model in one line, and a 500 whose request id
finds the traceback in the log."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from serve_fixtures import load_shipped_models, post_to_a_broken_model

from pneumoscan.devtools.loadtest import ServerProcess, free_port


def _serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumoscan", "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_slow_loris_connections_are_closed_at_the_header_deadline():
    with ServerProcess(["--header-timeout", "2", "-m", "binary"]) as server:
        connections = []
        for _ in range(50):
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            connection.sendall(b"G")
            connections.append(connection)
        started = time.monotonic()
        closed = set()
        request = f"ET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-a: ".encode()
        for byte in request:  # one byte a second each, never the end of the headers
            for number, connection in enumerate(connections):
                if number in closed:
                    continue
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    closed.add(number)
            if len(closed) == len(connections) or time.monotonic() - started > 8:
                break
            time.sleep(1)
        for number, connection in enumerate(connections):  # closed ones read EOF at once
            connection.settimeout(max(0.1, 5 - (time.monotonic() - started)))
            try:
                if connection.recv(1024) == b"":
                    closed.add(number)
            except ConnectionResetError:
                closed.add(number)
            except TimeoutError:
                pass
            connection.close()
        assert len(closed) == 50, f"{50 - len(closed)} slow connections still open"
        assert time.monotonic() - started < 8
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
            assert response.status == 200


def test_an_open_address_without_an_api_key_is_refused():
    env = {"PNEUMOSCAN_API_KEY": ""}
    refused = _serve("--host", "0.0.0.0", env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: --host 0.0.0.0 without an API key")
    assert len(refused.stderr.strip().splitlines()) == 1 and "--insecure" in refused.stderr


def test_a_missing_model_is_one_error_line_before_uvicorn_starts(tmp_path):
    failed = _serve("-m", str(tmp_path / "missing.onnx"))
    assert failed.returncode == 2
    lines = (failed.stdout + failed.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.onnx" in lines[0]


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_with_a_self_signed_certificate(certificate):
    cert, key = certificate
    port = free_port()
    args = ["--port", str(port), "-m", "binary", "--ssl-certfile", str(cert)]
    process = subprocess.Popen(
        [sys.executable, "-m", "pneumoscan", "serve", *args, "--ssl-keyfile", str(key)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    context = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{port}/readyz", timeout=2, context=context
                ) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.25)
        with pytest.raises(OSError):  # plain HTTP is not answered on the TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_bad_tls_files_are_one_line_errors(tmp_path):
    failed = _serve("--ssl-certfile", str(tmp_path / "none.pem"))
    assert failed.returncode == 2 and failed.stderr.startswith("error: --ssl-certfile")
    failed = _serve("--ssl-keyfile", str(tmp_path / "key.pem"))
    assert failed.returncode == 2 and "needs --ssl-certfile" in failed.stderr


def test_a_500_carries_the_request_id_that_finds_its_frames_in_the_log(caplog):
    caplog.set_level(logging.INFO)
    response = post_to_a_broken_model(load_shipped_models())
    assert response.status_code == 500
    request_id = response.headers["X-Request-ID"]
    assert request_id in json.loads(response.text)["message"]
    record = next(r for r in caplog.records if request_id in r.getMessage())
    assert "RuntimeError" in record.getMessage()
    # The frame that raised (Broken.predict, in serve_fixtures.py) is named with its line.
    assert "serve_fixtures.py" in record.getMessage() and "in predict" in record.getMessage()
    assert "secret" not in caplog.text


def test_connections_beyond_max_connections_get_503():
    with ServerProcess(["--max-connections", "4", "-m", "binary"]) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(4)]
        time.sleep(0.5)
        try:
            urllib.request.urlopen(f"{server.url}/healthz", timeout=10)
            status = 200
        except urllib.error.HTTPError as error:
            status = error.code
        for connection in idle:
            connection.close()
        assert status == 503
        time.sleep(0.5)
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
            assert response.status == 200
